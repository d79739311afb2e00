"""Training and evaluation, pmap-ed over the local devices."""

import functools
import hashlib
import os
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
from l2jax.errors import ConfigError, DivergenceError, L2JaxError

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


def evaluate(p_eval_step, params, split, batch_size, num_devices,
             process=(0, 1)) -> dict:
  sums = [p_eval_step(params, *batch) for batch in
          data_lib.eval_batches(split, batch_size, num_devices, process)]
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


def train_epoch(p_train_step, state, rng, batches, step: int, end: int,
                epoch_metrics: dict, checkpoint_every: int, save, desc: str):
  """Runs `batches`, global steps `step`+1 to `end`; returns (state, metrics).

  `epoch_metrics` holds the epoch's step metrics so far ({name: [float]}: a
  resumed epoch's come from its checkpoint); the result adds the new steps'.
  Every `checkpoint_every` steps (0: never), save(state, step, metrics) but
  for the epoch's last step, which the caller saves.
  """
  epoch_metrics = {k: list(v) for k, v in epoch_metrics.items()}
  pending = []  # Device arrays, fetched only when a checkpoint needs them.

  def fetch():
    for metrics in jax.device_get(pending):
      for k, v in metrics.items():
        epoch_metrics.setdefault(k, []).append(float(v[0]))
    pending.clear()

  for images, labels in tqdm(jax_utils.prefetch_to_device(batches, 2),
                             total=end - step, desc=desc, leave=False,
                             disable=not sys.stderr.isatty()):
    state, metrics = p_train_step(state, images, labels, rng)
    pending.append(metrics)
    step += 1
    if checkpoint_every and step % checkpoint_every == 0 and step != end:
      fetch()
      save(state, step, epoch_metrics)
  fetch()
  return state, epoch_metrics


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
  return {
      'final': records[-1] if records else {},
      'config': config.to_dict(),
      'num_devices': num_devices,
      'platform': jax.default_backend(),
      'machine': platform.processor() or platform.machine(),
      'versions': {'jax': jax.__version__, 'flax': flax.__version__,
                   'optax': optax.__version__},
  }


def epoch_record(epoch: int, step: int, epoch_metrics: dict, measures: dict,
                 evaluations: dict, learning_rate: float,
                 epoch_seconds: float, num_images: int) -> dict:
  """One line of metrics.jsonl: the means of the epoch's step metrics, the
  weight measures, the evaluations and the timing."""
  return {'epoch': epoch, 'step': step,
          **{k: float(np.mean(v)) for k, v in epoch_metrics.items()},
          **{k: float(v) for k, v in measures.items()},
          **evaluations, 'learning_rate': learning_rate,
          'epoch_seconds': epoch_seconds,
          'images_per_second': num_images / epoch_seconds}


def train_and_evaluate(config, workdir: str,
                       dataset: Optional[data_lib.Dataset] = None) -> dict:
  """Trains `config`, writing metrics, curves and checkpoints to `workdir`.

  Resumes from the last checkpoint in `workdir` if there is one, which must
  have been made with the same config. `dataset` (default:
  `data.load(config)`) lets a sweep read its data once. In a multi-process
  run every process calls this, and process 0 writes. Returns the summary
  written to summary.json.
  """
  checkpointer = checkpoints.Checkpointer(workdir, config.checkpoints_to_keep)
  try:
    if (checkpointer.check_config(config) is None
        and outputs.read_metrics(workdir)):
      raise L2JaxError(
          f'{os.path.join(workdir, outputs.METRICS)} holds results but there '
          'is no checkpoint to resume them from; use a new --workdir (or '
          'delete this one to start over)')
    return _train(config, workdir, dataset, checkpointer)
  finally:
    checkpointer.close()  # Waits for the last save, also on errors.


def _train(config, workdir, dataset, checkpointer) -> dict:
  num_devices = jax.local_device_count()
  process = (jax.process_index(), jax.process_count())
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
  regularization.check_mask_selects_something(mask_fn, state.params,
                                               config.l2.mask)

  state, step, epoch_metrics = checkpointer.restore_latest(state)
  if step:
    logging.info('resuming from the checkpoint of step %d (epoch %d)', step,
                 step // steps_per_epoch + 1)
  last_checkpoint = step
  writer = outputs.MetricsWriter(workdir, step // steps_per_epoch,
                                 write=process[0] == 0)

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

  def checked_save(state, step: int, epoch_metrics: dict) -> dict:
    """Saves a checkpoint if the epoch's losses and the weights are finite;
    returns the weight measures."""
    nonlocal last_checkpoint
    # On the host: orbax saves NumPy arrays from process 0 alone.
    host_state = jax.device_get(jax_utils.unreplicate(state))
    measures = weight_measures(host_state.params, mask_fn, config.l2.weight)
    check_finite(epoch_metrics['train_loss'],
                 (step - 1) // steps_per_epoch * steps_per_epoch,
                 measures['weight_norm'], learning_rate, last_checkpoint)
    at_epoch_end = step % steps_per_epoch == 0
    checkpointer.save(step, host_state, config,
                      {} if at_epoch_end else epoch_metrics)
    last_checkpoint = step
    return measures

  state = replicate(state)
  train_rng = jax_utils.replicate(train_rng)
  for epoch in range(step // steps_per_epoch + 1, config.num_epochs + 1):
    start = time.perf_counter()
    end = epoch * steps_per_epoch
    batches = data_lib.train_batches(
        dataset.train, config.batch_size, num_devices, config.seed, epoch,
        start=step - (end - steps_per_epoch), process=process)
    state, epoch_metrics = train_epoch(
        p_train_step, state, train_rng, batches, step, end, epoch_metrics,
        config.checkpoint_every_steps, checked_save,
        f'epoch {epoch}/{config.num_epochs}')
    epoch_seconds = time.perf_counter() - start
    num_images = (end - step) * config.batch_size
    step = end
    measures = checked_save(state, step, epoch_metrics)
    evaluations = {}
    if epoch % config.eval_every_epochs == 0 or epoch == config.num_epochs:
      for name, split in eval_splits.items():
        if split is not None:
          result = evaluate(p_eval_step, state.params, split,
                            config.eval_batch_size, num_devices, process)
          evaluations.update({f'{name}_{k}': v for k, v in result.items()})
    record = epoch_record(epoch, step, epoch_metrics, measures, evaluations,
                          float(learning_rate(step - 1)), epoch_seconds,
                          num_images)
    epoch_metrics = {}
    writer.write(record)
    logging.info(
        'epoch %d/%d: loss %.4f, train %.4f, val %s, test %s, ‖w‖ %.3f, '
        'lr %.4g, %.1f s, %.0f images/s', epoch, config.num_epochs,
        record['train_loss'], record['train_accuracy'],
        *('%.4f' % record[k] if k in record else '-'
          for k in ('val_accuracy', 'test_accuracy')),
        record['weight_norm'], record['learning_rate'], epoch_seconds,
        record['images_per_second'])
  logging.info('final parameters: sha256 %s',
               fingerprint(jax_utils.unreplicate(state.params)))
  summary = summarize(config, writer.records, jax.device_count())
  if process[0] == 0:
    outputs.write_summary(workdir, summary)
    outputs.plot_curves(
        workdir, writer.records,
        f'{config.model} on {config.dataset}: L2 {config.l2.mode}, '
        f'λ={config.l2.weight}, {config.optimizer}')
  return summary
