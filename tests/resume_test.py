"""A killed or damaged run resumes to exactly the uninterrupted run's result."""

import pathlib
import re
import shutil
import subprocess
import time

import jax
import numpy as np
import pytest

from helpers import assert_clean_error
from helpers import cli
from helpers import final_params
from helpers import read_jsonl
from helpers import run_cli
from helpers import TIMING_KEYS

# 512 training images / 32: 16 steps an epoch, 32 in all; a checkpoint every
# 5 steps and at each epoch's end.
STEPS_PER_EPOCH = 16


def overrides(cifar_small):
  return [f'--config.dataset=folder:{cifar_small}', '--config.batch_size=32',
          '--config.max_train_examples=512', '--config.num_epochs=2',
          '--config.checkpoint_every_steps=5', '--config.augment=True',
          '--config.checkpoints_to_keep=20', '--config.model=seed_cnn_narrow']


@pytest.fixture(scope='module')
def uninterrupted(cifar_small, tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp('uninterrupted')
  result = run_cli(workdir, *overrides(cifar_small))
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def saved_steps(workdir) -> list:
  """Steps of the complete checkpoints (orbax renames a finished one to its
  step; one in progress has a temporary name)."""
  directory = workdir / 'checkpoints'
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()
                ) if directory.is_dir() else []


def assert_same_run(workdir, reference) -> None:
  """Bitwise equal final parameters and metrics, timing aside."""
  untimed = lambda path: [{k: v for k, v in r.items() if k not in TIMING_KEYS}
                          for r in read_jsonl(path / 'metrics.jsonl')]
  assert untimed(workdir) == untimed(reference)
  got, want = final_params(workdir), final_params(reference)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)


def test_uninterrupted_run_saves_every_5_steps_and_each_epoch_end(
    uninterrupted):
  assert saved_steps(uninterrupted) == [5, 10, 15, 16, 20, 25, 30, 32]


def test_killed_run_resumes_to_the_same_parameters_and_metrics(
    cifar_small, uninterrupted, tmp_path):
  args = overrides(cifar_small)
  process = subprocess.Popen(**cli(tmp_path, *args),
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 300
    while not saved_steps(tmp_path) and time.monotonic() < deadline:
      time.sleep(0.02)
    assert process.poll() is None, 'finished before it could be killed'
    process.kill()  # SIGKILL: no handler runs, no file is closed.
  finally:
    process.kill()
    process.wait()
  killed_at = saved_steps(tmp_path)[-1]
  assert killed_at < 2 * STEPS_PER_EPOCH

  resumed = run_cli(tmp_path, *args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  # The killed run could not release the workdir's lock file: the OS
  # released the lock itself, and the next run takes it over.
  assert re.search(rf'held by pid {process.pid} on host \S+, which ended '
                   'without releasing it', resumed.stderr), resumed.stderr
  step = int(re.search(r'resuming from the checkpoint of step (\d+)',
                       resumed.stderr)[1])
  assert step >= killed_at
  assert_same_run(tmp_path, uninterrupted)


def test_damaged_last_checkpoint_falls_back_to_the_one_before(
    cifar_small, uninterrupted, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  # Damage the last checkpoint's files: the run goes on from step 30 and
  # trains steps 31 and 32 again.
  for path in (workdir / 'checkpoints' / '32').rglob('*'):
    if path.is_file():
      path.write_bytes(b'damaged')
  resumed = run_cli(workdir, *overrides(cifar_small))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'checkpoints/32 cannot be read' in resumed.stderr
  assert 'resuming from the checkpoint of step 30' in resumed.stderr
  assert (workdir / 'checkpoints' / '32.unreadable').is_dir()
  assert_same_run(workdir, uninterrupted)

  # With no readable checkpoint left it stops rather than start over on top
  # of the results.
  for path in (workdir / 'checkpoints').rglob('*'):
    if path.is_file():
      path.write_bytes(b'damaged')
  metrics = (workdir / 'metrics.jsonl').read_text()
  result = run_cli(workdir, *overrides(cifar_small))
  assert_clean_error(result, 'no checkpoint in', 'can be read', '--workdir')
  # Again, now that every checkpoint is set aside.
  result = run_cli(workdir, *overrides(cifar_small))
  assert_clean_error(result, 'metrics.jsonl', 'no checkpoint', '--workdir')
  assert (workdir / 'metrics.jsonl').read_text() == metrics
