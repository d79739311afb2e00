"""What several test files use: paths, small inputs, and the CLI and
benchmarks run in fresh processes."""

import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = pathlib.Path(os.environ.get(
    'L2JAX_SHARED_DATA', REPO.parent / 'shared' / 'data'))
CIFAR_TARBALL = SHARED_DATA / 'cifar10-jpeg.tar.gz'
# metrics.jsonl fields that measure time, so differ between equal runs.
TIMING_KEYS = {'epoch_seconds', 'images_per_second'}


def require(path: pathlib.Path, what: str):
  """Skips the test when `path` is missing; under CI=true, fails it."""
  if not path.exists():
    message = f'{what} not found at {path}; set L2JAX_SHARED_DATA'
    if os.environ.get('CI'):
      pytest.fail(message)  # CI has the data: its absence is a failure.
    pytest.skip(message)


def small_params() -> dict:
  """Two Dense layers' kernels and biases, from a fixed NumPy seed."""
  rng = np.random.default_rng(0)
  return {'Dense_0': {'kernel': jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                      'bias': jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
          'Dense_1': {'kernel': jnp.asarray(rng.normal(size=(4, 2)), jnp.float32),
                      'bias': jnp.asarray(rng.normal(size=(2,)), jnp.float32)}}


def write_folder(root, sizes=None):
  """root/{train,test}/{cat,dog}/*.png with known pixels: 3 train and 2 test
  images a class, 6x6 unless `sizes` maps (split, class, i) to another shape.
  Returns {(split, pixel bytes): label}."""
  rng = np.random.default_rng(1)
  written = {}
  for split, n in (('train', 3), ('test', 2)):
    for label, name in enumerate(('cat', 'dog')):
      (root / split / name).mkdir(parents=True)
      for i in range(n):
        shape = (sizes or {}).get((split, name, i), (6, 6, 3))
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / name / f'{i}.png')
        written[(split, pixels.tobytes())] = label
  return written


def cpu_env(devices: int = 1) -> dict:
  """The environment of a fresh JAX process on `devices` CPU devices."""
  return dict(os.environ,
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')


def run_benchmark(name: str, *args, timeout: int = 600
                  ) -> subprocess.CompletedProcess:
  """Runs `python -m benchmarks.<name>` in a fresh process on one CPU
  device."""
  return subprocess.run(
      [sys.executable, '-m', f'benchmarks.{name}', *args], cwd=REPO,
      env=cpu_env(), capture_output=True, text=True, timeout=timeout)


def sweep_args(out, data, preset: str) -> list:
  """The flags of a benchmark sweep of `preset` over the image folder `data`
  into `out`."""
  return [f'--preset={preset}', f'--out={out}', f'--data=folder:{data}']


def read_csv(path) -> list:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def cli(workdir, *overrides, devices: int = 1,
        config='configs/cifar.py', env: dict = None) -> dict:
  """subprocess arguments for `python -m l2jax.main` with `devices` CPU
  devices; `env` changes the environment (None: unset)."""
  environ = cpu_env(devices)
  for name, value in (env or {}).items():
    if value is None:
      environ.pop(name, None)
    else:
      environ[name] = value
  return dict(args=[sys.executable, '-m', 'l2jax.main', f'--config={config}',
                    f'--workdir={workdir}', *overrides],
              cwd=REPO, env=environ, text=True)


def run_cli(workdir, *overrides, devices: int = 1, config='configs/cifar.py',
            env: dict = None, timeout: int = 600
            ) -> subprocess.CompletedProcess:
  """Runs `python -m l2jax.main` in a fresh process; see `cli`."""
  return subprocess.run(**cli(workdir, *overrides, devices=devices,
                              config=config, env=env),
                        capture_output=True, timeout=timeout)


# absl's log line names its source file: `I1202 16:52:11.606020 1396
# data.py:61] ...`; l2jax's files by name (a library's file of the same name
# would pass too).
_LOG_LINE = re.compile(r'[IWEF]\d{4} [\d:.]+ +\d+ (\w+)\.py:\d+\] ')
_L2JAX_FILES = {p.stem for p in (REPO / 'l2jax').rglob('*.py')}


def foreign_lines(stderr: str) -> list:
  """The lines of a CLI's stderr that are neither l2jax's log lines nor its
  one-line error."""
  def ours(line):
    match = _LOG_LINE.match(line)
    return line.startswith('l2jax: error: ') or (
        match is not None and match[1] in _L2JAX_FILES)
  return [line for line in stderr.splitlines() if line.strip()
          and not ours(line)]


def read_jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def final_state(workdir) -> dict:
  """The last checkpoint's {params, opt_state, step, batch_stats}."""
  checkpoints = workdir / 'checkpoints'
  last = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  return ocp.StandardCheckpointer().restore(checkpoints / str(last) / 'state')


def final_params(workdir):
  return final_state(workdir)['params']


def assert_clean_error(result, *fragments):
  """Non-zero exit; the last line says what was wrong; no traceback."""
  assert result.returncode != 0, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  for fragment in fragments:
    assert fragment in last, last
