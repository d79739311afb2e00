"""Folder data sets decoded once and kept on disk.

Each cell of a sweep run through `--executor=local` or Slurm is a process of
its own, and decoding CIFAR-10's 60,000 JPEGs took most of such a cell's
time. A folder's decoded arrays are kept in `$L2JAX_CACHE_DIR` (default
`~/.cache/l2jax`) as `folders/<key>.npz`. The key hashes the folder's path
and every file's name, size and modification time, so changing, adding or
removing an image makes a new entry; old entries stay until the folder is
deleted. `L2JAX_CACHE_DIR=` (empty) turns the cache off.

An entry is written to a temporary file and renamed into place, so runs
started together never read half of one. An entry that cannot be read is
decoded again, and a cache that cannot be written is skipped, each with a
warning: the cache only saves time.
"""

import hashlib
import os
import tempfile
import zipfile
from typing import Callable, Optional

from absl import logging
import numpy as np

ENV = 'L2JAX_CACHE_DIR'
_VERSION = 1  # Of the entry's layout; part of the key.


def directory() -> Optional[str]:
  """The folder entries go in, or None when the cache is off."""
  root = os.environ.get(ENV, os.path.join(os.path.expanduser('~'), '.cache',
                                          'l2jax'))
  return os.path.join(root, 'folders') if root else None


def folder_key(root: str) -> str:
  """A hash of `root`'s path and of each file's path, size and mtime."""
  digest = hashlib.sha256(f'{_VERSION}\n{os.path.abspath(root)}\n'.encode())
  for folder, subfolders, names in os.walk(root):
    subfolders.sort()
    for name in sorted(names):
      path = os.path.join(folder, name)
      stat = os.stat(path)
      digest.update(f'{os.path.relpath(path, root)}\t{stat.st_size}\t'
                    f'{stat.st_mtime_ns}\n'.encode())
  return digest.hexdigest()[:32]


def cached(root: str, read: Callable[[], dict]) -> dict:
  """`read()`'s arrays ({name: np.ndarray}) for the folder `root`: from the
  cache when it holds them, else read and stored."""
  folder = directory()
  if folder is None:
    return read()
  path = os.path.join(folder, folder_key(root) + '.npz')
  if os.path.exists(path):
    try:
      with np.load(path) as entry:
        arrays = {name: entry[name] for name in entry.files}
      logging.info('decoded images from the cache: %s', path)
      return arrays
    except (OSError, ValueError, zipfile.BadZipFile) as e:
      logging.warning('cache entry %s cannot be read (%s); decoding again',
                      path, e)
  arrays = read()
  temporary = None
  try:
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, suffix='.npz.tmp')
    with os.fdopen(handle, 'wb') as f:
      np.savez(f, **arrays)
    os.replace(temporary, path)
  except OSError as e:
    logging.warning('decoded images not cached (%s); set %s to a writable '
                    'folder, or to nothing to stop trying', e, ENV)
    if temporary and os.path.exists(temporary):
      os.remove(temporary)
  return arrays
