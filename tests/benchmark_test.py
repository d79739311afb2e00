"""benchmarks/coupled_vs_decoupled.py: the smoke sweep end to end, and its
analysis (best cell by validation, separability slope, λ over seeds)."""

import math
import sys

import numpy as np
import pytest

from helpers import read_csv
from helpers import REPO
from helpers import run_benchmark

sys.path.insert(0, str(REPO / 'benchmarks'))
import coupled_vs_decoupled as cvd  # pylint: disable=g-import-not-at-top


def test_smoke_preset_writes_every_output_then_select_reuses_done_cells(
    cifar_small, tmp_path):
  common = ['--preset=smoke', f'--out={tmp_path}',
            f'--data=folder:{cifar_small}']
  result = run_benchmark('coupled_vs_decoupled.py', *common)
  assert result.returncode == 0, result.stderr[-3000:]

  cells = cvd.grid_cells(cvd.PRESETS['smoke'], seed=0)
  rows = read_csv(tmp_path / 'results.csv')
  assert list(rows[0]) == list(cvd.COLUMNS)
  assert sorted((r['method'], float(r['lr']), float(r['l2_weight']),
                 int(r['seed'])) for r in rows) == sorted(cells)
  for row in rows:
    assert cvd.METHODS[row['method']][:2] == (row['optimizer'], row['mode'])
    assert row['diverged'] == 'False'
    assert int(row['epochs']) == cvd.PRESETS['smoke']['config']['num_epochs']
    for key in ('train_accuracy', 'val_accuracy', 'test_accuracy'):
      assert 0 <= float(row[key]) <= 1, (key, row)
    for key in ('train_loss', 'val_loss', 'test_loss', 'weight_norm',
                'wall_seconds', 'train_seconds', 'images_per_second'):
      assert math.isfinite(float(row[key])) and float(row[key]) > 0, (key, row)
    workdir = tmp_path / row['workdir']
    assert (workdir / 'summary.json').exists()
    assert not (workdir / 'checkpoints').exists()  # Dropped once done.
  assert (tmp_path / 'heatmaps.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  report = (tmp_path / 'report.md').read_text()
  for method in cvd.METHODS:
    assert f'\n| {method} |' in report
  for fragment in ('--preset=smoke', 'Machine:', 'jax ', 'flax ', 'optax ',
                   'Run time:', '## Separability', 'seed_cnn_narrow'):
    assert fragment in report, fragment
  assert result.stdout.startswith('[1/')  # One line a cell trained.

  # Selection over seeds {0, 1} at a grid lr: the seed-0 cells are the grid's.
  select = run_benchmark('coupled_vs_decoupled.py', *common, '--select=sgdw')
  assert select.returncode == 0, select.stderr[-3000:]
  weights = cvd.PRESETS['smoke']['l2']['sgdw']
  seeds = cvd.PRESETS['smoke']['select']['seeds']
  assert f'{len(weights)} of {len(weights) * len(seeds)} cells trained' in (
      select.stdout)
  selected = read_csv(tmp_path / 'select_sgdw.csv')
  assert sorted((float(r['l2_weight']), int(r['seed'])) for r in selected) == (
      sorted((w, s) for w in weights for s in seeds))
  assert 'Chosen λ = ' in (tmp_path / 'select_sgdw.md').read_text()
  assert read_csv(tmp_path / 'results.csv') == rows  # The grid's untouched.


def grid(best_l2, learning_rates, weights):
  """Rows whose validation accuracy peaks, in log λ, at best_l2(lr)."""
  return [{'lr': lr, 'l2_weight': w, 'val_loss': 1.0,
           'val_accuracy': 0.5 - abs(math.log(w / best_l2(lr))) if w else 0.0}
          for lr in learning_rates for w in weights]


LEARNING_RATES = (0.0125, 0.025, 0.05, 0.1)


@pytest.mark.parametrize('best_l2, slope', [
    (lambda lr: 2.5e-5 / lr, -1.0),   # Coupled: the decay a step is α λ.
    (lambda lr: 1e-4, 0.0),           # Decoupled: λ alone.
    (lambda lr: 1e-3 * lr**0.5, 0.5),
])
def test_separability_slope_of_grids_with_a_known_answer(best_l2, slope):
  weights = sorted({0.0, 1e-7, 1e-1} | {best_l2(lr) for lr in LEARNING_RATES})
  rows = grid(best_l2, LEARNING_RATES, weights)
  best_by_lr = cvd.best_l2_by_lr(rows)
  assert best_by_lr == pytest.approx({lr: best_l2(lr) for lr in LEARNING_RATES})
  assert cvd.separability_slope(best_by_lr) == pytest.approx(slope, abs=1e-9)


def test_separability_slope_fits_only_rows_whose_best_l2_is_positive():
  # log λ = −log lr + c on the rows with λ > 0; the λ = 0 row is left out.
  best_by_lr = {0.01: 1e-2, 0.1: 1e-3, 1.0: 0.0}
  assert cvd.separability_slope(best_by_lr) == pytest.approx(-1.0)
  # Least squares through log10 λ = −3, −3, −1 at log10 lr = −2, −1, 0:
  expected = np.polyfit([-2, -1, 0], [-3, -3, -1], 1)[0]
  assert cvd.separability_slope({0.01: 1e-3, 0.1: 1e-3, 1.0: 1e-1}) == (
      pytest.approx(expected))
  assert cvd.separability_slope({0.01: 1e-3, 0.1: 0.0}) is None


def test_best_cell_is_chosen_by_validation_accuracy_then_loss_not_test():
  rows = [
      {'lr': 0.1, 'l2_weight': 0.0, 'val_accuracy': 0.6, 'val_loss': 1.0,
       'test_accuracy': 0.9},
      {'lr': 0.1, 'l2_weight': 1e-3, 'val_accuracy': 0.7, 'val_loss': 1.2,
       'test_accuracy': 0.5},
      {'lr': 0.2, 'l2_weight': 1e-3, 'val_accuracy': 0.7, 'val_loss': 1.1,
       'test_accuracy': 0.4},
      {'lr': 0.2, 'l2_weight': 1e-2, 'val_accuracy': math.nan,  # Diverged.
       'val_loss': math.nan, 'test_accuracy': math.nan},
  ]
  assert cvd.best(rows) is rows[2]
  assert cvd.best(rows[3:]) is None
  summary = cvd.method_summary(rows)
  assert summary['zero_same_lr'] is None  # No λ = 0 cell at lr 0.2.
  assert summary['zero_best'] is rows[0]


def test_select_l2_averages_validation_over_seeds():
  # Seed 0 alone would pick λ = 1e-3; the mean over seeds picks 1e-2.
  val = {(0.0, 0): 0.50, (0.0, 1): 0.50, (1e-3, 0): 0.60, (1e-3, 1): 0.40,
         (1e-2, 0): 0.55, (1e-2, 1): 0.55}
  rows = [{'l2_weight': w, 'seed': s, 'val_accuracy': v,
           'test_accuracy': v + 0.01 * s} for (w, s), v in val.items()]
  chosen, stats = cvd.select_l2(rows)
  assert chosen == 1e-2
  mean, std = stats[1e-2]['test_accuracy']
  assert mean == pytest.approx(0.555)
  assert std == pytest.approx(np.std([0.55, 0.56], ddof=1))
