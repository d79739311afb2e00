"""L2 beside other regularizers, each at the strength validation picks.

    python -m benchmarks.regularizers --preset=cpu --out=runs/reg \
        --data=folder:data/cifar10-jpeg

Seven methods on configs/cifar.py's network and SGD with momentum: `none`,
`l2` (coupled, λ), `l1` (λ₁ Σ|w| in the loss), `elastic` (λ₁ and λ paired by
index from the L1 and L2 grids: one strength scaling both), `dropout` (rate
before the last Dense), `l2+dropout` (the λ grid at the preset's fixed rate)
and `l2+batchnorm` (the λ grid with BatchNorm after each convolution). Each
cell is a run of `benchmarks.sweep` in its own workdir under `--out/cells/`;
each method's strength is the cell of best validation accuracy. Presets:
configs/sweeps/regularizers.py. Writes to `--out`:

- `results.csv`: every cell: validation, clean and noisy test accuracy
  (`config.noise_sigmas`), sparsity (share of kernel weights with
  |w| < 1e-3), ‖w‖₂ over the kernels;
- `report.md`: the chosen cell of each method, the command, machine,
  versions and run time, and a reading of the numbers against `none`.
"""

import os
import time

from absl import app
from absl import flags
from benchmarks import cli
from benchmarks import sweep
from configs import cifar
from configs.sweeps import regularizers as presets
from l2jax import outputs
from l2jax.errors import L2JaxError

FLAGS = flags.FLAGS
METHODS = ('none', 'l2', 'l1', 'elastic', 'dropout', 'l2+dropout',
           'l2+batchnorm')
NOISE_KEYS = tuple(f'test_accuracy_noise{s:g}'
                   for s in cifar.get_config().noise_sigmas)
METRICS = ('train_accuracy', 'val_accuracy', 'val_loss', 'test_accuracy',
           *NOISE_KEYS, 'sparsity', 'weight_norm')
LABELS = ('method', 'l2_weight', 'l1_weight', 'dropout', 'batch_norm')
COLUMNS = (*LABELS, 'status', *METRICS, 'wall_seconds', 'error', 'workdir')


def cell(method: str, l2_weight=0.0, l1_weight=0.0, dropout=0.0,
         batch_norm=False) -> sweep.Cell:
  labels = dict(zip(LABELS, (method, l2_weight, l1_weight, dropout,
                             batch_norm)))
  return sweep.Cell(
      f'{method}/l2{l2_weight:g}_l1{l1_weight:g}_drop{dropout:g}'
      f'_bn{int(batch_norm)}',
      {'l2.mode': 'coupled' if l2_weight else 'none', 'l2.weight': l2_weight,
       'l1.weight': l1_weight, 'dropout': dropout, 'batch_norm': batch_norm},
      labels)


def cells(preset) -> list:
  l2, l1, rates = preset.l2, preset.l1, preset.dropout
  return ([cell('none')]
          + [cell('l2', l2_weight=w) for w in l2]
          + [cell('l1', l1_weight=w) for w in l1]
          + [cell('elastic', l2_weight=w2, l1_weight=w1)
             for w1, w2 in zip(l1, l2)]
          + [cell('dropout', dropout=r) for r in rates]
          + [cell('l2+dropout', l2_weight=w, dropout=preset.fixed_dropout)
             for w in l2]
          + [cell('l2+batchnorm', l2_weight=w, batch_norm=True) for w in l2])


def chosen_by_method(rows: list) -> dict:
  return {m: sweep.best([r for r in rows if r['method'] == m])
          for m in METHODS}


def strength(row: dict) -> str:
  parts = [f'λ {row["l2_weight"]:g}' if row['l2_weight'] else '',
           f'λ₁ {row["l1_weight"]:g}' if row['l1_weight'] else '',
           f'dropout {row["dropout"]:g}' if row['dropout'] else '',
           'batch norm' if row['batch_norm'] else '']
  return ', '.join(p for p in parts if p) or '—'


def pct(x: float) -> str:
  return f'{100 * x:.2f}'


def at_edge(rows: list, chosen: dict) -> list:
  """Methods whose chosen cell is the first or last of their grid."""
  edge = []
  for method, row in chosen.items():
    grid = [r for r in rows if r['method'] == method]
    if row and len(grid) > 1 and row in (grid[0], grid[-1]):
      edge.append(method)
  return edge


def reading(rows: list, chosen: dict) -> list:
  """Sentences comparing the chosen cells with `none`, from the numbers."""
  none, l1, l2 = chosen['none'], chosen['l1'], chosen['l2']
  if not (none and l1 and l2):
    return ['Not enough finished cells to compare with `none`.']
  drop = lambda r: r['test_accuracy'] - r[NOISE_KEYS[-1]]
  edge = at_edge(rows, chosen)
  return [
      f'- Sparsity (|w| < 1e-3): `l1` {pct(l1["sparsity"])} %, `elastic` '
      f'{pct(chosen["elastic"]["sparsity"]) if chosen["elastic"] else "n/a"}'
      f' %, `none` {pct(none["sparsity"])} %, `l2` {pct(l2["sparsity"])} %.',
      f'- Clean test accuracy, `l2` against `none`: '
      f'{100 * (l2["test_accuracy"] - none["test_accuracy"]):+.2f} points.',
      f'- Loss of accuracy from clean to the largest noise '
      f'({NOISE_KEYS[-1].rsplit("noise", 1)[1]}): `none` '
      f'{100 * drop(none):.2f} points, `l2` {100 * drop(l2):.2f} points.',
      '- Chosen at an end of the grid (a better strength may lie beyond): '
      + (', '.join(f'`{m}`' for m in edge) or 'no method') + '.',
      '- One seed, strengths chosen on the validation split: differences of '
      'about a point or less are within what another seed or split moves.',
  ]


def write_report(rows: list, preset, seconds: float, trained: int,
                 path: str) -> str:
  chosen = chosen_by_method(rows)
  noise = [k.rsplit('noise', 1)[1] for k in NOISE_KEYS]
  lines = [
      '# L2 beside other regularizers', '',
      *sweep.header(preset, rows, seconds, trained, cifar.get_config()),
      f'- Grids: coupled λ {preset.l2}, λ₁ {preset.l1}, dropout '
      f'{preset.dropout}; elastic pairs λ₁ and λ by index; l2+dropout at '
      f'rate {preset.fixed_dropout}',
      '', '## The cell of best validation accuracy, per method', '',
      'Accuracies in %; noise σ is a fraction of the pixel range; sparsity: '
      'share of kernel weights with |w| < 1e-3; ‖w‖: L2 norm of the kernels.',
      '', '| method | strength | val | test | '
      + ' | '.join(f'σ {s}' for s in noise) + ' | sparsity | ‖w‖ |',
      '|---|---|---|---|' + '---|' * len(noise) + '---|---|']
  for method, row in chosen.items():
    if row is None:
      lines.append(f'| {method} | no finished cell |')
      continue
    lines.append(
        f'| {method} | {strength(row)} | {pct(row["val_accuracy"])} | '
        f'{pct(row["test_accuracy"])} | '
        + ' | '.join(pct(row[k]) for k in NOISE_KEYS)
        + f' | {pct(row["sparsity"])} | {row["weight_norm"]:.2f} |')
  lines += ['', '## Reading', '', *reading(rows, chosen), '',
            'Every cell: results.csv.']
  text = '\n'.join(lines) + '\n'
  outputs.write_atomic(path, text)
  return text


def main(argv):
  out = cli.start('regularizers', argv)
  start = time.perf_counter()
  preset = cli.load_preset('regularizers', FLAGS.preset)
  grid = cells(preset)
  trained = 0
  try:
    if not FLAGS.report_only:
      trained = sweep.run(grid, preset.train, out, cli.executor(),
                          FLAGS.keep_checkpoints)
  except L2JaxError as e:
    raise SystemExit(f'regularizers: error: {e}') from e
  rows = [sweep.row(out, c, METRICS) for c in grid]
  sweep.write_csv(rows, COLUMNS, os.path.join(out, 'results.csv'))
  print(write_report(rows, preset, time.perf_counter() - start, trained,
                     os.path.join(out, 'report.md')), end='')
  print(f'wrote {out}')


if __name__ == '__main__':
  cli.define_flags(presets.PRESETS)
  app.run(main)
