"""Timing on a shared machine: steps timed in interleaved rounds, wall and
CPU time, the matmul reference and peak memory; flag-free, for the
benchmarks."""

import resource
import statistics
import time

from flax import jax_utils
import jax
import jax.numpy as jnp
import numpy as np

from l2jax import data as data_lib
from l2jax import devices

MATMUL_SIZE = 2048
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
WARMUP = 5  # Untimed calls of each column after its first.


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> float:
  """Lowers the peak RSS to the current RSS (Linux; elsewhere the peak also
  covers all the process did before); returns it."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
  except OSError:
    pass
  return peak_rss_mib()


def time_block(step, steps: int) -> tuple:
  """Seconds of each of `steps` calls of `step()`: (wall, CPU), the CPU time
  being this process's, over all its threads."""
  wall, cpu_times = [], []
  for _ in range(steps):
    start, cpu_start = time.perf_counter(), time.process_time()
    step()
    wall.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  return wall, cpu_times


def matmul_step():
  """A jitted 2048×2048 float32 product, 2 n³ FLOPs, compiled here."""
  a, b = jax.random.normal(jax.random.key(0), (2, MATMUL_SIZE, MATMUL_SIZE))
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  return lambda: dot(a, b).block_until_ready()


def interleave(columns: dict, rounds: int, steps: int, reference,
               warmup: int = WARMUP) -> dict:
  """Times `columns` ({name: step()}) side by side.

  Each column's first call apart (it compiles) and `warmup` calls more
  untimed (a CPU step takes a few calls after compiling to reach its
  speed), then `rounds` rounds of a
  block of `steps` calls of each column, in the order of `columns` in even
  rounds and reversed in odd ones, and three calls of `reference()` (the
  matmul) before each round. Returns {'columns': {name: {'first_s',
  'rounds': [[seconds of each call] per round], 'cpu_rounds' (the same in
  CPU seconds), 'rss_before_mib',
  'peak_rss_mib'}}, 'matmul_gflops': [per round]}: the RSS before the
  column's first call and its peak over that call and its blocks.
  """
  results = {}
  for name, step in columns.items():
    before = reset_peak_rss()
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup):
      step()
    results[name] = {'first_s': first, 'rounds': [],
                     'cpu_rounds': [],
                     'rss_before_mib': before, 'peak_rss_mib': peak_rss_mib()}
  matmul = []
  names = list(columns)
  for r in range(rounds):
    seconds = statistics.median(time_block(reference, 3)[0])
    matmul.append(2 * MATMUL_SIZE**3 / seconds / 1e9)
    for name in (names if r % 2 == 0 else names[::-1]):
      reset_peak_rss()
      wall, cpu_times = time_block(columns[name], steps)
      results[name]['rounds'].append(wall)
      results[name]['cpu_rounds'].append(cpu_times)
      results[name]['peak_rss_mib'] = max(results[name]['peak_rss_mib'],
                                           peak_rss_mib())
  return {'columns': results, 'matmul_gflops': matmul}


def synthetic_data(batch_size: int) -> data_lib.Dataset:
  """One batch of random uint8 images, as both training and test split."""
  rng = np.random.default_rng(0)
  split = data_lib.Split(
      rng.integers(0, 256, (batch_size, *IMAGE_SHAPE), dtype=np.uint8),
      rng.integers(0, NUM_CLASSES, batch_size, dtype=np.int32))
  return data_lib.Dataset(split, None, split, NUM_CLASSES)


def first_batch(config, dataset: data_lib.Dataset) -> tuple:
  """(images, labels): the first training batch on the devices, as
  `train.train_and_evaluate` feeds it."""
  return next(jax_utils.prefetch_to_device(data_lib.train_batches(
      dataset.train, config.batch_size, config.seed, 1,
      host=devices.host()), 1))
