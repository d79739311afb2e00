"""Image classifiers as flax linen modules, chosen by `config.model`."""

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class SeedCNN(nn.Module):
  """The seed articles' network.

  Conv(64, 3x3, same) - ReLU - MaxPool 2 - Conv(128, 3x3, same) - ReLU -
  MaxPool 2 - Dense(1024) - ReLU - Dense(num_classes).

  Input: (batch, H, W, C) floats. Output: (batch, num_classes) logits.
  `conv_features` and `hidden` give the widths (the seeds': (64, 128), 1024).
  """
  num_classes: int
  conv_features: Sequence[int] = (64, 128)
  hidden: int = 1024

  @nn.compact
  def __call__(self, x, train: bool = True):
    del train  # No dropout or batch norm in this network.
    for features in self.conv_features:
      x = nn.Conv(features, (3, 3), padding='SAME')(x)
      x = nn.relu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes)(x)


# A quarter of the seed's widths (1/16 of its FLOPs): for CPU-sized sweeps.
SeedCNNNarrow = functools.partial(SeedCNN, conv_features=(16, 32), hidden=256)

MODELS = {'seed_cnn': SeedCNN, 'seed_cnn_narrow': SeedCNNNarrow}


def create_model(name: str, num_classes: int) -> nn.Module:
  return MODELS[name](num_classes=num_classes)
