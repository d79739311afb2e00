"""Training and evaluation, pmap-ed over the local devices."""

import functools
import platform
import sys
import time
from typing import Optional

from absl import logging
import flax
from flax import jax_utils
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from l2jax import augment
from l2jax import checkpoints
from l2jax import data as data_lib
from l2jax import models
from l2jax import optim
from l2jax import outputs
from l2jax import regularization
from l2jax.errors import ConfigError, DivergenceError

AXIS = 'batch'


def create_train_state(rng, model, image_shape, tx) -> train_state.TrainState:
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32),
                         train=False)
  return train_state.TrainState.create(
      apply_fn=model.apply, params=variables['params'], tx=tx)


def train_step(state, images, labels, rng, *, mean, std, augment_images: bool,
               l2_loss_weight: float, mask_fn):
  """One step on a device's share of the global batch.

  images: (b, H, W, C) uint8; labels: (b,) int. The per-example augmentation
  key depends on the example's position in the global batch and the step, so
  the run does not depend on the number of devices.
  """
  if augment_images:
    step_key = jax.random.fold_in(rng, state.step)
    position = jax.lax.axis_index(AXIS) * labels.shape[0] + jnp.arange(
        labels.shape[0])
    keys = jax.vmap(jax.random.fold_in, (None, 0))(step_key, position)
    images = augment.augment_batch(keys, images)
  x = augment.normalize(images, mean, std)

  def loss_fn(params):
    logits = state.apply_fn({'params': params}, x, train=True)
    data_loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()
    loss = data_loss
    if l2_loss_weight:
      loss += regularization.l2_penalty(params, mask_fn(params), l2_loss_weight)
    return loss, (data_loss, logits)

  (loss, (data_loss, logits)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  state = state.apply_gradients(grads=grads)
  metrics = {'train_loss': loss, 'data_loss': data_loss,
             'train_accuracy': jnp.mean(jnp.argmax(logits, -1) == labels)}
  return state, jax.lax.pmean(metrics, AXIS)


def eval_step(params, images, labels, weights, *, apply_fn, mean, std):
  """Sums of loss, correct predictions and examples over all devices."""
  logits = apply_fn({'params': params}, augment.normalize(images, mean, std),
                    train=False)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = jnp.argmax(logits, -1) == labels
  sums = {'loss': jnp.sum(loss * weights), 'correct': jnp.sum(correct * weights),
          'count': jnp.sum(weights)}
  return jax.lax.psum(sums, AXIS)


def evaluate(p_eval_step, params, split, batch_size, num_devices) -> dict:
  sums = [p_eval_step(params, *batch) for batch in
          data_lib.eval_batches(split, batch_size, num_devices)]
  sums = jax.tree_util.tree_map(lambda *x: np.sum(x), *jax.device_get(
      [jax_utils.unreplicate(s) for s in sums]))
  return {'loss': float(sums['loss'] / sums['count']),
          'accuracy': float(sums['correct'] / sums['count'])}


@functools.partial(jax.jit, static_argnums=(1, 2))
def weight_measures(params, mask_fn, l2_weight):
  """‖w‖₂ and ½ λ Σ w² over the masked parameters."""
  mask = mask_fn(params)
  return {'weight_norm': regularization.weight_norm(params, mask),
          'l2_penalty': regularization.l2_penalty(params, mask, l2_weight)}


def replicate(tree):
  """Copies `tree` to every local device, placed as the pmapped steps place
  their outputs, so that a step's second call does not compile again."""
  return jax.pmap(lambda x: x, axis_name=AXIS)(jax_utils.replicate(tree))


def train_epoch(p_train_step, state, rng, batches, steps: int, desc: str):
  """Runs the steps of one epoch; returns (state, mean of the step metrics)."""
  step_metrics = []
  for images, labels in tqdm(jax_utils.prefetch_to_device(batches, 2),
                             total=steps, desc=desc, leave=False,
                             disable=not sys.stderr.isatty()):
    state, metrics = p_train_step(state, images, labels, rng)
    step_metrics.append(metrics)
  step_metrics = jax.device_get(step_metrics)  # One transfer, at epoch end.
  return state, {k: np.array([m[k][0] for m in step_metrics])
                 for k in step_metrics[0]}


def check_finite(step_losses, first_step: int, weight_norm: float,
                 learning_rate, last_epoch: int) -> None:
  """Raises DivergenceError naming the first step whose loss is not finite."""
  bad = np.flatnonzero(~np.isfinite(step_losses))
  if not bad.size and np.isfinite(weight_norm):
    return
  step = first_step + (int(bad[0]) if bad.size else len(step_losses) - 1)
  raise DivergenceError(
      f'training diverged at step {step + 1} (learning rate '
      f'{float(learning_rate(step)):.4g}): '
      + (f'loss {step_losses[bad[0]]}' if bad.size else 'a parameter is not finite')
      + f'; the last finite checkpoint is epoch {last_epoch}; '
      'lower config.learning_rate or config.l2.weight')


def summarize(config, records: list, num_devices: int) -> dict:
  return {
      'final': records[-1] if records else {},
      'config': config.to_dict(),
      'num_devices': num_devices,
      'platform': jax.default_backend(),
      'machine': platform.processor() or platform.machine(),
      'versions': {'jax': jax.__version__, 'flax': flax.__version__,
                   'optax': optax.__version__},
  }


def train_and_evaluate(config, workdir: str,
                       dataset: Optional[data_lib.Dataset] = None) -> dict:
  """Trains `config`, writing metrics, curves and checkpoints to `workdir`.

  Resumes from the last checkpoint in `workdir` if there is one. `dataset`
  (default: `data.load(config)`) lets a sweep read its data once. Returns
  the summary written to summary.json.
  """
  num_devices = jax.local_device_count()
  dataset = dataset or data_lib.load(config)
  steps_per_epoch = len(dataset.train) // config.batch_size
  if not steps_per_epoch:
    raise ConfigError(
        f'config.batch_size={config.batch_size} is larger than the '
        f'{len(dataset.train)} training examples; lower it')
  logging.info('data: %d train, %d validation, %d test, shape %s, %d classes',
               len(dataset.train), len(dataset.validation or ()),
               len(dataset.test), dataset.image_shape, dataset.num_classes)

  model = models.create_model(config.model, dataset.num_classes)
  tx, learning_rate = optim.make_optimizer(config, steps_per_epoch)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state = create_train_state(init_rng, model, dataset.image_shape, tx)
  mask_fn = regularization.decay_mask(config.l2.mask)

  checkpointer = checkpoints.Checkpointer(workdir, config.checkpoints_to_keep)
  state, start_epoch = checkpointer.restore_latest(state)
  if start_epoch:
    logging.info('resuming from the checkpoint of epoch %d', start_epoch)
  writer = outputs.MetricsWriter(workdir, start_epoch)

  mean, std = dataset.channel_stats()
  p_train_step = jax.pmap(
      functools.partial(
          train_step, mean=mean, std=std, augment_images=config.augment,
          l2_loss_weight=optim.loss_l2_weight(config.l2.mode, config.l2.weight),
          mask_fn=mask_fn),
      axis_name=AXIS, donate_argnums=(0,))
  p_eval_step = jax.pmap(
      functools.partial(eval_step, apply_fn=model.apply, mean=mean, std=std),
      axis_name=AXIS)
  eval_splits = {'val': dataset.validation, 'test': dataset.test}

  state = replicate(state)
  train_rng = jax_utils.replicate(train_rng)
  try:
    for epoch in range(start_epoch + 1, config.num_epochs + 1):
      start = time.perf_counter()
      state, train_metrics = train_epoch(
          p_train_step, state, train_rng,
          data_lib.train_batches(dataset.train, config.batch_size, num_devices,
                                 config.seed, epoch),
          steps_per_epoch, f'epoch {epoch}/{config.num_epochs}')
      epoch_seconds = time.perf_counter() - start

      step = int(jax_utils.unreplicate(state.step))
      record = {'epoch': epoch, 'step': step}
      record.update({k: float(np.mean(v)) for k, v in train_metrics.items()})
      record.update({k: float(v) for k, v in weight_measures(
          jax_utils.unreplicate(state.params), mask_fn,
          config.l2.weight).items()})
      check_finite(train_metrics['train_loss'], step - steps_per_epoch,
                   record['weight_norm'], learning_rate, epoch - 1)
      evaluate_now = (epoch % config.eval_every_epochs == 0
                      or epoch == config.num_epochs)
      for name, split in eval_splits.items():
        if split is not None and evaluate_now:
          result = evaluate(p_eval_step, state.params, split,
                            config.eval_batch_size, num_devices)
          record[f'{name}_loss'] = result['loss']
          record[f'{name}_accuracy'] = result['accuracy']
      record.update(
          learning_rate=float(learning_rate(step - 1)),
          epoch_seconds=epoch_seconds,
          images_per_second=steps_per_epoch * config.batch_size / epoch_seconds)
      writer.write(record)
      logging.info(
          'epoch %d/%d: loss %.4f, train %.4f, val %s, test %s, ‖w‖ %.3f, '
          'lr %.4g, %.1f s, %.0f images/s', epoch, config.num_epochs,
          record['train_loss'], record['train_accuracy'],
          *('%.4f' % record[k] if k in record else '-'
            for k in ('val_accuracy', 'test_accuracy')),
          record['weight_norm'], record['learning_rate'], epoch_seconds,
          record['images_per_second'])
      checkpointer.save(epoch, jax_utils.unreplicate(state))
  finally:
    checkpointer.close()  # Waits for the last save, also on errors.
  summary = summarize(config, writer.records, num_devices)
  outputs.write_summary(workdir, summary)
  outputs.plot_curves(
      workdir, writer.records,
      f'{config.model} on {config.dataset}: L2 {config.l2.mode}, '
      f'λ={config.l2.weight}, {config.optimizer}')
  return summary
