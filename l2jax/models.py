"""Image classifiers as flax linen modules, chosen by `config.model`, built
from the layer set `config.layers` names."""

import dataclasses
import functools
from typing import Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from l2jax.cpu import layers as cpu_layers


class LayerSet(NamedTuple):
  """Constructors of the layers the models are built from. Every set gives
  the same parameters, statistics and values (up to float rounding).

  conv: (features, strides=1, padding='SAME', use_bias=True) -> a 3x3
    convolution module, with nn.Conv's parameters.
  norm_relu: (train, axis_name) -> a module (x, residual=None) ->
    relu(BatchNorm(x) [+ residual]): nn.BatchNorm's parameters and
    statistics, momentum 0.9; in training its statistics are means over
    `axis_name`.
  pool: x -> the maximum of each 2x2 window, stride 2.
  dense: (features) -> a module with nn.Dense's parameters.
  """
  name: str
  conv: Callable[..., nn.Module]
  norm_relu: Callable[[bool, Optional[str]], nn.Module]
  pool: Callable[[jax.Array], jax.Array]
  dense: Callable[[int], nn.Module]


class BatchNorm(nn.BatchNorm):
  """nn.BatchNorm, then `residual` added and a ReLU where `relu` says
  (`FLAX`'s norm_relu). Named as nn.BatchNorm is, so its variables are."""
  relu: bool = False

  def __call__(self, x, residual=None):  # pylint: disable=arguments-differ
    y = super().__call__(x)
    if residual is not None:
      y = y + residual
    return nn.relu(y) if self.relu else y


def _norm_relu(cls, train: bool, axis_name: Optional[str]) -> nn.Module:
  # Under pmap the statistics are means over every device's examples.
  return cls(use_running_average=not train, momentum=0.9,
             axis_name=axis_name if train else None, relu=True)


def _flax_conv(features, strides=1, padding='SAME', use_bias=True):
  return nn.Conv(features, (3, 3), strides, padding, use_bias=use_bias)


def _cpu_tuned_conv(features, strides=1, padding='SAME', use_bias=True):
  module = nn.Conv(features, (3, 3), strides, padding, use_bias=False,
                   conv_general_dilated=cpu_layers.conv_general_dilated)
  return cpu_layers.BiasedConv(module) if use_bias else module


# flax's own layers, XLA's direct convolutions.
FLAX = LayerSet('flax', _flax_conv,
                functools.partial(_norm_relu, BatchNorm),
                functools.partial(nn.max_pool, window_shape=(2, 2),
                                  strides=(2, 2)),
                nn.Dense)
# l2jax.cpu.layers, fast on XLA's CPU backend; its Winograd convolutions round
# more (l2jax.cpu.winograd).
CPU_TUNED = LayerSet('cpu_tuned', _cpu_tuned_conv,
                     functools.partial(_norm_relu, cpu_layers.BatchNorm),
                     cpu_layers.max_pool_2x2,
                     functools.partial(nn.Dense,
                                       dot_general=cpu_layers.dot_general))
LAYER_SETS = {s.name: s for s in (CPU_TUNED, FLAX)}
LAYER_CHOICES = ('auto', *LAYER_SETS)  # config.layers


def layer_set(name: str) -> LayerSet:
  """The set `name` in LAYER_CHOICES names; 'auto' is CPU_TUNED when JAX's
  default backend is the CPU, else FLAX."""
  if name not in LAYER_CHOICES:
    raise ValueError(
        f'layers={name!r}: expected one of {", ".join(LAYER_CHOICES)}')
  if name == 'auto':
    return CPU_TUNED if jax.default_backend() == 'cpu' else FLAX
  return LAYER_SETS[name]


def _conv_block(module, x, features: int, train: bool, batch_norm=True,
                **conv_options):
  """Conv(3x3) [- BatchNorm] - ReLU from `module.layers`; the convolution has
  a bias only without batch norm, whose statistics are over
  `module.axis_name`.

  Called inside `module`'s compact method, so that the layers are
  `module`'s own (Conv_i, BatchNorm_i): a block module would add a level to
  the parameter paths that masks and checkpoints name.
  """
  x = module.layers.conv(features, use_bias=not batch_norm, **conv_options)(x)
  if batch_norm:
    return module.layers.norm_relu(train, module.axis_name)(x)
  return nn.relu(x)


def _classify(module, x, train: bool):
  """Sows `x` as `intermediates/features`, then [Dropout -]
  Dense(num_classes), as `module`'s own layers (see `_conv_block`)."""
  module.sow('intermediates', 'features', x)
  x = nn.Dropout(module.dropout, deterministic=not train)(x)
  return module.layers.dense(module.num_classes)(x)


class Classifier(nn.Module):
  """The fields every model has.

  Input: (batch, H, W, C) floats. Output: (batch, num_classes) logits.
  The penultimate features are sown as `intermediates/features` (for
  activity L2; apply with ``mutable=['intermediates']`` to read them).
  `dropout` drops them before the last Dense layer. Batch statistics are
  averaged over the pmap axis `axis_name`. `layers` computes convolutions,
  biases, batch norm and pooling (a LayerSet; `from_config` picks it).
  """
  num_classes: int
  dropout: float = 0.0
  axis_name: Optional[str] = 'batch'
  layers: LayerSet = FLAX


class SeedCNN(Classifier):
  """The seed articles' network.

  Conv(64, 3x3, same) - ReLU - MaxPool 2 - Conv(128, 3x3, same) - ReLU -
  MaxPool 2 - Dense(1024) - ReLU - Dense(num_classes); the features are
  the output of Dense(hidden) - ReLU.
  `conv_features` and `hidden` give the widths (the seeds': (64, 128), 1024).
  `batch_norm` puts BatchNorm between each convolution (then without bias)
  and its ReLU.
  """
  conv_features: Sequence[int] = (64, 128)
  hidden: int = 1024
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    for features in self.conv_features:
      x = _conv_block(self, x, features, train, batch_norm=self.batch_norm)
      x = self.layers.pool(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(self.layers.dense(self.hidden)(x))
    return _classify(self, x, train)


# A quarter of the seed's widths (1/16 of its FLOPs): for CPU-sized sweeps.
SeedCNNNarrow = functools.partial(SeedCNN, conv_features=(16, 32), hidden=256)

# Simonyan & Zisserman's configurations A (11 layers) and D (16 layers):
# conv widths, 'M' a 2x2 max pool.
VGG_LAYERS = {
    11: (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    16: (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M',
         512, 512, 512, 'M'),
}


class VGG(Classifier):
  """VGG for small images (32x32: five pools leave 1x1x512).

  Conv(3x3) [- BatchNorm] - ReLU per width, MaxPool 2 at each 'M'; then
  [Dropout(dropout) -] Dense(num_classes), as in CIFAR VGGs. The convolution
  part has the ImageNet VGG's convolution parameters exactly (VGG16: 14.7M).
  `batch_norm` as SeedCNN's.
  """
  depth: int = 16
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True):
    for width in VGG_LAYERS[self.depth]:
      if width == 'M':
        x = self.layers.pool(x)
      else:
        x = _conv_block(self, x, width, train, batch_norm=self.batch_norm)
    x = x.reshape((x.shape[0], -1))
    return _classify(self, x, train)


class ResidualBlock(nn.Module):
  """He et al.'s basic block, with the parameter-free shortcut (option A):
  stride-2 subsampling and zero channels where the width doubles."""
  features: int
  strides: int
  axis_name: Optional[str]
  layers: LayerSet = FLAX

  @nn.compact
  def __call__(self, x, train: bool):
    y = _conv_block(self, x, self.features, train, strides=self.strides,
                    padding=((1, 1), (1, 1)))
    y = self.layers.conv(self.features, use_bias=False)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = x[:, ::self.strides, ::self.strides]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0),
                      (0, self.features - x.shape[-1])))
    return self.layers.norm_relu(train, self.axis_name)(y, residual=x)


class ResNet(Classifier):
  """He et al.'s CIFAR ResNet (CVPR 2016, section 4.2): 6n+2 layers.

  Conv(16) - BN - ReLU, then three stages of n basic blocks with 16, 32, 64
  features (the last two start with stride 2), global average pooling (the
  features), [Dropout -] Dense(num_classes). n = 3 is ResNet-20 (0.27M
  parameters).
  """
  blocks_per_stage: int = 3

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = _conv_block(self, x, 16, train)
    for stage, features in enumerate((16, 32, 64)):
      for block in range(self.blocks_per_stage):
        strides = 2 if stage and not block else 1
        x = ResidualBlock(features, strides, self.axis_name, self.layers)(
            x, train)
    return _classify(self, jnp.mean(x, axis=(1, 2)), train)


class AllConvBN(Classifier):
  """Conv(3x3) - BatchNorm - ReLU stages of `widths` features with a 2x2 max
  pool between them, global average pooling (the features), [Dropout -]
  Dense(num_classes).

  Every convolution is followed by batch norm, so every kernel but the
  classifier's is scale-invariant: the regime of Loshchilov & Hutter's
  Figure 2 at a size a CPU sweeps (widths 16, 32, 64: 24k parameters).
  """
  widths: Sequence[int] = (16, 32, 64)

  @nn.compact
  def __call__(self, x, train: bool = True):
    for i, width in enumerate(self.widths):
      if i:
        x = self.layers.pool(x)
      x = _conv_block(self, x, width, train)
    return _classify(self, jnp.mean(x, axis=(1, 2)), train)


MODELS = {
    'allconv_bn': AllConvBN,
    'seed_cnn': SeedCNN,
    'seed_cnn_narrow': SeedCNNNarrow,
    'vgg11': functools.partial(VGG, depth=11),
    'vgg16': functools.partial(VGG, depth=16),
    'resnet20': functools.partial(ResNet, blocks_per_stage=3),
}


def create_model(name: str, num_classes: int, **options) -> nn.Module:
  """`options`: values of the model's fields (layers, batch_norm, dropout,
  axis_name); those it has no field for are left out (resnet20 always has
  batch norm)."""
  model = MODELS[name]
  fields = {f.name for f in dataclasses.fields(getattr(model, 'func', model))}
  return model(num_classes=num_classes,
               **{k: v for k, v in options.items() if k in fields})


def from_config(config, num_classes: int) -> nn.Module:
  """`config.model` with `config.batch_norm`, `config.dropout` and the layer
  set `config.layers` names, chosen here once."""
  return create_model(config.model, num_classes, batch_norm=config.batch_norm,
                      dropout=config.dropout,
                      layers=layer_set(config.layers))
