"""The figures of a coupled-vs-decoupled grid, from its rows."""

import math
import os

import matplotlib

matplotlib.use('Agg')
# pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt
import numpy as np

from benchmarks import separability
from configs.sweeps import coupled_vs_decoupled as presets
from l2jax import outputs

# A colour scale spans at least this many accuracy points, so that noise
# does not look like contrast.
MIN_RANGE = 0.05
SMOKE_NOTE = ' (smoke preset: the numbers mean nothing)'


def _mean(rows, key):
  values = [r[key] for r in rows if math.isfinite(r.get(key, math.nan))]
  return float(np.mean(values)) if values else math.nan


def heatmaps(rows: list, analysis: dict, preset, path: str) -> None:
  """Mean validation accuracy over seeds, x = λ (λ = 0 its own column),
  y = lr, a panel a method; one colour scale for the figure. Framed: each
  method's best cell; dots: each row's vertex λ̂; '=': a tie with the best."""
  methods = list(preset.methods)
  columns = min(len(methods), 2)
  fig, axes = plt.subplots(math.ceil(len(methods) / columns), columns,
                           figsize=(6.5 * columns, 5 * math.ceil(
                               len(methods) / columns)),
                           squeeze=False, constrained_layout=True)
  cells = {}
  for r in rows:
    cells.setdefault((r['method'], r['lr'], r['l2_weight']), []).append(r)
  means = {k: _mean(v, 'val_accuracy') for k, v in cells.items()}
  finite = [v for v in means.values() if math.isfinite(v)]
  high = max(finite, default=1.0)
  low = min(min(finite, default=0.0), high - MIN_RANGE)
  for ax, method in zip(axes.flat, methods):
    lrs = sorted({k[1] for k in means if k[0] == method})
    weights = sorted({k[2] for k in means if k[0] == method})
    grid = np.full((len(lrs), len(weights)), np.nan)
    for (m, lr, w), v in means.items():
      if m == method:
        grid[lrs.index(lr), weights.index(w)] = v
    image = ax.imshow(grid, origin='lower', cmap='viridis', aspect='auto',
                      vmin=low, vmax=high)
    best = np.nanmax(grid) if np.isfinite(grid).any() else math.nan
    for (i, j), v in np.ndenumerate(grid):
      if math.isfinite(v):
        mark = '=' if v == best else ''
        ax.text(j, i, f'{100 * v:.1f}{mark}', ha='center', va='center',
                fontsize=7, color='w' if v < (low + high) / 2 else 'k')
    if weights and weights[0] == 0 and len(weights) > 1:
      ax.axvline(0.5, color='w', linewidth=3)  # λ = 0 is off the log scale.
    chosen = analysis[method]['gain']['best']
    if chosen:
      ax.add_patch(plt.Rectangle(
          (weights.index(chosen['l2_weight']) - 0.5,
           lrs.index(chosen['lr']) - 0.5), 1, 1, fill=False,
          edgecolor='red', linewidth=2.5))
    positive = [w for w in weights if w > 0]
    for lr, vertex in analysis[method]['vertex'].items():
      if vertex and positive:
        # The vertex on the column axis: interpolate in log λ.
        x = np.interp(math.log(vertex), np.log(positive),
                      [weights.index(w) for w in positive])
        ax.plot(x, lrs.index(lr), 'o', color='red', markersize=4)
    optimizer, mode = presets.METHODS[method]
    ax.set(xticks=range(len(weights)),
           xticklabels=[f'{w:.2g}' for w in weights], yticks=range(len(lrs)),
           yticklabels=[f'{lr:g}' for lr in lrs], xlabel='λ',
           ylabel='learning rate α', title=f'{method}: {optimizer}, {mode}')
    ax.tick_params(axis='x', labelrotation=60, labelsize=7)
  fig.colorbar(image, ax=axes.ravel().tolist(), label='validation accuracy')
  fig.suptitle('Validation accuracy, mean over seeds; red frame: best cell; '
               'red dots: vertex λ̂ per row'
               + (SMOKE_NOTE if preset.preset.startswith('smoke') else ''))
  outputs.save_figure(fig, path)


def coupled(method: str) -> bool:
  return presets.METHODS[method][1] == 'coupled'


def _pairs(preset) -> list:
  """[(coupled method, decoupled method)] of each optimizer, or (method,)
  where the preset runs only one of them (--methods)."""
  pairs = [tuple(m for m in pair if m in preset.methods)
           for pair in (('sgd', 'sgdw'), ('adam', 'adamw'))]
  return [pair for pair in pairs if pair]


def collapse(rows: list, preset, path: str) -> None:
  """Validation accuracy (mean over seeds), every cell of both methods of a
  pair (coupled filled, decoupled open, λ = 0 crosses), against the total
  shrink Σ_t s_t (top; decayed cells) and against the mean Δθ of the
  scale-invariant groups (bottom): under batch norm the decay acts through
  s alone and the two methods fall on one curve; and if the rotation is
  the decay's effect, accuracy is one function of it whatever α and λ."""
  pairs = _pairs(preset)
  fig, axes = plt.subplots(2, len(pairs), squeeze=False,
                           figsize=(max(6 * len(pairs), 9), 9))
  for column, pair in enumerate(pairs):
    cells = {}
    for r in rows:
      if r['method'] in pair or (r['optimizer'] == presets.METHODS[pair[0]][0]
                                 and not r['l2_weight']):
        key = r['method'] if r['l2_weight'] else 'λ = 0'
        cells.setdefault((key, r['lr'], r['l2_weight']), []).append(r)
    lrs = sorted({lr for _, lr, _ in cells})
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(lrs), 1)))
    for ax, column_key in zip(axes[:, column], ('shrink_total', 'angle_mean')):
      for (key, lr, _), group in sorted(cells.items()):
        x, y = _mean(group, column_key), _mean(group, 'val_accuracy')
        if not (x > 0 and math.isfinite(y)):
          continue
        marker = 'x' if key == 'λ = 0' else 'o' if coupled(key) else 's'
        ax.plot(x, y, marker, color=colours[lrs.index(lr)],
                fillstyle='none' if marker == 's' else 'full',
                label=f'{key} α={lr:g}')
      handles, labels = ax.get_legend_handles_labels()
      unique = dict(zip(labels, handles))
      if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=7, ncol=2)
      ax.set(xscale='log', ylabel='validation accuracy', title=' and '.join(
          f'{m} ({"filled" if coupled(m) else "open"})' for m in pair))
    axes[0, column].set_xlabel('Σ_t s_t (total shrink from the decay)')
    axes[0, column].axvline(5, color='grey', linestyle=':', linewidth=1)
    axes[1, column].set_xlabel('mean Δθ over the run, scale-invariant '
                               'kernels (rad per step)')
  fig.suptitle('Accuracy against the decay\'s total shrink and against the '
               'rotation' + (SMOKE_NOTE if preset.preset.startswith('smoke')
                             else ''))
  fig.tight_layout()
  outputs.save_figure(fig, path)


def angles(rows: list, preset, path: str, out: str) -> None:
  """Left: the last epoch's measured Δθ against the predicted Δθ*, one
  point per cell (scale-invariant groups, median), coloured by Σ_t s_t.
  Right: Δθ/Δθ* over training, median and 10–90% band over the cells with
  Σ_t s_t ≥ 5 (their metrics.jsonl under `out`)."""
  fig, (ax, over) = plt.subplots(1, 2, figsize=(12, 5))
  points = [(r['angle_equilibrium_last'], r['angle_last'], r['shrink_total'])
            for r in rows if math.isfinite(r['angle_last'])
            and math.isfinite(r['angle_equilibrium_last'])]
  if points:
    x, y, shrink = zip(*points)
    scatter = ax.scatter(x, y, c=np.log10(np.maximum(shrink, 1e-3)),
                         cmap='viridis', s=14)
    fig.colorbar(scatter, ax=ax, label='log₁₀ Σ_t s_t')
    span = [min(x + y), max(x + y)]
    ax.plot(span, span, 'k-', linewidth=1, label='Δθ = Δθ*')
    ax.fill_between(span, [0.8 * v for v in span], [1.2 * v for v in span],
                    color='grey', alpha=0.2, label='±20%')
    ax.set(xscale='log', yscale='log')
    ax.legend(fontsize=8)
  else:
    ax.text(0.5, 0.5, 'no scale-invariant kernel group', ha='center',
            transform=ax.transAxes)
  ax.set(xlabel='predicted equilibrium Δθ* (rad/step), last epoch',
         ylabel='measured Δθ (rad/step), last epoch',
         title='Angular update of scale-invariant kernels')
  ratios = [separability.angle_ratios(outputs.read_metrics(
      os.path.join(out, r['workdir']))) for r in rows
            if r['status'] == 'done' and r['shrink_total'] >= 5]
  ratios = np.array([r for r in ratios if r and len(r) == len(ratios[0])])
  if ratios.size:
    epochs = np.arange(1, ratios.shape[1] + 1)
    low, mid, high = np.nanpercentile(ratios, [10, 50, 90], axis=0)
    over.fill_between(epochs, low, high, alpha=0.3, label='10–90%')
    over.plot(epochs, mid, 'o-' if len(epochs) < 40 else '-', label='median')
    over.axhspan(0.8, 1.2, color='grey', alpha=0.15, label='±20%')
    over.legend(fontsize=8)
  over.set(xlabel='epoch', ylabel='Δθ / Δθ*', ylim=(0, 1.6),
           title=f'Over training, {len(ratios)} cells with Σ_t s_t ≥ 5')
  fig.suptitle('Rotational equilibrium'
               + (SMOKE_NOTE if preset.preset.startswith('smoke') else ''))
  fig.tight_layout()
  outputs.save_figure(fig, path)
