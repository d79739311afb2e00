"""Orbax checkpoints of a run, under the global step, in workdir/checkpoints.

Each checkpoint holds the train state ({params, opt_state, step,
batch_stats}) and, as JSON, the run's config and the step metrics of the epoch in progress. The
data order and the random keys derive from (seed, epoch, step), so that is
all a resumed run needs to go on exactly as if it had not stopped.

Orbax writes each checkpoint into a temporary folder and renames it when
complete, so a run killed while saving leaves no partial checkpoint; the
temporary folders of saves that did not complete are deleted when the next
run starts. A save that fails (a full disk, a folder made read-only) raises
WriteError, in the call that saves or in the next (orbax saves in the
background); the checkpoints saved before it stay as they were.
"""

import contextlib
import os
import re
from typing import Optional

from absl import logging
from flax.training import train_state
import jax
import orbax.checkpoint as ocp

from l2jax import configuration
from l2jax.errors import ConfigError, L2JaxError, WriteError

# The folder of a checkpoint holding {params, opt_state, step, batch_stats}.
STATE = 'state'
# Config values a resumed run may change: where data and outputs live and
# how often to evaluate or save; nothing that changes the trained weights.
MAY_CHANGE_ON_RESUME = frozenset({
    'data_dir', 'manual_dir', 'eval_batch_size', 'eval_every_epochs',
    'checkpoints_to_keep', 'checkpoint_every_steps', 'log_every_steps',
    'rotation_every_steps'})


class Checkpointer:
  """Saves and restores checkpoints; keeps the last `max_to_keep`.

  Every process of a multi-process run calls every method (orbax
  coordinates them); process 0 writes.
  """

  def __init__(self, workdir: str, max_to_keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            cleanup_tmp_directories=True))
    self._saving = None  # The step of the last save started.

  def save(self, step: int, state: train_state.TrainState, config,
           epoch_metrics: dict) -> None:
    """`epoch_metrics`: {name: [float per step of the epoch so far]}.

    Returns once the save has started; WriteError if it, or the save
    before it, failed.
    """
    self.wait()  # As orbax's save would; an error then is the last save's.
    with _write_errors(self.directory, step):
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_contents(state)),
          progress=ocp.args.JsonSave({'config': config.to_dict(),
                                      'epoch_metrics': epoch_metrics})))
    self._saving = step

  def wait(self) -> None:
    """Waits for the last save to complete; WriteError if it failed."""
    with _write_errors(self.directory, self._saving):
      self._manager.wait_until_finished()

  def check_config(self, config) -> Optional[int]:
    """The last checkpoint's step (None if there is none); ConfigError if it
    was made with another config, values in MAY_CHANGE_ON_RESUME aside.

    Reads only the checkpoint's JSON.
    """
    step, restored = self._restore_latest(
        lambda: ocp.args.Composite(progress=ocp.args.JsonRestore()))
    if step is None:
      return None
    saved = configuration.completed(restored['progress']['config'])
    now = _jsonable(config.to_dict())
    differences = [
        f'config.{key}: {saved_value!r} then, {now_value!r} now'
        for key, saved_value, now_value in _differences(saved, now)
        if key.split('.')[0] not in MAY_CHANGE_ON_RESUME]
    if differences:
      raise ConfigError(
          f'{self.directory} holds a run made with another config ('
          + '; '.join(differences) + '); resume it with the same config, '
          'or use a new --workdir')
    return step

  def restore_latest(self, state: train_state.TrainState):
    """(state, step, epoch_metrics) from the last readable checkpoint.

    Returns (state, 0, {}) when there is none. An unreadable checkpoint is
    renamed <step>.unreadable, with a warning, and the one before it is
    tried; when none can be read, L2JaxError.
    """
    step, restored = self._restore_latest(lambda: ocp.args.Composite(
        state=ocp.args.StandardRestore(_contents(state)),
        progress=ocp.args.JsonRestore()))
    if step is None:
      return state, 0, {}
    return (state.replace(**restored[STATE]), step,
            restored['progress']['epoch_metrics'])

  def _restore_latest(self, args_fn):
    """(step, restored) for the newest checkpoint that restores, or (None,
    None) when there are no checkpoints."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      try:
        return step, self._manager.restore(step, args=args_fn())
      except Exception as e:  # pylint: disable=broad-except
        # Orbax and TensorStore raise various errors for damaged files.
        aside = os.path.join(self.directory, f'{step}.unreadable')
        n = 1
        while os.path.exists(aside):  # Damaged before, and saved again.
          n += 1
          aside = os.path.join(self.directory, f'{step}.unreadable{n}')
        logging.warning('checkpoint %s cannot be read (%s: %s); moved it to '
                        '%s and trying the one before',
                        os.path.join(self.directory, str(step)),
                        type(e).__name__, str(e).splitlines()[0][:200], aside)
        if jax.process_index() == 0:
          os.rename(os.path.join(self.directory, str(step)), aside)
        self._manager.reload()
    if steps:
      raise L2JaxError(
          f'no checkpoint in {self.directory} can be read (each moved to '
          '<step>.unreadable); delete the workdir or use a new --workdir to '
          'start over')
    return None, None

  def close(self) -> None:
    """Waits for the last save, then releases orbax's resources;
    WriteError if the save failed."""
    try:
      self.wait()
    finally:
      with _write_errors(self.directory, self._saving):
        self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, exc_type, *exc_info) -> None:
    # Also on errors: the last save completes. If it fails, the error that
    # ended the `with` block is the one to report.
    try:
      self.close()
    except WriteError:
      if exc_type is None:
        raise


def no_save_tracebacks(record) -> bool:
  """A logging filter: drops orbax's tracebacks of a save that failed (it
  logs one per thread); `Checkpointer` raises the failure, in one line if it
  is a WriteError."""
  return not (record.exc_info and f'{os.sep}orbax{os.sep}' in record.pathname)


def quiet_unraisable(default):
  """A sys.unraisablehook that drops TensorStore's reports of writes that
  end after a failed save has closed orbax's event loop (`Checkpointer`
  raises the failure), and passes any other to `default`."""
  def hook(unraisable) -> None:
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      default(unraisable)
  return hook


@contextlib.contextmanager
def _write_errors(directory: str, step: Optional[int]):
  """Turns an error of orbax writing the checkpoint of `step` into
  `directory` into WriteError: an OSError, or TensorStore's error that
  carries the OS's `os_error_code`. Other errors pass unchanged."""
  try:
    yield
  except Exception as error:  # pylint: disable=broad-except
    text = str(error)
    code = re.search(r"os_error_code='?(\d+)", text)
    if isinstance(error, OSError) and error.strerror:
      reason = error.strerror
    elif code:
      reason = os.strerror(int(code[1]))
    else:
      raise
    which = 'a checkpoint' if step is None else f'the checkpoint of step {step}'
    raise WriteError(
        f'cannot write {which} to {directory} ({reason}); the checkpoints '
        'saved before are intact: free space or make the folder writable, '
        'then run the same command to resume') from error


def _contents(state: train_state.TrainState) -> dict:
  return {'params': state.params, 'opt_state': state.opt_state,
          'step': state.step, 'batch_stats': state.batch_stats}


def _jsonable(tree):
  """Tuples as lists, as they come back from JSON."""
  if isinstance(tree, dict):
    return {k: _jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_jsonable(v) for v in tree]
  return tree


def _differences(a, b, prefix: Optional[str] = None):
  """(dotted key, a's value, b's value) where nested dicts a and b differ."""
  for key in sorted(set(a) | set(b)):
    name = f'{prefix}.{key}' if prefix else key
    va, vb = a.get(key), b.get(key)
    if isinstance(va, dict) and isinstance(vb, dict):
      yield from _differences(va, vb, name)
    elif va != vb:
      yield name, va, vb
