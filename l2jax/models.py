"""Image classifiers as flax linen modules, chosen by `config.model`."""

import dataclasses
import functools
from typing import Optional, Sequence

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
  `batch_norm` puts BatchNorm between each convolution (then without bias)
  and its ReLU; `dropout` drops features before the last Dense layer.
  `impl` picks how convolutions, biases, batch norm and pooling are
  computed, with the same values, parameters and statistics: 'xla' (nn.Conv,
  nn.BatchNorm, nn.max_pool), 'cpu' (l2jax.layers, fast on XLA's CPU
  backend), 'auto' ('cpu' when JAX's default backend is the CPU, else
  'xla').
  """
  num_classes: int
  conv_features: Sequence[int] = (64, 128)
  hidden: int = 1024
  batch_norm: bool = False
  dropout: float = 0.0
  axis_name: Optional[str] = 'batch'
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv, pool, norm = _layers(self.impl)
    for features in self.conv_features:
      x = conv(features, use_bias=not self.batch_norm)(x)
      if self.batch_norm:
        x = norm(train, self.axis_name)(x)
      x = pool(nn.relu(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden)(x))
    self.sow('intermediates', 'features', x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


# A quarter of the seed's widths (1/16 of its FLOPs): for CPU-sized sweeps.
SeedCNNNarrow = functools.partial(SeedCNN, conv_features=(16, 32), hidden=256)

# Simonyan & Zisserman's configurations A (11 layers) and D (16 layers):
# conv widths, 'M' a 2x2 max pool.
VGG_LAYERS = {
    11: (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    16: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M',
         512, 512, 512, 'M'),
}


class VGG(nn.Module):
  """VGG for small images (32x32: five pools leave 1x1x512).

  Conv(3x3) [- BatchNorm] - ReLU per width, MaxPool 2 at each 'M'; then
  [Dropout(dropout) -] Dense(num_classes), as in CIFAR VGGs. The convolution
  part has the ImageNet VGG's convolution parameters exactly (VGG16: 14.7M).
  Batch statistics are averaged over the pmap axis `axis_name`.
  """
  num_classes: int
  depth: int = 16
  batch_norm: bool = False
  dropout: float = 0.0
  axis_name: Optional[str] = 'batch'
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv, pool, norm = _layers(self.impl)
    for width in VGG_LAYERS[self.depth]:
      if width == 'M':
        x = pool(x)
        continue
      x = conv(width, use_bias=not self.batch_norm)(x)
      if self.batch_norm:
        x = norm(train, self.axis_name)(x)
      x = nn.relu(x)
    x = x.reshape((x.shape[0], -1))
    self.sow('intermediates', 'features', x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


class ResidualBlock(nn.Module):
  """He et al.'s basic block, with the parameter-free shortcut (option A):
  stride-2 subsampling and zero channels where the width doubles."""
  features: int
  strides: int
  axis_name: Optional[str]
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool):
    conv, _, norm = _layers(self.impl)
    y = conv(self.features, self.strides, padding=((1, 1), (1, 1)),
             use_bias=False)(x)
    y = nn.relu(norm(train, self.axis_name)(y))
    y = conv(self.features, use_bias=False)(y)
    y = norm(train, self.axis_name)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = x[:, ::self.strides, ::self.strides]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0),
                      (0, self.features - x.shape[-1])))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """He et al.'s CIFAR ResNet (CVPR 2016, section 4.2): 6n+2 layers.

  Conv(16) - BN - ReLU, then three stages of n basic blocks with 16, 32, 64
  features (the last two start with stride 2), global average pooling,
  [Dropout -] Dense(num_classes). n = 3 is ResNet-20 (0.27M parameters).
  """
  num_classes: int
  blocks_per_stage: int = 3
  dropout: float = 0.0
  axis_name: Optional[str] = 'batch'
  impl: str = 'auto'  # As SeedCNN's.

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv, _, norm = _layers(self.impl)
    x = conv(16, use_bias=False)(x)
    x = nn.relu(norm(train, self.axis_name)(x))
    for stage, features in enumerate((16, 32, 64)):
      for block in range(self.blocks_per_stage):
        strides = 2 if stage and not block else 1
        x = ResidualBlock(features, strides, self.axis_name, self.impl)(
            x, train)
    x = jnp.mean(x, axis=(1, 2))
    self.sow('intermediates', 'features', x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)


def _layers(impl: str):
  """Constructors of a 3x3 convolution, (features, strides=1,
  padding='SAME', use_bias=True) -> module, and of batch norm,
  (train, axis_name) -> module, and a 2x2 max pool: l2jax.layers' for
  impl 'cpu', flax's for 'xla'."""
  cpu = layers.resolve_impl(impl) == 'cpu'

  def conv(features, strides=1, padding='SAME', use_bias=True):
    if not cpu:
      return nn.Conv(features, (3, 3), strides, padding, use_bias=use_bias)
    module = nn.Conv(features, (3, 3), strides, padding, use_bias=False,
                     conv_general_dilated=layers.conv_general_dilated)
    return layers.BiasedConv(module) if use_bias else module

  def norm(train: bool, axis_name: Optional[str]):
    # Under pmap the statistics are means over every device's examples.
    return (layers.BatchNorm if cpu else nn.BatchNorm)(
        use_running_average=not train, momentum=0.9,
        axis_name=axis_name if train else None)

  if cpu:
    return conv, layers.max_pool_2x2, norm
  return conv, functools.partial(nn.max_pool, window_shape=(2, 2),
                                 strides=(2, 2)), norm


MODELS = {
    'seed_cnn': SeedCNN,
    'seed_cnn_narrow': SeedCNNNarrow,
    'vgg11': functools.partial(VGG, depth=11),
    'vgg16': functools.partial(VGG, depth=16),
    'resnet20': functools.partial(ResNet, blocks_per_stage=3),
}


def create_model(name: str, num_classes: int, **options) -> nn.Module:
  """`options`: values of the model's fields (impl, batch_norm, dropout,
  axis_name); those it has no field for are left out (resnet20 always has
  batch norm)."""
  model = MODELS[name]
  fields = {f.name for f in dataclasses.fields(getattr(model, 'func', model))}
  return model(num_classes=num_classes,
               **{k: v for k, v in options.items() if k in fields})


def from_config(config, num_classes: int) -> nn.Module:
  """`config.model` with `config.batch_norm`, `config.dropout` and
  `config.impl`."""
  return create_model(config.model, num_classes, batch_norm=config.batch_norm,
                      dropout=config.dropout, impl=config.impl)
