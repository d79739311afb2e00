"""The CPU speed layer: what makes JAX's CPU backend train l2jax's models fast.

- `settings.configure()` (re-exported as `configure`): process settings,
  applied before JAX runs anything.
- `layers`: pooling, convolution, bias and batch norm with flax's values,
  parameters and statistics, in forms XLA's CPU backend runs fast
  (`models.CPU_TUNED` builds the models from them).
- `winograd`: Winograd's F(4×4, 3×3) convolution, for `layers`.

Nothing here changes a formula; only float rounding differs. Measured
figures: docs/performance.md.
"""

from l2jax.cpu.settings import configure

__all__ = ['configure']
