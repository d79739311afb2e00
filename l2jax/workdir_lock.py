"""One run per workdir: an exclusive lock on `workdir/.lock`.

The lock is the OS's (flock(2)): it is released when its holder ends,
however it ends, so a run killed with `kill -9` leaves no lock held. The
file names the holder (`host pid`) while it runs, and the holder deletes it
when it ends (a run that opened it just before checks, once it holds the
lock, that the file is still the one at the path). A run that takes the
lock and finds a holder named there knows that holder was killed, and says
so. On a file system shared by several hosts the lock holds between them
where flock does (NFSv4, Lustre mounted with `flock`).

In a multi-process run process 0 holds the lock and tells the others
whether it got it, so that all stop together.
"""

import contextlib
import fcntl
import os
import socket

from absl import logging
from jax.experimental import multihost_utils
import numpy as np

from l2jax import devices
from l2jax.errors import WorkdirInUse

LOCK = '.lock'


@contextlib.contextmanager
def hold(workdir: str, host: devices.Host = devices.Host()):
  """Holds the lock of `workdir` (created if need be) for the `with` block;
  WorkdirInUse, naming the holder, when another run holds it."""
  path = os.path.join(workdir, LOCK)
  lock, error = None, None
  if host.index == 0:
    os.makedirs(workdir, exist_ok=True)
    try:
      lock = _acquire(path)
    except WorkdirInUse as e:
      error = e
  if host.count > 1:
    held = bool(multihost_utils.broadcast_one_to_all(
        np.int32(lock is not None)))
    if not held and error is None:
      error = WorkdirInUse(f'{workdir} is in use by another run (process 0 '
                           'found it locked); wait for that run to end, or '
                           'use another --workdir')
  if error is not None:
    raise error
  try:
    yield
  finally:
    if lock is not None:
      _release(lock, path)


def _acquire(path: str):
  """The open lock file at `path`, locked and naming this process."""
  while True:
    lock = open(path, 'a+', encoding='utf-8')  # Created if need be.
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _holder(lock) or 'which has not named itself yet'
      lock.close()
      raise WorkdirInUse(
          f'{os.path.dirname(path)} is in use by another run ({holder}); '
          'wait for it to end, or use another --workdir') from None
    if _is_at(lock, path):
      break
    lock.close()  # Deleted by a holder that ended after we opened it.
  stale = _holder(lock)
  if stale:
    logging.warning('%s was held by %s, which ended without releasing it '
                    '(killed?); taking it over', path, stale)
  try:
    lock.seek(0)
    lock.truncate()
    lock.write(f'{socket.gethostname()} {os.getpid()}\n')
    lock.flush()
  except OSError:  # A full disk: the caller reports it.
    _release(lock, path)
    raise
  return lock


def _release(lock, path: str) -> None:
  os.unlink(path)  # Before unlocking: see _is_at.
  fcntl.flock(lock, fcntl.LOCK_UN)
  lock.close()


def _is_at(lock, path: str) -> bool:
  """Whether the open file `lock` is the file at `path`."""
  try:
    at_path = os.stat(path)
  except FileNotFoundError:
    return False
  opened = os.fstat(lock.fileno())
  return (opened.st_dev, opened.st_ino) == (at_path.st_dev, at_path.st_ino)


def _holder(lock) -> str:
  """'pid P on host H' from the lock file's text; '' when it is empty."""
  lock.seek(0)
  parts = lock.read().split()
  if len(parts) != 2:
    return ' '.join(parts)
  host, pid = parts
  return f'pid {pid} on host {host}'
