"""benchmarks/throughput.py runs and reports both frameworks on one model."""

import importlib.util
import re

import numpy as np

from helpers import run_benchmark

HAS_TORCH = importlib.util.find_spec('torch') is not None


def test_report_has_every_row_and_equal_parameter_counts(tmp_path):
  out = tmp_path / 'throughput.md'
  result = run_benchmark(
      'throughput', '--model=seed_cnn_narrow', '--batch_size=8',
      '--steps=2', f'--out={out}', '--torch' if HAS_TORCH else '--notorch')
  assert result.returncode == 0, result.stderr[-3000:]
  report = out.read_text()
  assert "l2jax.cpu.configure() applied" in report, report
  rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
          for line in report.splitlines() if line.startswith('| ')}
  for name in ('parameters', 'median step [ms] (min–max)', 'images/s',
               'fraction of matmul GFLOP/s (nominal FLOPs)',
               'peak RSS during [MiB]'):
    assert len(rows[name]) == (2 if HAS_TORCH else 1), (name, report)
  # SeedCNN(16, 32 convolutions, 256 hidden) on 32x32x3, counted by hand.
  expected = (3 * 3 * 3 * 16 + 16) + (3 * 3 * 16 * 32 + 32) + (
      8 * 8 * 32 * 256 + 256) + (256 * 10 + 10)
  assert rows['parameters'] == [f'{expected:,}'] * (2 if HAS_TORCH else 1)
  assert float(rows['images/s'][0]) > 0
  nominal, executed = map(float, re.search(
      r'--layers=flax, direct convolutions\), ([\d.]+) GFLOP .* '
      r'does ([\d.]+) ', report).groups())
  assert nominal > 0 and executed > 0, report
  # The rate is the nominal count over the median step (both rounded).
  median_ms = float(rows['median step [ms] (min–max)'][0].split()[0])
  np.testing.assert_allclose(float(rows['GFLOP/s (nominal FLOPs)'][0]),
                             nominal / median_ms * 1e3, rtol=0.05)
  if HAS_TORCH:
    assert re.search(r'l2jax / PyTorch images/s: \d+\.\d\d', report), report


def test_steps_below_one_is_a_one_line_error():
  result = run_benchmark('throughput', '--steps=0', '--notorch')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      'throughput: error: --steps=0 must be at least 1'), result.stderr[-2000:]
