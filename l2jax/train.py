"""The train state, the training step, and the loop, pmap-ed over the local
devices."""

import dataclasses
import functools
import math
import os
import time
from typing import Any, Callable, Optional

from absl import logging
from flax import jax_utils
from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from l2jax import augment
from l2jax import checkpoints
from l2jax import configuration
from l2jax import data as data_lib
from l2jax import devices
from l2jax import equilibrium
from l2jax import evaluation
from l2jax import events as events_lib
from l2jax import models
from l2jax import optim
from l2jax import outputs
from l2jax import preemption
from l2jax import pretrained
from l2jax import progress
from l2jax import records
from l2jax import regularization
from l2jax import workdir_lock
from l2jax.errors import ConfigError, L2JaxError

DROPOUT_STREAM = 2  # Folded into each step's key: dropout's stream.


class TrainState(train_state.TrainState):
  """flax's TrainState and the model's batch statistics ({} without
  batch norm), which training updates and evaluation uses."""
  batch_stats: Any


@functools.partial(jax.jit, static_argnames=('model', 'image_shape'))
def init_variables(model, rng, image_shape: tuple) -> dict:
  """`model`'s variables for images of `image_shape`, as one compiled program.

  Modules compare by their fields, so the cells of a sweep in one process
  share the program; op by op, the init ran ~80 small ones
  (docs/performance.md, start-up).
  """
  return model.init(rng, jnp.zeros((1, *image_shape), jnp.float32),
                    train=False)


def initialize(config, model, image_shape, steps_per_epoch: int, rng):
  """Returns (train state, α_t, penalties) for a run of `config`.

  The parameters are `model`'s initialization, or those of
  `config.l2sp.init_from` (with a fresh head where the class count differs),
  which are then also the L2-SP anchor w₀. The penalties' masks are resolved
  here, once, on these parameters, and the optimizer is built from them.
  """
  variables = init_variables(model, rng, tuple(image_shape))
  params = variables['params']
  anchor = None
  if config.l2sp.init_from:
    params, anchor = pretrained.start_from(
        params, pretrained.load_params(config.l2sp.init_from),
        config.l2sp.init_from)
  penalties = configuration.make_penalties(config, params, steps_per_epoch,
                                           anchor)
  tx, learning_rate = optim.make_optimizer(config, penalties, steps_per_epoch)
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                            batch_stats=variables.get('batch_stats', {}))
  return state, learning_rate, penalties


def hyperparameters(config, steps_per_epoch: int) -> dict:
  """The step's α (`config.learning_rate`) and λ (`optim.l2_weight`).

  They are arguments of the compiled step, not constants in it, as are the
  data's channel statistics (which depend on the seed through the
  validation split): runs that differ only in α, λ and seed, as a sweep's
  cells of one method do, share one program, compiled once and then read
  from JAX's persistent cache (`l2jax.caches`). `l2jax.cells` stacks them
  for K cells at once.
  """
  return {'learning_rate': float(config.learning_rate),
          'l2_weight': float(optim.l2_weight(config, steps_per_epoch))}


def train_step(state, images, labels, rng, hyper, stats, *, config,
               penalties: regularization.Penalties, steps_per_epoch: int):
  """One step on a device's share of the global batch, at `hyper`'s α and λ
  (`hyperparameters`; traced).

  images: (b, H, W, C) uint8; labels: (b,) int; stats: the training
  images' channel (mean, std), `Dataset.channel_stats`. The optimizer and the
  rotation measures (`optim.make_equilibrium`) are built here from α and λ
  (optax takes traced values). The per-example augmentation key depends on
  the example's position in the global batch and the step, so the run does
  not depend on the number of devices. Dropout's key is the step's and the
  device's, so dropout masks do depend on it. Batch norm's statistics are
  over the global batch (the models' `axis_name`). The loss is the data loss
  plus `penalties`' terms; each term is also a metric, as are the rotation
  measures of each kernel group's turn.
  """
  alpha = hyper['learning_rate']
  penalties = dataclasses.replace(penalties, l2_weight=hyper['l2_weight'])
  tx, _ = optim.make_optimizer(config, penalties, steps_per_epoch,
                               learning_rate=alpha)
  rotation = optim.make_equilibrium(config, penalties, steps_per_epoch,
                                    learning_rate=alpha)
  step_key = jax.random.fold_in(rng, state.step)
  dropout_key = jax.random.fold_in(jax.random.fold_in(step_key, DROPOUT_STREAM),
                                   jax.lax.axis_index(devices.AXIS))
  if config.augment:
    position = jax.lax.axis_index(devices.AXIS) * labels.shape[0] + jnp.arange(
        labels.shape[0])
    keys = jax.vmap(jax.random.fold_in, (None, 0))(step_key, position)
    images = augment.augment_batch(keys, images)
  x = augment.normalize(images, *stats)

  def loss_fn(params):
    logits, terms, batch_stats = apply_with_penalties(
        state.apply_fn, params, state.batch_stats, x, penalties, dropout_key)
    data_loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()
    loss = data_loss + sum(terms.values(), jnp.zeros(()))
    return loss, (data_loss, logits, terms, batch_stats)

  (loss, (data_loss, logits, terms, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = devices.mean(grads)
  new_state = state.replace(tx=tx).apply_gradients(grads=grads,
                                                   batch_stats=batch_stats)
  # Weight penalties are measured at epoch end (`records.weight_measures`);
  # only the activity penalty, which depends on the batch, is a step metric.
  metrics = {'train_loss': loss, 'data_loss': data_loss,
             'train_accuracy': jnp.mean(jnp.argmax(logits, -1) == labels),
             **{k: v for k, v in terms.items() if k == 'activity_penalty'},
             **rotation.sampled_measures(state.step, state.params,
                                         new_state.params,
                                         new_state.opt_state)}
  # The state's own (static) optimizer: calls with it compile once.
  return new_state.replace(tx=state.tx), devices.mean(metrics)


def pmap_train_step(config, penalties: regularization.Penalties,
                    steps_per_epoch: int):
  """`train_step` pmapped over the devices, (state, images, labels, rng,
  hyper, stats) -> (state, metrics); `hyper` (`hyperparameters`) and
  `stats` are the same on every device.

  The old state is donated (its buffers reused for the new one) except on
  the CPU, where donation makes XLA copy every parameter and momentum buffer
  first (docs/performance.md).
  """
  return jax.pmap(
      functools.partial(train_step, config=config, penalties=penalties,
                        steps_per_epoch=steps_per_epoch),
      axis_name=devices.AXIS, in_axes=(0, 0, 0, 0, None, None),
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


@dataclasses.dataclass(frozen=True)
class Run:
  """What stays fixed while a run trains."""
  config: Any
  workdir: str
  dataset: data_lib.Dataset
  steps_per_epoch: int
  learning_rate: Callable[[int], float]  # α_t
  penalties: regularization.Penalties
  checkpointer: checkpoints.Checkpointer
  host: devices.Host
  # Written in every epoch's record: `scale_invariant/<group>` and
  # `scale_invariant_share` (`structure`).
  structure: dict
  events: events_lib.EventWriter
  preemption: preemption.Notice


def checked(run: Run, state, step: int, step_metrics: dict,
            last_checkpoint: int):
  """(the replicated `state` on the host, its weight measures), if the
  epoch's losses and the weights are finite; else DivergenceError."""
  # On the host: orbax saves NumPy arrays from process 0 alone.
  host_state = devices.unreplicate_to_host(state)
  return host_state, checked_measures(run, host_state, step, step_metrics,
                                      last_checkpoint)


def checked_measures(run: Run, host_state, step: int, step_metrics: dict,
                     last_checkpoint: int) -> dict:
  """`checked`'s weight measures, of a state on the host."""
  measures = records.weight_measures(host_state.params, run.penalties)
  records.check_finite(
      step_metrics['train_loss'],
      (step - 1) // run.steps_per_epoch * run.steps_per_epoch,
      measures['weight_norm'], run.learning_rate, last_checkpoint)
  return measures


def checked_save(run: Run, state, step: int, step_metrics: dict,
                 last_checkpoint: int) -> None:
  """Saves a checkpoint of `state` within an epoch, once `checked`."""
  host_state, _ = checked(run, state, step, step_metrics, last_checkpoint)
  run.checkpointer.save(step, host_state, run.config, step_metrics)


def train_epoch(run: Run, p_train_step, state, rng, epoch: int, step: int,
                metrics: records.StepMetrics, last_checkpoint: int):
  """Trains from global step `step` to the end of `epoch`, saving every
  `config.checkpoint_every_steps` steps but the last (the caller saves it).
  Returns (state, the last checkpoint's step). After a preemption notice,
  saves the step and raises Preempted (`stop`)."""
  config, end = run.config, epoch * run.steps_per_epoch
  batches = data_lib.train_batches(
      run.dataset.train, config.batch_size, config.seed, epoch,
      start=step - (end - run.steps_per_epoch), host=run.host)
  for images, labels in progress.bar(
      jax_utils.prefetch_to_device(batches, 2), total=end - step,
      desc=f'epoch {epoch}/{config.num_epochs}', unit='steps'):
    state, step_metrics = p_train_step(state, images, labels, rng)
    metrics.add(step_metrics)
    step += 1
    every = config.checkpoint_every_steps
    # The epoch's last step is the caller's: it saves, evaluates and records
    # it before it stops.
    preempted = step != end and run.preemption.reached(step)
    if preempted or (every and step % every == 0 and step != end):
      checked_save(run, state, step, metrics.fetch(), last_checkpoint)
      last_checkpoint = step
    if preempted:
      stop(run, step)
  return state, last_checkpoint


def stop(run: Run, step: int) -> None:
  """Waits for the checkpoint of `step` to be written, then raises
  Preempted."""
  run.checkpointer.wait()
  raise preemption.Preempted(step, run.preemption.name(),
                             run.checkpointer.directory)


def train_and_evaluate(config, workdir: str,
                       dataset: Optional[data_lib.Dataset] = None) -> dict:
  """Trains `config`, writing metrics, curves and checkpoints to `workdir`.

  Resumes from the last checkpoint in `workdir` if there is one, which must
  have been made with the same config. `dataset` (default:
  `data.load(config)`) lets a sweep read its data once. In a multi-process
  run every process calls this, and process 0 writes. Returns the summary
  written to summary.json. A finished run (`finished_summary`) is left as
  it is, and its summary returned.

  Holds the workdir's lock throughout (WorkdirInUse, before any work, if
  another run holds it), and stops with Preempted after a preemption notice
  (`l2jax.preemption`), its last step saved.
  """
  with (preemption.Notice() as notice,
        workdir_lock.hold(workdir, devices.host())):
    summary = finished_summary(config, workdir)
    if summary:
      logging.info('run complete: %s (epoch %d, step %d, test accuracy %s); '
                   'its outputs stay as they are', workdir, config.num_epochs,
                   summary['final']['step'],
                   summary['final'].get('test_accuracy'))
      return summary
    return _train_and_evaluate(config, workdir, dataset, notice)


def _train_and_evaluate(config, workdir: str, dataset, notice) -> dict:
  # Data, model and penalties first: a mistake there leaves the workdir
  # untouched.
  dataset = dataset or data_lib.load(config)
  steps_per_epoch = epoch_steps(config, dataset)
  model = models.from_config(config, dataset.num_classes)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state, learning_rate, penalties = initialize(
      config, model, dataset.image_shape, steps_per_epoch, init_rng)
  host = devices.host()
  with checkpoints.Checkpointer(workdir, config.checkpoints_to_keep) as ckpt, \
      events_lib.EventWriter(workdir, config, host.index == 0) as events:
    run = Run(config, workdir, dataset, steps_per_epoch, learning_rate,
              penalties, ckpt, host,
              structure(model, state, dataset, penalties), events, notice)
    return _train(run, model, state, train_rng)


def epoch_steps(config, dataset: data_lib.Dataset) -> int:
  """Training steps an epoch of `config` takes on `dataset`; ConfigError
  where there are none, or more in all than a run can count."""
  steps_per_epoch = len(dataset.train) // config.batch_size
  if not steps_per_epoch:
    raise ConfigError(
        f'config.batch_size={config.batch_size} is larger than the '
        f'{len(dataset.train)} training examples; lower it')
  if config.num_epochs * steps_per_epoch > configuration.MAX_STEPS:
    raise ConfigError(
        f'config.num_epochs={config.num_epochs} of {steps_per_epoch} steps '
        f'is more than the {configuration.MAX_STEPS} steps a run can count; '
        'lower it')
  logging.info('data: %d train, %d validation, %d test, shape %s, %d classes',
               len(dataset.train), len(dataset.validation or ()),
               len(dataset.test), dataset.image_shape, dataset.num_classes)
  return steps_per_epoch


def finished_summary(config, workdir: str) -> Optional[dict]:
  """summary.json of `workdir` if it holds the finished run of `config`
  (config.num_epochs done and the last checkpoint at the final step), else
  None; ConfigError if its checkpoint was made with another config."""
  summary = outputs.read_summary(workdir)
  final = (summary or {}).get('final') or {}
  if final.get('epoch') != config.num_epochs:
    return None
  with checkpoints.Checkpointer(workdir, config.checkpoints_to_keep) as ckpt:
    return summary if ckpt.check_config(config) == final.get('step') else None


def structure(model, state, dataset: data_lib.Dataset,
              penalties: regularization.Penalties) -> dict:
  """Which kernel groups are scale-invariant (checked on 16 training images),
  and the share of the decayed parameters they hold."""
  x = augment.normalize(dataset.train.images[:16], *dataset.channel_stats())
  invariant = equilibrium.scale_invariant_groups(
      model, {'params': state.params, 'batch_stats': state.batch_stats},
      x, devices.AXIS)
  return {**{f'scale_invariant/{g}': v for g, v in invariant.items()},
          'scale_invariant_share': equilibrium.invariant_share(
              state.params, penalties.l2_mask, invariant)}


def _train(run: Run, model, state, train_rng) -> dict:
  config = run.config
  if (run.checkpointer.check_config(config) is None
      and outputs.read_metrics(run.workdir)):
    raise L2JaxError(
        f'{os.path.join(run.workdir, outputs.METRICS)} holds results but '
        'there is no checkpoint to resume them from; use a new --workdir (or '
        'delete this one to start over)')
  state, step, restored = run.checkpointer.restore_latest(state)
  if step:
    logging.info('resuming from the checkpoint of step %d (epoch %d, step '
                 '%d of %d)', step, -(-step // run.steps_per_epoch),
                 (step - 1) % run.steps_per_epoch + 1, run.steps_per_epoch)
  writer = outputs.MetricsWriter(run.workdir, step // run.steps_per_epoch,
                                 write=run.host.index == 0)
  mean, std = run.dataset.channel_stats()
  step_fn = pmap_train_step(config, run.penalties, run.steps_per_epoch)
  hyper = hyperparameters(config, run.steps_per_epoch)
  p_train_step = progress.first_call_timed(
      lambda *args: step_fn(*args, hyper, (mean, std)), 'the training step')
  evaluate = evaluation.Evaluator(config, model.apply, mean, std, run.host)
  state, rng = devices.replicate(state), jax_utils.replicate(train_rng)
  metrics, last_checkpoint = records.StepMetrics(restored), step
  for epoch in range(step // run.steps_per_epoch + 1, config.num_epochs + 1):
    start, first_step = time.perf_counter(), step
    state, last_checkpoint = train_epoch(run, p_train_step, state, rng, epoch,
                                         step, metrics, last_checkpoint)
    step = epoch * run.steps_per_epoch
    # Steps are dispatched asynchronously: the epoch ends when they finish.
    state = jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    host_state, measures = checked(run, state, step, metrics.fetch(),
                                   last_checkpoint)
    record_epoch(run, writer, evaluate, state, epoch, metrics.values,
                 measures, seconds, (step - first_step) * config.batch_size)
    # Saved once recorded: a run stopped in between resumes from the
    # checkpoint before, drops this record (MetricsWriter) and makes it
    # again. Saved first, a run stopped while evaluating resumed past the
    # epoch and ended without its record.
    run.checkpointer.save(step, host_state, config, {})
    last_checkpoint = step
    metrics = records.StepMetrics()
    if epoch < config.num_epochs and run.preemption.reached(step):
      stop(run, step)
  return finish(run, devices.unreplicate_to_host(state.params),
                writer.records)


def record_epoch(run: Run, writer: outputs.MetricsWriter, evaluate, state,
                 epoch: int, step_metrics: dict, measures: dict,
                 seconds: float, num_images: int) -> None:
  """Evaluates the replicated `state` where the config asks, and writes the
  epoch's record to metrics.jsonl, the event file and the log."""
  config, step = run.config, epoch * run.steps_per_epoch
  evaluations = {}
  if epoch % config.eval_every_epochs == 0 or epoch == config.num_epochs:
    evaluations = evaluate(state, {'val': run.dataset.validation,
                                   'test': run.dataset.test})
  record = records.epoch_record(
      epoch, step, step_metrics, {**measures, **run.structure}, evaluations,
      float(run.learning_rate(step - 1)), seconds, num_images,
      config.rotation_every_steps)
  writer.write(record)
  run.events.write(record, step_metrics['train_loss'])
  _log_epoch(config, record)


def _log_epoch(config, record: dict) -> None:
  record = {k: math.nan if v is None else v for k, v in record.items()}
  logging.info(
      'epoch %d/%d: loss %.4f, train %.4f, val %s, test %s, ‖w‖ %.3f, '
      'lr %.4g, %.1f s, %.0f images/s', record['epoch'], config.num_epochs,
      record['train_loss'], record['train_accuracy'],
      *('%.4f' % record[k] if k in record else '-'
        for k in ('val_accuracy', 'test_accuracy')),
      record['weight_norm'], record['learning_rate'], record['epoch_seconds'],
      record['images_per_second'])


def finish(run: Run, params, epoch_records: list) -> dict:
  """Logs the fingerprint of the final `params` (on the host); process 0
  writes summary and curves."""
  config = run.config
  logging.info('final parameters: sha256 %s', records.fingerprint(params))
  summary = records.summarize(config, epoch_records, jax.device_count())
  if run.host.index == 0:
    outputs.write_summary(run.workdir, summary)
    outputs.plot_curves(
        run.workdir, epoch_records,
        f'{config.model} on {config.dataset}: L2 {config.l2.mode}, '
        f'λ={config.l2.weight}, {config.optimizer}')
  return summary
