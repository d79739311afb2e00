"""The separability slope's estimators on synthetic grids of known slope."""

import json
import math

import numpy as np
import pytest

from benchmarks import separability
from benchmarks import slopes
from benchmarks import sweep
from tests import helpers

LRS = (0.003, 0.01, 0.03, 0.1)  # ×√10 steps… over 33×.


def grid(true_slope: float, noise: float = 0.0, seeds=(0, 1, 2), rng=None,
         width: int = 7, offset: float = 0.37):
  """Rows of validation accuracy 0.6 − 0.02 (log λ − log λ*(α))², λ*(α) =
  0.01 (α / 0.01)^slope, on ×√10 λ grids centred near each row's optimum;
  Gaussian noise per cell and seed."""
  rng = rng or np.random.default_rng(0)
  rows = []
  for lr in LRS:
    centre = math.log(0.01) + true_slope * math.log(lr / 0.01)
    start = round(centre / math.log(math.sqrt(10))) - width // 2
    for k in range(width):
      weight = math.sqrt(10) ** (start + k) * math.exp(offset)
      for seed in seeds:
        acc = 0.6 - 0.02 * (math.log(weight) - centre) ** 2
        rows.append({'lr': lr, 'l2_weight': weight, 'seed': seed,
                     'val_accuracy': acc + noise * rng.normal()})
  return rows


@pytest.mark.parametrize('true_slope', [-1.0, -0.5, 0.0, 1.0])
def test_the_vertex_recovers_a_noise_free_slope_exactly(true_slope):
  rows = grid(true_slope)
  got = slopes.slope(slopes.best_by_lr(rows, (0, 1, 2)))
  assert got == pytest.approx(true_slope, abs=1e-6)
  # The argmax is off by up to half a grid step a row.
  argmax = slopes.slope(slopes.best_by_lr(rows, (0, 1, 2), slopes.argmax))
  assert abs(argmax - true_slope) < 0.5


def test_the_interval_covers_the_true_slope_under_noise():
  """Accuracy noise of 0.4 points a cell and seed, 5 seeds: the vertex's
  95% interval holds −1 in most of 20 grids, and is narrower than 0.6."""
  rng = np.random.default_rng(1)
  covered, widths = 0, []
  for _ in range(20):
    rows = grid(-1.0, noise=0.004, seeds=range(5), rng=rng)
    result = slopes.bootstrap(rows, draws=200, seed=int(rng.integers(1000)))
    covered += result['low'] <= -1.0 <= result['high']
    widths.append(result['high'] - result['low'])
  assert covered >= 16
  assert np.median(widths) < 0.6


def test_an_optimum_at_the_grid_edge_has_no_vertex():
  accuracy = {0.001: 0.50, 0.003: 0.52, 0.01: 0.55}
  assert slopes.at_edge(accuracy) == 'high'
  assert slopes.vertex(accuracy) is None
  assert slopes.at_edge({0.001: 0.56, 0.003: 0.52}) == 'low'
  # Equal neighbours: the vertex is their geometric mean.
  assert slopes.vertex({0.001: 0.5, 0.003: 0.56, 0.01: 0.5}) == (
      pytest.approx(math.sqrt(0.001 * 0.01), rel=1e-6))


def test_unfinished_cells_count_as_missing():
  rows = grid(0.0)
  for row in rows:
    if row['lr'] == LRS[0]:
      row['val_accuracy'] = math.nan
  best = slopes.best_by_lr(rows, (0, 1, 2))
  assert best[LRS[0]] is None
  assert slopes.slope(best) == pytest.approx(0.0, abs=1e-6)


def test_the_total_shrink_at_the_vertex_interpolates_between_cells():
  """Σ s ∝ λ along a row (SGD's decay): at the vertex it is c λ̂."""
  rows = grid(-1.0)
  row = [dict(r, shrink_total=40.0 * r['l2_weight']) for r in rows
         if r['lr'] == 0.01]
  weight = slopes.vertex(slopes.mean_accuracy(row, (0, 1, 2)))
  assert separability.value_at(row, weight) == pytest.approx(40 * weight)
  assert math.isnan(separability.value_at(row, None))
  # A results.csv from before a column: nan, not an error.
  assert math.isnan(separability.value_at(row, weight, 'angle_mean'))


def test_a_peak_is_measured_on_seeds_that_did_not_choose_it():
  """A row that lifts accuracy by 3 points over λ = 0 in every seed has a
  peak of 3 (a narrow interval); a flat noisy row's interval reaches 0,
  though the best of its own noisy means sits above λ = 0."""
  rng = np.random.default_rng(0)
  peaked = [dict(r, val_accuracy=r['val_accuracy'] + 0.001 * r['seed'])
            for r in grid(0.0) if r['lr'] == 0.01]
  peaked += [{'lr': 0.01, 'l2_weight': 0.0, 'seed': s,
              'val_accuracy': 0.57 + 0.001 * s} for s in (0, 1, 2)]
  p = separability.peak_height(peaked)
  assert p['height'] == pytest.approx(0.6 - 0.02 * 0.37 ** 2 - 0.57)
  assert p['low'] == pytest.approx(p['height'])  # The same lift each seed.
  flat = [dict(r, val_accuracy=0.5 + 0.01 * rng.normal()) for r in peaked]
  own_best = max(slopes.mean_accuracy(flat, (0, 1, 2)).values())
  zero = np.mean([r['val_accuracy'] for r in flat if r['l2_weight'] == 0])
  p = separability.peak_height(flat)
  assert own_best > zero and p['low'] < 0 < p['high']


@pytest.mark.parametrize('method, share, want', [
    ('sgd', 0.97, '-1'), ('sgdw', 0.97, '+0'), ('adam', 0.97, '-2'),
    ('adamw', 0.97, '+0'), ('sgd', 0.0, '+0'), ('adamw', 0.0, '+1'),
    ('adam', 0.5, 'between')])
def test_the_mechanism_slope_by_method_and_share(method, share, want):
  assert separability.expected(method, share) == want


def test_rotation_columns_read_a_cells_metrics(tmp_path):
  """Two epochs of 10 steps, two scale-invariant groups and a classifier:
  the columns by hand (medians over the invariant groups, Σ over steps)."""
  epochs = [(0.02, 0.04, 0.01, 1e-3, 0.2, 0.4), (0.01, 0.03, 0.02, 5e-4, 0.1,
                                                 0.3)]
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    for i, (a, b, equilibrium, shrink, share_a, share_b) in enumerate(epochs,
                                                                     1):
      f.write(json.dumps({
          'epoch': i, 'step': 10 * i,
          'angular_update/Conv_0': a, 'angular_update/Conv_1': b,
          'angular_update/Dense_0': 0.5, 'decay_share/Conv_0': share_a,
          'decay_share/Conv_1': share_b, 'decay_share/Dense_0': 0.9,
          **{f'angular_update_equilibrium/{g}': equilibrium
             for g in ('Conv_0', 'Conv_1', 'Dense_0')},
          **{f'shrink/{g}': shrink for g in ('Conv_0', 'Conv_1', 'Dense_0')},
          'scale_invariant/Conv_0': True, 'scale_invariant/Conv_1': True,
          'scale_invariant/Dense_0': False}) + '\n')
  got = separability.rotation_columns(str(tmp_path))
  assert got['angle_mean'] == pytest.approx((0.03 + 0.02) / 2)
  assert got['decay_share'] == pytest.approx((0.3 + 0.2) / 2)
  assert got['shrink_total'] == pytest.approx(10 * 1e-3 + 10 * 5e-4)
  assert got['angle_last'] == pytest.approx(0.02)
  assert got['angle_equilibrium_last'] == pytest.approx(0.02)
  assert got['angle_ratio_last'] == pytest.approx(1.0)
  assert got['angle_ratio_mid'] == pytest.approx(3.0)  # Epoch 1: 0.03/0.01.
  assert all(math.isnan(v) for v in
             separability.rotation_columns(str(tmp_path / 'none')).values())


def test_the_command_fits_the_rows_it_is_given(tmp_path):
  """A −1 grid whose slowest row's optimum is moved 10× lower: over all
  rows the slope is the least-squares line through the moved optima; over
  the other three, exactly −1. A
  method the file lacks is one error line naming what it has."""
  rows = [dict(r, method='sgd') for r in grid(-1.0)]
  for r in rows:
    if r['lr'] == LRS[0]:
      r['l2_weight'] /= 10
  path = str(tmp_path / 'results.csv')
  sweep.write_csv(rows, ['method', 'lr', 'l2_weight', 'seed', 'val_accuracy'],
                  path)
  fewer = helpers.run_benchmark('slopes', f'--results={path}', '--method=sgd',
                                '--lrs=' + ','.join(map(str, LRS[1:])))
  assert fewer.returncode == 0, fewer.stderr
  assert 'sgd vertex: slope -1.00 [-1.00, -1.00] over 3 seeds' in fewer.stdout
  every = helpers.run_benchmark('slopes', f'--results={path}', '--method=sgd')
  optima = [0.01 * (lr / 0.01) ** -1 / (10 if lr == LRS[0] else 1)
            for lr in LRS]
  want = np.polyfit(np.log(LRS), np.log(optima), 1)[0]
  assert f'sgd vertex: slope {want:+.2f} ' in every.stdout
  missing = helpers.run_benchmark('slopes', f'--results={path}',
                                  '--method=adamw')
  assert missing.returncode == 1
  assert missing.stderr.strip().splitlines()[-1] == (
      "slopes: error: no decayed cells of method 'adamw' at lr None; the "
      "file has methods ['sgd']")
