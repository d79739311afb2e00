"""Two runs of one `benchmarks.coupled_vs_decoupled` preset, side by side:
how far running the same cells again (another code version, another
machine) moves each cell's validation accuracy, and each method's slopes.

    python -m benchmarks.reruns --runs=runs/cvd_cpu_bn,runs/cvd_cpu_bn_rerun \
        --out=benchmarks/results/separability/cpu_bn_rerun/compare.md

The slopes' intervals resample the seeds of one run; where a rerun moves a
slope by more than its interval's width, those intervals understate the
run-to-run spread.
"""

import math
import os
import statistics
import sys

from absl import app
from absl import flags

from benchmarks import regimes
from benchmarks import sweep
from configs.sweeps import coupled_vs_decoupled as presets
from l2jax import outputs

FLAGS = flags.FLAGS
KEY = ('method', 'lr', 'l2_weight', 'seed')


def val_accuracies(run: str) -> dict:
  """{(method, lr, λ, seed): validation accuracy} of a run's finished
  cells."""
  rows = sweep.read_csv(os.path.join(run, 'results.csv'))
  return {tuple(r[k] for k in KEY): r['val_accuracy'] for r in rows
          if r['status'] == 'done' and math.isfinite(r['val_accuracy'])}


def differences(first: dict, second: dict) -> dict:
  """{method: second − first validation accuracy of each cell in both}."""
  by_method = {}
  for key in sorted(first.keys() & second.keys()):
    by_method.setdefault(key[0], []).append(second[key] - first[key])
  return by_method


def report(runs: list, analyses: list, diffs: dict) -> str:
  lines = ['# The same preset run twice', '',
           '    ' + ' '.join(['python -m benchmarks.reruns', *sys.argv[1:]]),
           '', *(f'- Run {i + 1}: `{run}`' for i, run in enumerate(runs)), '',
           '## Cells', '',
           'Validation accuracy of each cell in both runs, run 2 − run 1, in '
           'points.', '',
           '| method | cells in both | equal | median \\|Δ\\| | SD of Δ | '
           'largest \\|Δ\\| |', '|---|---|---|---|---|---|']
  for method in presets.METHODS:
    d = diffs.get(method)
    if not d:
      continue
    lines.append(
        f'| {method} | {len(d)} | {sum(x == 0 for x in d)} | '
        f'{100 * statistics.median(abs(x) for x in d):.2f} | '
        f'{100 * statistics.pstdev(d):.2f} | '
        f'{100 * max(abs(x) for x in d):.2f} |')
  lines += ['', '## Slopes of log best λ against log α (vertex estimator, '
            '95% interval over seeds)', '',
            '| method | run 1 | run 2 | moved | run 1\'s interval width |',
            '|---|---|---|---|---|']
  for method in presets.METHODS:
    slopes = [a[method]['slope_vertex'] if method in a else None
              for a in analyses]
    if None in slopes:
      continue
    moved = width = 'n/a'
    if slopes[0]['slope'] is not None and slopes[1]['slope'] is not None:
      moved = f'{slopes[1]["slope"] - slopes[0]["slope"]:+.2f}'
      width = f'{slopes[0]["high"] - slopes[0]["low"]:.2f}'
    lines.append(f'| {method} | {regimes.slope_text(slopes[0])} | '
                 f'{regimes.slope_text(slopes[1])} | {moved} | {width} |')
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    sys.exit(f'reruns: error: unexpected arguments: {" ".join(argv[1:])}')
  runs = [r for r in FLAGS.runs.split(',') if r]
  if len(runs) != 2:
    sys.exit(f'reruns: error: --runs={FLAGS.runs} must name two run folders')
  for run in runs:
    if not os.path.exists(os.path.join(run, 'analysis.json')):
      sys.exit(f'reruns: error: {run} holds no analysis.json; run '
               'benchmarks.coupled_vs_decoupled with --out there first')
  loaded = [regimes.load(run) for run in runs]
  if loaded[0][0] != loaded[1][0]:
    sys.exit(f'reruns: error: the runs are of presets {loaded[0][0]} and '
             f'{loaded[1][0]}; compare two runs of one preset')
  text = report(runs, [a for _, a in loaded],
                differences(*[val_accuracies(run) for run in runs]))
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    outputs.write_atomic(FLAGS.out, text)
  print(text, end='')


if __name__ == '__main__':
  flags.DEFINE_string('runs', None, 'Two run folders, comma-separated.')
  flags.DEFINE_string('out', None, 'Markdown report to write.')
  flags.mark_flags_as_required(['runs'])
  app.run(main)
