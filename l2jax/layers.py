"""Pooling, convolution, bias and batch norm that XLA's CPU backend runs fast.

With YNNPACK (`l2jax.cpu.configure`), XLA's CPU backend computes 3×3
convolutions and their gradients near its matrix-product rate. What stays
slow around them, the functions here compute through what that backend does
fast. Times are for a 128-image batch on 2 cores.

- `max_pool_2x2`: 2×2 windows, stride 2, VALID, like
  `nn.max_pool(x, (2, 2), strides=(2, 2))`. XLA computes max pooling's
  gradient as a reduce-window that tracks indices followed by a scatter
  (52 ms for a 128×32×32×64 batch); here it is one elementwise select
  (5.6 ms), through a custom VJP. Forward: a reduce-window, which XLA does
  not fuse into its consumers; an elementwise maximum would be fused into
  the transpose that XLA puts before the next convolution's kernel gradient,
  which then recomputes the pooling (and the ReLU and bias before it) from
  the 4× larger map, in transposed order: 23–37 ms against 4 in the seed
  network's step. Gradient: each window's whole gradient goes to its first
  maximum in row-major order, as XLA's select-and-scatter does (ties
  included).
- `conv_general_dilated`: `lax.conv_general_dilated`, except for two kinds
  of stride-1 NHWC convolution. A drop-in `nn.Conv(conv_general_dilated=...)`:
  parameter names and shapes stay nn.Conv's.
  - On an input smaller than its kernel (VGG's 2×2 maps under a 3×3
    kernel): one product of the patch matrix with the kernel, its gradient
    by autodiff. XLA runs those at 1.6 GFLOP/s (1.5 s for a 128-image
    512→512 layer), the product at its matrix-product rate.
  - 3×3 with padding 1 ('SAME'), H and W multiples of 4, 32 or more
    channels in and out, float32 or float64: `winograd_conv`, Winograd's
    F(4×4, 3×3), which needs 4× fewer multiplications (36 products of
    (tiles, C) × (C, D) matrices per 16 outputs), its gradient by the
    products' and transforms' transposes, written out (a custom VJP; by
    autodiff the transforms' transposes took 133 ms). The seed network's
    64→128 layer on 16×16 maps, forward and both gradients: 46 against
    91 ms; 256→256 on 8×8: 75 against 169. Below 32 channels the
    transforms cost more than the products save (16→32 on 16×16: 9.1
    against 8.6 ms; 3→64 on 32×32: 43 against 31). Float rounding is
    larger: 6e-6 of the largest output or gradient in float32, against
    3e-7 to 5e-7 for XLA's convolution (the transforms add and scale by
    up to 8 and 1/24).
- `BiasedConv` and `BatchNorm`: nn.Conv's bias and nn.BatchNorm, with
  their sums over all axes but the channels (a bias's gradient, batch
  statistics and their gradients) through `sum_to_channels`: over the batch
  first, then over the positions. XLA turns one sum over (N, H, W) into a
  reduce-window that runs over the channels last: 9.4 ms for a 128×32×32×64
  map, against 1.7 in two steps (and closer to a float64 sum).

`broadcast_channels`, `max_pool_2x2` and `winograd_conv` are custom VJPs:
reverse-mode differentiation only (`jax.grad`, `jax.vjp`, and
forward-over-reverse), not `jax.jvp` or `jax.jacfwd`.

`resolve_impl` picks between these ('cpu') and flax's own layers ('xla').
"""

import functools
from typing import Optional

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

IMPLS = ('auto', 'cpu', 'xla')
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def resolve_impl(impl: str) -> str:
  """'cpu' or 'xla'; 'auto' is 'cpu' when JAX's default backend is the CPU."""
  if impl not in IMPLS:
    raise ValueError(f'impl={impl!r}: expected one of {", ".join(IMPLS)}')
  if impl == 'auto':
    return 'cpu' if jax.default_backend() == 'cpu' else 'xla'
  return impl


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


# Convolution on inputs smaller than the kernel.

def _patch_conv(x, kernel, padding, precision, preferred_element_type):
  """Stride 1, NHWC × HWIO: (N, H', W', kh·kw·C) patches × (kh·kw·C, D)."""
  kh, kw, _, d = kernel.shape
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
  patches = jnp.concatenate(
      [xp[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)], -1)
  return jnp.dot(patches, kernel.reshape(-1, d), precision=precision,
                 preferred_element_type=preferred_element_type)


# Winograd convolution F(4×4, 3×3) (Lavin & Gray, "Fast algorithms for
# convolutional neural networks", 2016). Per 6×6 input tile d (stride 4) and
# 3×3 kernel slice g, the 4×4 output tile is Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A;
# summed over input channels, ⊙ becomes 36 matrix products.
_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]])
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0],
                [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])


def _combine(matrix, parts, axis):
  """Stacks Σ_j matrix[i, j]·parts[j] for each row i along `axis`, written
  out term by term (zeros skipped), so that XLA fuses it into one loop."""
  rows = []
  for row in matrix:
    terms = [p if c == 1 else -p if c == -1 else float(c) * p
             for c, p in zip(row, parts) if c]
    rows.append(functools.reduce(lax.add, terms))
  return jnp.stack(rows, axis)


def _tile_rows(x, axis):
  """Row r of every 6-wide window at stride 4 along axis: 6 arrays."""
  t = (x.shape[axis] - 2) // 4
  return [lax.slice_in_dim(x, r, r + 4 * t - 3, 4, axis) for r in range(6)]


def _overlap_add(parts, axis):
  """Transpose of `_tile_rows`: (..., t, ...) × 6 -> (..., 4t + 2, ...)."""
  zeros = jnp.zeros_like(parts[0])
  shape = list(parts[0].shape)
  shape[axis] *= 4
  head = jnp.stack(parts[:4], axis + 1).reshape(shape)
  tail = jnp.stack([*parts[4:], zeros, zeros], axis + 1).reshape(shape)

  def pad(x, low, high):
    config = [(low, high, 0) if i == axis else (0, 0, 0)
              for i in range(x.ndim)]
    return lax.pad(x, jnp.zeros((), x.dtype), config)

  return pad(head, 0, 2) + pad(tail, 4, -2)


def _tiles(x):
  """(N, H, W, C) -> (36, N·H/4·W/4, C): Bᵀ d B for each padded tile d."""
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  v = _combine(_BT, _tile_rows(xp, 1), 0)             # (6, N, H/4, W+2, C)
  v = _combine(_BT, _tile_rows(v, 3), 1)              # (6, 6, N, H/4, W/4, C)
  return v.reshape(36, -1, x.shape[-1])


def _tiles_transpose(v, shape):
  """Transpose of `_tiles`: (36, T, C) -> `shape`, (N, H, W, C)."""
  n, h, w, c = shape
  v = v.reshape(6, 6, n, h // 4, w // 4, c)
  v = _overlap_add(list(_combine(_BT.T, [v[:, b] for b in range(6)], 0)), 3)
  x = _overlap_add(list(_combine(_BT.T, list(v), 0)), 1)
  return x[:, 1:-1, 1:-1]


def _untile(m, shape):
  """(36, T, D) -> (N, H, W, D): Aᵀ m A for each tile, in place."""
  n, h, w, _ = shape
  m = m.reshape(6, 6, n, h // 4, w // 4, -1)
  y = _combine(_AT, [m[:, b] for b in range(6)], -2)  # (6, N, H/4, W/4, 4, D)
  y = _combine(_AT, list(y), 2)                       # (N, H/4, 4, W/4, 4, D)
  return y.reshape(n, h, w, -1)


def _untile_transpose(g):
  """Transpose of `_untile`: (N, H, W, D) -> (36, T, D)."""
  n, h, w, d = g.shape
  g = g.reshape(n, h // 4, 4, w // 4, 4, d)
  m = _combine(_AT.T, [g[:, :, u] for u in range(4)], 0)
  m = _combine(_AT.T, [m[..., v, :] for v in range(4)], 1)
  return m.reshape(36, -1, d)


def _kernel_tiles(kernel):
  """(3, 3, C, D) -> (36, C, D): G g Gᵀ."""
  u = _combine(_G, list(kernel), 0)
  u = _combine(_G, [u[:, j] for j in range(3)], 1)
  return u.reshape(36, *kernel.shape[2:])


def _kernel_tiles_transpose(u):
  """Transpose of `_kernel_tiles`: (36, C, D) -> (3, 3, C, D)."""
  u = u.reshape(6, 6, *u.shape[1:])
  u = _combine(_G.T, list(u), 0)
  return _combine(_G.T, [u[:, b] for b in range(6)], 1)


def _batched_dot(a, b, contract):
  """The 36 tile products: a dot batched over axis 0, contracting the
  (lhs, rhs) axes `contract`."""
  return lax.dot_general(a, b, (contract, ((0,), (0,))))


@jax.custom_vjp
def _winograd(x, kernel):
  return _winograd_fwd(x, kernel)[0]


def _winograd_fwd(x, kernel):
  v, u = _tiles(x), _kernel_tiles(kernel)
  y = _untile(_batched_dot(v, u, ((2,), (1,))), x.shape)
  return y, (v, u, x.shape)


def _winograd_bwd(res, g):
  """The three products' transposes; each transform's written out."""
  v, u, shape = res
  dm = _untile_transpose(g)
  dx = _tiles_transpose(_batched_dot(dm, u, ((2,), (2,))), shape)
  dkernel = _kernel_tiles_transpose(_batched_dot(v, dm, ((1,), (1,))))
  return dx, dkernel


_winograd.defvjp(_winograd_fwd, _winograd_bwd)


# Jitted: run op by op (as in an unjitted model.init), its ~200 small ops
# took seconds per layer.
@jax.jit
def winograd_conv(x, kernel):
  """`lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)))`,
  NHWC × HWIO, for a 3×3 kernel and H, W multiples of 4, by Winograd's
  F(4×4, 3×3). A custom VJP: reverse-mode differentiation only."""
  return _winograd(x, kernel)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, through `_patch_conv` or `winograd_conv`
  where the module docstring says."""
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
      and min(rhs.shape[2:]) >= 32 and precision is None
      and lhs.dtype == rhs.dtype and lhs.dtype in (jnp.float32, jnp.float64)
      and preferred_element_type in (None, lhs.dtype)):
    return winograd_conv(lhs, rhs)
  return lax.conv_general_dilated(*args)


# Sums and broadcasts over all axes but the channels.

def sum_to_channels(x):
  """(N, ..., C) -> (C,): the sum over N, then over the other axes but C.
  The barrier keeps XLA from merging the two sums into one."""
  partial = lax.optimization_barrier(x.sum(0))
  return partial.reshape(-1, x.shape[-1]).sum(0)


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


class BatchNorm(nn.Module):
  """nn.BatchNorm over the last axis, with its defaults (ε = 1e-5, scale and
  bias, the variance as E[x²] − E[x]²) and its parameter and statistics
  names, its sums over the other axes through `sum_to_channels` and
  `broadcast_channels`.

  Training (`use_running_average=False`): y = (x − μ) · γ / √(σ² + ε) + β
  with μ, σ² over the batch (and over `axis_name`'s devices), and the
  running statistics updated as m·running + (1 − m)·batch.
  """
  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-5
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    # As flax's (force_float32_reductions): float32 statistics and
    # parameters, sums in at least float32.
    ra_mean = self.variable('batch_stats', 'mean',
                            lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var',
                           lambda: jnp.ones((c,), jnp.float32))
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      moments = jnp.stack([sum_to_channels(xf), sum_to_channels(xf * xf)])
      moments /= x.size // c
      if self.axis_name is not None and not self.is_initializing():
        moments = lax.pmean(moments, self.axis_name)
      mean, mean_sq = moments
      var = jnp.maximum(0.0, mean_sq - mean * mean)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * mean
        ra_var.value = m * ra_var.value + (1 - m) * var
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    mul = lax.rsqrt(var + self.epsilon) * scale
    y = (x - broadcast_channels(mean, x.shape)) * broadcast_channels(
        mul, x.shape)
    return y + broadcast_channels(bias, x.shape)  # At least float32.
