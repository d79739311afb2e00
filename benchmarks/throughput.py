"""Training-step throughput of l2jax, and of PyTorch, on this machine's CPU.

    python -m benchmarks.throughput [--model=seed_cnn --batch_size=128
        --steps=20 --augment --notorch --layers=auto --out=/tmp/throughput.md]

Times the pmapped `l2jax.train.train_step` built as `train_and_evaluate`
builds it (configs/cifar.py: SGD, momentum 0.9, coupled L2 λ = 5e-4) on one
synthetic uint8 CIFAR-shaped batch: the first call (which compiles) apart,
then the median of `--steps` calls, each ended by `jax.block_until_ready`.
FLOPs per step come from XLA's cost analysis of the same step compiled with
XLA's own layers (direct convolutions: the network's nominal count); a jitted
2048×2048 float32 matmul gives the machine's reference GFLOP/s. When PyTorch
is installed, the same network and optimizer are timed the same way.
About a minute on a 2-core CPU.
"""

import importlib.util
import os
import resource
import statistics
import sys
import time

from absl import app
from absl import flags
import flax
from flax import jax_utils
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax

from benchmarks import sweep
from configs import cifar
from l2jax import configuration
from l2jax import cpu
from l2jax import data as data_lib
from l2jax import devices
from l2jax import models
from l2jax import train
from l2jax.errors import L2JaxError

FLAGS = flags.FLAGS
flags.DEFINE_enum('model', 'seed_cnn', list(models.MODELS), 'Network.')
flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
flags.DEFINE_integer('steps', 20, 'Timed steps after the first (median).')
flags.DEFINE_bool('augment', False, 'Crop and flip inside the step.')
flags.DEFINE_bool('torch', None,
                  'Also time PyTorch; default: when installed.')
flags.DEFINE_string('out', None, 'Markdown report to write; default: none.')
flags.DEFINE_enum('layers', 'auto', list(models.LAYER_CHOICES),
                  "The model's layer set (config.layers).")
flags.DEFINE_bool('configure_cpu', True,
                  'Apply l2jax.cpu.configure() first, as l2jax.main does; '
                  'with --noconfigure_cpu both columns run without it.')

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
MATMUL_SIZE = 2048


def time_calls(step, steps: int) -> dict:
  """Seconds of the first `step()`, and median, min, max of the next `steps`.

  A max far above the median means other work shared the CPU.
  """
  times = []
  for _ in range(steps + 1):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return {'first_s': times[0], 'median_s': statistics.median(times[1:]),
          'min_s': min(times[1:]), 'max_s': max(times[1:])}


def matmul_gflops(repeats: int = 10) -> float:
  """The machine's float32 matmul rate: 2 n³ FLOPs per n×n product."""
  a, b = jax.random.normal(jax.random.key(0), (2, MATMUL_SIZE, MATMUL_SIZE))
  dot = jax.jit(jnp.dot)
  timing = time_calls(lambda: dot(a, b).block_until_ready(), repeats)
  return 2 * MATMUL_SIZE**3 / timing['median_s'] / 1e9


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def with_memory(time_fn, *args) -> dict:
  """`time_fn(*args)`, with the process's RSS before and its peak during."""
  try:  # Linux: lowers the peak RSS to the current RSS.
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
  except OSError:
    pass  # Elsewhere the peak also covers all the process did before.
  before = peak_rss_mib()
  result = time_fn(*args)
  return {**result, 'rss_before_mib': before, 'peak_rss_mib': peak_rss_mib()}


def synthetic_data(batch_size: int) -> data_lib.Dataset:
  """One batch of random uint8 images, as both training and test split."""
  rng = np.random.default_rng(0)
  split = data_lib.Split(
      rng.integers(0, 256, (batch_size, *IMAGE_SHAPE), dtype=np.uint8),
      rng.integers(0, NUM_CLASSES, batch_size, dtype=np.int32))
  return data_lib.Dataset(split, None, split, NUM_CLASSES)


def build_step(config, dataset: data_lib.Dataset, steps: int):
  """The pmapped step and its arguments, as `train.train_and_evaluate`
  builds them."""
  model = models.from_config(config, NUM_CLASSES)
  # The schedule's length changes no cost; one epoch of `steps + 1` will do.
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state, _, penalties = train.initialize(config, model, dataset.image_shape,
                                         steps + 1, init_rng)
  p_train_step = train.pmap_train_step(config, penalties,
                                       *dataset.channel_stats(), steps + 1)
  images, labels = next(jax_utils.prefetch_to_device(data_lib.train_batches(
      dataset.train, config.batch_size, config.seed, 1,
      host=devices.host()), 1))
  return p_train_step, (devices.replicate(state), images, labels,
                        jax_utils.replicate(train_rng))


def step_flops(p_train_step, args) -> float:
  """XLA's cost analysis of the compiled step, times the devices (each runs
  its share of the batch)."""
  cost = p_train_step.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost['flops'] * jax.local_device_count()


def time_l2jax(config, dataset: data_lib.Dataset, steps: int) -> dict:
  """Times the step and counts its FLOPs."""
  p_train_step, args = build_step(config, dataset, steps)
  state, rest = args[0], args[1:]

  def step():
    nonlocal state
    state, metrics = p_train_step(state, *rest)
    jax.block_until_ready((state, metrics))

  # Timed before the cost analysis, whose compilation pmap might cache.
  timing = time_calls(step, steps)
  return {**timing, 'flops': step_flops(p_train_step, (state, *rest)),
          'parameters': sum(x[0].size for x in jax.tree.leaves(state.params))}


def torch_twin(model):
  """`model` (an l2jax.models module) in PyTorch: the same layers, widths
  and parameter count, batch norm where it has it."""
  from torch import nn  # pylint: disable=g-import-not-at-top

  def conv(cin, cout, stride=1, batch_norm=False):
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=not batch_norm)] + (
        [nn.BatchNorm2d(cout)] if batch_norm else [])

  class Block(nn.Module):
    """models.ResidualBlock: the shortcut subsamples and pads channels."""

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.first = nn.Sequential(*conv(cin, cout, stride, True), nn.ReLU())
      self.second = nn.Sequential(*conv(cout, cout, 1, True))
      self.stride, self.pad = stride, cout - cin

    def forward(self, x):
      shortcut = nn.functional.pad(x[:, :, ::self.stride, ::self.stride],
                                   (0, 0, 0, 0, 0, self.pad))
      return nn.functional.relu(shortcut + self.second(self.first(x)))

  channels, side = IMAGE_SHAPE[-1], IMAGE_SHAPE[0]
  if isinstance(model, models.ResNet):
    layers = [*conv(channels, 16, 1, True), nn.ReLU()]
    channels = 16
    for stage, features in enumerate((16, 32, 64)):
      for block in range(model.blocks_per_stage):
        layers.append(Block(channels, features, 2 if stage and not block else 1))
        channels = features
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(channels, NUM_CLASSES))
  if isinstance(model, models.VGG):
    widths, hidden = models.VGG_LAYERS[model.depth], []
  else:  # SeedCNN: conv-relu-pool per width, then Dense(hidden) - ReLU.
    widths = [w for f in model.conv_features for w in (f, 'M')]
    hidden = [model.hidden]
  layers = []
  for width in widths:
    if width == 'M':
      layers.append(nn.MaxPool2d(2))
      side //= 2
    else:
      layers += [*conv(channels, width, 1, model.batch_norm), nn.ReLU()]
      channels = width
  layers.append(nn.Flatten())
  features = channels * side * side
  for width in hidden:
    layers += [nn.Linear(features, width), nn.ReLU()]
    features = width
  return nn.Sequential(*layers, nn.Linear(features, NUM_CLASSES))


def time_torch(config, dataset: data_lib.Dataset, steps: int) -> dict:
  """The same network in PyTorch (`torch_twin`), SGD with coupled decay,
  timed alike.

  PyTorch's weight_decay also reaches the biases (l2jax's mask: kernels only)
  and its learning rate stays constant; neither costs a measurable FLOP.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  torch.manual_seed(config.seed)
  torch.set_num_threads(os.cpu_count())
  model = torch_twin(models.from_config(config, NUM_CLASSES))
  optimizer = torch.optim.SGD(
      model.parameters(), lr=config.learning_rate, momentum=config.momentum,
      weight_decay=config.l2.weight)
  images = torch.from_numpy(dataset.train.images.transpose(0, 3, 1, 2).copy())
  labels = torch.from_numpy(dataset.train.labels).long()
  mean, std = (torch.from_numpy(s).view(1, -1, 1, 1)
               for s in dataset.channel_stats())

  def step():
    x = (images.float() / 255.0 - mean) / std  # In the step, as in l2jax's.
    loss = nn.functional.cross_entropy(model(x), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

  timing = time_calls(step, steps)  # PyTorch on a CPU is synchronous.
  return {**timing, 'version': torch.__version__,
          'parameters': sum(p.numel() for p in model.parameters()),
          'threads': torch.get_num_threads()}


def report(config, steps: int, load: float, matmul: float,
           results: dict) -> str:
  """Markdown: command, machine, versions, then one column per framework."""
  flops = results['l2jax']['nominal_flops']
  versions = (f'jax {jax.__version__}, jaxlib {jaxlib.__version__}, '
              f'flax {flax.__version__}, optax {optax.__version__}')
  if 'PyTorch' in results:
    versions += (f', torch {results["PyTorch"]["version"]} '
                 f'({results["PyTorch"]["threads"]} threads)')
  lines = [
      '# Training-step throughput', '',
      '    ' + sweep.command_line(), '',
      f'- Machine: {sweep.cpu_model()}, {os.cpu_count()} cores; JAX on '
      f'{jax.local_device_count()} {jax.default_backend()} device(s); '
      f'load average {load:.2f} before the run',
      f'- Versions: {versions}',
      f'- Process settings: l2jax.cpu.configure() '
      f'{"applied" if FLAGS.configure_cpu else "not applied"} '
      f'(XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r})',
      f'- Step: {config.model} (layers {config.layers}: '
      f'{models.layer_set(config.layers).name}), batch '
      f'{config.batch_size} of {IMAGE_SHAPE} uint8, {NUM_CLASSES} classes, '
      f'augment {config.augment}; '
      f'{config.optimizer} momentum {config.momentum}, L2 {config.l2.mode} '
      f'λ={config.l2.weight}',
      f'- Timing: the first step apart, then the median of {steps} steps',
      f'- FLOPs: XLA cost analysis of the compiled step with XLA\'s own '
      f'layers (--layers=flax, direct convolutions), {flops / 1e9:.4g} GFLOP '
      f'a step, used for both columns; the l2jax step as timed does '
      f'{results["l2jax"]["flops"] / 1e9:.4g} (fewer where its convolutions '
      f'are Winograd\'s)',
      f'- Reference: float32 {MATMUL_SIZE}×{MATMUL_SIZE} matmul (jitted '
      f'jnp.dot), {matmul:.1f} GFLOP/s',
      '- Memory: the process\'s RSS before each column and its peak '
      '(ru_maxrss, reset to the RSS before) while that column ran', '',
      '| | ' + ' | '.join(results) + ' |', '|---' * (len(results) + 1) + '|',
  ]
  rows = {
      'parameters': lambda r: f'{r["parameters"]:,}',
      'first step (l2jax: compile) [s]': lambda r: f'{r["first_s"]:.2f}',
      'median step [ms] (min–max)': lambda r: (
          f'{1e3 * r["median_s"]:.1f} ({1e3 * r["min_s"]:.0f}–'
          f'{1e3 * r["max_s"]:.0f})'),
      'images/s': lambda r: f'{config.batch_size / r["median_s"]:.1f}',
      'GFLOP/s (nominal FLOPs)': lambda r: f'{flops / r["median_s"] / 1e9:.2f}',
      'fraction of matmul GFLOP/s (nominal FLOPs)': (
          lambda r: f'{flops / r["median_s"] / 1e9 / matmul:.1%}'),
      'RSS before [MiB]': lambda r: f'{r["rss_before_mib"]:.0f}',
      'peak RSS during [MiB]': lambda r: f'{r["peak_rss_mib"]:.0f}',
  }
  for name, cell in rows.items():
    lines.append(f'| {name} | '
                 + ' | '.join(cell(r) for r in results.values()) + ' |')
  if 'PyTorch' in results:
    ratio = results['PyTorch']['median_s'] / results['l2jax']['median_s']
    lines += ['', f'l2jax / PyTorch images/s: {ratio:.2f}']
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.configure_cpu:
    cpu.configure()  # As l2jax.main does, before JAX runs anything.
  config = cifar.get_config()
  config.model, config.batch_size = FLAGS.model, FLAGS.batch_size
  config.augment, config.layers = FLAGS.augment, FLAGS.layers
  has_torch = importlib.util.find_spec('torch') is not None
  run_torch = FLAGS.torch
  if run_torch is None:  # Neither --torch nor --notorch.
    run_torch = has_torch
  try:
    configuration.validate(config, jax.local_device_count())
    if FLAGS.steps < 1:
      raise L2JaxError(f'--steps={FLAGS.steps} must be at least 1')
    if run_torch and not has_torch:
      raise L2JaxError('--torch needs PyTorch, which is not installed; '
                       'install it or pass --notorch')
  except L2JaxError as e:
    sys.exit(f'throughput: error: {e}')

  load = os.getloadavg()[0]
  dataset = synthetic_data(config.batch_size)
  results = {'l2jax': with_memory(time_l2jax, config, dataset, FLAGS.steps)}
  # The network's nominal FLOPs, for both columns: the step with XLA's own
  # layers (direct convolutions). l2jax's Winograd convolutions do fewer
  # multiplications, so its GFLOP/s is an effective rate.
  direct = config.copy_and_resolve_references()
  direct.layers = 'flax'
  results['l2jax']['nominal_flops'] = step_flops(
      *build_step(direct, dataset, 1))
  matmul = matmul_gflops()
  if run_torch:
    results['PyTorch'] = with_memory(time_torch, config, dataset, FLAGS.steps)
  text = report(config, FLAGS.steps, load, matmul, results)
  print(text, end='')
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, 'w') as f:
      f.write(text)
    print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
