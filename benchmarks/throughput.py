"""Training-step throughput of l2jax, and of PyTorch, on this machine's CPU.

    python -m benchmarks.throughput [--model=seed_cnn --batch_norm
        --batch_size=128 --rounds=5 --steps=10 --invocations=1 --threads=0
        --augment --notorch --layers=auto --out=/tmp/throughput.md]

Times the pmapped `l2jax.train.train_step` built as `train_and_evaluate`
builds it (configs/cifar.py: SGD, momentum 0.9, coupled L2 λ = 5e-4) on one
synthetic uint8 CIFAR-shaped batch and, when PyTorch is installed, the same
network and optimizer in PyTorch (`torch_twins`, in channels-last memory
format, its faster layout for CPU convolutions), side by side and
interleaved: after each column's first call (which compiles) and
`timing.WARMUP` more, `--rounds` rounds of a block of `--steps` calls of
each column, the order alternating from round to round, each call ended by
`jax.block_until_ready`. On a shared machine the load changes within a run;
interleaved, both columns see the same load, so the figure is each round's
ratio of mean step times, reported as its median over the rounds with
their min–max. Each step's CPU time (the process's, all
threads) is reported beside its wall time. `--threads=N` pins the process
to N cores, and with it JAX's thread pool and PyTorch's thread count. A
2048×2048 float32 matmul, timed in every round, gives the machine's
reference GFLOP/s. FLOPs per step come from XLA's cost analysis of the same
step compiled with XLA's own layers (direct convolutions: the network's
nominal count). `--invocations=N` runs the measurement in N fresh
processes, one after another, and reports each. About a minute per
invocation for the seed network on a 2-core CPU.
"""

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
import flax
from flax import jax_utils
import jax
import jaxlib
import optax

from benchmarks import sweep
from benchmarks import timing
from benchmarks import torch_twins
from configs import cifar
from l2jax import configuration
from l2jax import cpu
from l2jax import data as data_lib
from l2jax import devices
from l2jax import models
from l2jax import outputs
from l2jax import train
from l2jax.cpu import layers as cpu_layers
from l2jax.errors import L2JaxError

FLAGS = flags.FLAGS
flags.DEFINE_enum('model', 'seed_cnn', list(models.MODELS), 'Network.')
flags.DEFINE_bool('batch_norm', False,
                  'Batch norm after each convolution (config.batch_norm; '
                  'resnet20 and allconv_bn always have it).')
flags.DEFINE_integer('batch_size', 128, 'Global batch size.')
flags.DEFINE_integer('rounds', 5, 'Rounds of interleaved blocks.')
flags.DEFINE_integer('steps', 10, 'Timed steps of each column a round.')
flags.DEFINE_integer('invocations', 1,
                     'Fresh processes that measure, one after another.')
flags.DEFINE_bool('augment', False, 'Crop and flip inside the step.')
flags.DEFINE_bool('torch', None,
                  'Also time PyTorch; default: when installed.')
flags.DEFINE_string('out', None, 'Markdown report to write; default: none.')
flags.DEFINE_string('json', None, "The measurements as JSON (what a "
                    "--invocations run's processes hand back).")
flags.DEFINE_enum('layers', 'auto', list(models.LAYER_CHOICES),
                  "The model's layer set (config.layers).")
flags.DEFINE_integer('threads', 0,
                     'Cores to run on (the first of this process\'s '
                     'affinity), which sets both JAX\'s and PyTorch\'s thread '
                     'counts; 0: all.')
flags.DEFINE_integer('rotation_every_steps', None,
                     'Rotation measures in every N-th step '
                     '(config.rotation_every_steps); default: the config\'s.')
flags.DEFINE_bool('torch_channels_last', True,
                  'PyTorch\'s model and batch in channels-last memory format '
                  '(its faster convolutions on a CPU); --notorch_channels_last: '
                  'NCHW, as the reports before it.')
flags.DEFINE_bool('configure_cpu', True,
                  'Apply l2jax.cpu.configure() first, as l2jax.main does; '
                  'with --noconfigure_cpu both columns run without it.')

IMAGE_SHAPE, NUM_CLASSES = timing.IMAGE_SHAPE, timing.NUM_CLASSES
GOAL = 1.5  # l2jax / PyTorch images/s (issue 15).


def build_step(config, dataset: data_lib.Dataset):
  """The pmapped step and its arguments, as `train.train_and_evaluate`
  builds them."""
  model = models.from_config(config, NUM_CLASSES)
  # The schedule's length changes no cost; one epoch of 100 steps will do.
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state, _, penalties = train.initialize(config, model, dataset.image_shape,
                                         100, init_rng)
  p_train_step = train.pmap_train_step(config, penalties, 100)
  images, labels = timing.first_batch(config, dataset)
  return p_train_step, (devices.replicate(state), images, labels,
                        jax_utils.replicate(train_rng),
                        train.hyperparameters(config, 100),
                        dataset.channel_stats())


def step_flops(p_train_step, args) -> float:
  """XLA's cost analysis of the compiled step, times the devices (each runs
  its share of the batch)."""
  cost = p_train_step.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost['flops'] * jax.local_device_count()


def l2jax_column(config, dataset: data_lib.Dataset):
  """(step(), info()): one training step, and then its FLOPs and parameter
  count (counted after the timing: the cost analysis compiles again)."""
  p_train_step, args = build_step(config, dataset)
  state, rest = args[0], args[1:]

  def step():
    nonlocal state
    state, metrics = p_train_step(state, *rest)
    jax.block_until_ready((state, metrics))

  def info():
    return {'flops': step_flops(p_train_step, (state, *rest)),
            'parameters': sum(x[0].size
                              for x in jax.tree.leaves(state.params))}

  return step, info


def torch_column(config, dataset: data_lib.Dataset, channels_last: bool):
  """(step(), info()) of the same network in PyTorch (`torch_twins`), SGD
  with coupled decay, model and batch in channels-last memory format where
  `channels_last` says, else NCHW.

  PyTorch's weight_decay also reaches the biases (l2jax's mask: kernels only)
  and its learning rate stays constant; neither costs a measurable FLOP.
  PyTorch on a CPU is synchronous: a step has ended when it returns.
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  torch.manual_seed(config.seed)
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  layout = torch.channels_last if channels_last else torch.contiguous_format
  model = torch_twins.torch_twin(models.from_config(config, NUM_CLASSES))
  model = model.to(memory_format=layout)
  optimizer = torch.optim.SGD(
      model.parameters(), lr=config.learning_rate, momentum=config.momentum,
      weight_decay=config.l2.weight)
  images = torch.from_numpy(dataset.train.images.transpose(0, 3, 1, 2).copy())
  images = images.contiguous(memory_format=layout)
  labels = torch.from_numpy(dataset.train.labels).long()
  mean, std = (torch.from_numpy(s).view(1, -1, 1, 1)
               for s in dataset.channel_stats())

  def step():
    x = (images.float() / 255.0 - mean) / std  # In the step, as in l2jax's.
    loss = nn.functional.cross_entropy(model(x), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

  def info():
    return {'version': torch.__version__, 'threads': torch.get_num_threads(),
            'parameters': sum(p.numel() for p in model.parameters())}

  return step, info


def make_config():
  config = cifar.get_config()
  config.model, config.batch_size = FLAGS.model, FLAGS.batch_size
  config.batch_norm, config.augment = FLAGS.batch_norm, FLAGS.augment
  config.layers = FLAGS.layers
  if FLAGS.rotation_every_steps is not None:
    config.rotation_every_steps = FLAGS.rotation_every_steps
  return config


def measure(config, run_torch: bool, rounds: int, steps: int,
            configured: bool) -> dict:
  """One invocation's measurements, JSON-able (see `interleave`);
  `configured`: whether l2jax.cpu.configure() ran first."""
  load_before = os.getloadavg()[0]
  dataset = timing.synthetic_data(config.batch_size)
  columns, infos = {}, {}
  columns['l2jax'], infos['l2jax'] = l2jax_column(config, dataset)
  if run_torch:
    columns['PyTorch'], infos['PyTorch'] = torch_column(
        config, dataset, FLAGS.torch_channels_last)
  result = timing.interleave(columns, rounds, steps, timing.matmul_step())
  for name, info in infos.items():
    result['columns'][name].update(info())
  # The network's nominal FLOPs, for both columns: the step with XLA's own
  # layers (direct convolutions). l2jax's Winograd convolutions do fewer
  # multiplications, so its GFLOP/s is an effective rate.
  direct = config.copy_and_resolve_references()
  direct.layers = 'flax'
  result['nominal_flops'] = step_flops(*build_step(direct, dataset))
  versions = (f'jax {jax.__version__}, jaxlib {jaxlib.__version__}, '
              f'flax {flax.__version__}, optax {optax.__version__}')
  if run_torch:
    torch_info = result['columns']['PyTorch']
    versions += (f', torch {torch_info["version"]} '
                 f'({torch_info["threads"]} threads, '
                 f'{"channels-last" if FLAGS.torch_channels_last else "NCHW"})')
  return {**result, 'versions': versions, 'load_before': load_before,
          'load_after': os.getloadavg()[0],
          'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'devices': f'{jax.local_device_count()} {jax.default_backend()}',
          'cores': len(os.sched_getaffinity(0)), 'rounds': rounds,
          'steps': steps, 'configured': configured}


def summary(measurement: dict) -> dict:
  """Mean step times over all timed calls and per round, and the rounds'
  ratios. Means, not medians: a step that measures rotation
  (`config.rotation_every_steps`) is slower than the others, and
  throughput counts it."""
  columns = measurement['columns']
  mean = lambda blocks: statistics.fmean(t for block in blocks for t in block)
  out = {name: {
      'mean_s': mean(c['rounds']),
      'min_s': min(min(block) for block in c['rounds']),
      'max_s': max(max(block) for block in c['rounds']),
      'round_means_s': [statistics.fmean(block) for block in c['rounds']],
      'cpu_mean_s': mean(c['cpu_rounds']),
      'cpu_round_means_s': [statistics.fmean(block)
                            for block in c['cpu_rounds']],
  } for name, c in columns.items()}
  if 'PyTorch' in out:
    for prefix, key in (('', 'round_means_s'), ('cpu_', 'cpu_round_means_s')):
      ratios = [t / j for j, t in zip(out['l2jax'][key], out['PyTorch'][key])]
      out[prefix + 'ratios'] = ratios
      out[prefix + 'ratio'] = statistics.median(ratios)
  return out


def _ratio_text(s: dict, prefix: str = '') -> str:
  ratio, ratios = s[prefix + 'ratio'], s[prefix + 'ratios']
  return (f'{ratio:.2f} ({min(ratios):.2f}–{max(ratios):.2f} '
          f'over {len(ratios)} rounds)')


def details(config, m: dict) -> list:
  """One invocation's tables: the columns, then the rounds."""
  s, flops = summary(m), m['nominal_flops']
  matmul = statistics.median(m['matmul_gflops'])
  names = list(m['columns'])
  rows = {
      'parameters': lambda n: f'{m["columns"][n]["parameters"]:,}',
      'first step (l2jax: compile) [s]':
          lambda n: f'{m["columns"][n]["first_s"]:.2f}',
      'mean step [ms] (min–max)': lambda n: (
          f'{1e3 * s[n]["mean_s"]:.1f} ({1e3 * s[n]["min_s"]:.0f}–'
          f'{1e3 * s[n]["max_s"]:.0f})'),
      'mean step CPU time, all threads [ms]':
          lambda n: f'{1e3 * s[n]["cpu_mean_s"]:.1f}',
      'images/s': lambda n: f'{config.batch_size / s[n]["mean_s"]:.1f}',
      'GFLOP/s (nominal FLOPs)':
          lambda n: f'{flops / s[n]["mean_s"] / 1e9:.2f}',
      'fraction of matmul GFLOP/s (nominal FLOPs)':
          lambda n: f'{flops / s[n]["mean_s"] / 1e9 / matmul:.1%}',
      'RSS before [MiB]': lambda n: f'{m["columns"][n]["rss_before_mib"]:.0f}',
      'peak RSS during [MiB]':
          lambda n: f'{m["columns"][n]["peak_rss_mib"]:.0f}',
  }
  lines = [f'- Load average {m["load_before"]:.2f} before, '
           f'{m["load_after"]:.2f} after; matmul {matmul:.1f} GFLOP/s '
           '(median over the rounds)',
           f'- l2jax\'s step as timed does {m["columns"]["l2jax"]["flops"] / 1e9:.4g}'
           ' GFLOP (fewer than nominal where its convolutions are '
           'Winograd\'s)', '',
           '| | ' + ' | '.join(names) + ' |', '|---' * (len(names) + 1) + '|']
  lines += [f'| {row} | ' + ' | '.join(cell(n) for n in names) + ' |'
            for row, cell in rows.items()]
  lines += ['', '| round | matmul GFLOP/s | '
            + ' | '.join(f'{n} mean [ms]' for n in names)
            + (' | ratio | CPU-time ratio |' if 'ratio' in s else ''),
            '|---' * (len(names) + 2 + 2 * ('ratio' in s)) + '|']
  for r, gflops in enumerate(m['matmul_gflops']):
    cells = [f'{1e3 * s[n]["round_means_s"][r]:.1f}' for n in names]
    if 'ratio' in s:
      cells += [f'{s["ratios"][r]:.2f}', f'{s["cpu_ratios"][r]:.2f}']
    lines.append(f'| {r + 1} | {gflops:.0f} | ' + ' | '.join(cells) + ' |')
  if 'ratio' in s:
    lines += ['', f'l2jax / PyTorch images/s: {_ratio_text(s)}',
              f'PyTorch / l2jax CPU time a step: {_ratio_text(s, "cpu_")}']
  return lines


def report(config, measurements: list) -> str:
  """Markdown: command, machine, versions, the step; then, over several
  invocations, one line each and the goal; then each invocation's tables."""
  first = measurements[0]
  lines = [
      '# Training-step throughput', '',
      '    ' + sweep.command_line(), '',
      f'- Machine: {sweep.cpu_model()}, {os.cpu_count()} cores, this process '
      f'on {first["cores"]} of them; JAX on {first["devices"]} device(s)',
      f'- Versions: {first["versions"]}',
      f'- Process settings: l2jax.cpu.configure() '
      f'{"applied" if first["configured"] else "not applied"} '
      f'(XLA_FLAGS={first["xla_flags"]!r})',
      f'- Step: {config.model}'
      f'{" with batch norm" if config.batch_norm else ""} (layers '
      f'{config.layers}: {models.layer_set(config.layers).name}'
      + (f', Winograd from {cpu_layers.WINOGRAD_MIN_CHANNELS} channels'
         if models.layer_set(config.layers) is models.CPU_TUNED else '')
      + '), batch '
      f'{config.batch_size} of {IMAGE_SHAPE} uint8, {NUM_CLASSES} classes, '
      f'augment {config.augment}; '
      f'{config.optimizer} momentum {config.momentum}, L2 {config.l2.mode} '
      f'λ={config.l2.weight}; {sweep.rotation_sampling(config)}',
      f'- Timing: each column\'s first step and {timing.WARMUP} more '
      f'apart, then {first["rounds"]} '
      f'rounds of {first["steps"]} steps of each column, interleaved (the '
      'order alternating between rounds); mean step times over all timed '
      'steps and per round (a step that measures rotation counts); the ratio '
      'is the median over the rounds of each round\'s ratio of means',
      f'- FLOPs: XLA cost analysis of the compiled step with XLA\'s own '
      f'layers (--layers=flax, direct convolutions), '
      f'{first["nominal_flops"] / 1e9:.4g} GFLOP a step, used for both '
      'columns',
      f'- Reference: float32 {timing.MATMUL_SIZE}×{timing.MATMUL_SIZE} matmul '
      '(jitted jnp.dot), timed before each round',
      '- Memory: the process\'s RSS before each column\'s first step and its '
      'peak (ru_maxrss, reset before each of its blocks) while it ran',
  ]
  summaries = [summary(m) for m in measurements]
  if len(measurements) > 1:
    lines += ['', f'## {len(measurements)} invocations', '',
              '| invocation | load before–after | matmul GFLOP/s | l2jax '
              'images/s | PyTorch images/s | ratio (min–max over rounds) |',
              '|---|---|---|---|---|---|']
    for i, (m, s) in enumerate(zip(measurements, summaries)):
      torch_ips = (f'{config.batch_size / s["PyTorch"]["mean_s"]:.1f}'
                   if 'PyTorch' in s else '–')
      lines.append(
          f'| {i + 1} | {m["load_before"]:.2f}–{m["load_after"]:.2f} | '
          f'{statistics.median(m["matmul_gflops"]):.0f} | '
          f'{config.batch_size / s["l2jax"]["mean_s"]:.1f} | {torch_ips} | '
          f'{_ratio_text(s) if "ratio" in s else "–"} |')
    if all('ratio' in s for s in summaries):
      held = sum(s['ratio'] >= GOAL for s in summaries)
      lines += ['', f'Median ratio ≥ {GOAL} in {held} of '
                f'{len(summaries)} invocations: goal '
                f'{"met" if held == len(summaries) else "not met"}.']
  for i, m in enumerate(measurements):
    if len(measurements) > 1:
      lines += ['', f'## Invocation {i + 1}']
    lines += ['', *details(config, m)]
  return '\n'.join(lines) + '\n'


def invoke(index: int, folder: str, run_torch: bool) -> dict:
  """One measurement in a fresh process with this one's flags."""
  path = os.path.join(folder, f'{index}.json')
  args = [sys.executable, '-m', 'benchmarks.throughput',
          f'--model={FLAGS.model}', f'--batch_size={FLAGS.batch_size}',
          f'--rounds={FLAGS.rounds}', f'--steps={FLAGS.steps}',
          f'--layers={FLAGS.layers}', f'--threads={FLAGS.threads}',
          f'--json={path}',
          f'--rotation_every_steps={make_config().rotation_every_steps}',
          *[f'--{"" if FLAGS[f].value else "no"}{f}'
            for f in ('batch_norm', 'augment', 'configure_cpu',
                      'torch_channels_last')],
          '--torch' if run_torch else '--notorch']
  subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
  with open(path) as f:
    return json.load(f)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.threads and FLAGS.invocations == 1:  # Before JAX's thread pool.
    cores = sorted(os.sched_getaffinity(0))[:FLAGS.threads]
    os.sched_setaffinity(0, cores)
  if FLAGS.configure_cpu and FLAGS.invocations == 1:
    cpu.configure()  # As l2jax.main does, before JAX runs anything.
  config = make_config()
  has_torch = importlib.util.find_spec('torch') is not None
  run_torch = FLAGS.torch
  if run_torch is None:  # Neither --torch nor --notorch.
    run_torch = has_torch
  try:
    configuration.validate(config, jax.local_device_count())
    for flag in ('rounds', 'steps', 'invocations'):
      if FLAGS[flag].value < 1:
        raise L2JaxError(f'--{flag}={FLAGS[flag].value} must be at least 1')
    if not 0 <= FLAGS.threads <= len(os.sched_getaffinity(0)):
      raise L2JaxError(f'--threads={FLAGS.threads}: this process may run on '
                       f'{len(os.sched_getaffinity(0))} cores')
    if run_torch and not has_torch:
      raise L2JaxError('--torch needs PyTorch, which is not installed; '
                       'install it or pass --notorch')
  except L2JaxError as e:
    sys.exit(f'throughput: error: {e}')

  if FLAGS.invocations == 1:
    measurements = [measure(config, run_torch, FLAGS.rounds, FLAGS.steps,
                            FLAGS.configure_cpu)]
  else:
    with tempfile.TemporaryDirectory() as folder:
      measurements = []
      for i in range(FLAGS.invocations):
        measurements.append(invoke(i, folder, run_torch))
        print(f'invocation {i + 1}/{FLAGS.invocations}: ratio '
              f'{summary(measurements[-1]).get("ratio", float("nan")):.2f}',
              flush=True)
  if FLAGS.json:
    outputs.write_atomic(FLAGS.json, json.dumps(measurements[0]))
  text = report(config, measurements)
  print(text, end='')
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    outputs.write_atomic(FLAGS.out, text)
    print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
