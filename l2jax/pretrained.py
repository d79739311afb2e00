"""Starting from another run's weights: the L2-SP anchor w₀ and fine-tuning.

`config.l2sp.init_from` names a checkpoint written by l2jax: a workdir, its
`checkpoints/` folder (the latest checkpoint is used), or one checkpoint
`checkpoints/N`. Its parameters are both where training starts and w₀. Every
parameter must have the model's shape, except the last Dense layer (the
head): when the class count differs, the head is initialized afresh and L2-SP
leaves it alone.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from l2jax import checkpoints
from l2jax import regularization
from l2jax.errors import ConfigError



def checkpoint_item(path: str) -> str:
  """The orbax item folder that `path` names, the latest one for a workdir."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    path = os.path.join(path, 'checkpoints')
  steps = [int(name) for name in (os.listdir(path) if os.path.isdir(path)
                                  else ()) if name.isdigit()]
  if steps:
    path = os.path.join(path, str(max(steps)))
  if os.path.isdir(os.path.join(path, checkpoints.STATE)):
    path = os.path.join(path, checkpoints.STATE)
  if not os.path.isfile(os.path.join(path, '_METADATA')):
    raise ConfigError(
        f'config.l2sp.init_from: no l2jax checkpoint in {path}; name a workdir, '
        'its checkpoints/ folder or one checkpoints/N')
  return path


def load_params(path: str) -> dict:
  """The parameters of the checkpoint `path` names, as NumPy arrays."""
  restored = ocp.StandardCheckpointer().restore(checkpoint_item(path))
  return jax.tree_util.tree_map(np.asarray, restored['params'])


def head_name(params) -> str:
  """The last Dense layer: the highest-numbered top-level `Dense_N`."""
  dense = [k for k in params if re.fullmatch(r'Dense_\d+', k)]
  return max(dense, key=lambda k: int(k.split('_')[1]), default='')


def start_from(fresh, loaded, source: str):
  """Returns (params, anchor): `loaded` with a fresh head where it differs.

  `fresh` is the model's initialization. Raises ConfigError when the two
  differ in any path, or in any shape outside the head.
  """
  shapes = lambda tree: {regularization.param_path(p): np.shape(x) for p, x in
                         jax.tree_util.tree_flatten_with_path(tree)[0]}
  want, have = shapes(fresh), shapes(loaded)
  head = head_name(fresh)
  mismatched = [p for p in sorted(set(want) | set(have))
                if have.get(p) != want.get(p)]
  wrong = [p for p in mismatched if not p.startswith(head + '/')
           or p not in want or p not in have]
  if wrong:
    path = wrong[0]
    raise ConfigError(
        f'config.l2sp.init_from={source}: parameter {path} is '
        f'{have.get(path, "absent")} there but {want.get(path, "absent")} in '
        'this model; only the last Dense layer may differ')
  new_head = bool(mismatched)

  def pick(path, w_fresh, w_loaded):
    is_new = new_head and regularization.param_path(path).startswith(head + '/')
    return (w_fresh if is_new else jnp.asarray(w_loaded, w_fresh.dtype),
            not is_new)

  picked = jax.tree_util.tree_map_with_path(pick, fresh, loaded)
  leaves, treedef = jax.tree_util.tree_flatten(
      picked, is_leaf=lambda x: isinstance(x, tuple))
  params = jax.tree_util.tree_unflatten(treedef, [w for w, _ in leaves])
  anchored = jax.tree_util.tree_unflatten(treedef, [a for _, a in leaves])
  return params, regularization.Anchor(params, anchored)
