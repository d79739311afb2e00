"""benchmarks/cells_per_hour.py: a row per K for each layer set, and the
steps a cell takes as l2jax.data splits the preset's data."""

import re

from helpers import run_benchmark


def test_report_has_a_row_per_k(tmp_path):
  out = tmp_path / 'cells.md'
  result = run_benchmark('cells_per_hour', '--preset=smoke_bn', '--cells=1',
                         '--layers=flax', '--rounds=1', '--steps=1',
                         f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  report = out.read_text()
  assert '## Layers `flax`' in report, report
  # smoke_bn: 256 of the 45,000 images left after the hold-out, batch 64,
  # one epoch.
  assert '; 4 steps a cell;' in report, report
  rows = [line for line in report.splitlines() if line.startswith('| 1 |')]
  assert len(rows) == 1, report
  per_hour = [float(c) for c in rows[0].split('|')[-3:-1]]
  assert all(c > 0 for c in per_hour), rows


def test_too_many_cells_is_a_one_line_error(tmp_path):
  result = run_benchmark('cells_per_hour', '--preset=smoke_bn', '--cells=1,64',
                         '--layers=flax', f'--out={tmp_path / "cells.md"}')
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert re.search(r'--cells=64: preset smoke_bn has \d+ cells to stack; use '
                   r'values from 1 to \d+', last), result.stderr[-2000:]
  assert not (tmp_path / 'cells.md').exists()
