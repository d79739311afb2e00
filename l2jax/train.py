"""Training and evaluation, pmap-ed over the local devices."""

import functools
import hashlib
import os
import platform
import sys
import time
from typing import Any, Optional

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
from l2jax import pretrained
from l2jax import regularization
from l2jax.errors import ConfigError, DivergenceError, L2JaxError

AXIS = 'batch'
# Folded into keys: one stream for dropout, one for the evaluation noise.
DROPOUT_STREAM, NOISE_STREAM = 2, 1


class TrainState(train_state.TrainState):
  """flax's TrainState and the model's batch statistics ({} without
  batch norm), which training updates and evaluation uses."""
  batch_stats: Any


def initialize(config, model, image_shape, steps_per_epoch: int, rng):
  """Returns (train state, α_t, penalties) for a run of `config`.

  The parameters are `model`'s initialization, or those of
  `config.l2sp.init_from` (with a fresh head where the class count differs),
  which are then also the L2-SP anchor w₀. Every mask in use must select
  something.
  """
  # Op by op: a jitted init would compile anew for each run in a process
  # (the benchmarks' cells); op by op, the compiled ops are reused.
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32),
                         train=False)
  params = variables['params']
  anchor = None
  if config.l2sp.init_from:
    params, anchor = pretrained.start_from(
        params, pretrained.load_params(config.l2sp.init_from),
        config.l2sp.init_from)
  tx, learning_rate = optim.make_optimizer(config, steps_per_epoch, anchor)
  penalties = optim.make_penalties(config, steps_per_epoch, anchor)
  masks = [(penalties.l2_mask, config.l2.mask, 'l2.mask')]
  if config.l1.weight:
    masks.append((penalties.l1_mask, config.l1.mask, 'l1.mask'))
  if config.l2sp.weight:
    masks.append((penalties.l2sp_mask, config.l2sp.mask, 'l2sp.mask'))
  for mask_fn, spec, name in masks:
    regularization.check_mask_selects_something(mask_fn, params, spec, name)
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                            batch_stats=variables.get('batch_stats', {}))
  return state, learning_rate, penalties


def train_step(state, images, labels, rng, *, mean, std, augment_images: bool,
               penalties: regularization.Penalties):
  """One step on a device's share of the global batch.

  images: (b, H, W, C) uint8; labels: (b,) int. The per-example augmentation
  key depends on the example's position in the global batch and the step, so
  the run does not depend on the number of devices. Dropout's key is the
  step's and the device's, so dropout masks do depend on it. Batch norm's
  statistics are over the global batch (`models._batch_norm`). The loss is
  the data loss plus `penalties`' terms; each term is also a metric.
  """
  step_key = jax.random.fold_in(rng, state.step)
  dropout_key = jax.random.fold_in(jax.random.fold_in(step_key, DROPOUT_STREAM),
                                   jax.lax.axis_index(AXIS))
  if augment_images:
    position = jax.lax.axis_index(AXIS) * labels.shape[0] + jnp.arange(
        labels.shape[0])
    keys = jax.vmap(jax.random.fold_in, (None, 0))(step_key, position)
    images = augment.augment_batch(keys, images)
  x = augment.normalize(images, mean, std)

  def loss_fn(params):
    logits, terms, batch_stats = apply_with_penalties(
        state.apply_fn, params, state.batch_stats, x, penalties, dropout_key)
    data_loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()
    loss = data_loss + sum(terms.values(), jnp.zeros(()))
    return loss, (data_loss, logits, terms, batch_stats)

  (loss, (data_loss, logits, terms, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = device_mean(grads)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  # Weight penalties are measured at epoch end (`weight_measures`); only the
  # activity penalty, which depends on the batch, is a step metric.
  metrics = {'train_loss': loss, 'data_loss': data_loss,
             'train_accuracy': jnp.mean(jnp.argmax(logits, -1) == labels),
             **{k: v for k, v in terms.items() if k == 'activity_penalty'}}
  return state, device_mean(metrics)


def device_mean(tree):
  """`lax.pmean` over AXIS; over one device, the tree itself. (XLA's CPU
  runtime copies a one-device all-reduce: 3.5 ms of the seed network's
  step.)"""
  if jax.lax.axis_size(AXIS) == 1:
    return tree
  return jax.lax.pmean(tree, AXIS)


def pmap_train_step(config, penalties: regularization.Penalties, mean, std):
  """`train_step` pmapped over AXIS, (state, images, labels, rng) ->
  (state, metrics).

  The old state is donated (its buffers reused for the new one) except on
  the CPU. There XLA computes each parameter's new value and new momentum in
  two loops, which both read the old ones, so with donation it first copies
  every parameter and momentum buffer: the seed network's step took 3.6 ms
  longer (139.8 against 136.2 ms, median of 48 alternating steps).
  """
  return jax.pmap(
      functools.partial(train_step, mean=mean, std=std,
                        augment_images=config.augment, penalties=penalties),
      axis_name=AXIS,
      donate_argnums=() if jax.default_backend() == 'cpu' else (0,))


def apply_with_penalties(apply_fn, params, batch_stats, x, penalties,
                         dropout_key):
  """Logits, the loss's penalty terms by metric name, and the updated batch
  statistics, in training mode.

  The activity penalty reads the model's sown `intermediates/features`.
  """
  terms = penalties.weight_terms(params)
  mutable = ['batch_stats'] if batch_stats else []
  if penalties.activity_weight:
    mutable.append('intermediates')
  logits, updates = apply_fn(
      {'params': params, 'batch_stats': batch_stats}, x, train=True,
      mutable=mutable, rngs={'dropout': dropout_key})
  if penalties.activity_weight:
    features = updates.get('intermediates', {}).get('features')
    if features is None:
      raise ConfigError('config.activity_l2.weight needs a model that sows its '
                        "penultimate features as 'features'; this one does not")
    terms['activity_penalty'] = regularization.activity_penalty(
        features[0], penalties.activity_weight)
  return logits, terms, updates.get('batch_stats', batch_stats)


def eval_sums(logits, labels, weights) -> dict:
  """Sums of loss, correct predictions and examples over all devices."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = jnp.argmax(logits, -1) == labels
  sums = {'loss': jnp.sum(loss * weights), 'correct': jnp.sum(correct * weights),
          'count': jnp.sum(weights)}
  return jax.lax.psum(sums, AXIS)


def eval_step(variables, images, labels, weights, *, apply_fn, mean, std):
  """Sums of loss, correct predictions and examples over all devices.

  `variables`: {'params', 'batch_stats'}, as `eval_variables` gives them.
  """
  logits = apply_fn(variables, augment.normalize(images, mean, std),
                    train=False)
  return eval_sums(logits, labels, weights)


def noisy_eval_step(variables, images, labels, weights, sigma, first_index, *,
                    apply_fn, mean, std, key):
  """`eval_step` on clip(x / 255 + σ z, 0, 1): `augment.add_gaussian_noise`.

  z is keyed by `key` and the example's index in the split (`first_index`
  is the batch's), so it is the same in every evaluation, for every σ and
  device count. sigma, first_index: scalars per device.
  """
  b = labels.shape[0]
  index = first_index + jax.lax.axis_index(AXIS) * b + jnp.arange(b)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(key, index)
  x = augment.standardize(augment.add_gaussian_noise(keys, images, sigma),
                          mean, std)
  return eval_sums(apply_fn(variables, x, train=False), labels, weights)


def eval_variables(state) -> dict:
  """What evaluation applies the model to: parameters and batch statistics."""
  return {'params': state.params, 'batch_stats': state.batch_stats}


def evaluate(p_eval_step, variables, split, batch_size, num_devices,
             process=(0, 1), sigma=None) -> dict:
  """Loss and accuracy on `split`; with `sigma`, `p_eval_step` is a pmapped
  `noisy_eval_step` and the images carry noise of that σ."""
  sums = []
  for number, batch in enumerate(
      data_lib.eval_batches(split, batch_size, num_devices, process)):
    if sigma is not None:
      batch += (np.full(num_devices, sigma, np.float32),
                np.full(num_devices, number * batch_size, np.int32))
    sums.append(p_eval_step(variables, *batch))
  sums = jax.tree_util.tree_map(lambda *x: np.sum(x), *jax.device_get(
      [jax_utils.unreplicate(s) for s in sums]))
  return {'loss': float(sums['loss'] / sums['count']),
          'accuracy': float(sums['correct'] / sums['count'])}


def noise_evaluation(config, apply_fn, mean, std, num_devices,
                     process=(0, 1)):
  """Returns variables, split → {'test_accuracy_noise<σ>': accuracy} for each
  σ in `config.noise_sigmas`, with the same noise in every call."""
  p_step = jax.pmap(
      functools.partial(
          noisy_eval_step, apply_fn=apply_fn, mean=mean, std=std,
          key=jax.random.fold_in(jax.random.key(config.seed), NOISE_STREAM)),
      axis_name=AXIS)

  def accuracies(variables, split) -> dict:
    return {f'test_accuracy_noise{sigma:g}': evaluate(
        p_step, variables, split, config.eval_batch_size, num_devices, process,
        sigma)['accuracy'] for sigma in config.noise_sigmas}

  return accuracies


kernel_norms = jax.jit(regularization.kernel_norms)


@functools.partial(jax.jit, static_argnums=1)
def weight_measures(params, penalties: regularization.Penalties):
  """`penalties.measures`: ‖w‖₂, the weight penalties, the sparsity."""
  return penalties.measures(params)


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
  measures = {k: float(v) for k, v in measures.items()}
  return {'epoch': epoch, 'step': step,
          **{k: float(np.mean(v)) for k, v in epoch_metrics.items()},
          **measures,
          # α_t / ‖w‖² per group of kernels (see `kernel_norms`).
          **{'effective_lr/' + k.split('/', 1)[1]: learning_rate / v ** 2
             for k, v in measures.items() if k.startswith('kernel_norm/')},
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
  # The data first: a mistake there leaves the workdir untouched.
  dataset = dataset or data_lib.load(config)
  steps_per_epoch = len(dataset.train) // config.batch_size
  if not steps_per_epoch:
    raise ConfigError(
        f'config.batch_size={config.batch_size} is larger than the '
        f'{len(dataset.train)} training examples; lower it')
  checkpointer = checkpoints.Checkpointer(workdir, config.checkpoints_to_keep)
  try:
    if (checkpointer.check_config(config) is None
        and outputs.read_metrics(workdir)):
      raise L2JaxError(
          f'{os.path.join(workdir, outputs.METRICS)} holds results but there '
          'is no checkpoint to resume them from; use a new --workdir (or '
          'delete this one to start over)')
    return _train(config, workdir, dataset, steps_per_epoch, checkpointer)
  finally:
    checkpointer.close()  # Waits for the last save, also on errors.


def _train(config, workdir, dataset, steps_per_epoch, checkpointer) -> dict:
  num_devices = jax.local_device_count()
  process = (jax.process_index(), jax.process_count())
  logging.info('data: %d train, %d validation, %d test, shape %s, %d classes',
               len(dataset.train), len(dataset.validation or ()),
               len(dataset.test), dataset.image_shape, dataset.num_classes)

  model = models.from_config(config, dataset.num_classes)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state, learning_rate, penalties = initialize(
      config, model, dataset.image_shape, steps_per_epoch, init_rng)

  state, step, epoch_metrics = checkpointer.restore_latest(state)
  if step:
    logging.info('resuming from the checkpoint of step %d (epoch %d)', step,
                 step // steps_per_epoch + 1)
  last_checkpoint = step
  writer = outputs.MetricsWriter(workdir, step // steps_per_epoch,
                                 write=process[0] == 0)

  mean, std = dataset.channel_stats()
  p_train_step = pmap_train_step(config, penalties, mean, std)
  p_eval_step = jax.pmap(
      functools.partial(eval_step, apply_fn=model.apply, mean=mean, std=std),
      axis_name=AXIS)
  eval_splits = {'val': dataset.validation, 'test': dataset.test}
  evaluate_noise = noise_evaluation(config, model.apply, mean, std,
                                    num_devices, process)

  def checked_save(state, step: int, epoch_metrics: dict) -> dict:
    """Saves a checkpoint if the epoch's losses and the weights are finite;
    returns the weight measures."""
    nonlocal last_checkpoint
    # On the host: orbax saves NumPy arrays from process 0 alone.
    host_state = jax.device_get(jax_utils.unreplicate(state))
    measures = {**weight_measures(host_state.params, penalties),
                **{f'kernel_norm/{group}': norm for group, norm in
                   kernel_norms(host_state.params).items()}}
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
          result = evaluate(p_eval_step, eval_variables(state), split,
                            config.eval_batch_size, num_devices, process)
          evaluations.update({f'{name}_{k}': v for k, v in result.items()})
      evaluations.update(evaluate_noise(eval_variables(state), dataset.test))
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
