"""TensorBoard event files beside metrics.jsonl, through clu's metric writers.

Each epoch's numbers at its last step, the loss of every
`config.log_every_steps`-th step (`step/train_loss`), and the config as
HParams, so that `tensorboard --logdir runs/` compares a sweep's runs
(lr and λ as axes, accuracy as a metric). metrics.jsonl stays the record:
the events are written from the same records, once an epoch.
"""

import contextlib
import numbers

from l2jax import logs
from l2jax.errors import WriteError

STEP_LOSS = 'step/train_loss'  # A step's loss; `train_loss`: an epoch's mean.


def scalars(record: dict) -> dict:
  """The numbers of an epoch's record, `step` (the events' x axis) aside:
  None (undefined), flags and text are not numbers."""
  return {k: v for k, v in record.items() if k != 'step'
          and isinstance(v, numbers.Real) and not isinstance(v, bool)}


class EventWriter:
  """Writes a run's events into `workdir`; with `write=False` (processes
  other than 0) it writes none. Close it (or use it as a context manager)
  to flush them."""

  def __init__(self, workdir: str, config, write: bool = True):
    logs.import_tensorflow()
    # clu's summary writer imports TensorFlow (seconds): only when a run
    # starts, after `logs` has set TensorFlow's log level.
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    self._workdir, self._every = workdir, config.log_every_steps
    with self._writing():
      self._writer = metric_writers.create_default_writer(
          workdir, just_logging=not write)
      # Flattened by clu (`l2.weight`, `noise_sigmas.0`); one session a start.
      self._writer.write_hparams(config.to_dict())

  @contextlib.contextmanager
  def _writing(self):
    """TensorFlow's errors of a full or unwritable disk, as one line."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    try:
      yield
    except (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError,
            tf.errors.FailedPreconditionError, tf.errors.UnknownError) as e:
      reason = str(e.message).split(';')[-1].strip().splitlines()[0]
      raise WriteError(
          f'cannot write TensorBoard events to {self._workdir} ({reason}); '
          'free space or make the folder writable, then run the same command '
          'to resume') from e

  def write(self, record: dict, step_losses) -> None:
    """`record`: an epoch's line of metrics.jsonl; `step_losses`: the loss
    of each of the epoch's steps, the last being step `record['step']`."""
    last = record['step']
    first = last - len(step_losses) + 1
    with self._writing():
      for step in range(-(-first // self._every) * self._every, last + 1,
                        self._every):
        self._writer.write_scalars(step,
                                   {STEP_LOSS: step_losses[step - first]})
      self._writer.write_scalars(last, scalars(record))
      self._writer.flush()  # TensorBoard sees each epoch as it ends.

  def close(self) -> None:
    self._writer.close()

  def __enter__(self) -> 'EventWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
