"""The seed network's first Dense layer's three products, each alone.

    python benchmarks/results/throughput_xeon/dense_products.py \
        > benchmarks/results/throughput_xeon/dense_products.md

Batch 128, 8192 → 1024, float32, under `l2jax.cpu.configure()`: the
forward product x·W, the input gradient g·Wᵀ and the kernel gradient xᵀ·g,
each jitted alone, and a 2048² matmul for the machine's rate; median over
7 rounds of each round's mean of 5 calls, in ms.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())
from l2jax import cpu  # pylint: disable=g-import-not-at-top

cpu.configure()
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from benchmarks import sweep  # pylint: disable=g-import-not-at-top


def main():
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], (128, 8192))
  w = jax.random.normal(keys[1], (8192, 1024))
  g = jax.random.normal(keys[2], (128, 1024))
  a = jax.random.normal(keys[3], (2048, 2048))
  products = {
      'forward x·W': (jax.jit(lambda x, w: x @ w), (x, w), 2 * 128 * 8192 * 1024),
      'input gradient g·Wᵀ': (jax.jit(lambda g, w: g @ w.T), (g, w),
                              2 * 128 * 8192 * 1024),
      'kernel gradient xᵀ·g': (jax.jit(lambda x, g: x.T @ g), (x, g),
                               2 * 128 * 8192 * 1024),
      '2048² matmul': (jax.jit(jnp.dot), (a, a), 2 * 2048**3),
  }
  for f, args, _ in products.values():
    f(*args).block_until_ready()
  rounds = {name: [] for name in products}
  for _ in range(7):
    for name, (f, args, _) in products.items():
      start = time.perf_counter()
      for _ in range(5):
        f(*args).block_until_ready()
      rounds[name].append((time.perf_counter() - start) / 5)
  print('# The seed network\'s Dense products alone\n')
  print(f'    python {" ".join(sys.argv)}\n')
  print(f'- Machine: {sweep.cpu_model()}, {os.cpu_count()} cores; jax '
        f'{jax.__version__}\n')
  print('| product | ms | GFLOP/s |')
  print('|---|---|---|')
  for name, (_, _, flops) in products.items():
    seconds = statistics.median(rounds[name])
    print(f'| {name} | {1e3 * seconds:.2f} | {flops / seconds / 1e9:.0f} |')


if __name__ == '__main__':
  main()
