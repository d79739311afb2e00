"""Wall time to a test accuracy: l2jax and a PyTorch twin on one recipe.

    python -m benchmarks.time_to_accuracy --data=folder:data/cifar10-jpeg
        [--target=0.74 --epochs=10 --max_train_examples=0 --notorch
         --workdir=/tmp/t2a --out=benchmarks/results/time_to_accuracy_cpu/report.md]

Trains the first seed's recipe (configs/time_to_accuracy.py: the seed
network, batch 128, SGD with momentum 0.9, lr 0.01 on a cosine schedule,
coupled L2 5e-4 on every parameter, crop and flip, 10 epochs) through
`l2jax.train.train_and_evaluate`, the training code of `l2jax.main`, and,
when PyTorch is installed, the same network (`benchmarks.torch_twins`) and
recipe in PyTorch, one after the other, on the same arrays: the same
training and test images (`l2jax.data.load`), the same batches in the same
order (`data.train_batches`), the same normalization (the training set's
per-channel mean and std) and augmentation (a random crop after 4-pixel
zero padding, a horizontal flip with probability ½; each framework draws
its own), and initial weights from the same distributions (flax's
defaults: kernels from a truncated normal of variance 1/fan-in, biases
zero). Both use every core this process may run on.

Reports, for each framework, the test accuracy after every epoch, the
cumulative training time (evaluation excluded on both sides; l2jax's first
epoch includes its compilation), the time to the first epoch whose test
accuracy reaches `--target`, the final accuracy and seconds per epoch.
A full run takes about half an hour of the whole of a 2-core CPU.
"""

import importlib.util
import math
import os
import statistics
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import sweep
from benchmarks import torch_twins
from configs import time_to_accuracy as recipe
from l2jax import configuration
from l2jax import cpu
from l2jax import data as data_lib
from l2jax import models
from l2jax import outputs
from l2jax import train
from l2jax.errors import L2JaxError

def make_config(data: str, epochs=None, max_train_examples: int = 0):
  """The recipe on `data`, with `epochs` (None: the recipe's) and the first
  `max_train_examples` training images (0: all)."""
  config = recipe.get_config()
  config.dataset = data
  config.max_train_examples = max_train_examples
  if epochs is not None:
    config.num_epochs = epochs
  return config


def train_l2jax(config, dataset: data_lib.Dataset, workdir: str) -> list:
  """[(epoch, training seconds, test accuracy)], from metrics.jsonl."""
  train.train_and_evaluate(config, workdir, dataset)
  return [(r['epoch'], r['epoch_seconds'], r['test_accuracy'])
          for r in outputs.read_metrics(workdir)]


def train_torch(config, dataset: data_lib.Dataset) -> list:
  """The recipe in PyTorch: [(epoch, training seconds, test accuracy)]."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  torch.manual_seed(config.seed)
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  generator = torch.Generator().manual_seed(config.seed)
  model = torch_twins.torch_twin(models.from_config(config,
                                                    dataset.num_classes))
  torch_twins.flax_init_(model)
  # Channels-last: PyTorch's faster convolutions on a CPU (as
  # benchmarks.throughput's PyTorch column; the crop and flip's output
  # already has that layout).
  model = model.to(memory_format=torch.channels_last)
  steps_per_epoch = len(dataset.train) // config.batch_size
  total = config.num_epochs * steps_per_epoch
  # PyTorch's weight_decay is coupled L2 on every parameter.
  optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate,
                              momentum=config.momentum,
                              weight_decay=config.l2.weight)
  schedule = torch.optim.lr_scheduler.LambdaLR(  # optax's cosine decay.
      optimizer, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
  mean, std = (torch.from_numpy(s).view(1, -1, 1, 1)
               for s in dataset.channel_stats())
  normalize = lambda images: (images.float() / 255.0 - mean) / std
  to_torch = lambda a: torch.from_numpy(
      np.ascontiguousarray(a.reshape(-1, *a.shape[-3:]))).permute(0, 3, 1, 2)
  test_images = normalize(to_torch(dataset.test.images))
  test_labels = torch.from_numpy(dataset.test.labels).long()
  epochs = []
  for epoch in range(1, config.num_epochs + 1):
    model.train()
    start = time.perf_counter()
    for images, labels in data_lib.train_batches(
        dataset.train, config.batch_size, config.seed, epoch):
      images = to_torch(images)
      if config.augment:
        images = torch_twins.crop_and_flip(images, generator)
      loss = nn.functional.cross_entropy(
          model(normalize(images)), torch.from_numpy(labels.reshape(-1)).long())
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      schedule.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
      correct = sum(
          int((model(test_images[i:i + config.eval_batch_size]).argmax(1)
               == test_labels[i:i + config.eval_batch_size]).sum())
          for i in range(0, len(test_labels), config.eval_batch_size))
    epochs.append((epoch, seconds, correct / len(test_labels)))
    print(f'PyTorch epoch {epoch}: {seconds:.1f} s, test {epochs[-1][2]:.4f}',
          flush=True)
  return epochs


def summary(epochs: list, target: float) -> dict:
  """Cumulative seconds, time to `target`, final accuracy, s per epoch."""
  cumulative = np.cumsum([seconds for _, seconds, _ in epochs]).tolist()
  reached = [t for t, (_, _, accuracy) in zip(cumulative, epochs)
             if accuracy >= target]
  per_epoch = [seconds for _, seconds, _ in epochs]
  return {'cumulative': cumulative,
          'time_to_target': reached[0] if reached else None,
          'final_accuracy': epochs[-1][2],
          'median_epoch_s': statistics.median(per_epoch[1:] or per_epoch),
          'first_epoch_s': per_epoch[0]}


def report(config, results: dict, loads: dict, target: float) -> str:
  """Markdown: command, machine, recipe, the summary, then every epoch."""
  runs = {name: summary(epochs, target) for name, epochs in results.items()}
  lines = [
      '# Time to accuracy', '', '    ' + sweep.command_line(), '',
      f'- Machine: {sweep.machine()}, this process on '
      f'{len(os.sched_getaffinity(0))} cores',
      '- Load average (1 min) before and after each framework: '
      + '; '.join(f'{name} {a:.2f} → {b:.2f}'
                  for name, (a, b) in loads.items()),
      f'- Recipe: configs/time_to_accuracy.py, {config.model} on '
      f'{config.dataset} ({config.max_train_examples or "all"} training '
      f'images), batch {config.batch_size}, {config.optimizer} momentum '
      f'{config.momentum}, lr {config.learning_rate} {config.schedule}, '
      f'L2 {config.l2.mode} λ={config.l2.weight} mask {config.l2.mask}, '
      f'augment {config.augment}, {config.num_epochs} epochs; l2jax layers '
      f'{config.layers} ({models.layer_set(config.layers).name}), '
      f'{sweep.rotation_sampling(config)}',
      '- Times: training only, evaluation excluded on both sides; l2jax\'s '
      'first epoch includes compiling its step. The frameworks ran one after '
      'the other (l2jax first), not interleaved: the load column says what '
      'else ran.', '',
      '| | ' + ' | '.join(runs) + ' |', '|---' * (len(runs) + 1) + '|',
  ]
  rows = {
      f'time to {target:.0%} test accuracy [s]': lambda s: (
          f'{s["time_to_target"]:.1f}' if s['time_to_target'] is not None
          else 'not reached'),
      'final test accuracy': lambda s: f'{s["final_accuracy"]:.4f}',
      'seconds per epoch (median of epochs 2+)':
          lambda s: f'{s["median_epoch_s"]:.1f}',
      'first epoch [s]': lambda s: f'{s["first_epoch_s"]:.1f}',
      'total training [s]': lambda s: f'{s["cumulative"][-1]:.1f}',
  }
  lines += [f'| {name} | ' + ' | '.join(cell(s) for s in runs.values()) + ' |'
            for name, cell in rows.items()]
  if 'PyTorch' in runs:
    ours, theirs = runs['l2jax'], runs['PyTorch']
    gap = abs(ours['final_accuracy'] - theirs['final_accuracy'])
    if ours['time_to_target'] and theirs['time_to_target']:
      ratio = ours['time_to_target'] / theirs['time_to_target']
      lines += ['', f'l2jax\'s time to {target:.0%} / PyTorch\'s: {ratio:.2f} '
                f'(goal ≤ 0.5: {"met" if ratio <= 0.5 else "not met"}); '
                f'final accuracies {100 * gap:.2f} points apart (goal ≤ 1: '
                f'{"met" if gap <= 0.01 else "not met"})']
    else:
      lines += ['', f'Final accuracies {100 * gap:.2f} points apart; the '
                'target was not reached by both.']
  lines += ['', '| epoch | ' + ' | '.join(
      f'{name} cumulative [s] | {name} test accuracy' for name in runs)
            + ' |', '|---' * (2 * len(runs) + 1) + '|']
  for i, epoch in enumerate(results['l2jax']):
    cells = [f'{runs[n]["cumulative"][i]:.1f} | {results[n][i][2]:.4f}'
             for n in runs]
    lines.append(f'| {epoch[0]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv):
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cpu.configure()  # As l2jax.main does, before JAX runs anything.
  config = make_config(FLAGS.data, FLAGS.epochs, FLAGS.max_train_examples)
  has_torch = importlib.util.find_spec('torch') is not None
  run_torch = has_torch if FLAGS.torch is None else FLAGS.torch
  try:
    import jax  # pylint: disable=g-import-not-at-top
    configuration.validate(config, jax.local_device_count())
    if run_torch and not has_torch:
      raise L2JaxError('--torch needs PyTorch, which is not installed; '
                       'install it or pass --notorch')
    dataset = data_lib.load(config)
  except L2JaxError as e:
    sys.exit(f'time_to_accuracy: error: {e}')
  results, loads = {}, {}
  with tempfile.TemporaryDirectory() as scratch:
    before = os.getloadavg()[0]
    results['l2jax'] = train_l2jax(config, dataset,
                                   FLAGS.workdir or os.path.join(scratch, 'l2jax'))
    loads['l2jax'] = (before, os.getloadavg()[0])
  if run_torch:
    before = os.getloadavg()[0]
    results['PyTorch'] = train_torch(config, dataset)
    loads['PyTorch'] = (before, os.getloadavg()[0])
  text = report(config, results, loads, FLAGS.target)
  print(text, end='')
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    outputs.write_atomic(FLAGS.out, text)
    print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  # Defined here, so that a test may import this module beside the other
  # benchmarks, whose flags share names with these.
  flags.DEFINE_string('data', 'cifar10', 'config.dataset: a TFDS name or '
                      'folder:PATH.')
  flags.DEFINE_float('target', 0.74, 'Test accuracy to reach.')
  flags.DEFINE_integer('epochs', None, 'Epochs; default: the recipe\'s (10).')
  flags.DEFINE_integer('max_train_examples', 0, 'Train on the first N; 0: all.')
  flags.DEFINE_bool('torch', None, 'Also train PyTorch; default: when installed.')
  flags.DEFINE_string('workdir', None, 'l2jax\'s workdir; default: a temporary '
                      'folder.')
  flags.DEFINE_string('out', None, 'Markdown report to write; default: none.')
  app.run(main)
