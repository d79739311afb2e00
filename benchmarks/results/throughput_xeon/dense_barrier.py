"""Each model's l2jax step with and without the barred Dense products.

    python benchmarks/results/throughput_xeon/dense_barrier.py \
        > benchmarks/results/throughput_xeon/dense_barrier.md

`models.CPU_TUNED` (Dense through `l2jax.cpu.layers.dot_general`, whose
product YNNPACK runs alone) against the same layer set with flax's own
`nn.Dense` (YNNPACK's fusion then takes in the bias sum, and in the backward
the pooling gradient's broadcast): `benchmarks.throughput`'s l2jax column
for both, batch 128, interleaved (`timing.interleave`: 8 rounds of 8 steps
after each one's first and 5 more), the speed-up being each round's ratio
of mean steps, median (min–max) over the rounds.
"""

import os
import statistics
import sys

sys.path.insert(0, os.getcwd())
from l2jax import cpu  # pylint: disable=g-import-not-at-top

cpu.configure()
import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top

from benchmarks import sweep  # pylint: disable=g-import-not-at-top
from benchmarks import throughput  # pylint: disable=g-import-not-at-top
from benchmarks import timing  # pylint: disable=g-import-not-at-top
from configs import cifar  # pylint: disable=g-import-not-at-top
from l2jax import models  # pylint: disable=g-import-not-at-top

MODELS = (('seed_cnn', False), ('seed_cnn', True), ('seed_cnn_narrow', False),
          ('seed_cnn_narrow', True), ('resnet20', False), ('allconv_bn', False),
          ('vgg11', False), ('vgg16', False))
ROUNDS, STEPS = 8, 8


def compare(name: str, batch_norm: bool) -> tuple:
  config = cifar.get_config()
  config.model, config.batch_norm = name, batch_norm
  data = timing.synthetic_data(config.batch_size)
  barred = models.CPU_TUNED
  columns = {}
  # The layer set is read when the model is built (models.from_config).
  models.CPU_TUNED = barred._replace(dense=nn.Dense)
  try:
    columns['nn.Dense'] = throughput.l2jax_column(config, data)[0]
    columns['nn.Dense']()  # One more warm-up call (the report's run had it).
  finally:
    models.CPU_TUNED = barred
  columns['barred'] = throughput.l2jax_column(config, data)[0]
  result = timing.interleave(columns, ROUNDS, STEPS, timing.matmul_step())
  means = {k: [statistics.fmean(block) for block in v['rounds']]
           for k, v in result['columns'].items()}
  ratios = sorted(a / b for a, b in zip(means['nn.Dense'], means['barred']))
  return (1e3 * statistics.median(means['nn.Dense']),
          1e3 * statistics.median(means['barred']),
          statistics.median(ratios), ratios[0], ratios[-1])


def main():
  throughput.flags.FLAGS(sys.argv[:1])
  print('# Dense products alone in YNNPACK: each step with and without\n')
  print(f'    python {" ".join(sys.argv)}\n')
  print(f'- Machine: {sweep.cpu_model()}, {os.cpu_count()} cores; jax '
        f'{jax.__version__}')
  print(f'- l2jax\'s step (benchmarks.throughput), batch 128, {ROUNDS} '
        f'interleaved rounds of {STEPS} steps; median of the rounds\' mean '
        'steps, ms; speed-up: median (min–max) of the rounds\' ratios\n')
  print('| model | nn.Dense | l2jax.cpu.layers.dot_general | speed-up |')
  print('|---|---|---|---|')
  for name, batch_norm in MODELS:
    before, after, ratio, low, high = compare(name, batch_norm)
    print(f'| {name}{" with batch norm" if batch_norm else ""} | '
          f'{before:.1f} | {after:.1f} | {ratio:.2f} ({low:.2f}–{high:.2f}) |',
          flush=True)


if __name__ == '__main__':
  main()
