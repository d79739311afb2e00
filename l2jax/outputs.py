"""What a run leaves in its workdir: metrics.jsonl, summary.json, curves.png."""

import json
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top

METRICS = 'metrics.jsonl'
SUMMARY = 'summary.json'
CURVES = 'curves.png'


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


def write_summary(workdir: str, summary: dict) -> None:
  write_atomic(os.path.join(workdir, SUMMARY),
                json.dumps(summary, indent=2, sort_keys=True) + '\n')


def plot_curves(workdir: str, records: list, title: str) -> None:
  """Accuracy (train, val, test), weight norm, and each kernel group's ‖w‖
  and effective learning rate α/‖w‖², against epoch."""
  epochs = [r['epoch'] for r in records]
  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  (acc_ax, norm_ax), (group_ax, lr_ax) = axes
  for key, label in (('train_accuracy', 'train'), ('val_accuracy', 'validation'),
                     ('test_accuracy', 'test')):
    points = [(r['epoch'], r[key]) for r in records if key in r]
    if points:
      acc_ax.plot(*zip(*points), marker='o', label=label)
  acc_ax.set(xlabel='epoch', ylabel='accuracy', title='accuracy')
  acc_ax.legend()
  norm_ax.plot(epochs, [r['weight_norm'] for r in records], marker='o')
  norm_ax.set(xlabel='epoch', ylabel='‖w‖₂ (masked parameters)',
              title='weight norm')
  groups = [k.split('/', 1)[1] for k in (records[0] if records else {})
            if k.startswith('kernel_norm/')]
  for ax, prefix, label in ((group_ax, 'kernel_norm/', '‖w‖₂'),
                            (lr_ax, 'effective_lr/', 'α / ‖w‖²')):
    ax.set_prop_cycle(color=plt.cm.tab20.colors)
    for group in groups:
      ax.plot(epochs, [r[prefix + group] for r in records], marker='.',
              label=group)
    ax.set(xlabel='epoch', ylabel=label, yscale='log',
           title=f'{label} by layer (kernels)')
  if groups:
    group_ax.legend(fontsize='small', ncol=2)
  for ax in axes.flat:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  fig.suptitle(title)
  fig.tight_layout()
  save_figure(fig, os.path.join(workdir, CURVES))


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
