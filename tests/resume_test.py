"""A killed, preempted, damaged or out-of-space run resumes to exactly the
uninterrupted run's result; a second run on a workdir in use is refused."""

import errno
import hashlib
import os
import pathlib
import re
import shutil
import signal
import socket
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
          '--config.checkpoints_to_keep=20', '--config.model=seed_cnn_narrow',
          "--config.noise_sigmas=()"]


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


@pytest.mark.parametrize('kill_at', [1, 2 * STEPS_PER_EPOCH])
def test_killed_run_resumes_to_the_same_parameters_and_metrics(
    cifar_small, uninterrupted, tmp_path, kill_at):
  """Killed as soon as a checkpoint of step `kill_at` or later is saved:
  the first one, or the last epoch's (where a run that saved before it
  evaluated and recorded the epoch resumed past it, and ended without that
  epoch's record)."""
  args = overrides(cifar_small)
  process = subprocess.Popen(**cli(tmp_path, *args),
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 300
    while (not [s for s in saved_steps(tmp_path) if s >= kill_at]
           and process.poll() is None and time.monotonic() < deadline):
      time.sleep(0.01)
    if kill_at == 1:
      assert process.poll() is None, 'finished before it could be killed'
    process.kill()  # SIGKILL: no handler runs, no file is closed.
  finally:
    process.kill()
    process.wait()
  killed_at = saved_steps(tmp_path)[-1]
  assert killed_at >= kill_at

  resumed = run_cli(tmp_path, *args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  if kill_at == 1:
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


# Faults in one chain of runs on one workdir, with checkpoints at epoch ends
# only, on a small tmpfs where one can be mounted (as root).
TMPFS_SIZE = '64m'


def wait_for(condition, what: str, timeout: float = 300) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, f'timed out waiting for {what}'
    time.sleep(0.01)


def files(folder) -> dict:
  """{relative path: sha256} of every file under `folder`."""
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(pathlib.Path(folder).rglob('*')) if p.is_file()}


def holds_lock(workdir) -> bool:
  lock = workdir / '.lock'
  return lock.exists() and lock.stat().st_size > 0


def mount_tmpfs(folder) -> bool:
  return subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={TMPFS_SIZE}',
                         'tmpfs', str(folder)], capture_output=True,
                        check=False).returncode == 0


def fill(folder) -> None:
  """Writes a file in `folder` until its file system has no space left."""
  fd = os.open(folder / 'filler', os.O_WRONLY | os.O_CREAT)
  try:
    for size in (1 << 20, 1 << 12):
      try:
        while True:
          os.write(fd, bytes(size))
      except OSError as e:
        assert e.errno == errno.ENOSPC, e
  finally:
    os.close(fd)


@pytest.fixture(scope='module')
def faults(cifar_small, tmp_path_factory) -> dict:
  """The same command, four times on one workdir:

  - `first`: once it holds the workdir's lock (before it reads the data) it
    is stopped (SIGSTOP), and `second` runs meanwhile; then `first` is sent
    SIGTERM and continued;
  - `full` (with a tmpfs): stopped once it holds the lock, the disk filled,
    continued;
  - `last`, with the space freed.

  Returns each run's CompletedProcess and the workdir's files around
  `second` and `full`.
  """
  root = tmp_path_factory.mktemp('faults')
  mounted = mount_tmpfs(root)
  workdir = root / 'run'
  args = [a for a in overrides(cifar_small) if 'checkpoint_every' not in a]
  args.append('--config.checkpoint_every_steps=0')
  result = {'workdir': workdir, 'mounted': mounted}

  def start():
    return subprocess.Popen(**cli(workdir, *args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)

  def finish(process):
    stderr = process.communicate(timeout=600)[1]
    return subprocess.CompletedProcess(process.args, process.returncode, '',
                                       stderr)

  try:
    first = start()
    try:
      wait_for(lambda: holds_lock(workdir), "the first run's lock")
      first.send_signal(signal.SIGSTOP)
      result['before_second'] = files(workdir)
      result['second'] = run_cli(workdir, *args)
      result['after_second'] = files(workdir)
      first.send_signal(signal.SIGTERM)
      first.send_signal(signal.SIGCONT)
      result['first'] = finish(first)
      result['first_pid'] = first.pid
    finally:
      first.kill()
      first.wait()
    if mounted:
      full = start()
      try:
        wait_for(lambda: holds_lock(workdir), "the full run's lock")
        full.send_signal(signal.SIGSTOP)
        result['before_full'] = files(workdir / 'checkpoints')
        fill(root)
        full.send_signal(signal.SIGCONT)
        result['full'] = finish(full)
      finally:
        full.kill()
        full.wait()
      result['after_full'] = files(workdir / 'checkpoints')
      os.remove(root / 'filler')
    result['last'] = run_cli(workdir, *args)
    yield result
  finally:
    if mounted:
      subprocess.run(['umount', '-l', str(root)], check=False)


def test_a_second_run_on_a_workdir_in_use_stops_before_writing(faults):
  second = faults['second']
  assert_clean_error(second, 'l2jax: error:', 'is in use by another run',
                     f'pid {faults["first_pid"]} on host '
                     f'{socket.gethostname()}', '--workdir')
  # It read nor wrote anything: the workdir holds the first run's lock alone.
  assert faults['after_second'] == faults['before_second']
  assert list(faults['before_second']) == ['.lock']


def test_sigterm_saves_the_step_in_progress_and_exits_75(faults):
  first = faults['first']
  assert first.returncode == 75, first.stderr[-3000:]
  assert 'Traceback' not in first.stderr, first.stderr[-3000:]
  last_line = first.stderr.strip().splitlines()[-1]
  match = re.fullmatch(
      r'l2jax: preempted \(SIGTERM\) at step (\d+); saved the checkpoint '
      r'\S+/checkpoints/(\d+); run the same command to resume', last_line)
  assert match and match[1] == match[2], last_line
  # Mid-epoch, with checkpoints due only at epoch ends.
  assert 1 <= int(match[1]) < STEPS_PER_EPOCH


def test_a_full_disk_stops_the_run_in_one_line_keeping_its_checkpoints(
    faults):
  if not faults['mounted']:
    pytest.skip('mounting a tmpfs needs root')
  full = faults['full']
  # The first write that meets the full disk: the run's TensorBoard event
  # file as it opens, or the checkpoint of the epoch's end.
  assert_clean_error(full, 'l2jax: error: cannot write ',
                     'No space left on device',
                     'run the same command to resume')
  # The checkpoint saved before (SIGTERM's) is there, byte for byte.
  saved = {k: v for k, v in faults['after_full'].items()
           if k.split('/')[0].isdigit()}
  assert saved == faults['before_full'] and saved


def test_the_same_command_then_resumes_to_the_uninterrupted_run(
    faults, uninterrupted):
  last = faults['last']
  assert last.returncode == 0, last.stderr[-3000:]
  step = re.search(r'preempted \(SIGTERM\) at step (\d+)',
                   faults['first'].stderr)[1]
  assert f'resuming from the checkpoint of step {step} ' in last.stderr
  assert_same_run(faults['workdir'], uninterrupted)
