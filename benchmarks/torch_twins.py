"""PyTorch twins of l2jax's models, for the benchmarks' PyTorch columns:
the same layers, widths and parameter counts, flax's initial distributions
on request, and l2jax's augmentation. Flag-free; PyTorch is imported inside
each function (an optional extra)."""

import math

from l2jax import augment
from l2jax import models

IMAGE_SHAPE = (32, 32, 3)  # The twins' input: CIFAR's.
# flax's default kernel initializer, lecun_normal: a normal truncated at ±2
# standard deviations, scaled to variance 1/fan-in (this constant is the
# standard deviation of the unit normal truncated there).
TRUNCATED_STD = 0.87962566103423978


def torch_twin(model):
  """`model` (an l2jax.models module) in PyTorch: the same layers, widths
  and parameter count, batch norm where it has it."""
  from torch import nn  # pylint: disable=g-import-not-at-top

  num_classes = model.num_classes

  def conv(cin, cout, stride=1, batch_norm=False):
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=not batch_norm)] + (
        [nn.BatchNorm2d(cout)] if batch_norm else [])

  class Block(nn.Module):
    """models.ResidualBlock: the shortcut subsamples and pads channels."""

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.first = nn.Sequential(*conv(cin, cout, stride, True), nn.ReLU())
      self.second = nn.Sequential(*conv(cout, cout, 1, True))
      self.stride, self.pad = stride, cout - cin

    def forward(self, x):
      shortcut = nn.functional.pad(x[:, :, ::self.stride, ::self.stride],
                                   (0, 0, 0, 0, 0, self.pad))
      return nn.functional.relu(shortcut + self.second(self.first(x)))

  channels, side = IMAGE_SHAPE[-1], IMAGE_SHAPE[0]
  head = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
  if isinstance(model, models.ResNet):
    layers = [*conv(channels, 16, 1, True), nn.ReLU()]
    channels = 16
    for stage, features in enumerate((16, 32, 64)):
      for block in range(model.blocks_per_stage):
        layers.append(Block(channels, features, 2 if stage and not block else 1))
        channels = features
    return nn.Sequential(*layers, *head, nn.Linear(channels, num_classes))
  if isinstance(model, models.AllConvBN):
    layers = []
    for i, width in enumerate(model.widths):
      layers += [nn.MaxPool2d(2)] if i else []
      layers += [*conv(channels, width, 1, True), nn.ReLU()]
      channels = width
    return nn.Sequential(*layers, *head, nn.Linear(channels, num_classes))
  if isinstance(model, models.VGG):
    widths, hidden = models.VGG_LAYERS[model.depth], []
  else:  # SeedCNN: conv-relu-pool per width, then Dense(hidden) - ReLU.
    widths = [w for f in model.conv_features for w in (f, 'M')]
    hidden = [model.hidden]
  layers = []
  for width in widths:
    if width == 'M':
      layers.append(nn.MaxPool2d(2))
      side //= 2
    else:
      layers += [*conv(channels, width, 1, model.batch_norm), nn.ReLU()]
      channels = width
  layers.append(nn.Flatten())
  features = channels * side * side
  for width in hidden:
    layers += [nn.Linear(features, width), nn.ReLU()]
    features = width
  return nn.Sequential(*layers, nn.Linear(features, num_classes))


def flax_init_(module) -> None:
  """Re-initializes a PyTorch network's convolutions and linear layers as
  flax's defaults: kernels lecun_normal, biases zero."""
  import torch  # pylint: disable=g-import-not-at-top
  for layer in module.modules():
    if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
      fan_in = layer.weight[0].numel()
      std = math.sqrt(1.0 / fan_in) / TRUNCATED_STD
      torch.nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std,
                                  b=2 * std)
      if layer.bias is not None:
        torch.nn.init.zeros_(layer.bias)


def crop_and_flip(images, generator):
  """uint8 (N, C, H, W): each image cropped at a random offset after 4-pixel
  zero padding, then flipped horizontally with probability ½ (as
  l2jax.augment.crop_and_flip)."""
  import torch  # pylint: disable=g-import-not-at-top
  n, _, h, w = images.shape
  pad = augment.PAD
  padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
  dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator)
  rows = dy + torch.arange(h)
  cols = dx + torch.arange(w)
  flip = torch.rand(n, 1, generator=generator) < 0.5
  cols = torch.where(flip, cols.flip(1), cols)
  batch = torch.arange(n)[:, None, None]
  # (N, H, W, C) from advanced indexing over the three indexed axes.
  out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
  return out.permute(0, 3, 1, 2)
