"""benchmarks/regularizers.py: the smoke preset end to end, and the choice
of each method's strength by validation."""

import math

import ml_collections

from benchmarks import regularizers as reg
from benchmarks import sweep
from configs.sweeps import regularizers as presets
from helpers import read_csv
from helpers import run_benchmark


def test_smoke_preset_writes_every_cell_and_the_report(
    cifar_small, tmp_path):
  args = ['--preset=smoke', f'--out={tmp_path}', f'--data=folder:{cifar_small}']
  result = run_benchmark('regularizers', *args)
  assert result.returncode == 0, result.stderr[-3000:]

  cells = reg.cells(presets.get_config('smoke'))
  assert sorted({c.labels['method'] for c in cells}) == sorted(reg.METHODS)
  rows = read_csv(tmp_path / 'results.csv')
  assert list(rows[0]) == list(reg.COLUMNS)
  assert [(r['method'], float(r['l2_weight']), float(r['l1_weight']),
           float(r['dropout']), r['batch_norm'] == 'True')
          for r in rows] == [tuple(c.labels.values()) for c in cells]
  for row in rows:
    assert row['status'] == 'done'
    for key in ('train_accuracy', 'val_accuracy', 'test_accuracy',
                *reg.NOISE_KEYS, 'sparsity'):
      assert 0 <= float(row[key]) <= 1, (key, row)
    for key in ('val_loss', 'weight_norm', 'wall_seconds'):
      assert math.isfinite(float(row[key])) and float(row[key]) > 0, (key, row)
    workdir = tmp_path / row['workdir']
    assert (workdir / 'summary.json').exists()
    assert not (workdir / 'checkpoints').exists()  # Dropped once done.
  # Each cell ran the config its row names.
  summary = sweep.read_json(tmp_path / rows[-1]['workdir'],
                                 'summary.json')
  assert summary['config']['batch_norm'] and summary['config']['l2'] == (
      {**summary['config']['l2'], 'mode': 'coupled',
       'weight': float(rows[-1]['l2_weight'])})
  assert sweep.read_json(tmp_path / rows[0]['workdir'], 'summary.json')[
      'config']['l2']['mode'] == 'none'

  report = (tmp_path / 'report.md').read_text()
  for method in reg.METHODS:
    assert f'\n| {method} |' in report, method
  for fragment in ('--preset=smoke', 'Machine:', 'jax ', 'flax ', 'optax ',
                   'Run time:', '## Reading', 'Sparsity', 'σ 0.1'):
    assert fragment in report, fragment
  assert '\n[1/7] ' in result.stdout  # One line a cell trained.
  # Skipping finished cells on a rerun is the runner's, as benchmark_test
  # drives it.


def row(method, val, val_loss=1.0, test=0.5, **cell):
  return {'method': method, 'val_accuracy': val, 'val_loss': val_loss,
          'test_accuracy': test, **cell}


def test_each_method_gets_its_cell_of_best_validation_accuracy_not_test():
  rows = [
      row('none', 0.40, test=0.45),
      row('l2', 0.42, test=0.30, l2_weight=1e-3),
      row('l2', 0.44, val_loss=1.3, test=0.41, l2_weight=1e-2),
      row('l2', 0.44, val_loss=1.2, test=0.40, l2_weight=3e-2),  # Tie: loss.
      row('l1', 0.30, test=0.60, l1_weight=1e-3),
      row('l1', 0.35, test=0.20, l1_weight=1e-4),
      row('l1', 0.33, test=0.20, l1_weight=3e-3),
      row('dropout', math.nan, val_loss=math.nan, test=math.nan),  # Diverged.
      row('dropout', 0.10, test=0.10, dropout=0.75),
      row('elastic', math.nan, val_loss=math.nan, test=math.nan),
  ]
  chosen = reg.chosen_by_method(rows)
  assert list(chosen) == list(reg.METHODS)
  assert chosen['none'] is rows[0]
  assert chosen['l2'] is rows[3]
  assert chosen['l1'] is rows[5]
  assert chosen['dropout'] is rows[8]
  assert chosen['elastic'] is None  # Every cell diverged.
  assert chosen['l2+dropout'] is None and chosen['l2+batchnorm'] is None
  # The largest λ and the last dropout cell are ends of their grids; `none`
  # has no grid, and l1's choice lies inside its grid.
  assert reg.at_edge(rows, chosen) == ['l2', 'dropout']


def test_elastic_pairs_the_l1_and_l2_grids_and_combos_fix_the_other():
  preset = ml_collections.ConfigDict(dict(
      l2=(1.0, 2.0), l1=(0.1, 0.2), dropout=(0.3,), fixed_dropout=0.5))
  by_method = {}
  for cell in reg.cells(preset):
    method, *strengths = cell.labels.values()
    by_method.setdefault(method, []).append(tuple(strengths))
  assert by_method == {
      'none': [(0.0, 0.0, 0.0, False)],
      'l2': [(1.0, 0.0, 0.0, False), (2.0, 0.0, 0.0, False)],
      'l1': [(0.0, 0.1, 0.0, False), (0.0, 0.2, 0.0, False)],
      'elastic': [(1.0, 0.1, 0.0, False), (2.0, 0.2, 0.0, False)],
      'dropout': [(0.0, 0.0, 0.3, False)],
      'l2+dropout': [(1.0, 0.0, 0.5, False), (2.0, 0.0, 0.5, False)],
      'l2+batchnorm': [(1.0, 0.0, 0.0, True), (2.0, 0.0, 0.0, True)],
  }
