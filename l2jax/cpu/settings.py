"""Process settings under which JAX's CPU backend trains fast.

`configure()` must run before JAX compiles or allocates anything: l2jax.main,
the benchmarks and the tests' conftest call it first. Neither setting changes
a formula; dots are summed in another order, so results differ from those of
XLA's default CPU kernels by float rounding. Measured effects:
docs/performance.md.

- YNNPACK for dots and convolutions: adds
  ``--xla_cpu_experimental_ynn_fusion_type=dot`` to XLA_FLAGS (jaxlib 0.9 and
  later), because YNNPACK runs 3×3 convolutions and their gradients several
  times faster than XLA's default kernels. jaxlib 0.10's default gives
  YNNPACK reductions instead, some of them slow; l2jax.cpu.layers' channel
  sums are tuned for this setting. An XLA_FLAGS that already names the flag
  wins.
- glibc's malloc keeps freed memory for reuse (`mallopt`: no mmap, no trim,
  one arena), because XLA allocates a step's buffers anew each step, and by
  default large ones are mapped fresh from the kernel, so their pages are
  faulted in and zeroed again every step. Only the three settings together
  help; any one or two of them alone did not. The price: the process keeps
  its peak heap until it exits.
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
