"""Two processes on JAX's distributed runtime train as one process would."""

import hashlib
import re
import socket
import subprocess

import jax
import numpy as np

from helpers import cli
from helpers import final_params
from helpers import read_jsonl
from helpers import run_cli
from helpers import TIMING_KEYS


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def sha256(params) -> str:
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.ascontiguousarray(leaf, np.float32).tobytes())
  return digest.hexdigest()


def untimed(workdir) -> list:
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
          for r in read_jsonl(workdir / 'metrics.jsonl')]


def test_two_processes_hold_the_parameters_of_one_process_on_two_devices(
    cifar_small, tmp_path):
  # 256 images / 32: 8 steps, augmented, a checkpoint every 3 steps.
  args = [f'--config.dataset=folder:{cifar_small}', '--config.batch_size=32',
          '--config.max_train_examples=256', '--config.num_epochs=1',
          '--config.model=seed_cnn_narrow', '--config.augment=True',
          '--config.checkpoint_every_steps=3']
  multi, single = tmp_path / 'two_processes', tmp_path / 'one_process'
  address = f'--coordinator_address=127.0.0.1:{free_port()}'
  processes = [
      subprocess.Popen(**cli(multi, *args, address, '--num_processes=2',
                             f'--process_id={i}', devices=1),
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
      for i in range(2)]
  try:
    logs = [p.communicate(timeout=600)[1] for p in processes]
  finally:
    for p in processes:
      p.kill()
  for p, log in zip(processes, logs):
    assert p.returncode == 0, log[-3000:]
  assert 'process 1 of 2; 1 of 2 devices here' in logs[1]
  fingerprints = [re.search(r'final parameters: sha256 ([0-9a-f]{64})', log)[1]
                  for log in logs]

  result = run_cli(single, *args, devices=2)
  assert result.returncode == 0, result.stderr[-3000:]

  # Both processes hold the parameters that the one process saved, bit for
  # bit; process 0 wrote the same metrics and checkpoints.
  assert fingerprints[0] == fingerprints[1] == sha256(final_params(single))
  assert untimed(multi) == untimed(single)
  for a, b in zip(jax.tree.leaves(final_params(multi)),
                  jax.tree.leaves(final_params(single))):
    np.testing.assert_array_equal(a, b)
