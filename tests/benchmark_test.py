"""benchmarks/coupled_vs_decoupled.py through the sweep runner: the
batch-norm smoke preset end to end, the local executor against the inline
one, the first grid, its widening and λ's selection. (The no-BN smoke preset,
killed and resumed: benchmark_rerun_test.py.)"""

import json
import math

import jax
import pytest

from benchmarks import coupled_vs_decoupled as cvd
from benchmarks import selection
from configs import cifar
from configs.sweeps import coupled_vs_decoupled as presets
from helpers import read_csv
from helpers import run_benchmark
from helpers import sweep_args
from l2jax import equilibrium
from l2jax import models
from l2jax import regularization

TIMING = ('wall_seconds', 'train_seconds', 'images_per_second')
OUTPUTS = ('results.csv', 'analysis.json', 'report.md', 'heatmaps.png',
           'collapse.png', 'angles.png')


def untimed(rows):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.fixture(scope='module')
def smoke_bn(cifar_small, tmp_path_factory):
  """The batch-norm smoke sweep inline; then its `adam` cells alone
  (--methods) through submitit's local executor, two jobs at once."""
  inline = tmp_path_factory.mktemp('inline')
  runs = {'inline': (inline, run_benchmark(
      'coupled_vs_decoupled', *sweep_args(inline, cifar_small, 'smoke_bn')))}
  local = tmp_path_factory.mktemp('local') / 'sweep'
  runs['local'] = (local, run_benchmark(
      'coupled_vs_decoupled', *sweep_args(local, cifar_small, 'smoke_bn'),
      '--executor=local', '--parallel=2', '--methods=adam'))
  return runs


def test_smoke_bn_writes_every_output_with_the_rotation_measures(smoke_bn):
  out, result = smoke_bn['inline']
  assert result.returncode == 0, result.stderr[-3000:]
  for name in OUTPUTS:
    assert (out / name).exists(), name
  rows = read_csv(out / 'results.csv')
  assert list(rows[0]) == list(cvd.COLUMNS)
  preset = presets.get_config('smoke_bn')
  assert {(r['method'], float(r['lr']), float(r['l2_weight']))
          for r in rows} == {(c.labels['method'], c.labels['lr'],
                              c.labels['l2_weight'])
                             for c in cvd.first_grid(preset)}
  for row in rows:
    assert row['status'] == 'done', row
    assert float(row['scale_invariant_share']) > 0.9  # allconv_bn.
    decayed = float(row['l2_weight']) > 0
    assert (float(row['shrink_total']) > 0) == decayed
    assert math.isfinite(float(row['angle_last']))
    assert float(row['angle_mean']) > 0
    # Recorded under coupled Adam alone (NaN compares False).
    assert (float(row['decay_share']) > 0) == (
        row['method'] == 'adam' and decayed)
    assert math.isfinite(float(row['angle_equilibrium_last'])) == decayed
  # λ = 0 is one cell per optimizer, shared by its two methods' rows.
  zero = [r['workdir'] for r in rows if float(r['l2_weight']) == 0]
  assert len(zero) == 2 * len(set(zero))
  report = (out / 'report.md').read_text()
  for fragment in ('smoke preset', '## Separability', '## Gain',
                   '## The mechanism', 'Scale-invariant share', 'Machine:',
                   '--preset=smoke_bn'):
    assert fragment in report, fragment
  analysis = json.loads((out / 'analysis.json').read_text())
  assert set(preset.methods) <= set(analysis)


def test_the_local_executor_gives_the_inline_results(smoke_bn):
  (inline, _), (local, result) = smoke_bn['inline'], smoke_bn['local']
  assert result.returncode == 0, result.stderr[-3000:]
  assert '2 of 2 cells to train' in result.stdout, result.stdout
  assert untimed(read_csv(local / 'results.csv')) == untimed(
      r for r in read_csv(inline / 'results.csv') if r['method'] == 'adam')
  assert (local / 'submitit').is_dir()  # submitit's job records.


def test_a_report_rebuilt_from_results_csv_alone_has_the_same_analysis(
    smoke_bn, tmp_path):
  """A committed report keeps results.csv but not the cells: --report_only
  reads it instead, to the same analysis."""
  inline, _ = smoke_bn['inline']
  for name in ('results.csv', 'angles.png'):
    (tmp_path / name).write_bytes((inline / name).read_bytes())
  result = run_benchmark('coupled_vs_decoupled', '--preset=smoke_bn',
                         f'--out={tmp_path}', '--report_only')
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((tmp_path / 'analysis.json').read_text()) == json.loads(
      (inline / 'analysis.json').read_text())
  assert (tmp_path / 'angles.png').read_bytes() == (
      inline / 'angles.png').read_bytes()
  empty = tmp_path / 'empty'
  empty.mkdir()
  result = run_benchmark('coupled_vs_decoupled', '--preset=smoke_bn',
                         f'--out={empty}', '--report_only')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].endswith(
      'holds neither cells/ nor results.csv: run the preset there first '
      '(without --report_only)'), result.stderr


def test_methods_the_preset_does_not_run_stop_in_one_line():
  preset = presets.get_config('smoke_bn')  # adam, adamw.
  assert cvd.only(preset, ['adamw']) == ('adamw',)
  with pytest.raises(SystemExit) as stop:
    cvd.only(preset, ['adam', 'sgd'])
  assert stop.value.code == (
      'coupled_vs_decoupled: error: --methods=adam,sgd: preset smoke_bn does '
      'not run sgd; it runs adam,adamw')


def rows_for(method, lr, accuracy_by_weight, shrink=1000.0):
  return [{'method': method, 'lr': lr, 'l2_weight': w, 'seed': s,
           'val_accuracy': a, 'shrink_total': shrink * w}
          for w, a in accuracy_by_weight.items() for s in (0, 1)]


def test_widening_adds_a_step_beyond_an_edge_and_stops_where_decay_fades():
  preset = presets.get_config('cpu_bn')
  preset.seeds = (0, 1)
  interior = rows_for('sgd', 0.01, {1e-3: 0.5, 3.16e-3: 0.6, 1e-2: 0.5})
  high = rows_for('sgdw', 0.01, {1e-3: 0.5, 3.16e-3: 0.55, 1e-2: 0.6})
  low = rows_for('adamw', 1e-3, {1e-3: 0.6, 3.16e-3: 0.55, 1e-2: 0.5})
  # Σ s_t = 0.1 at its lowest λ: a step lower would be below 0.05.
  faded = rows_for('adam', 1e-3, {1e-3: 0.6, 3.16e-3: 0.5}, shrink=100.0)
  new = cvd.widen(interior + high + low + faded, preset)
  assert sorted((c.labels['method'], c.labels['l2_weight'], c.labels['seed'])
                for c in new) == [('adamw', 3.16e-4, 0), ('adamw', 3.16e-4, 1),
                                  ('sgdw', 3.16e-2, 0), ('sgdw', 3.16e-2, 1)]


def test_a_row_whose_vertex_is_clipped_to_its_top_is_widened_upward():
  """The argmax has a neighbour on both sides, but the parabola through it
  still rises past the top cell (cpu_bn_adam_convs' lr 3e-3 row)."""
  preset = presets.get_config('cpu_bn')
  preset.seeds = (0, 1)
  row = rows_for('adam', 3e-3, {3.16e-4: 0.5516, 1e-3: 0.5509,
                                3.16e-3: 0.5566, 1e-2: 0.5555})
  assert cvd.widen(row, preset) == [cvd.cell('adam', 3e-3, 3.16e-2, s)
                                    for s in (0, 1)]
  inside = rows_for('adam', 3e-3, {1e-3: 0.50, 3.16e-3: 0.60, 1e-2: 0.59})
  assert not cvd.widen(inside, preset)


@pytest.mark.parametrize('name', ['cpu_bn', *presets.VARIANTS])
def test_first_grid_centres_each_row_on_the_guess(name):
  preset = presets.get_config(name)
  cells = cvd.first_grid(preset)
  weights = {}
  for c in cells:
    if c.labels['l2_weight'] and c.labels['seed'] == 0:
      weights.setdefault((c.labels['method'], c.labels['lr']), []).append(
          c.labels['l2_weight'])
  for method in preset.methods:
    lrs = preset.lr[presets.METHODS[method][0]]
    start, guess = preset.l2[method]
    for lr in lrs:
      row = sorted(weights[method, lr])
      assert len(row) == preset.points
      centre = row[len(row) // 2]
      want = start * (lr / lrs[0]) ** guess
      assert abs(math.log10(centre / want)) <= 0.25 + 1e-9  # ½ a ×√10 step.
      ratios = [b / a for a, b in zip(row, row[1:])]
      assert all(abs(r - math.sqrt(10)) < 0.02 for r in ratios)


@pytest.mark.parametrize('name, part, share', [
    ('cpu_bn_adam_head', {'Dense_0'}, 0.0),
    ('cpu_bn_adam_convs', {'Conv_0', 'Conv_1', 'Conv_2'}, 1.0),
    ('cpu_bn_sgd_convs', {'Conv_0', 'Conv_1', 'Conv_2'}, 1.0)])
def test_the_part_presets_decay_the_head_alone_or_the_convolutions_alone(
    name, part, share):
  train = presets.get_config(name).train
  model = models.from_config(train, 10)
  x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  params = variables['params']
  mask = regularization.resolve_mask(train.l2.mask, params)
  chosen = {'/'.join(k.key for k in path) for path, m in
            jax.tree_util.tree_flatten_with_path(mask)[0] if m}
  assert chosen == {f'{group}/kernel' for group in part}
  invariant = equilibrium.scale_invariant_groups(model, variables, x, 'batch')
  assert equilibrium.invariant_share(params, mask, invariant) == share
  assert {g for g, v in invariant.items() if v} == {'Conv_0', 'Conv_1',
                                                     'Conv_2'}


def test_selection_by_folds_and_by_seeds():
  """k-fold picks by the mean over folds; one fold (folds=1) is the hold-out
  rule of the mean over seeds. A λ with an unfinished cell is never chosen."""
  holdout = [{'l2_weight': w, 'seed': s, 'val_accuracy': a,
              'test_accuracy': 0.5}
             for w, accs in ((0.0, (0.50, 0.52)), (1e-3, (0.55, 0.53)),
                             (1e-2, (0.60, math.nan)))
             for s, a in enumerate(accs)]
  by_seed = selection.spreads(holdout)
  assert selection.choose(by_seed) == 1e-3
  assert by_seed[1e-3] == pytest.approx((0.54, math.sqrt(2e-4)))
  folds = [{'l2_weight': w, 'seed': 0, 'val_accuracy': a}
           for w, accs in ((0.0, (0.6, 0.7, 0.65)), (1e-3, (0.5, 0.5, 0.5)))
           for a in accs]
  assert selection.choose(selection.spreads(folds)) == 0.0
  made = selection.cells(lambda w, s, o, x: (w, s, tuple(o.items()), x),
                         (0.0, 1e-3), (0, 1), folds=3)
  assert made['holdout'] == [(0.0, 0, (), ''), (0.0, 1, (), ''),
                             (1e-3, 0, (), ''), (1e-3, 1, (), '')]
  assert made['folds'][:3] == [
      (0.0, 0, (('folds', 3), ('fold', i)), f'_fold{i}of3') for i in range(3)]
  assert 'folds' not in selection.cells(lambda *a: a, (0.0,), (0,), folds=1)


@pytest.mark.parametrize('name', presets.PRESETS)
def test_every_preset_measures_rotation_in_every_step(name):
  """The study's epoch means of Δθ, s and Δθ* (benchmarks.separability)
  are over every step, as its committed results were made; a run's default
  samples every tenth."""
  assert presets.get_config(name).train.rotation_every_steps == 1
  assert cifar.get_config().rotation_every_steps != 1
