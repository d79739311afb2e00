"""benchmarks/throughput.py runs and reports both frameworks on one model."""

import importlib.util
import re

import numpy as np

from benchmarks import throughput
from configs import cifar
from helpers import run_benchmark

HAS_TORCH = importlib.util.find_spec('torch') is not None


def test_report_has_every_row_and_round(tmp_path):
  out = tmp_path / 'throughput.md'
  result = run_benchmark(
      'throughput', '--model=seed_cnn_narrow', '--batch_size=8',
      '--rounds=2', '--steps=1', f'--out={out}',
      '--torch' if HAS_TORCH else '--notorch')
  assert result.returncode == 0, result.stderr[-3000:]
  report = out.read_text()
  assert "l2jax.cpu.configure() applied" in report, report
  columns = 2 if HAS_TORCH else 1
  rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
          for line in report.splitlines() if line.startswith('| ')}
  for name in ('parameters', 'mean step [ms] (min–max)',
               'mean step CPU time, all threads [ms]', 'images/s',
               'fraction of matmul GFLOP/s (nominal FLOPs)',
               'peak RSS during [MiB]'):
    assert len(rows[name]) == columns, (name, report)
  # SeedCNN(16, 32 convolutions, 256 hidden) on 32x32x3, counted by hand.
  expected = (3 * 3 * 3 * 16 + 16) + (3 * 3 * 16 * 32 + 32) + (
      8 * 8 * 32 * 256 + 256) + (256 * 10 + 10)
  assert rows['parameters'] == [f'{expected:,}'] * columns
  assert float(rows['images/s'][0]) > 0
  # One row per round: its matmul rate, a mean per column[, ratios].
  assert [len(rows[r]) for r in ('1', '2')] == [1 + columns + 2 * HAS_TORCH] * 2
  nominal, executed = map(float, re.search(
      r'direct convolutions\), ([\d.]+) GFLOP.*timed does ([\d.]+) GFLOP',
      report, re.S).groups())
  assert nominal > 0 and executed > 0, report
  # The rate is the nominal count over the mean step (both rounded).
  mean_ms = float(rows['mean step [ms] (min–max)'][0].split()[0])
  np.testing.assert_allclose(float(rows['GFLOP/s (nominal FLOPs)'][0]),
                             nominal / mean_ms * 1e3, rtol=0.05)
  if HAS_TORCH:
    assert re.search(r'l2jax / PyTorch images/s: \d+\.\d\d \(\d+\.\d\d–'
                     r'\d+\.\d\d over 2 rounds\)', report), report


def measurement(l2jax_rounds, torch_rounds) -> dict:
  """A `throughput.measure` result with these step times (seconds)."""
  column = lambda rounds: {'first_s': 1.0, 'rounds': rounds,
                           'cpu_rounds': rounds, 'rss_before_mib': 1.0,
                           'peak_rss_mib': 2.0, 'parameters': 10}
  return {'columns': {'l2jax': {**column(l2jax_rounds), 'flops': 1e9},
                      'PyTorch': column(torch_rounds)},
          'matmul_gflops': [100.0] * len(l2jax_rounds), 'nominal_flops': 2e9,
          'versions': 'v', 'load_before': 2.0, 'load_after': 3.0,
          'xla_flags': '', 'devices': '1 cpu', 'cores': 2,
          'rounds': len(l2jax_rounds), 'steps': 2, 'configured': True}


def test_ratio_is_the_median_over_rounds_and_the_goal_needs_every_invocation():
  config = cifar.get_config()
  # Per-round ratios of means: 2/1 and 3/2 (median 1.75), then 1.2, 1.4.
  first = measurement([[1.0, 1.0], [2.0, 2.0]], [[2.0, 2.0], [3.0, 3.0]])
  second = measurement([[1.0, 1.0], [1.0, 1.0]], [[1.2, 1.2], [1.4, 1.4]])
  report = throughput.report(config, [first, second])
  assert '| 1 | 2.00–3.00 | 100 | 85.3 | 51.2 | 1.75 (1.50–2.00 over 2 ' \
      'rounds) |' in report, report
  assert '1.30 (1.20–1.40 over 2 rounds)' in report, report
  assert 'Median ratio ≥ 1.5 in 1 of 2 invocations: goal not met.' in report


def test_a_round_counts_every_step_as_images_per_second_does():
  """A round's figure is its mean step: one slow step in three (one that
  measures rotation, say) counts, where the block's median would hide it."""
  config = cifar.get_config()
  # l2jax's mean step 2 s (median 1 s) against PyTorch's 2 s.
  uneven = measurement([[1.0, 1.0, 4.0]], [[2.0, 2.0, 2.0]])
  report = throughput.report(config, [uneven])
  assert 'l2jax / PyTorch images/s: 1.00 (1.00–1.00 over 1 rounds)' in report
  assert '| images/s | 64.0 | 64.0 |' in report, report


def test_steps_below_one_is_a_one_line_error():
  result = run_benchmark('throughput', '--steps=0', '--notorch')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      'throughput: error: --steps=0 must be at least 1'), result.stderr[-2000:]
