"""The one place that turns a config into an optax chain.

Notation: λ = `config.l2.weight`, α the base learning rate, η_t the schedule's
multiplier at step t (so the learning rate is α_t = α η_t), g_t the gradient of
the data loss, u_t the optimizer's direction: the momentum buffer for SGD
(`optax.trace`, PyTorch's convention b_t = μ b_{t-1} + g_t) or Adam's
m̂_t / (√v̂_t + ε). λ_sp = `config.l2sp.weight`, w₀ the L2-SP anchor.

With `config.l2.normalized`, λ = λ_norm √(b / (B T)) (Loshchilov & Hutter,
appendix B.1), λ_norm = `config.l2.weight`, b the batch size, T the epochs and
B the examples an epoch trains on (steps per epoch × b: the last partial batch
is dropped), so b / (B T) = 1 / (number of updates).
"""

from typing import Callable, NamedTuple, Optional, Union

import jax
import optax

from l2jax import equilibrium
from l2jax import regularization

L2_MODES = ('none', 'loss', 'coupled', 'decoupled', 'decoupled_lr')
OPTIMIZERS = ('sgd', 'adam')
SCHEDULES = ('constant', 'cosine', 'step')
L2_SCHEDULES = ('lr', 'constant')
L2SP_MODES = ('loss', 'decoupled')
DECOUPLED_MODES = ('decoupled', 'decoupled_lr')


def lr_multiplier(config, steps_per_epoch: int) -> optax.Schedule:
  """η_t: linear warmup from 0 to 1, then constant, cosine, or steps.

  `cosine` falls from 1 to `config.lr_floor` (optax's `alpha`; 0 by default).

  `step` multiplies η by `config.step_decay` at each fraction of training in
  `config.step_boundaries`.
  """
  total = config.num_epochs * steps_per_epoch
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if config.schedule == 'constant':
    main = optax.constant_schedule(1.0)
  elif config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(
        1.0, decay_steps=max(total - warmup, 1), alpha=config.lr_floor)
  else:
    main = optax.piecewise_constant_schedule(
        1.0, {int(b * total) - warmup: config.step_decay
              for b in config.step_boundaries})
  if not warmup:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, 1.0, warmup), main], [warmup])


def update_direction(config) -> optax.GradientTransformation:
  """u_t from g_t (or from g_t + λ w in coupled mode): momentum or Adam."""
  if config.optimizer == 'adam':
    return optax.scale_by_adam(
        b1=config.adam.b1, b2=config.adam.b2, eps=config.adam.eps)
  if config.momentum:
    return optax.trace(decay=config.momentum, nesterov=config.nesterov)
  return optax.identity()


class DecayTowardState(NamedTuple):
  """`decay_toward` keeps no state."""


def decay_toward(anchor: optax.Params, weight: float,
                 mask: optax.Params) -> optax.GradientTransformation:
  """Adds λ_sp (w − w₀) to the masked parameters' updates.

  `optax.add_decayed_weights` with the decay pulling toward the anchor w₀
  (`anchor`, a pytree like the params) instead of toward 0: the gradient of
  ½ λ_sp Σ (w − w₀)². `mask`: a pytree of bools like the params.
  """

  def init_fn(params):
    del params
    return DecayTowardState()

  def update_fn(updates, state, params):
    if params is None:
      raise ValueError('decay_toward needs the params')
    updates = jax.tree_util.tree_map(
        lambda u, w, w0, m: u + weight * (w - w0) if m else u,
        updates, params, anchor, mask)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def l2_chain(
    direction: optax.GradientTransformation,
    *,
    mode: str,
    weight: float,
    learning_rate: float,
    multiplier: Callable[[int], float],
    mask: Union[optax.Params, Callable[[optax.Params], optax.Params]],
    schedule: str = 'lr',
    anchor_decay: Optional[optax.GradientTransformation] = None,
) -> optax.GradientTransformation:
  """The optimizer with L2 entering in one of five ways.

  Every mode is the same optax pieces in another order; `D` is
  `optax.add_decayed_weights(λ, mask)` (adds λ w to the update):

  * ``none`` and ``loss``: w ← w − α_t u_t. In ``loss`` mode the gradient
    itself carries the penalty, since the loss is data loss + ½ λ Σ w²
    (`loss_l2_weight`).  Chain: direction, lr.
  * ``coupled``: g_t ← g_t + λ w before the direction, as PyTorch's
    ``SGD(weight_decay=λ)`` and ``Adam(weight_decay=λ)``.  Equal to ``loss``
    for every optimizer.  Chain: D, direction, lr.
  * ``decoupled``: w ← w − η_t (α u_t + λ w), SGDW and AdamW of Loshchilov &
    Hutter (ICLR 2019): the decay follows the schedule η_t but is *not*
    multiplied by the base learning rate α.  Chain: direction, ×α, D, ×η_t.
  * ``decoupled_lr``: w ← w − α_t (u_t + λ w), as ``optax.adamw`` and
    PyTorch's ``AdamW``: the decay is multiplied by the full learning rate.
    Chain: direction, D, lr.

  For plain SGD at constant α, ``decoupled`` with λ equals ``coupled`` with
  λ/α, and ``decoupled_lr`` with λ equals ``coupled`` with λ.

  The decay schedule (`schedule`, `config.l2.schedule`): with λ_t the
  coefficient of the decay step, every mode above has λ_t = λ η_t (``lr``,
  the default): the decay follows the learning-rate schedule, through α_t or
  η_t. ``constant`` keeps λ_t = λ, for the decoupled modes only (in ``loss``
  and ``coupled`` the decay is part of the gradient, so α_t scales it):

  * ``decoupled``: w ← w − η_t α u_t − λ w.  Chain: direction, ×α, ×η_t, D,
    ×(−1).
  * ``decoupled_lr``: w ← w − α_t u_t − α λ w.  Chain: direction, ×α, ×η_t,
    D(αλ), ×(−1).

  `anchor_decay` (decoupled L2-SP, `decay_toward`) adds η_t λ_sp (w − w₀) to
  the step of any mode: it goes after ×α and before ×η_t, like ``decoupled``'s
  D, so w ← w − η_t (α u_t + λ_sp (w − w₀)) − (the mode's L2 decay).

  Args:
    direction: the transformation that turns gradients into u_t.
    mode: one of `L2_MODES`.
    weight: λ ≥ 0.
    learning_rate: α, the base learning rate.
    multiplier: η_t, a function of the step count.
    mask: a pytree of bools like the params, or a function from params to
      one; only masked parameters decay.
    schedule: one of `L2_SCHEDULES`; ``constant`` needs a decoupled mode.
    anchor_decay: decoupled decay toward w₀, or None.

  Returns:
    An `optax.GradientTransformation` whose updates are added to the params.
  """
  if mode not in L2_MODES:
    raise ValueError(f'unknown L2 mode {mode!r}; expected one of {L2_MODES}')
  if schedule == 'constant':
    if mode not in DECOUPLED_MODES:
      raise ValueError(f'a constant decay schedule needs a decoupled mode, '
                       f'not {mode!r}')
    const_weight = weight * (learning_rate if mode == 'decoupled_lr' else 1.0)
    return optax.chain(
        direction, optax.scale(learning_rate),
        *([anchor_decay] if anchor_decay else []),
        optax.scale_by_schedule(multiplier),
        optax.add_decayed_weights(const_weight, mask), optax.scale(-1.0))
  decay = optax.add_decayed_weights(weight, mask)
  # Decays scaled by η_t but not by α sit between ×α and ×(−η_t).
  between = [decay] if mode == 'decoupled' else []
  between += [anchor_decay] if anchor_decay else []
  if between:
    descend = optax.chain(optax.scale(learning_rate), *between,
                          optax.scale_by_learning_rate(multiplier))
  else:
    descend = optax.scale_by_learning_rate(
        lambda step: learning_rate * multiplier(step))
  before = {'coupled': [decay]}.get(mode, [])
  after = {'decoupled_lr': [decay]}.get(mode, [])
  return optax.chain(*before, direction, *after, descend)


def loss_l2_weight(mode: str, weight: float) -> float:
  """λ of the ½ λ Σ w² term in the loss: λ in ``loss`` mode, else 0."""
  return weight if mode == 'loss' else 0.0


def normalized_weight(weight_norm: float, batch_size: int,
                      examples_per_epoch: int, epochs: int) -> float:
  """λ = λ_norm √(b / (B T)) (Loshchilov & Hutter, appendix B.1)."""
  return weight_norm * (batch_size / (examples_per_epoch * epochs)) ** 0.5


def l2_weight(config, steps_per_epoch: int) -> float:
  """λ: `config.l2.weight`, or λ_norm √(b / (B T)) with `config.l2.normalized`."""
  if not config.l2.normalized:
    return config.l2.weight
  return normalized_weight(config.l2.weight, config.batch_size,
                           steps_per_epoch * config.batch_size,
                           config.num_epochs)


def make_optimizer(config, penalties: regularization.Penalties,
                   steps_per_epoch: int, learning_rate=None):
  """Returns (optax chain, learning-rate schedule α_t) for a config.

  λ and the masks are `penalties`' (built once, on the run's parameters:
  `configuration.make_penalties`); so is w₀ for decoupled L2-SP. α is
  `learning_rate`, default `config.learning_rate`: inside the training step
  both are traced (`train.train_step`).
  """
  alpha = config.learning_rate if learning_rate is None else learning_rate
  multiplier = lr_multiplier(config, steps_per_epoch)
  anchor_decay = None
  if config.l2sp.mode == 'decoupled' and penalties.l2sp_weight:
    anchor_decay = decay_toward(penalties.anchor.params, penalties.l2sp_weight,
                                penalties.l2sp_mask)
  tx = l2_chain(
      update_direction(config),
      mode=config.l2.mode,
      weight=penalties.l2_weight,
      learning_rate=alpha,
      multiplier=multiplier,
      mask=penalties.l2_mask,
      schedule=config.l2.schedule,
      anchor_decay=anchor_decay)
  return tx, lambda step: alpha * multiplier(step)


def shrink_per_step(config, weight: float, steps_per_epoch: int,
                    learning_rate=None) -> Callable[[int], float]:
  """s_t, the shrink one step's L2 decay gives a decayed weight (before
  Adam's per-coordinate division in coupled mode): l2jax.equilibrium's
  table, for `config.l2.mode` and `config.l2.schedule`; α as in
  `make_optimizer`."""
  multiplier = lr_multiplier(config, steps_per_epoch)
  schedule = ((lambda step: 1.0) if config.l2.schedule == 'constant'
              else multiplier)
  alpha = config.learning_rate if learning_rate is None else learning_rate
  mode = config.l2.mode
  if mode in ('coupled', 'loss'):
    total = equilibrium.momentum_filter(config).total()
    return lambda step: alpha * multiplier(step) * weight * total
  if mode == 'decoupled':
    return lambda step: weight * schedule(step)
  if mode == 'decoupled_lr':
    return lambda step: alpha * weight * schedule(step)
  return lambda step: 0.0 * multiplier(step)


def make_equilibrium(config, penalties: regularization.Penalties,
                     steps_per_epoch: int,
                     learning_rate=None) -> equilibrium.Equilibrium:
  """What the step measures of each kernel group's rotation, and predicts;
  α as in `make_optimizer`."""
  return equilibrium.Equilibrium(
      filter=equilibrium.momentum_filter(config),
      shrink=shrink_per_step(config, penalties.l2_weight, steps_per_epoch,
                             learning_rate),
      mask=penalties.l2_mask,
      per_coordinate=(config.optimizer == 'adam'
                      and config.l2.mode in ('coupled', 'loss')),
      eps=config.adam.eps, b2=config.adam.b2, weight=penalties.l2_weight,
      every=config.rotation_every_steps, epoch_steps=steps_per_epoch)
