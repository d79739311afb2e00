"""benchmarks/reruns.py: two runs of one preset compared cell by cell."""

import csv
import json

from helpers import run_benchmark

COLUMNS = ('method', 'lr', 'l2_weight', 'seed', 'status', 'val_accuracy')


def write_run(folder, preset: str, accuracies: dict, slope: float) -> str:
  """A run folder as benchmarks.coupled_vs_decoupled leaves it, reduced to
  what reruns reads: `accuracies` {(method, lr, λ, seed): val accuracy}."""
  folder.mkdir()
  with open(folder / 'results.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    for key, accuracy in accuracies.items():
      writer.writerow([*key, 'done', accuracy])
    writer.writerow(['sgd', '0.1', '0.1', '0', 'failed', 'nan'])
  (folder / 'report.md').write_text(f'# A run\n\n- Preset `{preset}` (...)\n')
  interval = {'slope': slope, 'low': slope - 0.1, 'high': slope + 0.2,
              'defined': 1.0}
  (folder / 'analysis.json').write_text(json.dumps(
      {'scale_invariant_share': 0.5, 'sgd': {'slope_vertex': interval}}))
  return str(folder)


def test_cells_and_slopes_of_two_runs_side_by_side(tmp_path):
  keys = [('sgd', '0.01', lam, seed) for lam in ('0.001', '0.01')
          for seed in '01']
  first = dict(zip(keys, (0.50, 0.52, 0.40, 0.41)))
  second = dict(zip(keys, (0.50, 0.53, 0.37, 0.41)))  # Δ 0, +1, −3, 0 points.
  runs = [write_run(tmp_path / 'a', 'cpu_bn', first, -1.0),
          write_run(tmp_path / 'b', 'cpu_bn', second, -0.7)]
  out = tmp_path / 'compare.md'
  result = run_benchmark('reruns', f'--runs={",".join(runs)}', f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  text = out.read_text()
  # 4 cells, 2 equal; |Δ| 0, 0, 1, 3: median 0.5; SD of (0, 1, −3, 0) 1.5.
  assert '| sgd | 4 | 2 | 0.50 | 1.50 | 3.00 |' in text, text
  assert ('| sgd | -1.00 [-1.10, -0.80] | -0.70 [-0.80, -0.50] | +0.30 | '
          '0.30 |') in text, text


def test_runs_of_two_presets_stop_in_one_line(tmp_path):
  runs = [write_run(tmp_path / 'a', 'cpu_bn', {}, -1.0),
          write_run(tmp_path / 'b', 'cpu', {}, 0.0)]
  result = run_benchmark('reruns', f'--runs={",".join(runs)}')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      'reruns: error: the runs are of presets cpu_bn and cpu; compare two '
      'runs of one preset']
