"""What each model's layers alone cost: a lower bound on its training step.

    python -m benchmarks.layer_bound [--models=seed_cnn,seed_cnn_narrow+bn,... \
        --batch_size=128 --calls=20 --rounds=5 --steps=10 --out=/tmp/bound.md]

For each model (a name from `l2jax.models.MODELS`, `+bn` for batch norm),
the convolutions and matrix products of its forward pass (read from the
jaxpr of the network with flax's layers), each timed alone with what
training needs of it (the forward, the kernel's gradient and, but for the
first layer, the input's), jitted, under `l2jax.cpu.configure()`:

- l2jax: what the CPU step runs (`models.CPU_TUNED`):
  `l2jax.cpu.layers.conv_general_dilated` (Winograd's from
  `WINOGRAD_MIN_CHANNELS` channels) and `l2jax.cpu.layers.dot_general`;
- XLA: the primitive itself (XLA's direct convolution, its product);
- PyTorch, NCHW and channels-last: `conv2d` / `linear` forward and autograd
  backward (products are the same in both layouts).

Each is the median of `--calls` calls after two. Summed over the model's
layers, each sum bounds that set of kernels' step from below: the step also
normalizes, pools, activates, computes the loss and updates every weight.
Beside them, the whole training steps (`benchmarks.throughput`'s columns:
l2jax, and PyTorch in both layouts), interleaved: `--rounds` rounds of
`--steps` steps, mean step time. Where l2jax's layers alone take longer
than PyTorch's faster step divided by 1.5, issue 15's goal ("every model at
least 1.5× PyTorch") is out of reach with these kernels, whatever the rest
of the step does; where even the fastest kernel of each layer does, with
any of them. Of `benchmarks.throughput`'s flags it reads `--batch_size`,
`--rounds`, `--steps` and `--out`; the others do not apply.
"""

import os
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
from jax import lax
import numpy as np

from benchmarks import sweep
from benchmarks import throughput
from benchmarks import timing
from configs import cifar
from l2jax import cpu
from l2jax import models
from l2jax import outputs
from l2jax.cpu import layers as cpu_layers
from l2jax.errors import L2JaxError

FLAGS = flags.FLAGS
flags.DEFINE_list('models', ['seed_cnn', 'seed_cnn+bn', 'seed_cnn_narrow',
                             'seed_cnn_narrow+bn', 'resnet20', 'allconv_bn',
                             'vgg11', 'vgg16'],
                  'Models, each a name from l2jax.models.MODELS, +bn for '
                  'batch norm.')
flags.DEFINE_integer('calls', 20, 'Timed calls of each layer.')
# --batch_size, --rounds, --steps and --out are benchmarks.throughput's.

IMAGE_SHAPE, NUM_CLASSES = timing.IMAGE_SHAPE, timing.NUM_CLASSES
COLUMNS = ('l2jax', 'XLA', 'PyTorch NCHW', 'PyTorch channels-last')
_CONV_ARGS = ('window_strides', 'padding', 'lhs_dilation', 'rhs_dilation',
              'dimension_numbers', 'feature_group_count',
              'batch_group_count', 'precision', 'preferred_element_type')
_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def parse(spec: str) -> tuple:
  """'resnet20' or 'seed_cnn+bn' -> (name, batch_norm)."""
  name, bn = spec.removesuffix('+bn'), spec.endswith('+bn')
  if name not in models.MODELS:
    raise L2JaxError(f'--models: unknown model {name!r}; choose from '
                     f'{", ".join(models.MODELS)} (+bn for batch norm)')
  return name, bn


def _eqns(jaxpr):
  """Every equation of `jaxpr` and of the jaxprs inside it, in order."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, 'jaxpr', sub)
        if hasattr(sub, 'eqns'):
          yield from _eqns(sub)


def layers(name: str, batch_norm: bool, batch_size: int) -> list:
  """[(primitive, lhs shape, rhs shape, params, count)]: the model's
  convolutions and products in order of first use, the same ones counted."""
  model = models.create_model(name, NUM_CLASSES, batch_norm=batch_norm,
                              layers=models.layer_set('flax'),
                              axis_name=None)  # Outside pmap.
  x = jax.ShapeDtypeStruct((batch_size, *IMAGE_SHAPE), np.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  variables = jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(
      v, x, train=True, mutable=['batch_stats'], rngs=rngs))(variables, x)
  found = {}
  for eqn in _eqns(jaxpr.jaxpr):
    if eqn.primitive.name in ('conv_general_dilated', 'dot_general'):
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      key = (eqn.primitive, lhs, rhs, repr(sorted(eqn.params.items())))
      found.setdefault(key, [eqn.params, 0])[1] += 1
  return [(p, lhs, rhs, params, n)
          for (p, lhs, rhs, _), (params, n) in found.items()]


def median_ms(f, calls: int) -> float:
  """Median ms of `calls` calls of f(), after two untimed."""
  f()
  f()
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    f()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def _jax_ms(op, lhs, rhs, first: bool, calls: int) -> float:
  """Forward and the gradients training needs, jitted, ms a call."""
  keys = jax.random.split(jax.random.key(0), 2)
  x = jax.random.normal(keys[0], lhs)
  k = 0.1 * jax.random.normal(keys[1], rhs)

  def f(x, k):
    y, vjp = jax.vjp(op, x, k)
    dx, dk = vjp(y)  # Any cotangent of y's shape costs the same.
    return (y, dk) if first else (y, dx, dk)
  f = jax.jit(f)
  return median_ms(lambda: jax.block_until_ready(f(x, k)), calls)


def _torch_ms(primitive, lhs, rhs, params, first: bool, channels_last: bool,
              calls: int) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  fn = torch.nn.functional
  if primitive is lax.dot_general_p:
    x, w = torch.randn(*lhs), torch.randn(rhs[1], rhs[0])
    op = lambda x, w: fn.linear(x, w)
  else:
    if params['dimension_numbers'] != _NHWC:
      raise L2JaxError(f'a convolution not NHWC × HWIO: {params}')
    n, h, wd, c = lhs
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, c, h, wd).to(memory_format=layout)
    w = torch.randn(rhs[3], rhs[2], rhs[0], rhs[1]).to(memory_format=layout)
    # Symmetric padding of the larger side: XLA's 'SAME' pads a stride-2
    # layer's far side only; PyTorch's twins pad both, to the same shape.
    pad = tuple(max(p) for p in params['padding'])
    op = lambda x, w: fn.conv2d(x, w, stride=params['window_strides'],
                                padding=pad)
  x.requires_grad_(not first)
  w.requires_grad_(True)

  def call():
    x.grad = w.grad = None  # As a step's zero_grad(set_to_none=True).
    y = op(x, w)
    y.backward(y.detach())
  return median_ms(call, calls)


def time_layers(spec: str, batch_size: int, calls: int) -> list:
  """Each layer's row: (description, count, {column: ms})."""
  rows = []
  for i, (primitive, lhs, rhs, params, count) in enumerate(
      layers(*parse(spec), batch_size)):
    first = i == 0
    bind = lambda x, k, p=primitive, q=params: p.bind(x, k, **q)
    if primitive is lax.conv_general_dilated_p:
      q = {k: params[k] for k in _CONV_ARGS}
      l2jax = lambda x, k, q=q: cpu_layers.conv_general_dilated(x, k, **q)
      stride = params['window_strides'][0]
      what = (f'conv {rhs[0]}×{rhs[1]}, {lhs[3]}→{rhs[3]} on '
              f'{lhs[1]}×{lhs[2]}' + (f', stride {stride}' if stride > 1
                                     else ''))
    else:
      l2jax = lambda x, k, q=params: cpu_layers.dot_general(x, k, **q)
      what = f'dense {lhs[-1]}→{rhs[-1]}'
    ms = {'l2jax': _jax_ms(l2jax, lhs, rhs, first, calls),
          'XLA': _jax_ms(bind, lhs, rhs, first, calls)}
    for layout, cl in (('PyTorch NCHW', False), ('PyTorch channels-last',
                                                 True)):
      ms[layout] = _torch_ms(primitive, lhs, rhs, params, first, cl, calls)
    rows.append((what + (' (no input gradient)' if first else ''), count, ms))
    print(f'{spec}: {rows[-1][0]} ×{count}: '
          + ', '.join(f'{k} {v:.2f} ms' for k, v in ms.items()), flush=True)
  return rows


def time_steps(spec: str, batch_size: int, rounds: int, steps: int) -> dict:
  """Mean step ms of l2jax's and PyTorch's (both layouts) training steps."""
  config = cifar.get_config()
  config.model, config.batch_norm = parse(spec)
  config.batch_size = batch_size
  dataset = timing.synthetic_data(batch_size)
  columns = {'l2jax': throughput.l2jax_column(config, dataset)[0]}
  for layout, cl in (('PyTorch NCHW', False), ('PyTorch channels-last',
                                               True)):
    columns[layout] = throughput.torch_column(config, dataset, cl)[0]
  result = timing.interleave(columns, rounds, steps, timing.matmul_step())
  return {k: 1e3 * statistics.fmean(t for block in v['rounds'] for t in block)
          for k, v in result['columns'].items()}


def model_report(spec: str, rows: list, steps: dict) -> tuple:
  """(markdown lines, summary row) of one model."""
  sums = {c: sum(n * ms[c] for _, n, ms in rows) for c in COLUMNS}
  fastest = sum(n * min(ms.values()) for _, n, ms in rows)
  torch_step = min(steps['PyTorch NCHW'], steps['PyTorch channels-last'])
  goal = torch_step / throughput.GOAL
  lines = [f'## {spec}', '',
           '| layer | count | ' + ' | '.join(COLUMNS) + ' | fastest |',
           '|---|---|' + '---|' * (len(COLUMNS) + 1)]
  for what, n, ms in rows:
    lines.append(f'| {what} | {n} | '
                 + ' | '.join(f'{ms[c]:.2f}' for c in COLUMNS)
                 + f' | {min(ms.values()):.2f} |')
  lines.append('| **all layers, × count** | | '
               + ' | '.join(f'**{sums[c]:.1f}**' for c in COLUMNS)
               + f' | **{fastest:.1f}** |')
  lines.append('| whole training step | | '
               + f'{steps["l2jax"]:.1f} | | {steps["PyTorch NCHW"]:.1f} | '
               + f'{steps["PyTorch channels-last"]:.1f} | |')
  lines.append('')
  summary = (spec, steps['l2jax'], torch_step, goal, sums['l2jax'], fastest)
  return lines, summary


def report(sections: list, summaries: list) -> str:
  lines = ['# Each model\'s layers alone against its training step', '',
           f'    python -m benchmarks.layer_bound {" ".join(sys.argv[1:])}',
           '',
           f'- Machine: {sweep.cpu_model()}, {os.cpu_count()} cores; jax '
           f'{jax.__version__}; {torch_version()}',
           f'- Batch {FLAGS.batch_size}, float32, under l2jax.cpu.configure(); '
           f'l2jax\'s Winograd from {cpu_layers.WINOGRAD_MIN_CHANNELS} '
           'channels',
           f'- Layers: forward, kernel gradient and (but for the first layer) '
           f'input gradient, jitted or PyTorch autograd; median of '
           f'{FLAGS.calls} calls after two, ms',
           f'- Steps: benchmarks.throughput\'s columns, interleaved, '
           f'{FLAGS.rounds} rounds of {FLAGS.steps} steps after each '
           f'column\'s first and {timing.WARMUP} more; mean step, ms',
           '', '## Summary', '',
           '| model | l2jax step | PyTorch step (faster layout) | goal: '
           'PyTorch / 1.5 | l2jax\'s layers alone | fastest kernel of each '
           'layer, summed | l2jax\'s layers alone / goal | fastest / goal |',
           '|---|---|---|---|---|---|---|---|']
  for spec, step, torch_step, goal, alone, fastest in summaries:
    lines.append(f'| {spec} | {step:.1f} | {torch_step:.1f} | {goal:.1f} | '
                 f'{alone:.1f} | {fastest:.1f} | {alone / goal:.2f} | '
                 f'{fastest / goal:.2f} |')
  lines += ['', 'Above 1 in the last two columns: l2jax\'s layers alone, and '
            'the fastest kernels of each layer alone, take longer than the '
            'goal\'s whole step.', '']
  for section in sections:
    lines += section
  return '\n'.join(lines)


def torch_version() -> str:
  import torch  # pylint: disable=g-import-not-at-top
  return f'torch {torch.__version__} ({torch.get_num_threads()} threads)'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cpu.configure()
  try:
    if not FLAGS.models:
      raise L2JaxError('--models names no model')
    for spec in FLAGS.models:
      parse(spec)
    for flag in ('calls', 'rounds', 'steps', 'batch_size'):
      if FLAGS[flag].value < 1:
        raise L2JaxError(f'--{flag}={FLAGS[flag].value} must be at least 1')
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    sys.exit("layer_bound: error: PyTorch is not installed; install it "
             "(pip install -e '.[torch]')")
  except L2JaxError as e:
    sys.exit(f'layer_bound: error: {e}')
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  sections, summaries = [], []
  for spec in FLAGS.models:
    try:
      rows = time_layers(spec, FLAGS.batch_size, FLAGS.calls)
    except L2JaxError as e:  # A layer it cannot time in PyTorch.
      sys.exit(f'layer_bound: error: {spec}: {e}')
    steps = time_steps(spec, FLAGS.batch_size, FLAGS.rounds, FLAGS.steps)
    section, summary = model_report(spec, rows, steps)
    sections.append(section)
    summaries.append(summary)
    print('\n'.join(section), flush=True)
  text = report(sections, summaries)
  print(text)
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    outputs.write_atomic(FLAGS.out, text + '\n')
    print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
