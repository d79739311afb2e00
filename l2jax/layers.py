"""Max pooling and convolution that XLA's CPU backend computes fast.

With YNNPACK (`l2jax.cpu.configure`), XLA's CPU backend computes 3×3
convolutions and their gradients near its matrix-product rate. Two cases stay
slow, and the functions here compute them through what that backend does
fast: elementwise loops and matrix products.

- `max_pool_2x2`: 2×2 windows, stride 2, VALID, like
  `nn.max_pool(x, (2, 2), strides=(2, 2))`. XLA computes max pooling's
  gradient as a reduce-window that tracks indices followed by a scatter
  (52 ms for a 128×32×32×64 batch on 2 cores); here it is one elementwise
  select (5.6 ms), through a custom VJP. Forward: the elementwise maximum of
  the four positions of each window. Gradient: each window's whole gradient
  goes to its first maximum in row-major order, as XLA's select-and-scatter
  does (ties included).
- `conv_general_dilated`: `lax.conv_general_dilated`, except that a stride-1
  NHWC convolution on an input smaller than its kernel (VGG's 2×2 maps under
  a 3×3 kernel) is one product of the patch matrix with the kernel, its
  gradient by autodiff: XLA runs those at 1.6 GFLOP/s (1.5 s for a 128-image
  512→512 layer), the product at its matrix-product rate. A drop-in
  `nn.Conv(conv_general_dilated=...)`: parameter names and shapes stay
  nn.Conv's.

`resolve_impl` picks between these ('cpu') and flax's own layers ('xla').
"""

import jax
from jax import lax
import jax.numpy as jnp

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


def _window_max(xw):
  return jnp.maximum(jnp.maximum(xw[:, :, 0, :, 0], xw[:, :, 0, :, 1]),
                     jnp.maximum(xw[:, :, 1, :, 0], xw[:, :, 1, :, 1]))


@jax.custom_vjp
def max_pool_2x2(x):
  """(N, H, W, C) -> (N, H//2, W//2, C): the maximum of each 2×2 window."""
  return _window_max(_windows(x))


def _max_pool_fwd(x):
  xw = _windows(x)
  y = _window_max(xw)
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


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, through `_patch_conv` where the input is
  smaller than the kernel."""
  args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
          dimension_numbers, feature_group_count, batch_group_count,
          precision, preferred_element_type)
  if not (lhs.ndim == 4 and rhs.ndim == 4
          and (lhs.shape[1] < rhs.shape[0] or lhs.shape[2] < rhs.shape[1])
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
  return _patch_conv(lhs, rhs, tuple(map(tuple, padding)), precision,
                     preferred_element_type)
