"""The seeds' network on Fashion-MNIST (28x28x1), Adam with AdamW-style decay.

    python -m l2jax.main --config=configs/fashion_mnist.py --workdir=runs/fmnist

Offline, from Debian's dataset-fashion-mnist package:

    python -m l2jax.main --config=configs/fashion_mnist.py --workdir=runs/fmnist \
        --config.manual_dir=/usr/share/datasets/fashion-mnist
"""

from configs import cifar


def get_config():
  config = cifar.get_config()
  config.dataset = 'fashion_mnist'
  config.augment = False  # Crops and flips are not label-preserving here.
  config.optimizer = 'adam'
  config.learning_rate = 1e-3
  config.l2.mode = 'decoupled'
  config.l2.weight = 1e-4
  config.num_epochs = 10
  return config
