"""The pmap axis, and where this process sits among the run's devices."""

from typing import NamedTuple

from flax import jax_utils
import jax

AXIS = 'batch'  # The pmap axis of every step: the devices of the run.


class Host(NamedTuple):
  """This process's share of a run: process `index` of `count`, feeding
  `local_devices` devices. Process i of n holds the i-th n-th of each global
  batch (`data.train_batches`, `data.eval_batches`)."""
  index: int = 0
  count: int = 1
  local_devices: int = 1


def host() -> Host:
  """The running process's `Host`."""
  return Host(jax.process_index(), jax.process_count(),
              jax.local_device_count())


def mean(tree):
  """`lax.pmean` over AXIS; over one device, the tree itself (XLA's CPU
  runtime would copy it: docs/performance.md)."""
  if jax.lax.axis_size(AXIS) == 1:
    return tree
  return jax.lax.pmean(tree, AXIS)


def replicate(tree):
  """Copies `tree` to every local device, placed as the pmapped steps place
  their outputs, so that a step's second call does not compile again."""
  return jax.pmap(lambda x: x, axis_name=AXIS)(jax_utils.replicate(tree))


def unreplicate_to_host(tree):
  """The first device's copy of a replicated tree, as NumPy arrays."""
  return jax.device_get(jax_utils.unreplicate(tree))
