"""Loss and accuracy on held-out splits, clean and under Gaussian noise."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2jax import augment
from l2jax import data as data_lib
from l2jax import devices
from l2jax import progress

NOISE_STREAM = 1  # Folded into the seed's key: the evaluation noise.


def eval_sums(logits, labels, weights) -> dict:
  """Sums of loss, correct predictions and examples over all devices.

  logits: (b, classes), or (K, b, classes) for K stacked cells
  (`stacked_apply`), whose sums then have shape (K,).
  """
  labels = jnp.broadcast_to(labels, logits.shape[:-1])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = jnp.argmax(logits, -1) == labels
  sums = {'loss': jnp.sum(loss * weights, -1),
          'correct': jnp.sum(correct * weights, -1),
          'count': jnp.sum(jnp.broadcast_to(weights, labels.shape), -1)}
  return jax.lax.psum(sums, devices.AXIS)


def stacked_apply(apply_fn):
  """`apply_fn` over variables with a leading axis of K cells
  (`l2jax.cells`), each applied to the same images: (K, b, classes) logits,
  so that one evaluation pass serves the whole stack."""
  return lambda variables, x, **kwargs: jax.vmap(
      lambda v: apply_fn(v, x, **kwargs))(variables)


def eval_step(variables, images, labels, weights, stats, *, apply_fn):
  """Sums of loss, correct predictions and examples over all devices.

  `variables`: {'params', 'batch_stats'}, as `eval_variables` gives them;
  `stats`: the training images' channel (mean, std).
  """
  logits = apply_fn(variables, augment.normalize(images, *stats),
                    train=False)
  return eval_sums(logits, labels, weights)


def noisy_eval_step(variables, images, labels, weights, sigma, first_index,
                    stats, key, *, apply_fn):
  """`eval_step` on clip(x / 255 + σ z, 0, 1): `augment.add_gaussian_noise`.

  z is keyed by `key` and the example's index in the split (`first_index`
  is the batch's), so it is the same in every evaluation, for every σ and
  device count. sigma, first_index: scalars per device.
  """
  b = labels.shape[0]
  index = first_index + jax.lax.axis_index(devices.AXIS) * b + jnp.arange(b)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, index)
  x = augment.standardize(augment.add_gaussian_noise(keys, images, sigma),
                          *stats)
  return eval_sums(apply_fn(variables, x, train=False), labels, weights)


def eval_variables(state) -> dict:
  """What evaluation applies the model to: parameters and batch statistics."""
  return {'params': state.params, 'batch_stats': state.batch_stats}


def evaluate(p_eval_step, variables, split, batch_size: int,
             host: devices.Host = devices.Host(), sigma=None) -> dict:
  """Loss and accuracy on `split`; with `sigma`, `p_eval_step` is a pmapped
  `noisy_eval_step` and the images carry noise of that σ. Both are nan
  (recorded as null) for an empty split. Each is a float, or a list of K
  floats for stacked cells (`stacked_apply`)."""
  if not len(split):
    return {'loss': float('nan'), 'accuracy': float('nan')}
  sums = []
  for number, batch in enumerate(
      data_lib.eval_batches(split, batch_size, host)):
    if sigma is not None:
      n = host.local_devices
      batch += (np.full(n, sigma, np.float32),
                np.full(n, number * batch_size, np.int32))
    sums.append(p_eval_step(variables, *batch))
  sums = jax.tree_util.tree_map(lambda *x: np.sum(x, axis=0), *[
      devices.unreplicate_to_host(s) for s in sums])
  return {'loss': (sums['loss'] / sums['count']).tolist(),
          'accuracy': (sums['correct'] / sums['count']).tolist()}


class Evaluator:
  """Validation, test and noisy-test evaluation of one run's model.

  Builds the pmapped steps once; `__call__(state, splits)` returns
  {'<split>_loss', '<split>_accuracy', 'test_accuracy_noise<σ>'} with the
  same noise in every call (lists of K values where `apply_fn` is
  `stacked_apply`'s). The channel statistics and the noise key are the
  steps' arguments, not constants in them, so runs of other seeds share the
  compiled steps.
  """

  def __init__(self, config, apply_fn, mean, std, host: devices.Host):
    self.batch_size, self.sigmas, self.host = (
        config.eval_batch_size, tuple(config.noise_sigmas), host)
    stats = (mean, std)
    key = jax.random.fold_in(jax.random.key(config.seed), NOISE_STREAM)
    clean = jax.pmap(functools.partial(eval_step, apply_fn=apply_fn),
                     axis_name=devices.AXIS, in_axes=(0, 0, 0, 0, None))
    noisy = jax.pmap(functools.partial(noisy_eval_step, apply_fn=apply_fn),
                     axis_name=devices.AXIS,
                     in_axes=(0, 0, 0, 0, 0, 0, None, None))
    self.clean = lambda variables, *batch: clean(variables, *batch, stats)
    self.noisy = lambda variables, *batch: noisy(variables, *batch, stats, key)

  def noise(self, variables, split, batch_size: int = 0) -> dict:
    """{'test_accuracy_noise<σ>': accuracy} for each configured σ, in
    batches of `batch_size` (0: config.eval_batch_size)."""
    return dict(self._noisy(variables, split, sigma, batch_size)
                for sigma in self.sigmas)

  def _noisy(self, variables, split, sigma, batch_size: int = 0) -> tuple:
    return f'test_accuracy_noise{sigma:g}', evaluate(
        self.noisy, variables, split, batch_size or self.batch_size,
        self.host, sigma)['accuracy']

  def __call__(self, state, splits: dict) -> dict:
    """`splits`: {'val': Split or None, 'test': Split}; noise on 'test'.

    Batches are no larger than the largest split (rounded up to a multiple
    of the devices): padding beyond it would be wasted work, and a huge
    `eval_batch_size` would not fit in memory.
    """
    variables = eval_variables(state)
    devices_in_run = self.host.count * self.host.local_devices
    largest = max(len(s) for s in splits.values() if s is not None)
    batch_size = min(self.batch_size,
                     max(-(-largest // devices_in_run), 1) * devices_in_run)
    passes = [(name, split, None) for name, split in splits.items()
              if split is not None]
    passes += [('test', splits['test'], sigma) for sigma in self.sigmas]
    result = {}
    bar = progress.bar(passes, desc='evaluating', unit='passes')
    for name, split, sigma in bar:
      bar.set_postfix_str(name if sigma is None else f'{name} σ={sigma:g}',
                          refresh=False)
      if sigma is None:
        metrics = evaluate(self.clean, variables, split, batch_size,
                           self.host)
        result.update({f'{name}_{k}': v for k, v in metrics.items()})
      else:
        result.update([self._noisy(variables, split, sigma, batch_size)])
    return result
