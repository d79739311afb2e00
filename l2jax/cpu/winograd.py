"""Winograd's F(4×4, 3×3) convolution, its gradient written out.

Lavin & Gray, "Fast algorithms for convolutional neural networks" (2016). Per
6×6 input tile d (stride 4) and 3×3 kernel slice g, the 4×4 output tile is
Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A; summed over input channels, ⊙ becomes 36 products
of (tiles, C) × (C, D) matrices per 16 outputs: 4× fewer multiplications than
a direct convolution, which is why l2jax.cpu.layers routes wide 3×3
convolutions here. Each transform is written out term by term, so that XLA
fuses it into one loop; the gradient is a custom VJP, the products' and the
transforms' transposes written out, because autodiff's transposes of the
transforms are slow. Reverse-mode differentiation only (`jax.grad`,
`jax.vjp`, forward-over-reverse), not `jax.jvp` or `jax.jacfwd`.

Float rounding is larger than a direct convolution's: in float32, 6e-6 of
the largest output or gradient, against 3e-7 to 5e-7 for XLA's convolution
(the transforms add and scale by up to 8 and 1/24).

Timings: docs/performance.md.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

# Bᵀ, G and Aᵀ of F(4×4, 3×3).
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


# Jitted: op by op (as in an unjitted model.init), each of its ~200 small ops
# would be compiled and dispatched apart (docs/performance.md).
@jax.jit
def winograd_conv(x, kernel):
  """`lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)))`,
  NHWC × HWIO, for a 3×3 kernel and H, W multiples of 4, by Winograd's
  F(4×4, 3×3). A custom VJP: reverse-mode differentiation only."""
  return _winograd(x, kernel)
