"""Coupled against decoupled decay in several regimes, side by side: the
reports of `benchmarks.coupled_vs_decoupled` runs, one per preset, joined
into one report with the regimes ordered by their scale-invariant share.

    python -m benchmarks.regimes --runs=runs/cvd_cpu_bn,runs/cvd_cpu_mixed,runs/cvd_cpu \
        --out=benchmarks/results/separability

Copies each run's report, results and figures into OUT/<preset>/ (unless
they are there already: `--runs=OUT/cpu_bn,...` rebuilds the joined report
of committed runs) and writes OUT/report.md (`--report`) from their
analysis.json files.
"""

import json
import os
import shutil
import sys

from absl import app
from absl import flags

from benchmarks import separability
from configs.sweeps import coupled_vs_decoupled as presets
from l2jax import outputs

FLAGS = flags.FLAGS
FILES = ('report.md', 'results.csv', 'analysis.json', 'heatmaps.png',
         'collapse.png', 'angles.png')


def load(run: str) -> tuple:
  """(preset name, analysis) of one run folder."""
  with open(os.path.join(run, 'analysis.json')) as f:
    analysis = json.load(f)
  with open(os.path.join(run, 'report.md')) as f:
    preset = next(line.split('`')[1] for line in f
                  if line.startswith('- Preset `'))
  return preset, analysis


def slope_text(s: dict) -> str:
  if s['slope'] is None:
    return 'n/a'
  return f'{s["slope"]:+.2f} [{s["low"]:+.2f}, {s["high"]:+.2f}]'


def _gain(g: dict) -> str:
  if g['gain'] is None:
    return 'n/a'
  return (f'{100 * g["gain"]:+.2f} [{100 * g["low"]:+.2f}, '
          f'{100 * g["high"]:+.2f}]')


def _ratio(q: dict) -> str:
  if not q.get('n'):
    return 'n/a'
  return f'{q["median"]:.2f} ({100 * q["within_20pct"]:.0f}% within 20%)'


def _section(title: str, regimes: list, text) -> list:
  """A table: one row per method, one column per regime, `text` of each
  method's analysis."""
  head = ' | '.join(f'`{p}` ({100 * a["scale_invariant_share"]:.0f}% '
                    'invariant)' for p, a in regimes)
  lines = ['', f'## {title}', '', f'| method | {head} |',
           '|---' * (len(regimes) + 1) + '|']
  for method in presets.METHODS:
    lines.append(f'| {method} | ' + ' | '.join(
        text(a[method]) if method in a else '–' for _, a in regimes) + ' |')
  return lines


def report(regimes: list, command: str) -> str:
  """regimes: [(preset, analysis)], highest scale-invariant share first;
  command: the one that joined them."""
  head = ' | '.join(f'`{p}` ({100 * a["scale_invariant_share"]:.0f}% '
                    'invariant)' for p, a in regimes)
  rule = '|---' * (len(regimes) + 2) + '|'
  lines = ['# Separability across regimes', '', f'    {command}', '',
           'Each column is one `benchmarks.coupled_vs_decoupled` preset (its '
           'own report, figures and every cell in the folder of its name); '
           'the header gives the share of the decayed parameters that are '
           'scale-invariant. Intervals are 95%, from resampling the seeds.',
           '', '## Slope of log best λ against log α (vertex estimator)', '',
           f'| method | paper | {head} |', rule]
  for method, (_, mode) in presets.METHODS.items():
    cells = [(slope_text(a[method]['slope_vertex']) + ' (mechanism: '
              + separability.expected(method, a['scale_invariant_share'])
              + ')')
             if method in a else '–' for _, a in regimes]
    lines.append(f'| {method} | {separability.PAPER_SLOPE[mode]:+.0f} | '
                 + ' | '.join(cells) + ' |')
  lines += _section('The same slopes by the argmax', regimes,
                    lambda a: slope_text(a['slope_argmax']))
  lines += _section('Test accuracy gain of the best cell over λ = 0 (points)',
                    regimes, lambda a: _gain(a['gain']))
  lines += _section('Each row\'s vertex λ̂, by lr', regimes,
                    lambda a: separability.by_lr_text(a['vertex'], '.3g'))
  lines += _section(
      'Each row\'s peak: validation points its best λ adds over λ = 0, '
      'chosen on the other seeds, by lr', regimes,
      lambda a: ', '.join(f'{float(lr):g}: {separability.peak_text(p)}'
                          for lr, p in a['peak'].items()))
  lines += _section('Total shrink Σ_t s_t at each row\'s vertex λ̂, by lr',
                    regimes,
                    lambda a: separability.by_lr_text(a['shrink_at_vertex'],
                                                      '.2f'))
  lines += _section(
      'Mean Δθ of the scale-invariant kernels at each row\'s vertex λ̂, by '
      'lr (– where the cells\' metrics were not kept)', regimes,
      lambda a: separability.by_lr_text(
          a.get('angle_at_vertex', dict.fromkeys(a['vertex']))))
  lines += _section(
      'Measured Δθ over the equilibrium Δθ* (scale-invariant groups, cells '
      'with Σ_t s_t ≥ 5), mid-training and last epoch', regimes,
      lambda a: (f'mid {_ratio(a["angle_ratio_mid"])}; last '
                 f'{_ratio(a["angle_ratio_last"])}'))
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    sys.exit(f'regimes: error: unexpected arguments: {" ".join(argv[1:])}')
  runs = [r for r in FLAGS.runs.split(',') if r]
  regimes = []
  for run in runs:
    if not os.path.exists(os.path.join(run, 'analysis.json')):
      sys.exit(f'regimes: error: {run} holds no analysis.json; run '
               'benchmarks.coupled_vs_decoupled with --out there first')
    regimes.append(load(run))
  regimes.sort(key=lambda r: -(r[1]['scale_invariant_share'] or 0))
  os.makedirs(FLAGS.out, exist_ok=True)
  for run, (preset, _) in zip(runs, [load(r) for r in runs]):
    folder = os.path.join(FLAGS.out, preset)
    os.makedirs(folder, exist_ok=True)
    if os.path.realpath(run) != os.path.realpath(folder):
      for name in FILES:
        shutil.copy(os.path.join(run, name), folder)
  text = report(regimes, f'python -m benchmarks.regimes --runs={FLAGS.runs} '
                 f'--out={FLAGS.out} --report={FLAGS.report}')
  outputs.write_atomic(os.path.join(FLAGS.out, FLAGS.report), text)
  print(text, end='')


if __name__ == '__main__':
  flags.DEFINE_string('runs', None, 'Run folders, comma-separated.')
  flags.DEFINE_string('out', None, 'Where the joined report goes.')
  flags.DEFINE_string('report', 'report.md', "The joined report's file name "
                      'in --out.')
  flags.mark_flags_as_required(['runs', 'out'])
  app.run(main)
