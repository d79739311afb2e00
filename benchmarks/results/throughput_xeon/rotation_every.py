"""The seed network's step with its rotation measures in every N-th step.

    python benchmarks/results/throughput_xeon/rotation_every.py \
        > benchmarks/results/throughput_xeon/rotation_every.md

`benchmarks.throughput`'s l2jax column built once per
`config.rotation_every_steps` (1, 10, 0) and timed interleaved
(`timing.interleave`: 8 rounds of 10 steps each, the order alternating);
per round the mean step, and each variant's speed-up over measuring every
step, median over rounds (min–max).
"""

import os
import statistics
import sys

sys.path.insert(0, os.getcwd())
from l2jax import cpu  # pylint: disable=g-import-not-at-top

cpu.configure()
from benchmarks import sweep, throughput, timing  # pylint: disable=g-import-not-at-top
from configs import cifar  # pylint: disable=g-import-not-at-top

EVERY = (1, 10, 0)


def main():
  columns = {}
  for every in EVERY:
    config = cifar.get_config()
    config.rotation_every_steps = every
    columns[every], _ = throughput.l2jax_column(
        config, timing.synthetic_data(config.batch_size))
  load = os.getloadavg()[0]
  result = timing.interleave(columns, rounds=8, steps=10,
                             reference=timing.matmul_step())['columns']
  means = {e: [statistics.fmean(b) for b in result[e]['rounds']]
           for e in EVERY}
  print('# Seed step: rotation measures in every N-th step\n')
  print(f'    python {" ".join(sys.argv)}\n')
  print(f'- Machine: {sweep.cpu_model()}, {os.cpu_count()} cores; load '
        f'average {load:.2f} before the timing')
  print('- Step: `benchmarks.throughput`\'s l2jax column (seed_cnn, batch '
        '128, SGD momentum 0.9, coupled L2), 8 interleaved rounds of 10 '
        'steps each\n')
  print('| rotation_every_steps | mean step [ms], median over rounds '
        '(min–max) | speed-up over 1, median (min–max) |')
  print('|---|---|---|')
  for e in EVERY:
    ups = [a / b for a, b in zip(means[1], means[e])]
    print(f'| {e} | {1e3 * statistics.median(means[e]):.1f} '
          f'({1e3 * min(means[e]):.1f}–{1e3 * max(means[e]):.1f}) | '
          f'{statistics.median(ups):.3f} ({min(ups):.3f}–{max(ups):.3f}) |')


if __name__ == '__main__':
  main()
