"""What l2jax keeps on disk between processes: folder data sets decoded
once, and JAX's compiled programs.

Both live under `$L2JAX_CACHE_DIR` (default `~/.cache/l2jax`);
`L2JAX_CACHE_DIR=` (empty) turns both off.

Decoded folders: each cell of a sweep run through `--executor=local` or
Slurm is a process of its own, and decoding CIFAR-10's 60,000 JPEGs took
most of such a cell's time. A folder's decoded arrays are kept as
`folders/<key>.npz`. The key hashes the folder's path and every file's
name, size and modification time, so changing, adding or removing an image
makes a new entry; old entries stay until the folder is deleted. An entry
is written to a temporary file and renamed into place, so runs started
together never read half of one. An entry that cannot be read is decoded
again, and a cache that cannot be written is skipped, each with a warning:
the cache only saves time.

Compiled programs: JAX's persistent compilation cache, in `jax/` unless
`JAX_COMPILATION_CACHE_DIR` names another folder (`compilation_cache`).
The training step takes α and λ as arguments (`train.hyperparameters`), so
the cells of a sweep that share an optimizer and L2 mode compile it once.
"""

import hashlib
import os
import tempfile
import zipfile
from typing import Callable, Optional

from absl import logging
import jax
import numpy as np

ENV = 'L2JAX_CACHE_DIR'
_VERSION = 1  # Of the entry's layout; part of the key.
COMPILATION_CACHE_BYTES = 4 << 30


def _root() -> str:
  """$L2JAX_CACHE_DIR, or its default; '' when the caches are off."""
  return os.environ.get(ENV, os.path.join(os.path.expanduser('~'), '.cache',
                                          'l2jax'))


def directory() -> Optional[str]:
  """The folder decoded data sets go in, or None when the cache is off."""
  return os.path.join(_root(), 'folders') if _root() else None


def compilation_cache() -> None:
  """Points JAX's persistent compilation cache at `jax/` in the cache
  folder, at most `COMPILATION_CACHE_BYTES` (least recently used entries
  go first), unless JAX_COMPILATION_CACHE_DIR set one or the caches are
  off. Call it before the first compilation.

  With a size limit JAX locks the folder around each read and write, so
  the processes of a sweep never read an entry another is writing. An entry
  left half-written by a killed process only warns, and is compiled again:
  `rm -r ~/.cache/l2jax/jax` clears the cache.
  """
  if _root() and not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir',
                      os.path.join(_root(), 'jax'))
    jax.config.update('jax_compilation_cache_max_size',
                      COMPILATION_CACHE_BYTES)


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
