"""Pooling, convolution, bias and batch norm as flax's, fast on XLA's CPU.

With YNNPACK (`l2jax.cpu.configure`), XLA's CPU backend computes 3×3
convolutions and their gradients near its matrix-product rate. What stays
slow around them, the functions here compute through what that backend does
fast, with flax's values up to float rounding. Timings: docs/performance.md.

- `max_pool_2x2`: 2×2 windows, stride 2, VALID, like
  `nn.max_pool(x, (2, 2), strides=(2, 2))`. Its gradient is one elementwise
  select (a custom VJP), because XLA computes max pooling's gradient as a
  reduce-window that tracks indices followed by a scatter. Its forward is a
  reduce-window, because XLA does not fuse that into its consumers: an
  elementwise maximum would be fused into the transpose that XLA puts before
  the next convolution's kernel gradient, which then recomputes the pooling
  (and the ReLU and bias before it) from the 4× larger map, in transposed
  order. Gradient: each window's whole gradient goes to its first maximum in
  row-major order, as XLA's select-and-scatter does (ties included).
- `relu`: jax.nn.relu (value and gradient), for the ReLU after a batch norm
  (and a residual sum), computed as a reduction. XLA copies elementwise
  producers into each consumer: an elementwise ReLU, and with it the batch
  norms and residual sums before it, back to the start of a residual stage,
  would be recomputed inside each transpose that XLA puts before a kernel
  gradient, in transposed order. It does not copy reductions.
- `BatchNorm` (with `relu` and a `residual`) and `batch_norm_train`: in
  training, batch norm, the residual sum and the ReLU after it as one custom
  VJP whose gradient is batch norm's formula, reading the saved normalized
  map and output: autodiff through the statistics gives XLA several more
  passes over each map to fuse or recompute.
- `conv_general_dilated`: `lax.conv_general_dilated`, except for two kinds
  of stride-1 NHWC convolution. A drop-in `nn.Conv(conv_general_dilated=...)`:
  parameter names and shapes stay nn.Conv's.
  - On an input smaller than its kernel (VGG's 2×2 maps under a 3×3
    kernel): one product of the patch matrix with the kernel, its gradient
    by autodiff, because XLA runs such convolutions far below its
    matrix-product rate.
  - 3×3 with padding 1 ('SAME'), H and W multiples of 4,
    `WINOGRAD_MIN_CHANNELS` or more channels in and out (16; 64 on a CPU
    with AVX-512), float32 or float64: `winograd.winograd_conv`, which
    needs 4× fewer multiplications (its float rounding is larger: see
    l2jax.cpu.winograd), and whose kernel gradient reads its saved tiles
    where XLA's first transposes the input. Below that its transforms cost
    more than the products save (measured on an AVX2 and an AVX-512 CPU).
- `dot_general`: `lax.dot_general` (a drop-in `nn.Dense(dot_general=...)`)
  with its left operand and its result each passed through
  `fusion_barrier`, an identity XLA keeps (a `lax.reduce_precision` to the
  operand's own format). YNNPACK's dot fusion otherwise grows over the
  elementwise neighbours of a product, and runs slower with them: a Dense
  layer's bias sum in the forward, the pooling gradient's 4× broadcast of
  its input gradient in the backward.
- `BiasedConv` and `BatchNorm`: nn.Conv's bias and nn.BatchNorm, with
  their sums over all axes but the channels (a bias's gradient, batch
  statistics and their gradients) through `sum_to_channels`: over the batch
  first, then over the positions, because XLA turns one sum over (N, H, W)
  into a slow reduce-window that runs over the channels last (the two steps
  are also closer to a float64 sum); for batches of 32 or fewer, where XLA
  fuses the two steps back into one slow loop nest, as a matrix product
  with a vector of ones.

`broadcast_channels`, `max_pool_2x2`, `relu`, `batch_norm_train` and
`winograd.winograd_conv` are custom VJPs: reverse-mode differentiation only (`jax.grad`, `jax.vjp`, and
forward-over-reverse), not `jax.jvp` or `jax.jacfwd`.
"""

import functools
from typing import Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from l2jax.cpu import winograd

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _has_avx512() -> bool:
  """Whether /proc/cpuinfo lists AVX-512 (False where it cannot say)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('flags'):
          return 'avx512f' in line.split()
  except OSError:
    pass
  return False


# Channels in and out from which 3×3 convolutions are Winograd's: 16, or 64
# on a CPU with AVX-512, where XLA's (YNNPACK's) own convolutions are the
# faster below that (docs/performance.md).
WINOGRAD_MIN_CHANNELS = 64 if _has_avx512() else 16


# Max pooling.

def _windows(x):
  """(N, H, W, C) -> (N, H//2, 2, W//2, 2, C); an odd last row/column drops."""
  n, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)


def _window_max(x):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                           'VALID')


@jax.custom_vjp
def max_pool_2x2(x):
  """(N, H, W, C) -> (N, H//2, W//2, C): the maximum of each 2×2 window."""
  return _window_max(x)


def _max_pool_fwd(x):
  xw = _windows(x)
  y = _window_max(x)
  # Row-major position (0..3) of each window's first maximum.
  first = jnp.where(xw[:, :, 0, :, 0] == y, 0,
                    jnp.where(xw[:, :, 0, :, 1] == y, 1,
                              jnp.where(xw[:, :, 1, :, 0] == y, 2, 3)))
  return y, (first.astype(jnp.int8), x.shape)


def _max_pool_bwd(res, g):
  first, (n, h, w, c) = res
  position = (2 * lax.broadcasted_iota(jnp.int8, (1, 1, 2, 1, 2, 1), 2)
              + lax.broadcasted_iota(jnp.int8, (1, 1, 2, 1, 2, 1), 4))
  dx = jnp.where(first[:, :, None, :, None] == position,
                 g[:, :, None, :, None], jnp.zeros((), g.dtype))
  dx = dx.reshape(n, h // 2 * 2, w // 2 * 2, c)
  return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


# ReLU.

@jax.custom_vjp
def relu(x):
  """max(x, 0), as jax.nn.relu, as the maximum over a stacked (x, 0) pair:
  XLA does not copy a reduction into its consumers, so this writes its
  output once (see the module docstring)."""
  return jnp.stack([x, jnp.zeros_like(x)]).max(0)


def _relu_fwd(x):
  y = relu(x)
  return y, y


def _relu_bwd(y, g):
  # jax.nn.relu's gradient, 0 at 0 (a reduction's would split ties).
  return (jnp.where(y > 0, g, jnp.zeros((), g.dtype)),)


relu.defvjp(_relu_fwd, _relu_bwd)


# Matrix products that YNNPACK runs alone.

def fusion_barrier(x):
  """`x`, through an identity that XLA's CPU pipeline keeps and YNNPACK does
  not fuse: rounding to x's own floating-point format. Its derivative is
  the same identity."""
  info = jnp.finfo(x.dtype)
  return lax.reduce_precision(x, exponent_bits=info.nexp,
                              mantissa_bits=info.nmant)


def dot_general(lhs, rhs, dimension_numbers, precision=None,
                preferred_element_type=None, **kwargs):
  """`lax.dot_general(lhs, rhs, ...)`, with `lhs` and the result through
  `fusion_barrier`: YNNPACK's fusion holds the product alone, in the
  forward and in the backward (the barriers' transposes are themselves)."""
  return fusion_barrier(lax.dot_general(
      fusion_barrier(lhs), rhs, dimension_numbers, precision=precision,
      preferred_element_type=preferred_element_type, **kwargs))


# Convolution: a patch product on inputs smaller than the kernel, Winograd
# for wide 3×3 ones, lax for the rest.

def _patch_conv(x, kernel, padding, precision, preferred_element_type):
  """Stride 1, NHWC × HWIO: (N, H', W', kh·kw·C) patches × (kh·kw·C, D)."""
  kh, kw, _, d = kernel.shape
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  patches = jnp.concatenate(
      [xp[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)], -1)
  return jnp.dot(patches, kernel.reshape(-1, d), precision=precision,
                 preferred_element_type=preferred_element_type)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, through `_patch_conv` or
  `winograd.winograd_conv` where the module docstring says."""
  args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
          dimension_numbers, feature_group_count, batch_group_count,
          precision, preferred_element_type)
  if not (lhs.ndim == 4 and rhs.ndim == 4
          and tuple(window_strides) == (1, 1)
          and all(d is None or tuple(d) == (1, 1)
                  for d in (lhs_dilation, rhs_dilation))
          and feature_group_count == 1 and batch_group_count == 1
          and lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
          == lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                        dimension_numbers)):
    return lax.conv_general_dilated(*args)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1),
                                  padding)
  padding = tuple(map(tuple, padding))
  if lhs.shape[1] < rhs.shape[0] or lhs.shape[2] < rhs.shape[1]:
    return _patch_conv(lhs, rhs, padding, precision, preferred_element_type)
  if (rhs.shape[:2] == (3, 3) and padding == ((1, 1), (1, 1))
      and lhs.shape[1] % 4 == 0 and lhs.shape[2] % 4 == 0
      and min(rhs.shape[2:]) >= WINOGRAD_MIN_CHANNELS and precision is None
      and lhs.dtype == rhs.dtype and lhs.dtype in (jnp.float32, jnp.float64)
      and preferred_element_type in (None, lhs.dtype)):
    return winograd.winograd_conv(lhs, rhs)
  return lax.conv_general_dilated(*args)


# Sums and broadcasts over all axes but the channels.

# XLA's CPU backend splits a sum over an axis longer than this into partial
# sums and a sum, which run fast; over a shorter one it runs the sums over N
# and over the positions as one slow loop nest.
_SPLIT_SUMS_ABOVE = 32


def sum_to_channels(x):
  """(N, ..., C) -> (C,): for N > 32, the sum over N, then over the other
  axes but C (the barrier keeps XLA from merging the two sums into one);
  for N ≤ 32, one product of a vector of ones with x as a (rows, C)
  matrix."""
  c = x.shape[-1]
  if x.shape[0] <= _SPLIT_SUMS_ABOVE:
    rows = x.reshape(-1, c)
    return jnp.ones((rows.shape[0],), x.dtype) @ rows
  partial = lax.optimization_barrier(x.sum(0))
  return partial.reshape(-1, c).sum(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_channels(v, shape):
  """(C,) -> shape (..., C), with `sum_to_channels` as its transpose."""
  return jnp.broadcast_to(v, shape)


def _broadcast_channels_fwd(v, shape):
  return jnp.broadcast_to(v, shape), v


def _broadcast_channels_bwd(shape, v, g):
  del shape
  return (sum_to_channels(g).astype(v.dtype),)


broadcast_channels.defvjp(_broadcast_channels_fwd, _broadcast_channels_bwd)


class BiasedConv(nn.Module):
  """`conv`, an nn.Conv without bias, then nn.Conv's bias through
  `broadcast_channels`.

  The bias lives in conv's scope (`nn.share_scope`), so parameters, names
  and initial values are those of nn.Conv(use_bias=True):
  ``BiasedConv(nn.Conv(64, (3, 3), use_bias=False))`` has the parameters
  ``Conv_0/kernel`` and ``Conv_0/bias``.
  """
  conv: nn.Conv

  def setup(self):
    nn.share_scope(self, self.conv)

  @nn.compact
  def __call__(self, x):
    y = self.conv(x)
    bias = self.param('bias', self.conv.bias_init, (self.conv.features,),
                      self.conv.param_dtype)
    return y + broadcast_channels(bias.astype(y.dtype), y.shape)


# Batch norm in training, its ReLU and residual sum, with its gradient by
# formula.

def _batch_norm_fwd(x, residual, scale, bias, axis_name, epsilon, relu_):
  moments = jnp.stack([sum_to_channels(x), sum_to_channels(x * x)])
  moments /= x.size // x.shape[-1]
  if axis_name is not None:
    moments = lax.pmean(moments, axis_name)
  mean, mean_sq = moments
  var = jnp.maximum(0.0, mean_sq - mean * mean)
  rstd = lax.rsqrt(var + epsilon)
  normalized = (x - mean) * rstd
  y = normalized * scale + bias
  if residual is not None:
    y = y + residual
  if relu_:
    y = relu(y)
  return (y, mean, var), (normalized, y if relu_ else None, scale, rstd,
                          residual)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def batch_norm_train(x, residual, scale, bias, axis_name, epsilon, relu_):
  """(y, μ, σ²): y = [relu](x̂ · scale + bias [+ residual]) with
  x̂ = (x − μ) / √(σ² + ε), μ and σ² over all axes but the last (and over
  `axis_name`), σ² = E[x²] − μ². x and `residual` (or None) share a float
  dtype.

  Its gradient is the formula's: with g = ∂y masked where the ReLU is 0,
  ∂bias = Σ g, ∂scale = Σ g·x̂, ∂residual = g and
  ∂x = scale/√(σ² + ε) · (g − mean(g) − x̂·mean(g·x̂)), the means over the
  statistics' examples (μ and σ²'s own cotangents are ignored: they feed the
  running statistics only). It saves x̂ and y, so that the backward pass
  reads them where XLA would recompute the forward pass from x.
  """
  return _batch_norm_fwd(x, residual, scale, bias, axis_name, epsilon,
                         relu_)[0]


def _batch_norm_bwd(axis_name, epsilon, relu_, saved, cotangents):
  del epsilon
  normalized, y, scale, rstd, residual = saved
  g = cotangents[0]
  if relu_:
    g = jnp.where(y > 0, g, jnp.zeros((), g.dtype))
  sums = jnp.stack([sum_to_channels(g), sum_to_channels(g * normalized)])
  means = sums / (g.size // g.shape[-1])
  if axis_name is not None:
    # μ and σ² are means over every member's examples: so are their
    # cotangents (pmean is its own transpose).
    means = lax.pmean(means, axis_name)
  dx = (scale * rstd).astype(g.dtype) * (g - means[0] - normalized * means[1])
  return (dx, None if residual is None else g, sums[1].astype(scale.dtype),
          sums[0].astype(scale.dtype))


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class BatchNorm(nn.Module):
  """nn.BatchNorm over the last axis, with its defaults (ε = 1e-5, scale and
  bias, the variance as E[x²] − E[x]²) and its parameter and statistics
  names, then `residual` added and a ReLU where `relu` says: the
  activation after the norm in one layer, so that training's gradient is
  `batch_norm_train`'s formula.

  Training (`use_running_average=False`): y = (x − μ) · γ / √(σ² + ε) + β
  with μ, σ² over the batch (and over `axis_name`'s devices), and the
  running statistics updated as m·running + (1 − m)·batch. Evaluation: the
  running statistics, the sums through `broadcast_channels`.
  """
  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  relu: bool = False

  @nn.compact
  def __call__(self, x, residual=None):
    c = x.shape[-1]
    # As flax's (force_float32_reductions): float32 statistics and
    # parameters, sums in at least float32.
    ra_mean = self.variable('batch_stats', 'mean',
                            lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var',
                           lambda: jnp.ones((c,), jnp.float32))
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    if not self.use_running_average:
      initializing = self.is_initializing()
      xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      y, mean, var = batch_norm_train(
          xf, None if residual is None else residual.astype(xf.dtype),
          scale, bias,
          None if initializing else self.axis_name, self.epsilon, self.relu)
      if not initializing:
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * mean
        ra_var.value = m * ra_var.value + (1 - m) * var
      return y
    mul = lax.rsqrt(ra_var.value + self.epsilon) * scale
    y = (x - broadcast_channels(ra_mean.value, x.shape)) * broadcast_channels(
        mul, x.shape)
    y = y + broadcast_channels(bias, x.shape)  # At least float32.
    if residual is not None:
      y = y + residual
    return relu(y) if self.relu else y
