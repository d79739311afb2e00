"""Convolution and max pooling whose gradients are fast on XLA's CPU backend.

XLA's CPU backend (jaxlib 0.10) takes 5-9× the forward convolution's time for
a convolution's kernel gradient, and computes max pooling's gradient as a
reduce-window that tracks indices, followed by a scatter. The functions here
compute the same values through custom VJPs made of what that backend does
fast: matrix products and elementwise loops.

- `conv3x3`: 3×3, stride 1, SAME (zero) padding, NHWC input, HWIO kernel. The
  forward pass and the input gradient are XLA's own convolutions. The kernel
  gradient dK[i, j] = Σ_{n,h,w} x_pad[n, h+i, w+j, :]ᵀ g[n, h, w, :] is nine
  matrix products of shifted copies of x with g (one per tap), or, for inputs
  of at most `PATCH_MAX_CHANNELS` channels, one product of the (9C, NHW) patch
  matrix with g.
- `max_pool_2x2`: 2×2 windows, stride 2, VALID, like
  `nn.max_pool(x, (2, 2), strides=(2, 2))`. Forward: the elementwise maximum of
  the four positions of each window. Gradient: each window's whole gradient
  goes to its first maximum in row-major order, as XLA's select-and-scatter
  does (ties included).
- `conv_general_dilated`: `lax.conv_general_dilated` that takes the `conv3x3`
  path when it applies; a drop-in `nn.Conv(conv_general_dilated=...)`, so
  parameter names and shapes stay nn.Conv's.

`resolve_impl` picks between these ('cpu') and XLA's own layers ('xla').
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp

IMPLS = ('auto', 'cpu', 'xla')
# Inputs with at most this many channels get the kernel gradient from one
# product with the 9C-row patch matrix; wider ones from nine shifted products.
PATCH_MAX_CHANNELS = 16
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


# 3×3 convolution.

def _xla_conv(x, kernel, precision):
  return lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                  dimension_numbers=_NHWC, precision=precision)


def _taps(x, channel_major=False):
  """The nine shifted copies x_pad[:, i:i+H, j:j+W, :], i and j row-major.

  Each is (N, H, W, C), or (C, N, H, W) with `channel_major`.
  """
  _, h, w, _ = x.shape
  if channel_major:
    xp = jnp.pad(x.transpose(3, 0, 1, 2), ((0, 0), (0, 0), (1, 1), (1, 1)))
    return [xp[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]


def _kernel_grad_shifted(x, g, precision):
  """dK (3, 3, C, D) as nine (C, D) products, one per tap (i, j)."""
  c, d = x.shape[-1], g.shape[-1]
  g = g.reshape(-1, d)
  # Contracting dimension 0 of both: measured as fast as products with x or g
  # transposed beforehand, without the copy.
  return jnp.stack([
      lax.dot_general(tap.reshape(-1, c), g, (((0,), (0,)), ((), ())),
                      precision=precision) for tap in _taps(x)
  ]).reshape(3, 3, c, d)


def _kernel_grad_patches(x, g, precision):
  """dK as one (9C, NHW) × (NHW, D) product with the patch matrix."""
  c, d = x.shape[-1], g.shape[-1]
  patches = jnp.stack(_taps(x, channel_major=True)).reshape(9 * c, -1)
  return jnp.dot(patches, g.reshape(-1, d),
                 precision=precision).reshape(3, 3, c, d)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x, kernel, precision=None):
  """3×3, stride 1, SAME convolution: x (N, H, W, C), kernel (3, 3, C, D)."""
  return _xla_conv(x, kernel, precision)


def _conv3x3_fwd(x, kernel, precision):
  return _xla_conv(x, kernel, precision), (x, kernel)


def _conv3x3_bwd(precision, res, g):
  x, kernel = res
  # The input gradient is the transposed convolution, as XLA's VJP computes it.
  dx = _xla_conv(g, jnp.flip(kernel, (0, 1)).swapaxes(2, 3), precision)
  if x.shape[-1] <= PATCH_MAX_CHANNELS:
    dk = _kernel_grad_patches(x, g, precision)
  else:
    dk = _kernel_grad_shifted(x, g, precision)
  return dx, dk.astype(kernel.dtype)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def _is_conv3x3(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                dimension_numbers, feature_group_count, batch_group_count,
                preferred_element_type) -> bool:
  if lhs.ndim != 4 or rhs.ndim != 4 or rhs.shape[:2] != (3, 3):
    return False
  same = padding == 'SAME' or (not isinstance(padding, str) and tuple(
      map(tuple, padding)) == ((1, 1), (1, 1)))
  return (same and tuple(window_strides) == (1, 1)
          and all(d is None or tuple(d) == (1, 1)
                  for d in (lhs_dilation, rhs_dilation))
          and feature_group_count == 1 and batch_group_count == 1
          and preferred_element_type is None
          and lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
          == lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                        dimension_numbers))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, through `conv3x3` where that applies."""
  if _is_conv3x3(lhs, rhs, window_strides, padding, lhs_dilation,
                 rhs_dilation, dimension_numbers, feature_group_count,
                 batch_group_count, preferred_element_type):
    return conv3x3(lhs, rhs, precision)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
      dimension_numbers, feature_group_count, batch_group_count, precision,
      preferred_element_type)
