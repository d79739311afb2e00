"""Sweep presets of benchmarks/regularizers.py: L2 beside L1, elastic net,
dropout and batch norm, each at the strength validation picks.

    python -m benchmarks.regularizers --preset=cpu --out=runs/reg \
        --data=folder:data/cifar10-jpeg

Presets:
- `smoke`: two steps on 128 images; exercises every method and output (CI).
  About a minute; its numbers mean nothing.
- `cpu`: 24 cells on 1,000 training images without augmentation, so that
  regularizing can pay; lr 0.03, the λ grid around coupled SGD's best λ.
  8.3 min measured on a 2-core CPU (benchmarks/results/regularizers_cpu/).
"""

import ml_collections

from configs import cifar

PRESETS = ('smoke', 'cpu')


def get_config(preset: str = 'smoke'):
  if preset not in PRESETS:
    raise ValueError(f'preset {preset!r}: expected one of {PRESETS}')
  config = ml_collections.ConfigDict()
  config.preset = preset
  train = cifar.get_config()  # SGD with momentum; L2 coupled where used.
  train.update(model='seed_cnn_narrow', augment=False, optimizer='sgd',
               validation_fraction=0.1 if preset == 'smoke' else 0.04,
               checkpoint_every_steps=0, checkpoints_to_keep=1,
               learning_rate=0.03)
  if preset == 'smoke':
    train.update(max_train_examples=128, num_epochs=1, eval_every_epochs=1,
                 batch_size=64, eval_batch_size=500)
    config.l2, config.l1, config.dropout = (1e-2,), (3e-4,), (0.5,)
    config.runtime = 'about a minute on 2 cores'
  else:
    train.update(max_train_examples=1000, num_epochs=16, eval_every_epochs=16,
                 batch_size=32)
    # Up to 1e-1: a first run's 3-point grid chose its top (3e-2).
    config.l2 = (3e-3, 1e-2, 3e-2, 1e-1)
    config.l1 = (1e-4, 3e-4, 1e-3, 3e-3)
    config.dropout = (0.25, 0.5, 0.75)
    config.runtime = '8.3 min measured on 2 CPU cores'
  config.fixed_dropout = 0.5  # l2+dropout's rate.
  config.train = train
  config.command = (f'python -m benchmarks.regularizers --preset={preset} '
                    '--out=runs/reg --data=folder:data/cifar10-jpeg')
  return config
