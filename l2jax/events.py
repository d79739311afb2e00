"""TensorBoard event files beside metrics.jsonl.

Each epoch's numbers at its last step, the loss of every
`config.log_every_steps`-th step (`step/train_loss`), and the config as
HParams, so that `tensorboard --logdir runs/` compares a sweep's runs
(lr and λ as axes, accuracy as a metric). metrics.jsonl stays the record:
the events are written from the same records, once an epoch.

They are written with TensorBoard's own protos and record writer, as
`tf.summary` writes them (scalars as float32 tensors of the scalars plugin;
HParams flattened as clu's writer flattens them), without importing
TensorFlow: that import was a third of a short run's time (about 5 of 15 s
on a 2-core machine), paid again by every process of a sweep or a test.
"""

import contextlib
import itertools
import numbers
import os
import socket
import time

from clu.internal import utils as clu_utils
from etils import epath
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.summary.writer import record_writer

from l2jax.errors import WriteError

STEP_LOSS = 'step/train_loss'  # A step's loss; `train_loss`: an epoch's mean.
_WRITERS = itertools.count()  # Numbers the event files of this process.


def scalars(record: dict) -> dict:
  """The numbers of an epoch's record, `step` (the events' x axis) aside:
  None (undefined), flags and text are not numbers."""
  return {k: v for k, v in record.items() if k != 'step'
          and isinstance(v, numbers.Real) and not isinstance(v, bool)}


class EventWriter:
  """Writes a run's events into a new event file in `workdir`; with
  `write=False` (processes other than 0) it writes none. Close it (or use it
  as a context manager) to flush them. A full or unwritable disk raises
  WriteError."""

  def __init__(self, workdir: str, config, write: bool = True):
    self._every, self._file, self._records = config.log_every_steps, None, None
    if not write:
      return
    self._workdir = workdir
    # TensorFlow's name for a file, numbered by the writers of the process.
    name = (f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.'
            f'{os.getpid()}.{next(_WRITERS)}.v2')
    with self._writing():
      self._file = (epath.Path(workdir) / name).open('wb')
      self._records = record_writer.RecordWriter(self._file)
      self._write(event_pb2.Event(file_version='brain.Event:2'))
      # Flattened (`l2.weight`, `noise_sigmas.0`); one session a start.
      self._write(event_pb2.Event(summary=hparams_summary.hparams_pb(
          dict(clu_utils.flatten_dict(config.to_dict())))))
      self._file.flush()

  @contextlib.contextmanager
  def _writing(self):
    """A full or unwritable disk, as one line."""
    try:
      yield
    except OSError as e:
      raise WriteError(
          f'cannot write TensorBoard events to {self._workdir} '
          f'({e.strerror or e}); free space or make the folder writable, '
          'then run the same command to resume') from e

  def _write(self, event, step: int = 0) -> None:
    event.wall_time, event.step = time.time(), step
    self._records.write(event.SerializeToString())

  def write(self, record: dict, step_losses) -> None:
    """`record`: an epoch's line of metrics.jsonl; `step_losses`: the loss
    of each of the epoch's steps, the last being step `record['step']`."""
    if self._file is None:
      return
    last = record['step']
    first = last - len(step_losses) + 1
    points = [(step, {STEP_LOSS: step_losses[step - first]}) for step in range(
        -(-first // self._every) * self._every, last + 1, self._every)]
    with self._writing():
      for step, values in [*points, (last, scalars(record))]:
        for tag, value in values.items():
          self._write(event_pb2.Event(
              summary=scalar_summary.scalar_pb(tag, float(value))), step)
      self._file.flush()  # TensorBoard sees each epoch as it ends.

  def close(self) -> None:
    if self._file is not None:
      with self._writing():
        self._file.close()
      self._file = None

  def __enter__(self) -> 'EventWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
