"""Coupled L2 against decoupled weight decay on a grid of learning rate × λ.

    python benchmarks/coupled_vs_decoupled.py --preset=cpu --out=runs/cvd
    python benchmarks/coupled_vs_decoupled.py --preset=cpu --out=runs/cvd \
        --select=sgdw

Four methods (Loshchilov & Hutter, ICLR 2019): `sgd` (SGD with momentum,
coupled L2: `optimizer=sgd, l2.mode=coupled`), `sgdw` (`sgd`, `decoupled`),
`adam` (`adam`, `coupled`) and `adamw` (`adam`, `decoupled`). Each cell of a
method's grid is one `l2jax.train.train_and_evaluate` call, the training code
of `l2jax.main`, on configs/cifar.py's config with the preset's overrides, in
its own workdir under `--out/cells/`. The grid writes to `--out`:

- `results.csv`: one row per cell, rebuilt from the cells' summary.json;
- `heatmaps.png`: test error over λ (x) × lr (y), one panel per method, the
  cell chosen by validation accuracy framed;
- `report.md`: each method's best cell by validation accuracy and its test
  accuracy, the gain over λ = 0, the separability slope d log(best λ) /
  d log(lr) (paper, Fig. 2: about −1 coupled, about 0 decoupled), the command,
  machine, versions and run time.

`--select=METHOD` instead picks λ for one method at the preset's fixed lr by
the validation accuracy averaged over the preset's seeds, and writes
`select_METHOD.csv` and `select_METHOD.md` (test accuracy at the chosen λ,
mean ± std over seeds). Cells already run by the grid are reused.

A cell is done when its workdir holds summary.json, or when it diverged
(l2jax's DivergenceError; recorded in its cell.json, left out of the choice
of best cells). The same command after an interruption skips done cells; an
unfinished cell resumes from its own checkpoint. Presets (`PRESETS`): `smoke`
(about a minute; CI), `cpu` (53.6 min for the grid and 8.5 min for
`--select=sgd`, measured on 2 shared CPU cores),
`full` (the paper's scale; an accelerator). `--data` defaults to the CIFAR-10
copy extracted into data/ as in the README.
"""

import json
import math
import os
import shlex
import shutil
import statistics
import sys
import time
from typing import NamedTuple

from absl import app
from absl import flags
from absl import logging
import flax
import jax
import matplotlib
import numpy as np
import optax
import tensorflow_datasets as tfds

matplotlib.use('Agg')
# pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt

# Run as a script from anywhere: the repository root holds l2jax/, configs/.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
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

# name: (config.optimizer, config.l2.mode, the paper's slope of log best λ
# against log lr, Fig. 2: coupled decay's optimum lies on a diagonal).
METHODS = {
    'sgd': ('sgd', 'coupled', -1.0),
    'sgdw': ('sgd', 'decoupled', 0.0),
    'adam': ('adam', 'coupled', -1.0),
    'adamw': ('adam', 'decoupled', 0.0),
}

# Per preset: `config`, overrides of configs/cifar.py; `lr`, the learning
# rates by optimizer; `l2`, the λ grid by method (0 is the reference column);
# `select`, the lr by optimizer and the seeds of --select. Coupled λ enters
# the gradient (SGD shrinks w by α_t λ a step, amplified ~1/(1−μ) by the
# momentum); decoupled λ is not scaled by α (w shrinks by η_t λ a step), so
# the grids differ by method.
PRESETS = {
    # A few hundred images, one epoch: exercises every output, in CI.
    'smoke': dict(
        config={'model': 'seed_cnn_narrow', 'augment': False,
                'max_train_examples': 256, 'validation_fraction': 0.1,
                'num_epochs': 1, 'batch_size': 64, 'eval_batch_size': 500,
                'checkpoints_to_keep': 1},
        lr={'sgd': (0.05,), 'adam': (1e-3,)},
        l2={'sgd': (0.0, 5e-3), 'sgdw': (0.0, 5e-4),
            'adam': (0.0, 5e-3), 'adamw': (0.0, 5e-4)},
        select={'lr': {'sgd': 0.05, 'adam': 1e-3}, 'seeds': (0, 1)}),
    # Overfits (2,000 training images, no augmentation, 100% train accuracy
    # at λ = 0) over 1,860 steps, long enough for λ to matter: in
    # calibration runs, SGD at lr 0.03 gained 4.4 to 4.9 test points from
    # λ = 0.01 or 0.03 over λ = 0 on each of seeds 0 and 1 (λ = 0: 46.45 and
    # 46.18 %). Evaluates once, at the end. 60 cells, 28 to 78 s each:
    # 53.6 min measured on 2 shared cores; --select=sgd, 10 more: 8.5 min.
    'cpu': dict(
        config={'model': 'seed_cnn_narrow', 'augment': False,
                'max_train_examples': 2000, 'validation_fraction': 0.04,
                'num_epochs': 30, 'eval_every_epochs': 30, 'batch_size': 32,
                'checkpoints_to_keep': 1},
        lr={'sgd': (0.003, 0.01, 0.03), 'adam': (3e-4, 1e-3, 3e-3)},
        l2={'sgd': (0.0, 3e-3, 1e-2, 3e-2, 1e-1),
            'sgdw': (0.0, 1e-3, 3e-3, 1e-2, 3e-2),
            'adam': (0.0, 3e-3, 1e-2, 3e-2, 1e-1),
            'adamw': (0.0, 3e-4, 1e-3, 3e-3, 1e-2)},
        select={'lr': {'sgd': 0.03, 'adam': 1e-3}, 'seeds': (0, 1, 2)}),
    # The paper's scale: the seeds' network on all of CIFAR-10, augmented,
    # 35,000 steps. λ grids extrapolated from the cpu preset's (decay a run
    # ∝ λ × steps), not calibrated; 140 cells, for an accelerator.
    'full': dict(
        config={'model': 'seed_cnn', 'augment': True, 'num_epochs': 100,
                'batch_size': 128, 'checkpoints_to_keep': 1},
        lr={'sgd': (0.0125, 0.025, 0.05, 0.1, 0.2),
            'adam': (2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3)},
        l2={'sgd': (0.0, 1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3),
            'sgdw': (0.0, 1.5625e-5, 3.125e-5, 6.25e-5, 1.25e-4, 2.5e-4, 5e-4),
            'adam': (0.0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3),
            'adamw': (0.0, 3.125e-6, 6.25e-6, 1.25e-5, 2.5e-5, 5e-5, 1e-4)},
        select={'lr': {'sgd': 0.05, 'adam': 1e-3}, 'seeds': (0, 1, 2, 3, 4)}),
}

COLUMNS = ('method', 'optimizer', 'mode', 'lr', 'l2_weight', 'seed',
           'diverged', 'epochs', 'train_accuracy', 'train_loss',
           'val_accuracy', 'val_loss', 'test_accuracy', 'test_loss',
           'weight_norm', 'wall_seconds', 'train_seconds', 'images_per_second',
           'workdir')
# Written by this script beside a cell's summary.json: its config, wall
# seconds, and the error if it diverged (l2jax writes no summary then).


class Cell(NamedTuple):
  method: str
  lr: float
  l2_weight: float
  seed: int


def define_flags():
  """Called only when run as a script, so tests can import this module beside
  other benchmarks that define flags of the same names (--out)."""
  flags.DEFINE_enum('preset', 'smoke', list(PRESETS), 'Grid and config size.')
  flags.DEFINE_string('out', None, 'Output folder; cells go in OUT/cells.')
  flags.DEFINE_string('data', DEFAULT_DATA, 'config.dataset for every cell.')
  flags.DEFINE_enum('select', None, list(METHODS),
                    'Pick λ for this method over several seeds, not the grid.')
  flags.DEFINE_bool('keep_checkpoints', False,
                    "Keep a done cell's checkpoints (only resuming uses them).")
  flags.mark_flag_as_required('out')


# Cells and their configs.


def grid_cells(preset: dict, seed: int) -> list:
  return [Cell(method, lr, weight, seed)
          for method, (optimizer, _, _) in METHODS.items()
          for lr in preset['lr'][optimizer]
          for weight in preset['l2'][method]]


def select_cells(preset: dict, method: str) -> list:
  lr = preset['select']['lr'][METHODS[method][0]]
  return [Cell(method, lr, weight, seed) for seed in preset['select']['seeds']
          for weight in preset['l2'][method]]


def cell_config(preset: dict, data: str, cell: Cell):
  optimizer, mode, _ = METHODS[cell.method]
  config = cifar.get_config()
  config.update_from_flattened_dict({
      # No evaluation under noise: that is benchmarks/regularizers.py's.
      'noise_sigmas': (), **preset['config'], 'dataset': data,
      'optimizer': optimizer,
      'l2.mode': mode, 'l2.weight': cell.l2_weight,
      'learning_rate': cell.lr, 'seed': cell.seed})
  return config


def cell_workdir(out: str, cell: Cell) -> str:
  return os.path.join(out, 'cells', cell.method,
                      f'lr{cell.lr:g}_lambda{cell.l2_weight:g}_seed{cell.seed}')


def run_cells(cells: list, preset: dict, data: str, out: str,
              keep_checkpoints: bool) -> int:
  """Trains every cell not done yet; returns how many it trained.

  Every config is checked first. Cells sharing a seed share one read of the
  data (the seed picks the validation split and the training subset). A cell
  that diverges is recorded as such and the sweep goes on.
  """
  todo = []
  for cell in cells:
    config = cell_config(preset, data, cell)
    configuration.validate(config, jax.local_device_count())
    workdir = cell_workdir(out, cell)
    if not common.is_done(workdir, config):
      todo.append((cell, config, workdir))
  todo.sort(key=lambda item: item[0].seed)
  dataset, dataset_seed = None, None
  for i, (cell, config, workdir) in enumerate(todo):
    if dataset_seed != cell.seed:
      dataset, dataset_seed = None, cell.seed  # Frees the last seed's data.
      dataset = data_lib.load(config)
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    try:
      summary = train.train_and_evaluate(config, workdir, dataset=dataset)
      final = summary['final']
      diverged, result = None, (f'val {final.get("val_accuracy", math.nan):.4f}'
                                f', test {final["test_accuracy"]:.4f}')
    except DivergenceError as e:
      diverged = result = str(e)
    seconds = time.perf_counter() - start
    with open(os.path.join(workdir, common.CELL), 'w') as f:
      json.dump({'config': config.to_dict(), 'wall_seconds': seconds,
                 'diverged': diverged}, f, indent=2)
    if not keep_checkpoints:
      shutil.rmtree(os.path.join(workdir, 'checkpoints'), ignore_errors=True)
    print(f'[{i + 1}/{len(todo)}] {cell.method} lr={cell.lr:g} '
          f'λ={cell.l2_weight:g} seed={cell.seed}: {result}, {seconds:.0f} s',
          flush=True)
  return len(todo)


def cell_row(out: str, cell: Cell) -> dict:
  """The CSV row of a done cell, from the files in its workdir.

  A diverged cell has no final metrics (nan); its epochs are the finite ones.
  """
  workdir = cell_workdir(out, cell)
  summary = common.read_json(workdir, outputs.SUMMARY)
  final = summary['final'] if summary else {}
  records = outputs.read_metrics(workdir)
  # None if killed after summary.json.
  side = common.read_json(workdir, common.CELL) or {}
  optimizer, mode, _ = METHODS[cell.method]
  return {
      'method': cell.method, 'optimizer': optimizer, 'mode': mode,
      'lr': cell.lr, 'l2_weight': cell.l2_weight, 'seed': cell.seed,
      'diverged': summary is None, 'epochs': len(records),
      **{key: final.get(key, math.nan) for key in (
          'train_accuracy', 'train_loss', 'val_accuracy', 'val_loss',
          'test_accuracy', 'test_loss', 'weight_norm')},
      'wall_seconds': side.get('wall_seconds', math.nan),
      # l2jax's per-epoch training time (epoch 1 includes compilation).
      'train_seconds': sum(r['epoch_seconds'] for r in records),
      'images_per_second': statistics.median(
          [r['images_per_second'] for r in records[1:] or records] or
          [math.nan]),
      'workdir': os.path.relpath(workdir, out),
  }


# Analysis: pure functions of the rows.


def best(rows: list):
  """The row of highest validation accuracy, ties to lower validation loss;
  diverged rows (nan) never; None if every row diverged."""
  finite = [r for r in rows if math.isfinite(r['val_accuracy'])]
  if not finite:
    return None
  return max(finite, key=lambda r: (r['val_accuracy'], -r['val_loss']))


def best_l2_by_lr(rows: list) -> dict:
  """{lr: λ of the best cell by validation accuracy} for one method's rows;
  lrs where every cell diverged are left out."""
  by_lr = {lr: best([r for r in rows if r['lr'] == lr])
           for lr in sorted({r['lr'] for r in rows})}
  return {lr: row['l2_weight'] for lr, row in by_lr.items() if row}


def separability_slope(best_by_lr: dict):
  """Least-squares slope of log(best λ) against log(lr), over rows whose
  best λ > 0; None with fewer than two such rows."""
  points = [(lr, weight) for lr, weight in best_by_lr.items() if weight > 0]
  if len(points) < 2:
    return None
  log_lr, log_weight = np.log(np.array(points)).T
  return float(np.polyfit(log_lr, log_weight, 1)[0])


def method_summary(rows: list) -> dict:
  """Best cell, the λ = 0 cells to compare it with, and separability."""
  chosen = best(rows)
  zeros = [r for r in rows if r['l2_weight'] == 0]
  best_by_lr = best_l2_by_lr(rows)
  return {
      'best': chosen,
      'zero_same_lr': chosen and best([r for r in zeros
                                       if r['lr'] == chosen['lr']]),
      'zero_best': best(zeros),
      'best_by_lr': best_by_lr,
      'slope': separability_slope(best_by_lr),
  }


# Outputs: one function a file.


def plot_heatmaps(rows: list, path: str) -> None:
  """Test error (%), x = λ (λ = 0 its own column), y = lr; a panel a method.

  Each panel has its own colour scale, so that the shape of the basin shows.
  """
  fig, axes = plt.subplots(2, 2, figsize=(12, 9.5))
  for ax, method in zip(axes.flat, METHODS):
    method_rows = [r for r in rows if r['method'] == method]
    lrs = sorted({r['lr'] for r in method_rows})
    weights = sorted({r['l2_weight'] for r in method_rows})
    error = np.full((len(lrs), len(weights)), np.nan)
    for r in method_rows:
      error[lrs.index(r['lr']), weights.index(r['l2_weight'])] = 100 * (
          1 - r['test_accuracy'])
    image = ax.imshow(error, origin='lower', cmap='viridis_r', aspect='auto')
    low, high = np.nanmin(error), np.nanmax(error)
    for (i, j), value in np.ndenumerate(error):
      dark = high > low and (value - low) / (high - low) > 0.5
      ax.text(j, i, 'diverged' if np.isnan(value) else f'{value:.1f}',
              ha='center', va='center', fontsize=9, color='w' if dark else 'k')
    if weights[0] == 0 and len(weights) > 1:
      ax.axvline(0.5, color='w', linewidth=4)  # λ = 0 is off the log scale.
    chosen = best(method_rows)
    if chosen:
      ax.add_patch(plt.Rectangle(
          (weights.index(chosen['l2_weight']) - 0.5,
           lrs.index(chosen['lr']) - 0.5),
          1, 1, fill=False, edgecolor='red', linewidth=3))
    optimizer, mode, _ = METHODS[method]
    ax.set(xticks=range(len(weights)), xticklabels=[f'{w:g}' for w in weights],
           yticks=range(len(lrs)), yticklabels=[f'{lr:g}' for lr in lrs],
           xlabel='λ (config.l2.weight)', ylabel='learning rate α',
           title=f'{method}: {optimizer}, L2 {mode}')
    fig.colorbar(image, ax=ax, label='test error (%)')
  fig.suptitle('Test error; red frame: the cell of best validation accuracy')
  fig.tight_layout()
  fig.savefig(path + '.tmp.png', dpi=100)
  plt.close(fig)
  os.replace(path + '.tmp.png', path)


def run_lines(preset_name: str, data: str, rows: list, seconds: float,
              trained: int) -> list:
  """Markdown lines on how the numbers were made, shared by both reports."""
  preset = PRESETS[preset_name]
  model = preset['config'].get('model', cifar.get_config().model)
  note = (' (a quarter of the seed network\'s widths, 1/16 of its FLOPs)'
          if model == 'seed_cnn_narrow' else '')
  return [
      '    ' + shlex.join(['python'] + sys.argv), '',
      f'- Preset `{preset_name}`: configs/cifar.py with '
      + ', '.join(f'`{k}={v}`' for k, v in preset['config'].items())
      + f'; model `{model}`{note}',
      f'- Data: `{data}`',
      f'- Machine: {common.machine()}',
      f'- Versions: jax {jax.__version__}, flax {flax.__version__}, '
      f'optax {optax.__version__}',
      f'- Run time: {seconds / 60:.1f} min for this command ({trained} of '
      f'{len(rows)} cells trained, the rest done before); '
      f'{np.nansum([r["wall_seconds"] for r in rows]) / 60:.1f} min summed '
      'over the cells\' last training calls',
  ]


def pct(x) -> str:
  return f'{100 * x:.2f}'


def best_cell_line(method: str, s: dict) -> str:
  """One row of report.md's first table, from `method_summary`."""
  chosen, same, zero = s['best'], s['zero_same_lr'], s['zero_best']
  if not chosen:
    return f'| {method} | every cell diverged |||||||||'
  gain = lambda ref: (
      f'{100 * (chosen["test_accuracy"] - ref["test_accuracy"]):+.2f}'
      if ref else 'n/a')
  return (
      f'| {method} | {chosen["optimizer"]}, {chosen["mode"]} | '
      f'{chosen["lr"]:g} | {chosen["l2_weight"]:g} | '
      f'{pct(chosen["val_accuracy"])} | {pct(chosen["test_accuracy"])} | '
      f'{pct(same["test_accuracy"]) if same else "n/a"} | {gain(same)} | '
      + (f'{pct(zero["test_accuracy"])} ({zero["lr"]:g})' if zero else 'n/a')
      + f' | {gain(zero)} |')


def write_report(rows: list, preset_name: str, data: str, seconds: float,
                 trained: int, path: str) -> str:
  """report.md: best cells by validation, gains over λ = 0, separability."""
  summaries = {m: method_summary([r for r in rows if r['method'] == m])
               for m in METHODS}
  diverged = [r for r in rows if r['diverged']]
  lines = ['# Coupled L2 against decoupled weight decay', '',
           *run_lines(preset_name, data, rows, seconds, trained),
           f'- Diverged cells (left out): {len(diverged)}' + ''.join(
               f'; {r["method"]} lr {r["lr"]:g} λ {r["l2_weight"]:g}'
               for r in diverged), '',
           '## Best cell by validation accuracy', '',
           'Accuracies in %, one seed. Gains are test accuracy minus that of '
           'λ = 0 at the same lr ("same lr"), and minus that of the λ = 0 '
           'cell of best validation accuracy over all lrs ("best λ=0").', '',
           '| method | optimizer, L2 | lr | λ | val | test | '
           'test λ=0, same lr | gain | best λ=0 cell (lr) test | gain |',
           '|---|---|---|---|---|---|---|---|---|---|',
           *(best_cell_line(m, s) for m, s in summaries.items()),
           '', '## Separability', '',
           'Per lr row, the λ of best validation accuracy; the slope of '
           'log(best λ) against log(lr) by least squares over the rows whose '
           'best λ > 0. Loshchilov & Hutter (ICLR 2019, Fig. 2) find the '
           'optimum on a diagonal for coupled L2 (slope about −1: the decay '
           'a step is α λ) and independent of lr for decoupled decay (about '
           '0).', '', '| method | best λ by lr | slope | paper |',
           '|---|---|---|---|']
  for method, s in summaries.items():
    by_lr = ', '.join(f'{lr:g}: {w:g}' for lr, w in s['best_by_lr'].items())
    slope = (f'{s["slope"]:+.2f}' if s['slope'] is not None else
             'n/a (fewer than 2 rows with best λ > 0)')
    lines.append(
        f'| {method} | {by_lr} | {slope} | ≈ {METHODS[method][2]:g} |')
  lines += ['', 'Heat maps: heatmaps.png; every run: results.csv. The spread '
            'over seeds: `--select=METHOD`.']
  return _write_text('\n'.join(lines) + '\n', path)


def mean_std(values) -> tuple:
  """(mean, sample std with ddof 1; nan for one value)."""
  return (float(np.mean(values)),
          float(np.std(values, ddof=1)) if len(values) > 1 else math.nan)


def select_l2(rows: list) -> tuple:
  """(λ of highest validation accuracy averaged over seeds, {λ: stats}).

  `rows`: one method at one lr, one row per (λ, seed). Stats are mean and
  std over seeds of validation and test accuracy.
  """
  stats = {}
  for weight in sorted({r['l2_weight'] for r in rows}):
    runs = [r for r in rows if r['l2_weight'] == weight]
    stats[weight] = {key: mean_std([r[key] for r in runs])
                     for key in ('val_accuracy', 'test_accuracy')}
  score = lambda w: np.nan_to_num(stats[w]['val_accuracy'][0], nan=-np.inf)
  return max(stats, key=score), stats  # A λ with a diverged seed: never.


def write_selection(rows: list, method: str, preset_name: str, data: str,
                    seconds: float, trained: int, path: str) -> str:
  """select_METHOD.md: λ by mean validation accuracy over seeds."""
  chosen, stats = select_l2(rows)
  seeds = sorted({r['seed'] for r in rows})
  lines = [f'# λ for {method} by validation accuracy over {len(seeds)} seeds',
           '', *run_lines(preset_name, data, rows, seconds, trained),
           f'- Method: {method} ({METHODS[method][0]}, L2 '
           f'{METHODS[method][1]}), lr {rows[0]["lr"]:g}, seeds {seeds}', '',
           'Accuracy in %, mean ± std (ddof 1) over seeds; λ is chosen by '
           'the mean validation accuracy. A seed sets the initialization, the '
           'data order, and which images are validation and training '
           '(config.seed).', '',
           '| λ | val | test |', '|---|---|---|']
  for weight, s in stats.items():
    (val, val_std), (test, test_std) = s['val_accuracy'], s['test_accuracy']
    mark = ' (chosen)' if weight == chosen else ''
    lines.append(f'| {weight:g}{mark} | {pct(val)} ± {pct(val_std)} | '
                 f'{pct(test)} ± {pct(test_std)} |')
  test, test_std = stats[chosen]['test_accuracy']
  lines += ['', f'Chosen λ = {chosen:g}: test accuracy {pct(test)} ± '
            f'{pct(test_std)} %.']
  if 0 in stats and chosen != 0:
    by_seed = {(r['l2_weight'], r['seed']): r['test_accuracy'] for r in rows}
    gain, gain_std = mean_std([by_seed[chosen, s] - by_seed[0, s]
                               for s in seeds])
    lines.append(f'Gain over λ = 0, paired by seed: {pct(gain)} ± '
                 f'{pct(gain_std)} points.')
  return _write_text('\n'.join(lines) + '\n', path)


def _write_text(text: str, path: str) -> str:
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
    sys.exit('coupled_vs_decoupled: error: no CIFAR-10 copy in data/; run '
             '`mkdir -p data && tar -xzf ../shared/data/cifar10-jpeg.tar.gz '
             '-C data` in the repository, or pass --data')
  if FLAGS.select:
    cells = select_cells(preset, FLAGS.select)
  else:
    cells = grid_cells(preset, cifar.get_config().seed)
  os.makedirs(out, exist_ok=True)
  try:
    trained = run_cells(cells, preset, FLAGS.data, out, FLAGS.keep_checkpoints)
  except L2JaxError as e:
    sys.exit(f'coupled_vs_decoupled: error: {e}')
  rows = [cell_row(out, cell) for cell in cells]
  seconds = time.perf_counter() - start
  if FLAGS.select:
    name = os.path.join(out, f'select_{FLAGS.select}')
    common.write_csv(rows, COLUMNS, name + '.csv')
    print(write_selection(rows, FLAGS.select, FLAGS.preset, FLAGS.data,
                          seconds, trained, name + '.md'), end='')
  else:
    common.write_csv(rows, COLUMNS, os.path.join(out, 'results.csv'))
    plot_heatmaps(rows, os.path.join(out, 'heatmaps.png'))
    print(write_report(rows, FLAGS.preset, FLAGS.data, seconds, trained,
                       os.path.join(out, 'report.md')), end='')
  print(f'wrote {out}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
