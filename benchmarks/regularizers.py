"""L2 beside other regularizers, each at the strength validation picks.

    python benchmarks/regularizers.py --preset=cpu --out=runs/reg \
        --data=folder:data/cifar10-jpeg

Seven methods on configs/cifar.py's network and SGD with momentum: `none`,
`l2` (coupled, λ), `l1` (λ₁ Σ|w| in the loss), `elastic` (λ₁ and λ paired by
index from the L1 and L2 grids: one strength scaling both), `dropout` (rate
before the last Dense), `l2+dropout` (the λ grid at the preset's fixed rate)
and `l2+batchnorm` (the λ grid with BatchNorm after each convolution). Each
cell is one `l2jax.train.train_and_evaluate` call in its own workdir under
`--out/cells/`; each method's strength is the cell of best validation
accuracy. Writes to `--out`:

- `results.csv`: every cell: validation, clean and noisy test accuracy
  (`config.noise_sigmas`), sparsity (share of kernel weights with
  |w| < 1e-3), ‖w‖₂ over the kernels;
- `report.md`: the chosen cell of each method, the command, machine,
  versions and run time, and a reading of the numbers against `none`.

The same command after an interruption skips cells with a summary.json (or
recorded as diverged). Presets: `smoke` (7 cells, about a minute; the
tests), `cpu` (24 cells on 1,000 training images without augmentation;
8.3 min measured on a 2-core CPU, results in benchmarks/results/
regularizers_cpu/).
"""

import json
import math
import os
import shlex
import shutil
import sys
import time
from typing import NamedTuple

from absl import app
from absl import flags
from absl import logging
import flax
import jax
import optax
import tensorflow_datasets as tfds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common
from configs import cifar
from l2jax import configuration
from l2jax import cpu
from l2jax import data as data_lib
from l2jax import outputs
from l2jax import train
from l2jax.errors import DivergenceError
from l2jax.errors import L2JaxError

FLAGS = flags.FLAGS
DEFAULT_DATA = data_lib.FOLDER_PREFIX + os.path.join(REPO, 'data',
                                                   'cifar10-jpeg')
METHODS = ('none', 'l2', 'l1', 'elastic', 'dropout', 'l2+dropout',
           'l2+batchnorm')

# `config`: overrides of configs/cifar.py; `l2` (coupled λ), `l1` (λ₁) and
# `dropout` (rates): each method's grid; `fixed_dropout`: l2+dropout's rate.
PRESETS = {
    # Two steps on 128 images: exercises every method and output, in CI.
    'smoke': dict(
        config={'model': 'seed_cnn_narrow', 'augment': False,
                'max_train_examples': 128, 'validation_fraction': 0.1,
                'num_epochs': 1, 'eval_every_epochs': 1, 'batch_size': 64,
                'eval_batch_size': 500, 'learning_rate': 0.03,
                'checkpoint_every_steps': 0, 'checkpoints_to_keep': 1},
        l2=(1e-2,), l1=(3e-4,), dropout=(0.5,), fixed_dropout=0.5),
    # Overfits (1,000 images, no augmentation) so that regularizing can pay;
    # lr 0.03 and the λ grid around the best coupled-SGD λ of
    # coupled_vs_decoupled's cpu run (1e-2), up to 1e-1 since a first run's
    # 3-point grid chose its top (3e-2). Evaluated once, at the end.
    'cpu': dict(
        config={'model': 'seed_cnn_narrow', 'augment': False,
                'max_train_examples': 1000, 'validation_fraction': 0.04,
                'num_epochs': 16, 'eval_every_epochs': 16, 'batch_size': 32,
                'learning_rate': 0.03, 'checkpoint_every_steps': 0,
                'checkpoints_to_keep': 1},
        l2=(3e-3, 1e-2, 3e-2, 1e-1), l1=(1e-4, 3e-4, 1e-3, 3e-3),
        dropout=(0.25, 0.5, 0.75), fixed_dropout=0.5),
}

NOISE_KEYS = tuple(f'test_accuracy_noise{s:g}'
                   for s in cifar.get_config().noise_sigmas)
METRICS = ('train_accuracy', 'val_accuracy', 'val_loss', 'test_accuracy',
           *NOISE_KEYS, 'sparsity', 'weight_norm')
COLUMNS = ('method', 'l2_weight', 'l1_weight', 'dropout', 'batch_norm',
           'diverged', *METRICS, 'wall_seconds', 'workdir')


class Cell(NamedTuple):
  method: str
  l2_weight: float
  l1_weight: float
  dropout: float
  batch_norm: bool


def define_flags():
  flags.DEFINE_enum('preset', 'smoke', list(PRESETS), 'Grid and config size.')
  flags.DEFINE_string('out', None, 'Output folder; cells go in OUT/cells.')
  flags.DEFINE_string('data', DEFAULT_DATA, 'config.dataset for every cell.')
  flags.mark_flag_as_required('out')


def cells(preset: dict) -> list:
  l2, l1, rates = preset['l2'], preset['l1'], preset['dropout']
  return ([Cell('none', 0.0, 0.0, 0.0, False)]
          + [Cell('l2', w, 0.0, 0.0, False) for w in l2]
          + [Cell('l1', 0.0, w, 0.0, False) for w in l1]
          + [Cell('elastic', w2, w1, 0.0, False) for w1, w2 in zip(l1, l2)]
          + [Cell('dropout', 0.0, 0.0, r, False) for r in rates]
          + [Cell('l2+dropout', w, 0.0, preset['fixed_dropout'], False)
             for w in l2]
          + [Cell('l2+batchnorm', w, 0.0, 0.0, True) for w in l2])


def cell_config(preset: dict, data: str, cell: Cell):
  config = cifar.get_config()
  config.update_from_flattened_dict({
      **preset['config'], 'dataset': data, 'optimizer': 'sgd',
      'l2.mode': 'coupled' if cell.l2_weight else 'none',
      'l2.weight': cell.l2_weight, 'l1.weight': cell.l1_weight,
      'dropout': cell.dropout, 'batch_norm': cell.batch_norm})
  return config


def cell_workdir(out: str, cell: Cell) -> str:
  return os.path.join(out, 'cells', cell.method,
                      f'l2{cell.l2_weight:g}_l1{cell.l1_weight:g}'
                      f'_drop{cell.dropout:g}_bn{int(cell.batch_norm)}')


def run_cells(todo_cells: list, preset: dict, data: str, out: str) -> int:
  """Trains the cells not done yet on one read of the data; returns how many.

  Every config is validated before any training; all share the seed, so
  the validation split and training subset.
  """
  todo = []
  for cell in todo_cells:
    config = cell_config(preset, data, cell)
    configuration.validate(config, jax.local_device_count())
    if not common.is_done(cell_workdir(out, cell), config):
      todo.append((cell, config, cell_workdir(out, cell)))
  dataset = data_lib.load(todo[0][1]) if todo else None
  for i, (cell, config, workdir) in enumerate(todo):
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    try:
      final = train.train_and_evaluate(config, workdir, dataset)['final']
      diverged, result = None, (f'val {final["val_accuracy"]:.4f}, test '
                                f'{final["test_accuracy"]:.4f}')
    except DivergenceError as e:
      diverged = result = str(e)
    seconds = time.perf_counter() - start
    with open(os.path.join(workdir, common.CELL), 'w') as f:
      json.dump({'config': config.to_dict(), 'wall_seconds': seconds,
                 'diverged': diverged}, f, indent=2)
    shutil.rmtree(os.path.join(workdir, 'checkpoints'), ignore_errors=True)
    print(f'[{i + 1}/{len(todo)}] {cell.method} λ={cell.l2_weight:g} '
          f'λ₁={cell.l1_weight:g} dropout={cell.dropout:g} '
          f'bn={cell.batch_norm}: {result}, {seconds:.0f} s', flush=True)
  return len(todo)


def cell_row(out: str, cell: Cell) -> dict:
  """A done cell's CSV row; a diverged cell's metrics are nan."""
  workdir = cell_workdir(out, cell)
  summary = common.read_json(workdir, outputs.SUMMARY)
  final = summary['final'] if summary else {}
  side = common.read_json(workdir, common.CELL) or {}
  return {**cell._asdict(), 'diverged': summary is None,
          **{k: final.get(k, math.nan) for k in METRICS},
          'wall_seconds': side.get('wall_seconds', math.nan),
          'workdir': os.path.relpath(workdir, out)}


def best(rows: list):
  """Highest validation accuracy, ties to lower validation loss; never a
  diverged (nan) row; None when there is no other."""
  finite = [r for r in rows if math.isfinite(r['val_accuracy'])]
  return max(finite, key=lambda r: (r['val_accuracy'], -r['val_loss']),
             default=None)


def chosen_by_method(rows: list) -> dict:
  return {m: best([r for r in rows if r['method'] == m]) for m in METHODS}


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


def write_report(rows: list, preset_name: str, data: str, seconds: float,
                 trained: int, path: str) -> str:
  preset, chosen = PRESETS[preset_name], chosen_by_method(rows)
  noise = [k.rsplit('noise', 1)[1] for k in NOISE_KEYS]
  lines = [
      '# L2 beside other regularizers', '',
      '    ' + shlex.join(['python'] + sys.argv), '',
      f'- Preset `{preset_name}`: configs/cifar.py, SGD with momentum, with '
      + ', '.join(f'`{k}={v}`' for k, v in preset['config'].items()),
      f'- Grids: coupled λ {preset["l2"]}, λ₁ {preset["l1"]}, dropout '
      f'{preset["dropout"]}; elastic pairs λ₁ and λ by index; l2+dropout at '
      f'rate {preset["fixed_dropout"]}',
      f'- Data: `{data}`', f'- Machine: {common.machine()}',
      f'- Versions: jax {jax.__version__}, flax {flax.__version__}, '
      f'optax {optax.__version__}',
      f'- Run time: {seconds / 60:.1f} min for this command ({trained} of '
      f'{len(rows)} cells trained, the rest done before)',
      f'- Diverged cells (never chosen): {sum(r["diverged"] for r in rows)}',
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
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)
  return text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cpu.configure()  # As l2jax.main does, before JAX runs anything.
  logging.set_verbosity(logging.WARNING)  # One line a cell, printed below.
  tfds.disable_progress_bar()
  start = time.perf_counter()
  preset, out = PRESETS[FLAGS.preset], os.path.abspath(FLAGS.out)
  if (FLAGS.data == DEFAULT_DATA and
      not os.path.isdir(DEFAULT_DATA[len(data_lib.FOLDER_PREFIX):])):
    sys.exit('regularizers: error: no CIFAR-10 copy in data/; run `mkdir -p '
             'data && tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C data` '
             'in the repository, or pass --data')
  grid = cells(preset)
  os.makedirs(out, exist_ok=True)
  try:
    trained = run_cells(grid, preset, FLAGS.data, out)
  except L2JaxError as e:
    sys.exit(f'regularizers: error: {e}')
  rows = [cell_row(out, cell) for cell in grid]
  common.write_csv(rows, COLUMNS, os.path.join(out, 'results.csv'))
  print(write_report(rows, FLAGS.preset, FLAGS.data,
                     time.perf_counter() - start, trained,
                     os.path.join(out, 'report.md')), end='')
  print(f'wrote {out}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
