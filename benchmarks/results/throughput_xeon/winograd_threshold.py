"""Each network's step with Winograd's convolutions from N channels.

    python benchmarks/results/throughput_xeon/winograd_threshold.py \
        > benchmarks/results/throughput_xeon/winograd_threshold.md

For each network, `benchmarks.throughput`'s l2jax column built (and
compiled) once per `l2jax.cpu.layers.WINOGRAD_MIN_CHANNELS` (16, 32, 64,
and 1024: no Winograd), then timed interleaved (`timing.interleave`: 6
rounds of 5 steps each, the order alternating); per round the mean step,
and each threshold's speed-up over 16, median over rounds (min–max).
"""

import os
import statistics
import sys

sys.path.insert(0, os.getcwd())
from l2jax import cpu  # pylint: disable=g-import-not-at-top

cpu.configure()
from benchmarks import sweep, throughput, timing  # pylint: disable=g-import-not-at-top
from configs import cifar  # pylint: disable=g-import-not-at-top
from l2jax.cpu import layers  # pylint: disable=g-import-not-at-top

THRESHOLDS = (16, 32, 64, 1024)
MODELS = (('resnet20', False), ('allconv_bn', False), ('seed_cnn_narrow', False),
          ('seed_cnn_narrow', True), ('seed_cnn', False), ('vgg11', False))


def measure(model: str, batch_norm: bool) -> dict:
  columns = {}
  for threshold in THRESHOLDS:
    layers.WINOGRAD_MIN_CHANNELS = threshold
    config = cifar.get_config()
    config.model, config.batch_norm = model, batch_norm
    step, _ = throughput.l2jax_column(
        config, timing.synthetic_data(config.batch_size))
    step()  # Traced and compiled under this threshold.
    columns[threshold] = step
  result = timing.interleave(columns, rounds=6, steps=5,
                             reference=timing.matmul_step())['columns']
  return {t: [statistics.fmean(b) for b in result[t]['rounds']]
          for t in THRESHOLDS}


def main():
  print('# Winograd from N channels in and out\n')
  print(f'    python {" ".join(sys.argv)}\n')
  print(f'- Machine: {sweep.cpu_model()}, {os.cpu_count()} cores; load '
        f'average {os.getloadavg()[0]:.2f} at the start')
  print('- Step: `benchmarks.throughput`\'s l2jax column (batch 128, SGD '
        'momentum 0.9, coupled L2, layers cpu_tuned), 6 interleaved rounds '
        'of 5 steps each; 1024: no Winograd convolution\n')
  print('| network | ' + ' | '.join(f'from {t}: mean step [ms]'
                                     for t in THRESHOLDS)
        + ' | ' + ' | '.join(f'speed-up of {t} over 16' for t in THRESHOLDS[1:])
        + ' |')
  print('|---' * (1 + 2 * len(THRESHOLDS) - 1) + '|')
  for model, batch_norm in MODELS:
    means = measure(model, batch_norm)
    ups = {t: [a / b for a, b in zip(means[16], means[t])]
           for t in THRESHOLDS[1:]}
    print(f'| {model}{" + BN" if batch_norm else ""} | '
          + ' | '.join(f'{1e3 * statistics.median(means[t]):.1f}'
                       for t in THRESHOLDS) + ' | '
          + ' | '.join(f'{statistics.median(u):.2f} ({min(u):.2f}–'
                       f'{max(u):.2f})' for u in ups.values()) + ' |',
          flush=True)


if __name__ == '__main__':
  main()
