"""Sweep presets of benchmarks/coupled_vs_decoupled.py: coupled L2 against
decoupled weight decay on grids of learning rate × λ, in three regimes.

    python -m benchmarks.coupled_vs_decoupled --preset=cpu_bn --out=runs/cvd_bn

The regimes differ in the share of the decayed parameters that are
scale-invariant (kernels followed by batch norm):

- `cpu_bn`: `allconv_bn`, every convolution followed by batch norm (97% of
  the decayed parameters);
- `cpu_mixed`: `seed_cnn_narrow` with batch norm (its convolutions, 1%: the
  Dense layers hold the rest);
- `cpu`: `seed_cnn_narrow` without normalization (0%).

All three train on 2,000 CIFAR-10 images without augmentation for 1,860
steps (batch 32, 30 epochs, cosine schedule) and evaluate once, at the end,
on 5,000 held-out validation images and the test split. Each method's row
of λ starts around `l2` (λ at the first lr, moved by `guess` decades a
decade of lr) and is widened by `benchmarks.coupled_vs_decoupled` until
its best λ has a neighbour on both sides and its vertex lies inside. `smoke` and `smoke_bn` exercise
every output in CI; their numbers mean nothing.

The `cpu_bn_*` variants each change one thing of `cpu_bn` (`VARIANTS`):

- `cpu_bn_half`, `cpu_bn_double`: half and twice the steps (15 and 60
  epochs), coupled SGD at lr 0.003 and 0.01. Under batch norm the best λ of
  `cpu_bn` gives a total shrink Σ_t s_t ≈ 1: if that sets the optimum, the
  best λ moves as 1/steps; if the per-step shrink s = α λ/(1 − β) does (it
  sets the equilibrium angle and the effective learning rate), the best λ
  stays where it was.
- `cpu_bn_constant`: a constant learning rate, SGD and SGDW at lr 0.003 and
  0.01. Under the cosine schedule Δθ* falls to 0 faster than the weight
  norm can follow, so the last epoch's Δθ cannot match it; here it can.
- `cpu_bn_adam_head`, `cpu_bn_adam_convs`: coupled Adam with L2 on part of
  the kernels: the classifier's alone (not scale-invariant, 0%) or the
  convolutions' alone (100%). All kernels together, coupled Adam's best λ
  barely moves with α where the mechanism says α^−2; the split tells which
  part places it. `cpu_bn_adamw_convs`: AdamW with the convolutions' decay
  alone (its all-kernel rows show no optimum). `cpu_bn_adam_convs_double`,
  `cpu_bn_adamw_convs_double`: the same for 60 epochs. At 30, AdamW's two
  faster rows stop short of equilibrium (Σ s 3.5 and 1.4 at their λ̂) and
  its slope is −0.48 where the mechanism says 0: does it reach 0 when they
  get there?
- `cpu_bn_sgd_convs`: SGD and SGDW with the convolutions' decay alone, at
  `cpu_bn`'s four rates: does the classifier's decay cost under SGD too,
  and do the rows' peaks rise above their seeds' noise without it?
  `cpu_bn_sgd_convs_double`: the same for 60 epochs, where the optimum's
  Σ s reaches about 5 (at 30 epochs the faster rows' is 1.6 to 3).
- `cpu_bn_floor`: `cpu_bn_sgd_convs_double` at lr 0.003 and 0.01 with the
  cosine schedule falling to a tenth of α (`lr_floor`) instead of 0. Falling
  to 0, Δθ* reaches 0 faster than the weight norm can follow, so the last
  epoch's Δθ is 6 % of it: how close does it come when s ends at a tenth,
  and does the optimum move?

Measured runtime, two at a time (`--executor=local --parallel=2
--pin=cores`) on a 2-core CPU (benchmarks/results/separability/): `cpu_bn`
grew to 231 cells in 79.5 min of wall time (run again from scratch with the
current code: cpu_bn_rerun/; its committed results took about 5.1 h with
older code); `cpu` grew to 234 cells, 235 min summed, about 2 h of wall time;
`cpu_mixed` grew to 309 cells, 298 min summed, about 2.6 h of wall time.
The variants: 8 to 52 min each (`config.runtime`).
"""

from typing import NamedTuple

import ml_collections

from configs import cifar

SGD_RATES = (0.003, 0.01)
SGD_ALL = (0.001, *SGD_RATES, 0.03)  # cpu_bn's.
ADAM_RATES = (1e-4, 3e-4, 1e-3, 3e-3)


class Variant(NamedTuple):
  """`cpu_bn` changed in one respect."""
  methods: tuple
  rates: tuple  # Their learning rates.
  train: dict  # Train config values, dotted keys.


CONVS = r'Conv_\d+/kernel'
VARIANTS = {
    'cpu_bn_half': Variant(('sgd',), SGD_RATES, {'num_epochs': 15}),
    'cpu_bn_double': Variant(('sgd',), SGD_RATES, {'num_epochs': 60}),
    'cpu_bn_constant': Variant(('sgd', 'sgdw'), SGD_RATES,
                               {'schedule': 'constant'}),
    'cpu_bn_adam_head': Variant(('adam',), ADAM_RATES,
                                {'l2.mask': 'Dense_0/kernel'}),
    'cpu_bn_adam_convs': Variant(('adam',), ADAM_RATES, {'l2.mask': CONVS}),
    'cpu_bn_adamw_convs': Variant(('adamw',), ADAM_RATES, {'l2.mask': CONVS}),
    'cpu_bn_adam_convs_double': Variant(('adam',), ADAM_RATES,
                                        {'l2.mask': CONVS, 'num_epochs': 60}),
    'cpu_bn_adamw_convs_double': Variant(('adamw',), ADAM_RATES,
                                         {'l2.mask': CONVS, 'num_epochs': 60}),
    'cpu_bn_sgd_convs': Variant(('sgd', 'sgdw'), SGD_ALL, {'l2.mask': CONVS}),
    'cpu_bn_sgd_convs_double': Variant(('sgd', 'sgdw'), SGD_ALL,
                                       {'l2.mask': CONVS, 'num_epochs': 60}),
    'cpu_bn_floor': Variant(('sgd', 'sgdw'), SGD_RATES,
                            {'l2.mask': CONVS, 'num_epochs': 60,
                             'lr_floor': 0.1}),
}
PRESETS = ('smoke', 'smoke_bn', 'cpu', 'cpu_mixed', 'cpu_bn', *VARIANTS)
# The paper's pairs: (optimizer, config.l2.mode) of each method.
METHODS = {'sgd': ('sgd', 'coupled'), 'sgdw': ('sgd', 'decoupled'),
           'adam': ('adam', 'coupled'), 'adamw': ('adam', 'decoupled')}


def _train(model: str, batch_norm: bool, smoke: bool, values: dict):
  train = cifar.get_config()
  train.update(model=model, batch_norm=batch_norm, augment=False,
               noise_sigmas=(), checkpoint_every_steps=0,
               checkpoints_to_keep=1, rotation_every_steps=1)
  if smoke:
    train.update(max_train_examples=256, validation_fraction=0.1,
                 num_epochs=1, batch_size=64, eval_batch_size=500)
  else:
    # 5,000 validation images: ±0.7 points of sampling noise at 50%.
    train.update(max_train_examples=2000, validation_fraction=0.1,
                 num_epochs=30, batch_size=32)
  train.update_from_flattened_dict(values)
  train.eval_every_epochs = train.num_epochs
  return train


def get_config(preset: str = 'smoke'):
  if preset not in PRESETS:
    raise ValueError(f'preset {preset!r}: expected one of {PRESETS}')
  smoke = preset.startswith('smoke')
  config = ml_collections.ConfigDict()
  config.preset = preset
  model, batch_norm = {
      'smoke': ('seed_cnn_narrow', False), 'cpu': ('seed_cnn_narrow', False),
      'cpu_mixed': ('seed_cnn_narrow', True), 'smoke_bn': ('allconv_bn', True),
      **dict.fromkeys(('cpu_bn', *VARIANTS), ('allconv_bn', True))}[preset]
  variant = VARIANTS.get(preset, Variant((), (), {}))
  config.train = _train(model, batch_norm, smoke, variant.train)
  config.methods = tuple(METHODS)
  if smoke:
    # One pair each: between them, both optimizers and both regimes.
    config.methods = ('adam', 'adamw') if batch_norm else ('sgd', 'sgdw')
    # The no-BN smoke has two rows, so that its slopes are computed; the BN
    # one, one row: the tests run it twice.
    config.lr = ({'sgd': (0.1,), 'adam': (1e-2,)} if batch_norm else
                 {'sgd': (0.01, 0.1), 'adam': (1e-3, 1e-2)})
    config.l2 = {m: (1e-3, 0.0) for m in METHODS}
    config.points, config.seeds, config.widen_rounds = 1, (0,), 0
  else:
    # ≥ 4 learning rates spanning ≥ 30×; λ on a ×√10 lattice. Low rates
    # for batch norm networks, where the decay's effect on the effective
    # learning rate shows on both sides of the best λ.
    config.lr = {'sgd': SGD_ALL, 'adam': ADAM_RATES}
    # {method: (λ at the first lr, decades of λ a decade of lr)}: where each
    # row's first λs centre, from single-seed calibration runs and the
    # mechanism's slope; widening corrects them.
    config.l2 = {
        'cpu_bn': {'sgd': (0.2, -1.0), 'sgdw': (2e-3, 0.0),
                   'adam': (0.1, -1.0), 'adamw': (3e-4, 0.0)},
        'cpu_mixed': {'sgd': (0.03, -0.5), 'sgdw': (3e-4, 0.5),
                      'adam': (0.03, -0.5), 'adamw': (1e-4, 0.5)},
        'cpu': {'sgd': (1e-2, 0.0), 'sgdw': (1e-4, 1.0),
                'adam': (1e-2, 0.0), 'adamw': (1e-4, 1.0)},
        # Between cpu_bn's λ̂ (0.037 at lr 0.003) and twice or half it.
        'cpu_bn_half': {'sgd': (0.07, -1.0)},
        'cpu_bn_double': {'sgd': (0.025, -1.0)},
        # At a constant rate Σ s is twice cosine's at the same λ.
        'cpu_bn_constant': {'sgd': (0.03, -1.0), 'sgdw': (1e-3, 0.0)},
        # The head's around all kernels' λ̂ (0.003 to 0.05); the
        # convolutions' between that and the mechanism's α^−2.
        'cpu_bn_adam_head': {'adam': (0.03, 0.0)},
        'cpu_bn_adam_convs': {'adam': (0.1, -1.0)},
        # AdamW's all-kernel rows were flat over 3e-5 to 3e-3.
        'cpu_bn_adamw_convs': {'adamw': (1e-3, 0.0)},
        # Around the 30-epoch λ̂ of the rows at equilibrium: if the per-step
        # shrink sets the optimum, it stays there (coupled: lr 1e-3's 0.09).
        'cpu_bn_adam_convs_double': {'adam': (0.1, -1.0)},
        'cpu_bn_adamw_convs_double': {'adamw': (5e-3, 0.0)},
        # cpu_bn's centres: widening finds where the head's absence moves them.
        'cpu_bn_sgd_convs': {'sgd': (0.2, -1.0), 'sgdw': (2e-3, 0.0)},
        # Around cpu_bn_sgd_convs' λ̂ at lr 0.003 (0.2, 5e-3).
        'cpu_bn_sgd_convs_double': {'sgd': (0.6, -1.0), 'sgdw': (5e-3, 0.0)},
        # cpu_bn_sgd_convs_double's λ̂ at lr 0.003 (0.099, 3.1e-3): the
        # floor adds a tenth to the mean rate, so Σ s barely moves.
        'cpu_bn_floor': {'sgd': (0.1, -1.0), 'sgdw': (3e-3, 0.0)},
    }[preset]
    config.points, config.seeds, config.widen_rounds = 4, (0, 1, 2), 4
    if variant.methods:
      config.methods = variant.methods
      config.lr = {optimizer: variant.rates for optimizer in
                   {METHODS[m][0] for m in variant.methods}}
  # --select=METHOD chooses λ at this lr, over the first grid's row there.
  config.select_lr = {o: config.lr[o][len(config.lr[o]) // 2]
                      for o in config.lr}
  # Widening stops below this total shrink Σ_t s_t of a row's smallest λ:
  # there the decay no longer changes training.
  config.min_shrink_total = 0.05
  config.command = (f'python -m benchmarks.coupled_vs_decoupled '
                    f'--preset={preset} --out=runs/cvd_{preset}')
  config.runtime = {
      'smoke': 'about a minute', 'smoke_bn': 'about a minute',
      'cpu': '235 min of cells (234 after widening), '
             '~2 h wall two at a time on 2 cores',
      'cpu_mixed': '298 min of cells (309 after widening), '
                   '~2.6 h wall two at a time on 2 cores',
      'cpu_bn': '79.5 min wall two at a time on 2 cores '
                '(231 cells after widening)',
      'cpu_bn_half': '4.4 min wall two at a time on 2 cores (30 cells)',
      'cpu_bn_double': '22 min wall two at a time on 2 cores '
                       '(36 cells after widening)',
      'cpu_bn_constant': '21 min wall two at a time on 2 cores '
                         '(66 cells after widening)',
      'cpu_bn_adam_head': '21 min wall two at a time on 2 cores '
                          '(63 cells after widening)',
      'cpu_bn_adam_convs': '25 min wall two at a time on 2 cores '
                           '(78 cells after widening)',
      'cpu_bn_adamw_convs': '22 min wall two at a time on 2 cores '
                            '(78 cells after widening)',
      'cpu_bn_adam_convs_double': '40 min wall two at a time on 2 cores '
                                  '(87 cells after widening)',
      'cpu_bn_adamw_convs_double': '28 min wall two at a time on 2 cores '
                                   '(63 cells after widening)',
      'cpu_bn_sgd_convs': '31 min wall two at a time on 2 cores '
                          '(114 cells after widening)',
      'cpu_bn_sgd_convs_double': '52 min wall two at a time on 2 cores '
                                 '(108 cells)',
      'cpu_bn_floor': '36 min wall two at a time on 2 cores '
                      '(75 cells after widening)'}[preset]
  return config
