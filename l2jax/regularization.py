"""Which parameters L2 reaches, and the quantities it is measured by.

Every L2 mode (see `l2jax.optim.make_optimizer`) uses the same mask, built
here from `config.l2.mask`:

* ``kernels``: every Conv and Dense kernel (no biases, no norm parameters);
* ``all``: every parameter;
* anything else: a regular expression, searched in each parameter's path
  joined with ``/`` (for example ``Conv_0/kernel``).
"""

import re
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from l2jax.errors import ConfigError

MaskFn = Callable[[optax.Params], optax.Params]


def param_path(path) -> str:
  """`Conv_0/kernel` for the key path of `params['Conv_0']['kernel']`."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def decay_mask(spec: str) -> MaskFn:
  """Returns a function from params to a same-shaped pytree of bools."""
  if spec == 'kernels':
    selects = lambda path: path.rsplit('/', 1)[-1] == 'kernel'
  elif spec == 'all':
    selects = lambda path: True
  else:
    try:
      pattern = re.compile(spec)
    except re.error as e:
      raise ConfigError(
          f'config.l2.mask={spec!r} is not a valid regular expression ({e}); '
          'use kernels, all, or a regex over paths like Conv_0/kernel') from e
    selects = lambda path: pattern.search(path) is not None

  def mask_fn(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: selects(param_path(path)), params)

  return mask_fn


def check_mask_selects_something(mask_fn: MaskFn, params, spec: str) -> None:
  if not any(jax.tree_util.tree_leaves(mask_fn(params))):
    paths = [param_path(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(params)[0]]
    raise ConfigError(
        f'config.l2.mask={spec!r} matches no parameter; paths are: '
        + ', '.join(paths))


def squared_norm(params, mask) -> jax.Array:
  """Σ w² over the masked parameters."""
  leaves = jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(
          lambda w, m: jnp.sum(jnp.square(w)) if m else jnp.zeros(()),
          params, mask))
  return sum(leaves, jnp.zeros(()))


def l2_penalty(params, mask, weight: float) -> jax.Array:
  """½ λ Σ w² over the masked parameters."""
  return 0.5 * weight * squared_norm(params, mask)


def weight_norm(params, mask) -> jax.Array:
  """‖w‖₂ over the masked parameters."""
  return jnp.sqrt(squared_norm(params, mask))
