"""Where the best λ lies in each learning-rate row, and how it moves with α.

Input: grid rows, one per (lr, λ, seed), with `lr`, `l2_weight`, `seed` and
`val_accuracy` (nan for a cell that did not finish). Per lr row:

* the argmax: the λ > 0 of highest validation accuracy, averaged over seeds;
* the vertex: x̂ = −b / (2a) of a parabola a x² + b x + c fitted by least
  squares to the mean validation accuracy against x = log λ over the argmax
  and up to two grid points on each side (at least one each side; an argmax
  at an end of the row's grid has no vertex).

The separability slope is the least-squares slope of log λ̂ against log α
over the rows that have one (Loshchilov & Hutter, ICLR 2019, Fig. 2: about
−1 for coupled L2, 0 for decoupled decay). `bootstrap` gives its 95%
interval by resampling the seeds with replacement, the same draw for every
cell, since a seed fixes the validation split all cells of it share.

From the command line, both slopes of one method over chosen rows of a
committed grid (a row subset is a choice made after seeing the grid: say so
where you quote it):

    python -m benchmarks.slopes \
        --results=benchmarks/results/separability/cpu_bn_adam_convs/results.csv \
        --method=adam --lrs=3e-4,1e-3,3e-3
"""

import math
import sys
from typing import Optional, Sequence

from absl import app
from absl import flags
import numpy as np

FLAGS = flags.FLAGS


def mean_accuracy(rows: Sequence[dict], seeds: Sequence[int]) -> dict:
  """{λ: validation accuracy averaged over `seeds` (with repeats)}, for the
  λ > 0 of one lr row; nan where a seed's cell did not finish."""
  by_cell = {(r['l2_weight'], r['seed']): r['val_accuracy'] for r in rows}
  weights = sorted({r['l2_weight'] for r in rows if r['l2_weight'] > 0})
  return {w: float(np.mean([by_cell.get((w, s), math.nan) for s in seeds]))
          for w in weights}


def argmax(accuracy: dict) -> Optional[float]:
  """The λ of highest accuracy; None when none is finite."""
  finite = {w: a for w, a in accuracy.items() if math.isfinite(a)}
  return max(finite, key=finite.get) if finite else None


def at_edge(accuracy: dict) -> Optional[str]:
  """'low' or 'high' when the argmax is the row's smallest or largest λ."""
  best = argmax(accuracy)
  weights = sorted(accuracy)
  if best is None or len(weights) < 2:
    return None
  return {weights[0]: 'low', weights[-1]: 'high'}.get(best)


def open_side(accuracy: dict) -> Optional[str]:
  """'low' or 'high' where the row needs a λ beyond its end: its argmax is
  there (`at_edge`), or its vertex is clipped to that end (the parabola
  still rises past the last cell)."""
  edge = at_edge(accuracy)
  best, weights = vertex(accuracy), sorted(accuracy)
  if edge or best is None:
    return edge
  if math.isclose(best, weights[-1]):
    return 'high'
  if math.isclose(best, weights[0]):
    return 'low'
  return None


def vertex(accuracy: dict, reach: int = 2) -> Optional[float]:
  """λ̂ of the parabola through the argmax and its neighbours (module
  docstring); None at an edge, for a convex fit, or too few finite points."""
  weights = sorted(accuracy)
  best = argmax(accuracy)
  if best is None or at_edge(accuracy):
    return None
  i = weights.index(best)
  window = [w for w in weights[max(i - reach, 0):i + reach + 1]
            if math.isfinite(accuracy[w])]
  if len(window) < 3:
    return None
  x = np.log([w for w in window])
  a, b, _ = np.polyfit(x, [accuracy[w] for w in window], 2)
  if a >= 0:
    return None
  # A vertex beyond the fitted points is an extrapolation: clip to them.
  return float(np.exp(np.clip(-b / (2 * a), x.min(), x.max())))


def slope(best_by_lr: dict) -> Optional[float]:
  """Least-squares slope of log λ against log α; None with < 2 rows."""
  points = [(lr, w) for lr, w in best_by_lr.items() if w]
  if len(points) < 2:
    return None
  log_lr, log_w = np.log(np.array(points, dtype=float)).T
  return float(np.polyfit(log_lr, log_w, 1)[0])


def best_by_lr(rows: Sequence[dict], seeds: Sequence[int],
               estimator=vertex) -> dict:
  """{lr: the estimator's λ} for one method's rows."""
  result = {}
  for lr in sorted({r['lr'] for r in rows}):
    accuracy = mean_accuracy([r for r in rows if r['lr'] == lr], seeds)
    result[lr] = estimator(accuracy)
  return result


def bootstrap(rows: Sequence[dict], estimator=vertex, draws: int = 2000,
              seed: int = 0) -> dict:
  """The slope on all seeds, and its 95% percentile interval over `draws`
  resamplings of the seeds (draws whose slope is undefined are counted:
  `defined` is their share)."""
  seeds = sorted({r['seed'] for r in rows})
  point = slope(best_by_lr(rows, seeds, estimator))
  rng = np.random.default_rng(seed)
  slopes = []
  for _ in range(draws):
    drawn = list(rng.choice(seeds, size=len(seeds), replace=True))
    slopes.append(slope(best_by_lr(rows, drawn, estimator)))
  defined = [s for s in slopes if s is not None]
  low, high = (np.percentile(defined, [2.5, 97.5]) if defined
               else (math.nan, math.nan))
  return {'slope': point, 'low': float(low), 'high': float(high),
          'defined': len(defined) / draws}


def rows_of(rows: Sequence[dict], method: str, lrs=None) -> list:
  """A results.csv's decayed cells of `method`, in the rows `lrs` (all when
  None); raises ValueError naming what exists when nothing matches."""
  chosen = [r for r in rows if r['method'] == method and r['l2_weight'] > 0
            and (lrs is None or any(math.isclose(r['lr'], lr) for lr in lrs))]
  if not chosen:
    methods = sorted({r['method'] for r in rows})
    rates = sorted({r['lr'] for r in rows if r['method'] == method})
    raise ValueError(f'no decayed cells of method {method!r} at lr {lrs}; '
                     f'the file has methods {methods}'
                     + (f', {method} at lr {rates}' if rates else ''))
  return chosen


def main(argv):
  from benchmarks import sweep  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    sys.exit(f'slopes: error: unexpected arguments: {" ".join(argv[1:])}')
  try:
    rows = rows_of(sweep.read_csv(FLAGS.results), FLAGS.method,
                   FLAGS.lrs and [float(lr) for lr in FLAGS.lrs])
  except (OSError, ValueError) as e:
    sys.exit(f'slopes: error: {e}')
  seeds = sorted({r['seed'] for r in rows})
  for name, estimator in (('vertex', vertex), ('argmax', argmax)):
    s = bootstrap(rows, estimator)
    by_lr = ', '.join(f'{lr:g}: {w:.3g}' if w else f'{lr:g}: –'
                      for lr, w in best_by_lr(rows, seeds, estimator).items())
    text = ('n/a' if s['slope'] is None else
            f'{s["slope"]:+.2f} [{s["low"]:+.2f}, {s["high"]:+.2f}]')
    print(f'{FLAGS.method} {name}: slope {text} over {len(seeds)} seeds; '
          f'λ̂ by lr {by_lr}')


if __name__ == '__main__':
  flags.DEFINE_string('results', None, 'A coupled_vs_decoupled results.csv.')
  flags.DEFINE_string('method', None, 'sgd, sgdw, adam or adamw.')
  flags.DEFINE_list('lrs', None, 'The lr rows to fit (default: all).')
  flags.mark_flags_as_required(['results', 'method'])
  app.run(main)
