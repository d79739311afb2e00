"""Image classifiers as flax linen modules, chosen by `config.model`."""

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from l2jax import layers


class SeedCNN(nn.Module):
  """The seed articles' network.

  Conv(64, 3x3, same) - ReLU - MaxPool 2 - Conv(128, 3x3, same) - ReLU -
  MaxPool 2 - Dense(1024) - ReLU - Dense(num_classes).

  Input: (batch, H, W, C) floats. Output: (batch, num_classes) logits.
  The penultimate features, the output of Dense(hidden) - ReLU, are sown as
  `intermediates/features` (for activity L2; apply with
  ``mutable=['intermediates']`` to read them).
  `conv_features` and `hidden` give the widths (the seeds': (64, 128), 1024).
  `impl` picks how convolutions and pooling are computed, with the same
  values and parameters: 'xla' (nn.Conv, nn.max_pool), 'cpu' (l2jax.layers'
  custom gradients, fast on XLA's CPU backend), 'auto' ('cpu' when JAX's
  default backend is the CPU, else 'xla').
  """
  num_classes: int
  conv_features: Sequence[int] = (64, 128)
  hidden: int = 1024
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train  # No dropout or batch norm in this network.
    if layers.resolve_impl(self.impl) == 'cpu':
      conv_fn, pool = layers.conv_general_dilated, layers.max_pool_2x2
    else:
      conv_fn = None  # nn.Conv's default, lax.conv_general_dilated.
      pool = functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2))
    for features in self.conv_features:
      x = nn.Conv(features, (3, 3), padding='SAME',
                  conv_general_dilated=conv_fn)(x)
      x = pool(nn.relu(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden)(x))
    self.sow('intermediates', 'features', x)
    return nn.Dense(self.num_classes)(x)


# A quarter of the seed's widths (1/16 of its FLOPs): for CPU-sized sweeps.
SeedCNNNarrow = functools.partial(SeedCNN, conv_features=(16, 32), hidden=256)

MODELS = {'seed_cnn': SeedCNN, 'seed_cnn_narrow': SeedCNNNarrow}


def create_model(name: str, num_classes: int, impl: str = 'auto') -> nn.Module:
  return MODELS[name](num_classes=num_classes, impl=impl)
