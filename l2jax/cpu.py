"""Process settings under which JAX's CPU backend trains fast.

`configure()` must run before JAX compiles or allocates anything: l2jax.main,
the benchmarks and the tests' conftest call it first. Neither setting changes
a formula; dots are summed in another order, so results differ from those of
XLA's default CPU kernels by float rounding.

- YNNPACK for dots and convolutions: adds
  ``--xla_cpu_experimental_ynn_fusion_type=dot`` to XLA_FLAGS (jaxlib 0.9 and
  later). On a 2-core AVX2 CPU this runs the seed network's 64→128 3×3
  convolution at 170 GFLOP/s, against 75 for XLA's default (its kernel
  gradient: 140 against 38). jaxlib 0.10's default gives YNNPACK reductions
  instead, some of them slow (a sum over the batch axis of a 128×32×32×64
  map: 55 ms, against 1.5 with this setting); l2jax.layers' channel sums
  are tuned for this setting. An XLA_FLAGS that already names the flag wins.
- glibc's malloc keeps freed memory for reuse (`mallopt`: no mmap, no trim,
  one arena). XLA allocates a step's buffers anew each step, and by default
  large ones are mapped fresh from the kernel, so their pages are faulted in
  and zeroed again every step. On the seed network's training step (batch
  128, 2 cores) the three together take the step from 275 to 228 ms and the
  page faults of 31 steps from 565,000 to 157,000; any one or two of them
  alone change neither. The price: the process keeps its peak heap until it
  exits.
"""

import ctypes
import ctypes.util
import os

import jaxlib

YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def configure() -> None:
  """Sets XLA_FLAGS and malloc as the module docstring says; idempotent."""
  flags = os.environ.get('XLA_FLAGS', '')
  version = tuple(int(p) for p in jaxlib.__version__.split('.')[:2])
  if YNN_FLAG not in flags and version >= (0, 9):
    os.environ['XLA_FLAGS'] = f'{flags} {YNN_FLAG}=dot'.strip()
  libc = ctypes.util.find_library('c')
  mallopt = getattr(ctypes.CDLL(libc), 'mallopt', None) if libc else None
  if mallopt is not None:  # glibc; other C libraries keep their defaults.
    for parameter, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1),
                             (_M_ARENA_MAX, 1)):
      mallopt(parameter, value)
