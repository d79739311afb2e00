"""What a run leaves in its workdir: metrics.jsonl, summary.json, curves.png."""

import json
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
from matplotlib.ticker import LogFormatter  # pylint: disable=g-import-not-at-top
from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

METRICS = 'metrics.jsonl'
SUMMARY = 'summary.json'
CURVES = 'curves.png'
NOISE = 'test_accuracy_noise'  # + σ: the key of the accuracy under noise σ.


def read_metrics(workdir: str) -> list:
  path = os.path.join(workdir, METRICS)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricsWriter:
  """Appends one JSON object per epoch to metrics.jsonl.

  On resume from epoch k, records after k (written after the checkpoint a
  killed run resumes from) are dropped, so each epoch appears once. With
  `write=False` (processes other than 0) it only keeps the records. The
  file is rewritten whole at each record (`write_atomic`): a write that
  fails, on a full disk, leaves the last complete file, never half a line.
  """

  def __init__(self, workdir: str, resume_epoch: int, write: bool = True):
    self.path = os.path.join(workdir, METRICS) if write else None
    self.records = [r for r in read_metrics(workdir)
                    if r['epoch'] <= resume_epoch]
    if self.path:
      write_atomic(self.path, ''.join(json.dumps(r) + '\n'
                                       for r in self.records))

  def write(self, record: dict) -> None:
    self.records.append(record)
    if self.path:
      write_atomic(self.path, ''.join(json.dumps(r) + '\n'
                                       for r in self.records))


def read_summary(workdir: str):
  """summary.json's contents, or None when there is none."""
  path = os.path.join(workdir, SUMMARY)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_summary(workdir: str, summary: dict) -> None:
  write_atomic(os.path.join(workdir, SUMMARY),
                json.dumps(summary, indent=2, sort_keys=True) + '\n')


def plot_curves(workdir: str, records: list, title: str) -> None:
  """curves.png: loss and accuracy (train, validation, test, test under each
  noise σ), the weight norm, and by kernel group ‖w‖, 1/‖w‖² (the
  effective learning rate α_t/‖w‖² over α_t) and the angle a step turns
  the kernels, Δθ, beside its predicted equilibrium Δθ*, against epoch.

  Undefined values (None) and missing keys are left out.
  """
  fig = plt.figure(figsize=(15, 12))
  grid = fig.add_gridspec(3, 3)
  loss_ax, accuracy_ax, noise_ax, norm_ax, group_ax, lr_ax = (
      fig.add_subplot(grid[i // 3, i % 3]) for i in range(6))
  angle_ax, legend_ax = fig.add_subplot(grid[2, :2]), fig.add_subplot(grid[2, 2])
  epochs = [r['epoch'] for r in records]
  style = {'marker': 'o', 'markersize': 4} if len(epochs) <= 30 else {}
  _plot(loss_ax, records, [('train_loss', 'train'), ('val_loss', 'validation'),
                           ('test_loss', 'test')], style)
  loss_ax.set(ylabel='cross-entropy', title='loss (train: with penalties)')
  _plot(accuracy_ax, records, [('train_accuracy', 'train'),
                               ('val_accuracy', 'validation'),
                               ('test_accuracy', 'test')], style)
  accuracy_ax.set(ylabel='accuracy', title='accuracy')
  noise = sorted({k[len(NOISE):] for r in records for k in r
                  if k.startswith(NOISE)}, key=float)
  _plot(noise_ax, records, [('test_accuracy', 'σ = 0')] + [
      (NOISE + sigma, f'σ = {sigma}') for sigma in noise], style)
  noise_ax.set(ylabel='test accuracy', title='test accuracy under noise σ')
  _weight_norm(norm_ax, records, style)
  _by_group(group_ax, lr_ax, angle_ax, legend_ax, records, style)
  for ax in (loss_ax, accuracy_ax, noise_ax, norm_ax, group_ax, lr_ax,
             angle_ax):
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if epochs:
      ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
  fig.suptitle(title)
  fig.tight_layout()
  save_figure(fig, os.path.join(workdir, CURVES))


def _by_group(norm_ax, lr_ax, angle_ax, legend_ax, records: list,
              style: dict) -> None:
  """Each kernel group's ‖w‖, 1/‖w‖² and Δθ beside Δθ*, on log axes, in
  one colour a group, and the groups' legend."""
  groups = _groups(records)
  colors = plt.cm.tab10.colors if len(groups) <= 10 else plt.cm.tab20.colors
  color = {g: colors[i % len(colors)] for i, g in enumerate(groups)}
  for group in groups:
    x, norms = _series(records, f'kernel_norm/{group}')
    norm_ax.plot(x, norms, color=color[group], **style)
    lr_ax.plot(x, [1 / v ** 2 if v else np.nan for v in norms],
               color=color[group], **style)
    angle_ax.plot(*_series(records, f'angular_update/{group}'),
                  color=color[group], **style)
  measured = [v for line in angle_ax.lines for v in line.get_ydata()
              if v > 0]
  for group in groups:
    angle_ax.plot(*_series(records, f'angular_update_equilibrium/{group}'),
                  '--', color=color[group], **style)
  # Δθ* falls to 0 with α_t at a schedule's end: the axis stops 100 times
  # below the least measured Δθ.
  floor = min(measured, default=0) / 100
  angles = [v for line in angle_ax.lines for v in line.get_ydata()
            if v >= floor]
  for ax, label, title, values in (
      (norm_ax, '‖w‖₂', '‖w‖ of the kernels, by group', None),
      (lr_ax, '1 / ‖w‖²', 'effective learning rate α_t/‖w‖² over α_t', None),
      (angle_ax, 'radians a step', 'angle a step turns the kernels: Δθ '
       '(solid), equilibrium Δθ* (dashed)', angles)):
    ax.set(ylabel=label, title=title)
    _log_axis(ax, values)
  _group_legend(legend_ax, groups, color, records[-1] if records else {})


def _series(records: list, key: str) -> tuple:
  """(epochs, values) of the records where `key` holds a number."""
  points = [(r['epoch'], r[key]) for r in records
            if isinstance(r.get(key), (int, float))
            and not isinstance(r.get(key), bool)]
  return tuple(zip(*points)) if points else ((), ())


def _plot(ax, records: list, keys: list, style: dict) -> None:
  for key, label in keys:
    epochs, values = _series(records, key)
    if epochs:
      ax.plot(epochs, values, label=label, **style)
  if ax.lines:
    ax.legend(fontsize='small')


def _weight_norm(ax, records: list, style: dict) -> None:
  """‖w‖ from 0, so that a change of 0.1% looks like one; the change in
  the title."""
  epochs, norms = _series(records, 'weight_norm')
  ax.plot(epochs, norms, **style)
  ax.set_ylim(bottom=0, top=1.1 * max(norms, default=1))
  change = f' ({norms[-1] / norms[0] - 1:+.2%} from epoch {epochs[0]})' if (
      len(norms) > 1 and norms[0]) else ''
  ax.set(ylabel='‖w‖₂ (decayed parameters)', title='weight norm' + change)


def _groups(records: list) -> list:
  """The kernel groups, in the records' order."""
  return list(dict.fromkeys(k.split('/', 1)[1] for r in records for k in r
                            if k.startswith('kernel_norm/')))


def _log_axis(ax, values=None, min_ratio: float = 10.0) -> None:
  """A log y axis over `values` (default: its lines') spanning at least a
  factor `min_ratio`, so that a nearly constant curve is not stretched over
  the panel; ticks as plain numbers."""
  values = [v for v in (values if values is not None else [
      v for line in ax.lines for v in line.get_ydata()]) if np.isfinite(v)
            and v > 0]
  ax.set_yscale('log', nonpositive='mask')  # A gap at a ‖w‖ of 0.
  ax.yaxis.set_major_formatter(LogFormatter())
  ax.yaxis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.5)))
  if not values:
    return
  low, high = min(values), max(values)
  if high / low < min_ratio:
    middle = np.sqrt(low * high)
    low, high = middle / np.sqrt(min_ratio), middle * np.sqrt(min_ratio)
  ax.set_ylim(low / 1.2, high * 1.2)


def _group_legend(ax, groups: list, color: dict, record: dict) -> None:
  """One entry a group; a scale-invariant one (its kernels followed by a
  normalization: ‖w‖ does not change the function) is marked."""
  ax.axis('off')
  handles = [Line2D([], [], color=color[g], label=g + (
      ' (scale-invariant)' if record.get(f'scale_invariant/{g}') is True
      else '')) for g in groups]
  if handles:
    ax.legend(handles=handles, loc='center', title='kernel groups',
              fontsize='small', ncol=2 if len(handles) > 12 else 1)


def write_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file renamed over it, so a
  reader never sees half a file."""
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


def save_figure(fig, path: str, dpi: int = 100) -> None:
  """`fig` as a PNG at `path`, written atomically, then closed."""
  fig.savefig(path + '.tmp.png', dpi=dpi)
  plt.close(fig)
  os.replace(path + '.tmp.png', path)
