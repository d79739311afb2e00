"""Orbax checkpoints of the train state, one per epoch, in workdir/checkpoints."""

import os

import orbax.checkpoint as ocp
from flax.training import train_state


class Checkpointer:
  """Saves {params, opt_state, step} under the epoch number; keeps the last few.

  The data order and the random keys derive from (seed, epoch, step), so the
  train state and the epoch are all a resumed run needs.
  """

  def __init__(self, workdir: str, max_to_keep: int):
    self._manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'checkpoints'),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def save(self, epoch: int, state: train_state.TrainState) -> None:
    self._manager.save(epoch, args=ocp.args.StandardSave(_contents(state)))

  def restore_latest(self, state: train_state.TrainState):
    """Returns (state, epoch) from the last checkpoint, or (state, 0)."""
    epoch = self._manager.latest_step()
    if epoch is None:
      return state, 0
    restored = self._manager.restore(
        epoch, args=ocp.args.StandardRestore(_contents(state)))
    return state.replace(**restored), epoch

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _contents(state: train_state.TrainState) -> dict:
  return {'params': state.params, 'opt_state': state.opt_state,
          'step': state.step}
