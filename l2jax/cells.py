"""Several cells of a sweep as one program: the training step vmapped over a
leading cell axis.

Cells whose configs differ only in the learning rate α and the L2 weight λ
(`STACKED`) share the seed, and with it the initial parameters, the batches
and every random key: only their trajectories differ. `stack` puts K copies
of the run's initial state on a leading axis; `pmap_train_step` is
`train.train_step` vmapped over that axis and over α and λ (`hyperparameters`:
arrays of K values), with the batch and keys shared. The step builds each
cell's optimizer and rotation measures from its own α and λ, so each cell's
updates are those of its own run (tests/cells_test.py).

Why: on an accelerator, K networks as small as the separability study's
should fill the device where one does not; that is expected, not measured
here. On a 2-core CPU it does not pay: per cell, the vmapped step is slower
than the cell's own (`benchmarks.cells_per_hour`, docs/performance.md), so
the sweeps train cells one after another.
"""

import functools

import jax
import jax.numpy as jnp

from l2jax import devices
from l2jax import regularization
from l2jax import train
from l2jax.errors import ConfigError

# The config keys in which stacked cells may differ.
STACKED = ('learning_rate', 'l2.weight')


def _flat(config) -> dict:
  flat = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      flat.update({f'{key}.{k}': v for k, v in _flat(value).items()})
    else:
      flat[key] = value
  return flat


def hyperparameters(configs, steps_per_epoch: int) -> dict:
  """`train.hyperparameters` of each config, as arrays of one value per
  config. ConfigError unless the configs differ in `STACKED` alone."""
  first = _flat(configs[0])
  for config in configs[1:]:
    flat = _flat(config)
    differ = sorted(k for k in first.keys() | flat.keys()
                    if k not in STACKED and first.get(k) != flat.get(k))
    if differ:
      raise ConfigError(f'stacked cells may differ only in {", ".join(STACKED)}'
                        f'; these differ in {", ".join(differ)}')
  each = [train.hyperparameters(c, steps_per_epoch) for c in configs]
  return jax.tree.map(lambda *values: jnp.array(values, jnp.float32), *each)


def stack(state, cells: int):
  """`cells` copies of `state`'s arrays on a new leading axis."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (cells, *jnp.shape(x))),
                      state)


def pmap_train_step(config, penalties: regularization.Penalties,
                    steps_per_epoch: int):
  """(stacked state, images, labels, rng, hyperparameters, stats) ->
  (stacked state, stacked metrics): `train.train_step` of each cell,
  vmapped, pmapped as `train.pmap_train_step` is."""
  cell_step = functools.partial(
      train.train_step, config=config, penalties=penalties,
      steps_per_epoch=steps_per_epoch)
  return jax.pmap(
      jax.vmap(cell_step, in_axes=(0, None, None, None, 0, None)),
      axis_name=devices.AXIS, in_axes=(0, 0, 0, 0, None, None),
      donate_argnums=() if jax.default_backend() == 'cpu' else (0,))
