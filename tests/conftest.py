"""The process settings every test runs under (the CPU speed layer's, XLA's
optimizations mostly off, and fresh caches), and the fixture of the real
CIFAR-10 copy from ../shared/data. Helpers live in helpers.py."""

import atexit
import collections
import os
import pathlib
import shutil
import tarfile
import tempfile

import jax
import pytest

import helpers
from l2jax import cpu
from l2jax.cpu import layers as cpu_layers

# The settings l2jax.main trains under, before any test runs JAX.
cpu.configure()


def _fresh_caches() -> None:
  """JAX's persistent compilation cache and l2jax's decoded-folder cache, for
  this process and the CLI and benchmark processes it starts (through the
  environment): most of the suite's time went to compiling the same few
  programs again in fresh processes. New caches for each pytest worker,
  removed at exit: no test sees another session's entries, nothing is
  written in ~/.cache, and no two workers write one entry (JAX writes its
  entries in place)."""
  path = tempfile.mkdtemp(prefix='l2jax-test-caches-')
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  os.environ['L2JAX_CACHE_DIR'] = os.path.join(path, 'l2jax')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(path, 'jax')
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  jax.config.update('jax_compilation_cache_dir', os.path.join(path, 'jax'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


_fresh_caches()


def _quick_compiles() -> None:
  """XLA with most optimizations off, here and in the processes tests start:
  the suite's time is mostly compilation of programs that then run a few
  steps, and what the tests check (values to float tolerance, files, errors)
  does not depend on how XLA optimized a program. The benchmarks, every user
  run and the CLI's end-to-end run on a real CIFAR-10 slice (cli_test.py,
  which trains long enough that unoptimized code costs more than it saves)
  compile with XLA's defaults."""
  os.environ['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
  jax.config.update('jax_disable_most_optimizations', True)


_quick_compiles()


@pytest.fixture
def winograd_from_16(monkeypatch):
  """l2jax.cpu's convolutions routed as on an AVX2 CPU (Winograd's from 16
  channels) whatever this CPU has (from 64 with AVX-512), so that a test
  of Winograd's convolutions runs them on every machine."""
  monkeypatch.setattr(cpu_layers, 'WINOGRAD_MIN_CHANNELS', 16)


@pytest.fixture(scope='session')
def cifar_small(tmp_path_factory) -> pathlib.Path:
  """A slice of the real CIFAR-10 copy: 300 train and 100 test images a class,
  the first by file name; only those are extracted (the whole copy is 60,000
  files)."""
  helpers.require(helpers.CIFAR_TARBALL, 'the CIFAR-10 copy')
  root = tmp_path_factory.mktemp('cifar')
  per_class = {'train': 300, 'test': 100}
  with tarfile.open(helpers.CIFAR_TARBALL) as tar:
    images = collections.defaultdict(list)  # (split, class) -> members.
    for member in tar.getmembers():
      parts = pathlib.PurePosixPath(member.name).parts
      if member.isfile() and len(parts) == 4 and parts[1] in per_class:
        images[parts[1:3]].append(member)
    chosen = {id(m) for (split, _), members in images.items()
              for m in sorted(members, key=lambda m: m.name)[:per_class[split]]}
    # In archive order: one pass over the compressed stream.
    tar.extractall(root, members=[m for m in tar.getmembers()
                                  if id(m) in chosen], filter='data')
  return root / 'cifar10-jpeg'
