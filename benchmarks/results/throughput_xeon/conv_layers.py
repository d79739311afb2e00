"""ResNet-20's 3×3 convolutions alone: XLA's, Winograd's and PyTorch's.

    python benchmarks/results/throughput_xeon/conv_layers.py \
        > benchmarks/results/throughput_xeon/conv_layers.md

For each stage's convolution (C → C channels on H×W maps, batch 128,
float32, 'SAME'): XLA's own convolution (`lax.conv_general_dilated`, under
`l2jax.cpu.configure()`) forward, input gradient and kernel gradient each
jitted alone, and all three in one jitted program; Winograd's
(`l2jax.cpu.winograd.winograd_conv`) all three; PyTorch's forward and
backward (both gradients, autograd, 2 threads), NCHW and channels-last.
Median of 20 calls after 2, in ms.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.getcwd())
from l2jax import cpu  # pylint: disable=g-import-not-at-top

cpu.configure()
import jax  # pylint: disable=g-import-not-at-top
from jax import lax  # pylint: disable=g-import-not-at-top
import torch  # pylint: disable=g-import-not-at-top

from benchmarks import sweep  # pylint: disable=g-import-not-at-top
from l2jax.cpu import winograd  # pylint: disable=g-import-not-at-top

STAGES = ((16, 32), (32, 16), (64, 8))
NHWC = ('NHWC', 'HWIO', 'NHWC')


def median_ms(f) -> float:
  f(), f()
  times = []
  for _ in range(20):
    start = time.perf_counter()
    f()
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def xla(channels: int, side: int) -> list:
  keys = jax.random.split(jax.random.key(0), 3)
  x, g = (jax.random.normal(k, (128, side, side, channels)) for k in keys[:2])
  kernel = 0.1 * jax.random.normal(keys[2], (3, 3, channels, channels))
  conv = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), 'SAME',
                                               dimension_numbers=NHWC)

  def all_three(conv):
    def f(x, k, g):
      y, vjp = jax.vjp(conv, x, k)
      return y, *vjp(g)
    return jax.jit(f)

  programs = {
      'forward': (jax.jit(conv), (x, kernel)),
      'input gradient': (jax.jit(
          lambda k, g: jax.vjp(lambda x: conv(x, k), x)[1](g)[0]), (kernel, g)),
      'kernel gradient': (jax.jit(
          lambda x, g: jax.vjp(lambda k: conv(x, k), kernel)[1](g)[0]), (x, g)),
      'all three': (all_three(conv), (x, kernel, g)),
      'Winograd, all three': (all_three(winograd.winograd_conv), (x, kernel, g)),
  }
  return [median_ms(lambda f=f, a=a: jax.block_until_ready(f(*a)))
          for f, a in programs.values()]


def pytorch(channels: int, side: int) -> list:
  result = []
  for layout in (torch.contiguous_format, torch.channels_last):
    x = torch.randn(128, channels, side, side).to(memory_format=layout)
    x.requires_grad_(True)
    kernel = torch.randn(channels, channels, 3, 3, requires_grad=True)
    g = torch.randn(128, channels, side, side).to(memory_format=layout)

    def step():
      torch.nn.functional.conv2d(x, kernel, padding=1).backward(g)
    result.append(median_ms(step))
  return result


def main():
  torch.set_num_threads(2)
  print('# ResNet-20\'s convolutions alone\n')
  print(f'    python {" ".join(sys.argv)}\n')
  print(f'- Machine: {sweep.cpu_model()}, {os.cpu_count()} cores; jax '
        f'{jax.__version__}, torch {torch.__version__} (2 threads)')
  print('- Batch 128, float32, 3×3 \'SAME\', C → C channels; median of 20 '
        'calls in ms\n')
  print('| C, H×W | XLA forward | XLA input gradient | XLA kernel gradient '
        '| XLA, all three | Winograd, all three | PyTorch forward and '
        'backward, NCHW | PyTorch, channels-last |')
  print('|---' * 8 + '|')
  for channels, side in STAGES:
    cells = xla(channels, side) + pytorch(channels, side)
    print(f'| {channels}, {side}×{side} | '
          + ' | '.join(f'{v:.2f}' for v in cells) + ' |', flush=True)


if __name__ == '__main__':
  main()
