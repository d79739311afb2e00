"""The analysis of a coupled-vs-decoupled grid: slopes with intervals, gains
over λ = 0, the rotation measures, and report.md. Pure functions of the
rows `benchmarks.coupled_vs_decoupled` builds from the cells' files."""

import json
import math
import re

import numpy as np
import scipy.stats

from benchmarks import slopes
from benchmarks import sweep
from configs import cifar
from configs.sweeps import coupled_vs_decoupled as presets
from l2jax import equilibrium
from l2jax import outputs

# Loshchilov & Hutter (ICLR 2019, Fig. 2), networks with batch norm: the
# best λ moves as 1/α under coupled decay and stays put under decoupled.
PAPER_SLOPE = {'coupled': -1.0, 'decoupled': 0.0}
# The slopes each regime predicts (the README's mechanism): for
# scale-invariant weights the equilibrium angle sets the best λ, and Δθ* is
# a function of α^p λ (equilibrium.lr_power: SGD coupled −1, Adam coupled
# −2, decoupled 0); without normalization the fixed point of L + ½ λ‖w‖²
# does (coupled: 0; decoupled acts as λ/α: +1).
PLAIN_SLOPE = {'coupled': 0.0, 'decoupled': 1.0}


def parse_cell_name(name: str) -> tuple:
  """(lr, λ, seed) of a cell folder `lr0.01_lambda0.00316_seed2`."""
  match = re.fullmatch(r'lr([^_]+)_lambda([^_]+)_seed(\d+)', name)
  return float(match[1]), float(match[2]), int(match[3])


def by_row(rows: list) -> dict:
  """{(method, lr): that row's cells}."""
  result = {}
  for r in rows:
    result.setdefault((r['method'], r['lr']), []).append(r)
  return result


def _median(values) -> float:
  values = [v for v in values if v is not None and math.isfinite(v)]
  return float(np.median(values)) if values else math.nan


def _invariant_groups(record: dict) -> list:
  return [k.split('/', 1)[1] for k, v in record.items()
          if k.startswith('scale_invariant/') and v]


def angle_ratios(records: list) -> list:
  """Per epoch, the median over the scale-invariant groups of the measured
  Δθ over the equilibrium Δθ* (nan where undefined)."""
  groups = _invariant_groups(records[-1]) if records else []
  return [_median([_div(r.get(f'angular_update/{g}'),
                        r.get(f'angular_update_equilibrium/{g}'))
                   for g in groups]) for r in records]


ROTATION = ('shrink_total', 'angle_mean', 'decay_share', 'angle_last',
            'angle_equilibrium_last', 'angle_ratio_last', 'angle_ratio_mid')


def rotation_columns(workdir: str) -> dict:
  """From a cell's metrics.jsonl: the total shrink Σ_t s_t (median over the
  decayed kernel groups), and in the scale-invariant groups the mean Δθ
  over the run (the rotation the weights made: under batch norm, the
  effective learning rate), under coupled Adam the mean decay share of its
  denominator over the run (decayed scale-invariant groups only), the last
  epoch's Δθ, Δθ* and their ratio, and
  the ratio at mid-training (medians over the groups); nan where there is
  nothing to measure."""
  records = outputs.read_metrics(workdir) if workdir else []
  if not records:
    return dict.fromkeys(ROTATION, math.nan)
  last = records[-1]
  groups = [k.split('/', 1)[1] for k in last if k.startswith('shrink/')]
  steps = np.diff([0] + [r['step'] for r in records])
  totals = [sum((r.get(f'shrink/{g}') or 0.0) * n
                for r, n in zip(records, steps)) for g in groups]
  invariant = _invariant_groups(last)
  decayed = [g for g, t in zip(groups, totals) if t > 0]
  ratios = angle_ratios(records)
  return {
      'shrink_total': _median([t for t in totals if t > 0]) if any(totals)
                      else 0.0,
      'angle_mean': _over_run(records, 'angular_update', invariant),
      'decay_share': _over_run(records, 'decay_share',
                               [g for g in invariant if g in decayed]),
      'angle_last': _median([last.get(f'angular_update/{g}')
                             for g in invariant]),
      'angle_equilibrium_last': _median(
          [last.get(f'angular_update_equilibrium/{g}') for g in invariant]),
      'angle_ratio_last': ratios[-1],
      'angle_ratio_mid': ratios[(len(records) - 1) // 2],
  }


def _over_run(records: list, name: str, groups: list) -> float:
  """The mean over the epochs of the median of `name/<group>` over
  `groups`; nan where the records lack it."""
  return float(np.mean([_median([r.get(f'{name}/{g}') for g in groups])
                        for r in records]))


def _div(a, b) -> float:
  if a is None or b is None or not b:
    return math.nan
  return a / b


def _seed_mean(rows: list, key: str, seeds) -> float:
  values = {r['seed']: r[key] for r in rows}
  return float(np.mean([values.get(s, math.nan) for s in seeds]))


def best_cell(rows: list, seeds) -> dict:
  """The (lr, λ) of highest validation accuracy averaged over `seeds`, and
  its mean test accuracy; None when no cell finished."""
  cells = {}
  for r in rows:
    cells.setdefault((r['lr'], r['l2_weight']), []).append(r)
  scored = {k: _seed_mean(v, 'val_accuracy', seeds) for k, v in cells.items()}
  finite = {k: v for k, v in scored.items() if math.isfinite(v)}
  if not finite:
    return None
  lr, weight = max(finite, key=finite.get)
  return {'lr': lr, 'l2_weight': weight, 'val_accuracy': finite[lr, weight],
          'test_accuracy': _seed_mean(cells[lr, weight], 'test_accuracy',
                                      seeds)}


def gain(rows: list, draws: int = 2000, seed: int = 0) -> dict:
  """Test accuracy of the best cell (by mean validation accuracy) minus that
  of the best λ = 0 cell, with a 95% interval from resampling the seeds
  (both choices made again on each draw)."""
  seeds = sorted({r['seed'] for r in rows})
  zeros = [r for r in rows if r['l2_weight'] == 0]

  def difference(drawn):
    best, zero = best_cell(rows, drawn), best_cell(zeros, drawn)
    if best is None or zero is None:
      return math.nan
    return best['test_accuracy'] - zero['test_accuracy']

  rng = np.random.default_rng(seed)
  draws_ = [difference(list(rng.choice(seeds, len(seeds)))) for _ in
            range(draws)]
  draws_ = [d for d in draws_ if math.isfinite(d)]
  low, high = (np.percentile(draws_, [2.5, 97.5]) if draws_
               else (math.nan, math.nan))
  return {'best': best_cell(rows, seeds), 'zero': best_cell(zeros, seeds),
          'gain': difference(seeds), 'low': float(low), 'high': float(high)}


def value_at(rows: list, weight, key: str = 'shrink_total') -> float:
  """A positive column (Σ_t s_t, mean Δθ, decay share) at λ = `weight` in
  one lr row: the median over seeds at each λ, interpolated linearly in its
  log against log λ; nan without a weight or a positive value (a
  results.csv older than the column has none)."""
  totals = {}
  for r in rows:
    if r['l2_weight'] > 0 and r.get(key, math.nan) > 0:
      totals.setdefault(r['l2_weight'], []).append(r[key])
  if not weight or not totals:
    return math.nan
  weights = sorted(totals)
  return float(np.exp(np.interp(
      np.log(weight), np.log(weights),
      np.log([np.median(totals[w]) for w in weights]))))


def peak_height(rows: list) -> dict:
  """One lr row (λ = 0 cells included): how much validation accuracy its
  best λ > 0 adds over λ = 0, the best λ chosen on the other seeds and
  measured on the one left out (the maximum over a row's own noisy means
  would flatter every row); mean and 95% t-interval over the seeds. Where
  the interval reaches 0 the seeds do not show that decay helps the row at
  all, and its vertex is weak evidence of where the optimum lies."""
  seeds = sorted({r['seed'] for r in rows})
  accuracy = {(r['l2_weight'], r['seed']): r['val_accuracy'] for r in rows}
  lifts = []
  for left_out in seeds:
    best = slopes.argmax(slopes.mean_accuracy(
        rows, [s for s in seeds if s != left_out]))
    if best is not None:
      lifts.append(accuracy.get((best, left_out), math.nan)
                   - accuracy.get((0.0, left_out), math.nan))
  lifts = [v for v in lifts if math.isfinite(v)]
  if len(lifts) < 2:
    return {'height': math.nan, 'low': math.nan, 'high': math.nan}
  half = (scipy.stats.t.ppf(0.975, len(lifts) - 1) * np.std(lifts, ddof=1)
          / math.sqrt(len(lifts)))
  mean = float(np.mean(lifts))
  return {'height': mean, 'low': mean - half, 'high': mean + half}


def method_analysis(rows: list, preset) -> dict:
  """One method's rows: per-row argmax and vertex, both slopes with 95%
  intervals, the rows still at an edge, each row's peak over its λ = 0
  cell, the gain over λ = 0, at each row's vertex the total shrink Σ_t s_t,
  the mean Δθ and (coupled Adam) the decay's share of the denominator
  (`shrink_at_vertex`, `angle_at_vertex`, `decay_share_at_vertex`), and
  the Δθ ratios of its cells."""
  seeds = list(preset.seeds)
  decayed = [r for r in rows if r['l2_weight'] > 0]
  vertex = slopes.best_by_lr(decayed, seeds, slopes.vertex)
  rows_at_edge, shrink_at_vertex, angle_at_vertex, share_at_vertex = (
      {}, {}, {}, {})
  for (_, lr), cells in by_row(decayed).items():
    rows_at_edge[lr] = slopes.at_edge(slopes.mean_accuracy(cells, seeds))
    shrink_at_vertex[lr] = value_at(cells, vertex[lr])
    angle_at_vertex[lr] = value_at(cells, vertex[lr], 'angle_mean')
    share_at_vertex[lr] = value_at(cells, vertex[lr], 'decay_share')
  converged = [r for r in decayed if r['shrink_total'] >= 5]
  return {
      'peak': {lr: peak_height(cells) for (_, lr), cells in
               by_row(rows).items()},
      'argmax': slopes.best_by_lr(decayed, seeds, slopes.argmax),
      'vertex': vertex,
      'slope_argmax': slopes.bootstrap(decayed, slopes.argmax),
      'slope_vertex': slopes.bootstrap(decayed, slopes.vertex),
      'at_edge': rows_at_edge,
      'shrink_at_vertex': shrink_at_vertex,
      'angle_at_vertex': angle_at_vertex,
      'decay_share_at_vertex': share_at_vertex,
      'gain': gain(rows),
      'angle_ratio_last': _quantiles([r['angle_ratio_last']
                                      for r in converged]),
      'angle_ratio_mid': _quantiles([r['angle_ratio_mid'] for r in converged]),
      'cells_converged': len(converged),
  }


def _quantiles(values) -> dict:
  values = [v for v in values if math.isfinite(v)]
  if not values:
    return {'n': 0}
  q = np.percentile(values, [10, 50, 90])
  within = np.mean([abs(v - 1) <= 0.2 for v in values])
  return {'n': len(values), 'p10': q[0], 'median': q[1], 'p90': q[2],
          'within_20pct': float(within)}


def analyse(rows: list, preset) -> dict:
  """{method: method_analysis}, and the scale-invariant share."""
  result = {m: method_analysis([r for r in rows if r['method'] == m], preset)
            for m in preset.methods}
  result['scale_invariant_share'] = _median(
      [r['scale_invariant_share'] for r in rows])
  return result


def to_json(analysis: dict) -> str:
  """analysis.json: numbers as numbers, nan and missing values as null."""
  def clean(x):
    if isinstance(x, dict):
      return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
      return float(x) if math.isfinite(x) else None
    return x
  return json.dumps(clean(analysis), indent=2, sort_keys=True) + '\n'


def _pct(x) -> str:
  return f'{100 * x:.2f}' if x is not None and math.isfinite(x) else 'n/a'


def _slope(s: dict) -> str:
  if s['slope'] is None:
    return 'n/a'
  return (f'{s["slope"]:+.2f} [{s["low"]:+.2f}, {s["high"]:+.2f}]'
          + (f' ({100 * s["defined"]:.0f}% of draws)' if s['defined'] < 1
             else ''))


def expected(method: str, share: float) -> str:
  """The mechanism's slope for a share of scale-invariant parameters."""
  optimizer, mode = presets.METHODS[method]
  if share >= 0.9:
    return f'{-equilibrium.lr_power(optimizer, mode):+.0f}'
  if share <= 0.1:
    return f'{PLAIN_SLOPE[mode]:+.0f}'
  return 'between'


def report(rows: list, analysis: dict, preset, seconds: float,
           trained: int) -> str:
  """report.md: how it was made, slopes, gains, rotation; from the rows."""
  share = analysis['scale_invariant_share']
  lines = ['# Coupled L2 against decoupled weight decay', '',
           *sweep.header(preset, rows, seconds, trained, cifar.get_config()),
           f'- Scale-invariant share of the decayed parameters: {_pct(share)} %',
           f'- Seeds: {list(preset.seeds)}; λ on a ×√10 lattice; rows widened '
           f'up to {preset.widen_rounds} rounds', '']
  if preset.preset.startswith('smoke'):
    lines += ['**A smoke preset: it exercises every output; its numbers mean '
              'nothing.**', '']
  lines += [
      '## Separability: the best λ against the learning rate', '',
      'Per lr row, the best λ > 0 by validation accuracy averaged over the '
      'seeds (argmax), and the vertex of a parabola fitted to it against '
      'log λ around the argmax; the slope of log λ against log α by least '
      'squares over the rows, with a 95% interval from resampling the seeds '
      '(benchmarks/slopes.py). Expected: Loshchilov & Hutter\'s Fig. 2 (batch '
      'norm), and the mechanism for this network\'s scale-invariant share '
      '(l2jax/equilibrium.py, `lr_power`). Rows without a peak: those whose '
      'best λ > 0 does not lift validation accuracy over λ = 0 beyond its '
      '95% interval (next section): their seeds do not show that decay '
      'helps there, so where their vertex lies is weak evidence.',
      '', '| method | vertex λ̂ by lr | slope (vertex) | slope (argmax) | '
      'paper | mechanism | rows at an edge | rows without a peak |',
      '|---|---|---|---|---|---|---|---|']
  for method in preset.methods:
    a, mode = analysis[method], presets.METHODS[method][1]
    vertices = ', '.join(f'{lr:g}: {w:.3g}' if w else f'{lr:g}: –'
                         for lr, w in a['vertex'].items())
    edges = ', '.join(f'{lr:g} ({e})' for lr, e in a['at_edge'].items() if e)
    lines.append(f'| {method} | {vertices} | {_slope(a["slope_vertex"])} | '
                 f'{_slope(a["slope_argmax"])} | {PAPER_SLOPE[mode]:+.0f} | '
                 f'{expected(method, share)} | {edges or "none"} | '
                 f'{_flat(a["peak"]) or "none"} |')
  lines += ['', '## Each row\'s peak: its best λ > 0 over λ = 0', '',
            'Validation accuracy (points) that the row\'s best λ > 0 adds over '
            'λ = 0, the best λ chosen on the other seeds and measured on the '
            'one left out (no selection bias); mean and 95% t-interval over '
            'the seeds (benchmarks/separability.py, `peak_height`).',
            '', '| method | peak by lr |', '|---|---|']
  for method in preset.methods:
    lines.append(f'| {method} | ' + ', '.join(
        f'{lr:g}: {peak_text(p)}' for lr, p in analysis[method]['peak'].items())
                 + ' |')
  lines += ['', '## Gain of the best cell over λ = 0', '',
            'Test accuracy (%) of the cell of best mean validation accuracy, '
            'minus that of the best λ = 0 cell, 95% interval over seeds.', '',
            '| method | best (lr, λ) | test | best λ = 0 (lr) | test | gain |',
            '|---|---|---|---|---|---|']
  for method in preset.methods:
    g = analysis[method]['gain']
    if not g['best'] or not g['zero']:
      lines.append(f'| {method} | no finished cell |||||')
      continue
    lines.append(
        f'| {method} | {g["best"]["lr"]:g}, {g["best"]["l2_weight"]:g} | '
        f'{_pct(g["best"]["test_accuracy"])} | {g["zero"]["lr"]:g} | '
        f'{_pct(g["zero"]["test_accuracy"])} | {100 * g["gain"]:+.2f} '
        f'[{100 * g["low"]:+.2f}, {100 * g["high"]:+.2f}] |')
  lines += ['', '## The mechanism: angular updates', '',
            'Σ_t s_t: the total shrink the decay gave the weights; mean Δθ: '
            'the mean angular update of the scale-invariant kernel groups '
            'over the run (the rotation that sets their effective learning '
            'rate); under coupled Adam, the decay\'s share λ|w|/√v̂ of its '
            'denominator, mean over the run (toward 1 the decay drowns the '
            'gradient); each at each row\'s vertex λ̂ (interpolated between '
            'its cells; – where the row has no vertex). Δθ/Δθ*: the measured '
            'angular update over the predicted equilibrium '
            '(l2jax/equilibrium.py), in cells with Σ_t s_t ≥ 5: at the last '
            'epoch and at mid-training (10th, 50th, 90th percentile; share '
            'within 20%).', '',
            '| method | Σ s_t at the vertex λ̂, by lr | mean Δθ there | decay '
            'share there | cells | Δθ/Δθ* last epoch | within 20% | Δθ/Δθ* '
            'mid-training | within 20% |',
            '|---|---|---|---|---|---|---|---|---|']
  for method in preset.methods:
    a = analysis[method]
    lines.append(f'| {method} | {by_lr_text(a["shrink_at_vertex"])} | '
                 f'{by_lr_text(a["angle_at_vertex"])} | '
                 f'{by_lr_text(a["decay_share_at_vertex"])} | '
                 f'{a["cells_converged"]} | '
                 f'{_spread(a["angle_ratio_last"])} | '
                 f'{_share(a["angle_ratio_last"])} | '
                 f'{_spread(a["angle_ratio_mid"])} | '
                 f'{_share(a["angle_ratio_mid"])} |')
  lines += ['', 'Figures: heatmaps.png (mean validation accuracy by lr × λ), '
            'collapse.png (accuracy against Σ_t s_t and against mean Δθ), '
            'angles.png (Δθ against Δθ*). Every cell: results.csv; the '
            'numbers above: analysis.json.']
  return '\n'.join(lines) + '\n'


def by_lr_text(values: dict, spec: str = '.2g') -> str:
  """'0.001: 0.95, 0.01: –' of {lr: value} (lr a number or its text, as
  analysis.json holds it); – for None or nan."""
  return ', '.join(
      f'{float(lr):g}: {v:{spec}}' if v is not None and math.isfinite(v)
      else f'{float(lr):g}: –' for lr, v in values.items())


def _flat(peaks: dict) -> str:
  """The lrs of rows whose peak interval reaches 0."""
  return ', '.join(f'{lr:g}' for lr, p in peaks.items()
                   if not p['low'] > 0)


def peak_text(p: dict) -> str:
  """A row's peak in points, '+1.1 [+0.9, +1.4]'; 'n/a' where unmeasured
  (nan, or null in analysis.json)."""
  if p['height'] is None or not math.isfinite(p['height']):
    return 'n/a'
  return (f'{100 * p["height"]:+.1f} [{100 * p["low"]:+.1f}, '
          f'{100 * p["high"]:+.1f}]')


def _spread(q: dict) -> str:
  if not q.get('n'):
    return 'n/a'
  return f'{q["median"]:.2f} ({q["p10"]:.2f}–{q["p90"]:.2f})'


def _share(q: dict) -> str:
  return f'{100 * q["within_20pct"]:.0f}%' if q.get('n') else 'n/a'
