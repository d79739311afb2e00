"""What a run records: per-epoch metrics, weight measures, the summary, and
the finiteness check that guards every checkpoint."""

import functools
import hashlib
import math
import platform

import flax
import jax
import numpy as np
import optax

from l2jax import equilibrium
from l2jax import regularization
from l2jax.errors import DivergenceError


class StepMetrics:
  """The step metrics of the epoch in progress, {name: [float per step]}.

  Steps' metrics stay on the device until `fetch` (at a checkpoint or the
  epoch's end), so the loop does not wait for each step: `add` waits only
  for the step `AHEAD` steps back. Unbounded, JAX's asynchronous dispatch
  would let the loop run through the whole epoch at once and its progress
  bar and timing count dispatches, not steps done.
  """
  AHEAD = 2  # The device always has the next steps queued.

  def __init__(self, restored: dict = None):
    self.values = {k: list(v) for k, v in (restored or {}).items()}
    self._pending = []

  def add(self, metrics) -> None:
    """`metrics`: one pmapped step's, replicated over the local devices."""
    self._pending.append(metrics)
    if len(self._pending) > self.AHEAD:
      jax.block_until_ready(self._pending[-1 - self.AHEAD])

  def fetch(self) -> dict:
    for metrics in jax.device_get(self._pending):
      for k, v in metrics.items():
        self.values.setdefault(k, []).append(float(v[0]))
    self._pending.clear()
    return self.values


@functools.partial(jax.jit, static_argnums=1)
def weight_measures(params, penalties: regularization.Penalties) -> dict:
  """`penalties.measures` and ‖w‖₂ of each group's kernels
  (`kernel_norm/<group>`)."""
  return {**penalties.measures(params),
          **{f'kernel_norm/{group}': norm for group, norm in
             regularization.kernel_norms(params).items()}}


def check_finite(step_losses, first_step: int, weight_norm: float,
                 learning_rate, last_checkpoint: int) -> None:
  """Raises DivergenceError naming the first step whose loss is not finite.

  `step_losses[i]` is the loss of global step `first_step + i + 1`.
  """
  step_losses = np.asarray(step_losses)
  bad = np.flatnonzero(~np.isfinite(step_losses))
  if not bad.size and np.isfinite(weight_norm):
    return
  step = first_step + (int(bad[0]) if bad.size else len(step_losses) - 1)
  raise DivergenceError(
      f'training diverged at step {step + 1} (learning rate '
      f'{float(learning_rate(step)):.4g}): '
      + (f'loss {step_losses[bad[0]]}' if bad.size else 'a parameter is not finite')
      + (f'; the last checkpoint, step {last_checkpoint}, is finite'
         if last_checkpoint else '; no checkpoint was written')
      + '; lower config.learning_rate or config.l2.weight')


def fingerprint(params) -> str:
  """sha256 of the parameters' bytes, leaves in tree order: equal runs (and
  the processes of one run) give equal fingerprints."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(params)):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def summarize(config, records: list, num_devices: int) -> dict:
  """summary.json: the last epoch's record, the config, where it ran."""
  return {
      'final': records[-1] if records else {},
      'config': config.to_dict(),
      'num_devices': num_devices,
      'platform': jax.default_backend(),
      'machine': platform.processor() or platform.machine(),
      'versions': {'jax': jax.__version__, 'flax': flax.__version__,
                   'optax': optax.__version__},
  }


def epoch_record(epoch: int, step: int, step_metrics: dict, measures: dict,
                 evaluations: dict, learning_rate: float,
                 epoch_seconds: float, num_images: int,
                 rotation_every: int = 1) -> dict:
  """One line of metrics.jsonl: the means of the epoch's step metrics (a
  rotation measure's over the steps that measured it, every
  `rotation_every`-th from the epoch's first: `_mean`), the weight
  measures, the evaluations and the timing. A value that is not a
  finite number is recorded as None (null), so metrics.jsonl stays valid
  JSON: the Δθ or α_t/‖w‖² of a kernel group whose norm is 0, the loss and
  accuracy of an empty split, the images per second of an epoch timed at
  0 s."""
  measures = {k: v if isinstance(v, bool) else float(v)
              for k, v in measures.items()}
  record = {'epoch': epoch, 'step': step,
            **{k: _mean(k, v, rotation_every)
               for k, v in step_metrics.items()},
            **measures,
            # α_t / ‖w‖² per group of kernels (see `kernel_norms`).
            **{'effective_lr/' + k.split('/', 1)[1]: _ratio(learning_rate, v * v)
               for k, v in measures.items() if k.startswith('kernel_norm/')},
            **evaluations, 'learning_rate': learning_rate,
            'epoch_seconds': epoch_seconds,
            'images_per_second': _ratio(num_images, epoch_seconds)}
  return {k: None if isinstance(v, float) and not math.isfinite(v) else v
          for k, v in record.items()}


def _mean(name: str, values, rotation_every: int) -> float:
  """An epoch's mean of a step metric (its values from the epoch's first
  step on); a rotation measure's over the steps that measured it
  (`Equilibrium.sampled_measures`: 0, every, 2·every, ...), where a nan
  is a measure's own (a group of norm 0, Δθ* at s = 0) and stays."""
  if rotation_every > 1 and name.split('/', 1)[0] in equilibrium.MEASURES:
    values = values[::rotation_every]
  return float(np.mean(values)) if len(values) else math.nan


def _ratio(numerator: float, denominator: float) -> float:
  """numerator / denominator; inf for a positive over 0, nan for 0 / 0."""
  if denominator:
    return numerator / denominator
  return math.inf if numerator else math.nan
