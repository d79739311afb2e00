"""Coupled L2 against decoupled weight decay on grids of learning rate × λ:
when does the best λ separate from the learning rate, and why?

    python -m benchmarks.coupled_vs_decoupled --preset=cpu_bn --out=runs/cvd_bn

Four methods (Loshchilov & Hutter, ICLR 2019): `sgd` (SGD with momentum,
coupled L2), `sgdw` (decoupled), `adam` (coupled) and `adamw` (decoupled).
Each cell (method, lr, λ, seed) is one run of `benchmarks.sweep` in its own
workdir under `--out/cells/`; λ = 0 cells are shared by the two methods of
an optimizer. Each lr row of each method is widened, a ×√10 step at a time,
until its best λ (validation accuracy averaged over the seeds) has a
neighbour on both sides and the vertex fitted to it lies inside the row,
up to `widen_rounds` rounds (presets:
configs/sweeps/coupled_vs_decoupled.py). Writes to `--out`:

- `results.csv`: one row per cell, from the cells' files: accuracies, the
  total shrink Σ_t s_t of the decay, the share of scale-invariant decayed
  parameters, and in the scale-invariant groups the mean angular update Δθ
  over the run and the last epoch's against the equilibrium Δθ*
  (l2jax.equilibrium);
- `analysis.json`: each method's slopes with 95% intervals, gains over
  λ = 0, and the Δθ ratios (`benchmarks.separability`);
- `heatmaps.png`, `collapse.png`, `angles.png`, `report.md`.

`--report_only` rebuilds them from the cells' files, or, where `--out` holds
no cells (a committed report), from its `results.csv`: then angles.png,
which needs the cells' metrics, is left as it is. `--methods=sgd,sgdw`
runs (or reports) one pair only; run the rest later into the same `--out`.
"""

import math
import os
import time

from absl import app
from absl import flags

from benchmarks import cli
from benchmarks import figures
from benchmarks import selection
from benchmarks import separability
from benchmarks import slopes
from benchmarks import sweep
from configs import cifar
from configs.sweeps import coupled_vs_decoupled as presets
from l2jax import outputs
from l2jax.errors import L2JaxError

FLAGS = flags.FLAGS
STEP = math.sqrt(10)  # The λ lattice: 10^(k/2).
METRICS = ('train_accuracy', 'train_loss', 'val_accuracy', 'val_loss',
           'test_accuracy', 'test_loss', 'weight_norm',
           'scale_invariant_share')
LABELS = ('method', 'optimizer', 'mode', 'lr', 'l2_weight', 'seed')
COLUMNS = (*LABELS, 'status', *METRICS, *separability.ROTATION,
           'epochs', 'wall_seconds', 'train_seconds', 'images_per_second',
           'error', 'workdir')


def lattice(weight: float) -> int:
  """k of the lattice point 10^(k/2) nearest `weight`."""
  return round(2 * math.log10(weight))


def weight_of(k: int) -> float:
  return float(f'{10 ** (k / 2):.3g}')


def cell(method: str, lr: float, weight: float, seed: int,
         overrides: dict = None, suffix: str = '') -> sweep.Cell:
  """One cell; λ = 0 is the optimizer's, named so both its methods share it.
  `overrides` (other config values) go with a `suffix` to its name."""
  optimizer, mode = presets.METHODS[method]
  folder = (f'{optimizer}/lr{lr:g}_lambda0_seed{seed}' if not weight else
            f'{method}/lr{lr:g}_lambda{weight:g}_seed{seed}')
  return sweep.Cell(
      folder + suffix,
      {'optimizer': optimizer, 'l2.mode': mode if weight else 'none',
       'l2.weight': weight, 'learning_rate': lr, 'seed': seed,
       **(overrides or {})},
      dict(zip(LABELS, (method, optimizer, mode, lr, weight, seed))))


def first_grid(preset) -> list:
  """The λ = 0 column and each row's `points` lattice λs around the guess."""
  cells = []
  for method in preset.methods:
    lrs = preset.lr[presets.METHODS[method][0]]
    weight, guess = preset.l2[method]
    for lr in lrs:
      centre = lattice(weight * (lr / lrs[0]) ** guess)
      ks = range(centre - preset.points // 2,
                 centre + preset.points - preset.points // 2)
      cells += [cell(method, lr, w, s) for s in preset.seeds
                for w in (0.0, *map(weight_of, ks))]
  return cells


def widen(rows: list, preset) -> list:
  """The cells one more ×√10 step beyond each row whose best λ > 0, or the
  vertex fitted to it, lies at an end of its grid (`slopes.open_side`);
  none below `min_shrink_total` (the decay is too weak to matter there) or
  above a row whose top cells all failed."""
  new = []
  for (method, lr), row_cells in separability.by_row(rows).items():
    accuracy = slopes.mean_accuracy(row_cells, preset.seeds)
    edge = slopes.open_side(accuracy)
    weights = sorted(accuracy)
    if edge == 'low':
      shrink = [r['shrink_total'] for r in row_cells
                if r['l2_weight'] == weights[0]]
      if max(shrink, default=math.inf) / STEP < preset.min_shrink_total:
        continue
      k = lattice(weights[0]) - 1
    elif edge == 'high':
      k = lattice(weights[-1]) + 1
    else:
      continue
    new += [cell(method, lr, weight_of(k), s) for s in preset.seeds]
  return new


def row(out: str, c: sweep.Cell) -> dict:
  """A cell's row: sweep's, and the rotation measures of a finished one."""
  result = sweep.row(out, c, METRICS)
  folder = sweep.workdir(out, c) if result['status'] == 'done' else ''
  return {**result, **separability.rotation_columns(folder)}


def train_grid(preset, out: str, executor: sweep.Executor,
               keep_checkpoints: bool) -> tuple:
  """Runs the first grid, then widens it round by round; returns (cells,
  how many were trained)."""
  cells, trained = first_grid(preset), 0
  for round_ in range(preset.widen_rounds + 1):
    trained += sweep.run(cells, preset.train, out, executor, keep_checkpoints)
    if round_ == preset.widen_rounds:
      break
    extra = widen([row(out, c) for c in cells], preset)
    if not extra:
      break
    print(f'widening {len(extra) // len(preset.seeds)} rows by one step',
          flush=True)
    cells += extra
  return cells, trained


def grown_cells(preset, out: str) -> list:
  """The first grid and every cell a widening added, from OUT/cells."""
  cells = {(c.labels['method'], c.name): c for c in first_grid(preset)}
  for method in preset.methods:
    folder = os.path.join(out, 'cells', method)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
      lr, weight, seed = separability.parse_cell_name(name)
      if weight:
        c = cell(method, lr, weight, seed)
        cells.setdefault((method, c.name), c)
  return list(cells.values())


def committed_rows(preset, out: str) -> list:
  """The preset's methods' rows from OUT/results.csv, for a folder that
  holds a report but not its cells."""
  path = os.path.join(out, 'results.csv')
  if not os.path.exists(path):
    raise L2JaxError(f'{out} holds neither cells/ nor results.csv: run the '
                     'preset there first (without --report_only)')
  return [r for r in sweep.read_csv(path) if r['method'] in preset.methods]


def select(preset, method: str, folds: int, out: str,
           executor: sweep.Executor, keep_checkpoints: bool) -> tuple:
  """λ for `method` at the preset's `select_lr` (benchmarks.selection):
  hold-out over seeds, k-fold when `folds` ≥ 2, then the chosen λ on the
  whole training split. Returns (report text, cells trained)."""
  lr = preset.select_lr[presets.METHODS[method][0]]
  weights = sorted({c.labels['l2_weight'] for c in first_grid(preset)
                    if c.labels['method'] == method and c.labels['lr'] == lr})
  make = lambda w, s, overrides, suffix: cell(method, lr, w, s, overrides,
                                              suffix)
  kinds = selection.cells(make, weights, list(preset.seeds), folds)
  trained = sweep.run([c for cs in kinds.values() for c in cs], preset.train,
                      out, executor, keep_checkpoints)
  rows = {k: [row(out, c) for c in cs] for k, cs in kinds.items()}
  by = selection.spreads(rows.get('folds') or rows['holdout'])
  final = selection.final_cell(make, selection.choose(by), preset.seeds[0])
  trained += sweep.run([final], preset.train, out, executor, keep_checkpoints)
  final_row = row(out, final)
  every = [r for rs in rows.values() for r in rs] + [final_row]
  sweep.write_csv(every, COLUMNS, os.path.join(out, f'select_{method}.csv'))
  return selection.report(
      method, lr, rows['holdout'], rows.get('folds', []), folds,
      final_row if final_row['status'] == 'done' else None,
      sweep.header(preset, every, 0.0, trained, cifar.get_config())), trained


def only(preset, methods) -> tuple:
  """The preset's methods that `methods` (--methods) names; SystemExit if it
  names one the preset does not run."""
  missing = [m for m in methods if m not in preset.methods]
  if missing:
    raise SystemExit(
        f'coupled_vs_decoupled: error: --methods={",".join(methods)}: preset '
        f'{preset.preset} does not run {", ".join(missing)}; it runs '
        f'{",".join(preset.methods)}')
  return tuple(m for m in preset.methods if m in methods)


def main(argv):
  out = cli.start('coupled_vs_decoupled', argv)
  start = time.perf_counter()
  preset = cli.load_preset('coupled_vs_decoupled', FLAGS.preset)
  trained = 0
  if FLAGS.select and FLAGS.methods:
    raise SystemExit('coupled_vs_decoupled: error: --select chooses λ for one '
                     'method; drop --methods')
  if FLAGS.select:
    try:
      text, _ = select(preset, FLAGS.select, FLAGS.folds, out, cli.executor(),
                       FLAGS.keep_checkpoints)
    except L2JaxError as e:
      raise SystemExit(f'coupled_vs_decoupled: error: {e}') from e
    outputs.write_atomic(os.path.join(out, f'select_{FLAGS.select}.md'), text)
    print(text, end='')
    return
  if FLAGS.methods:
    preset.methods = only(preset, FLAGS.methods)
  from_csv = FLAGS.report_only and not os.path.isdir(
      os.path.join(out, 'cells'))
  try:
    if from_csv:
      rows = committed_rows(preset, out)
    else:
      cells, trained = (
          (grown_cells(preset, out), 0) if FLAGS.report_only else
          train_grid(preset, out, cli.executor(), FLAGS.keep_checkpoints))
      rows = [row(out, c) for c in cells]
  except L2JaxError as e:
    raise SystemExit(f'coupled_vs_decoupled: error: {e}') from e
  if not from_csv:
    sweep.write_csv(rows, COLUMNS, os.path.join(out, 'results.csv'))
  analysis = separability.analyse(rows, preset)
  outputs.write_atomic(os.path.join(out, 'analysis.json'),
                       separability.to_json(analysis))
  figures.heatmaps(rows, analysis, preset, os.path.join(out, 'heatmaps.png'))
  figures.collapse(rows, preset, os.path.join(out, 'collapse.png'))
  if not from_csv:
    figures.angles(rows, preset, os.path.join(out, 'angles.png'), out)
  report = separability.report(rows, analysis, preset,
                               time.perf_counter() - start, trained)
  outputs.write_atomic(os.path.join(out, 'report.md'), report)
  print(report, end='')
  print(f'wrote {out}')


if __name__ == '__main__':
  cli.define_flags(presets.PRESETS)
  flags.DEFINE_enum('select', None, list(presets.METHODS),
                    "Choose λ for this method at the preset's select_lr "
                    'instead of running the grid.')
  flags.DEFINE_list('methods', None, "Run (or report) only these of the "
                    "preset's methods (default: all), e.g. --methods=sgd,sgdw; "
                    'not with --select.')
  flags.register_validator(
      'methods', lambda ms: ms is None or bool(ms) and set(ms) <= set(
          presets.METHODS),
      f'--methods takes a comma-separated list of {", ".join(presets.METHODS)}')
  flags.DEFINE_integer('folds', 1, 'With --select: 1 for a hold-out split '
                       'over seeds, k ≥ 2 for k-fold cross-validation.',
                       lower_bound=1)
  app.run(main)
