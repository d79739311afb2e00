"""Several cells of a sweep as one program: the training step vmapped over a
leading cell axis.

Cells whose configs differ only in the learning rate α and the L2 weight λ
(`STACKED`) share the seed, and with it the initial parameters, the batches
and every random key: only their trajectories differ. `stack` puts K copies
of the run's initial state on a leading axis; `pmap_train_step` is
`train.train_step` vmapped over that axis and over α and λ (`hyperparameters`:
arrays of K values), with the batch and keys shared. The step builds each
cell's optimizer and rotation measures from its own α and λ, so each cell's
updates are those of its own run (tests/cells_test.py). `train_and_evaluate`
trains K such runs to the end, each writing the outputs of its own run; it
evaluates them in one pass too (`evaluation.stacked_apply`).

Why: on an accelerator, K networks as small as the separability study's
fill the device where one does not; on a CPU core the vmapped step is
slower per cell than the cell's own, so there the sweeps train cells one
after another unless told (`benchmarks.sweep.auto_stack`; figures in
docs/performance.md).
"""

import contextlib
import dataclasses
import functools
import os
import time
from typing import Sequence

from absl import logging
from flax import jax_utils
import jax
import jax.numpy as jnp

from l2jax import checkpoints
from l2jax import data as data_lib
from l2jax import devices
from l2jax import evaluation
from l2jax import events as events_lib
from l2jax import models
from l2jax import optim
from l2jax import outputs
from l2jax import preemption
from l2jax import progress
from l2jax import records
from l2jax import regularization
from l2jax import train
from l2jax import workdir_lock
from l2jax.errors import ConfigError, DivergenceError, L2JaxError

# The config keys in which stacked cells may differ.
STACKED = ('learning_rate', 'l2.weight')


def flat(config) -> dict:
  """{'l2.weight': value, ...}: `config`'s values by dotted key."""
  result = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      result.update({f'{key}.{k}': v for k, v in flat(value).items()})
    else:
      result[key] = value
  return result


def hyperparameters(configs, steps_per_epoch: int) -> dict:
  """`train.hyperparameters` of each config, as arrays of one value per
  config. ConfigError unless the configs differ in `STACKED` alone."""
  first = flat(configs[0])
  for config in configs[1:]:
    other = flat(config)
    differ = sorted(k for k in first.keys() | other.keys()
                    if k not in STACKED and first.get(k) != other.get(k))
    if differ:
      raise ConfigError(f'stacked cells may differ only in {", ".join(STACKED)}'
                        f'; these differ in {", ".join(differ)}')
  each = [train.hyperparameters(c, steps_per_epoch) for c in configs]
  return jax.tree.map(lambda *values: jnp.array(values, jnp.float32), *each)


def stack(state, cells: int):
  """`cells` copies of `state`'s arrays on a new leading axis."""
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (cells, *jnp.shape(x))),
                      state)


def pmap_train_step(config, penalties: regularization.Penalties,
                    steps_per_epoch: int):
  """(stacked state, images, labels, rng, hyperparameters, stats) ->
  (stacked state, stacked metrics): `train.train_step` of each cell,
  vmapped, pmapped as `train.pmap_train_step` is."""
  cell_step = functools.partial(
      train.train_step, config=config, penalties=penalties,
      steps_per_epoch=steps_per_epoch)
  return jax.pmap(
      jax.vmap(cell_step, in_axes=(0, None, None, None, 0, None)),
      axis_name=devices.AXIS, in_axes=(0, 0, 0, 0, None, None),
      donate_argnums=() if jax.default_backend() == 'cpu' else (0,))


class StackedMetrics(records.StepMetrics):
  """`records.StepMetrics` of K stacked cells: `fetch` returns one
  {name: [float per step]} a cell."""

  def __init__(self, cells: int):
    super().__init__()
    self.cells = [{} for _ in range(cells)]

  def fetch(self) -> list:
    for metrics in jax.device_get(self._pending):
      for name, values in metrics.items():
        for cell, value in zip(self.cells, values[0]):
          cell.setdefault(name, []).append(float(value))
    self._pending.clear()
    return self.cells


def fresh(workdir: str) -> bool:
  """Whether `workdir` holds nothing of a run yet: no metrics and nothing in
  its checkpoints folder. Only such cells are stacked; one with progress
  resumes alone (`train.train_and_evaluate`)."""
  folder = os.path.join(workdir, 'checkpoints')
  return not (outputs.read_metrics(workdir)
              or os.path.isdir(folder) and os.listdir(folder))


def train_and_evaluate(configs: Sequence, workdirs: Sequence[str],
                       dataset: data_lib.Dataset = None) -> list:
  """Trains the runs of `configs` (differing in `STACKED` alone) as one
  program, each writing to its workdir what `train.train_and_evaluate`
  writes: metrics.jsonl, curves, events, a checkpoint at each epoch's end,
  summary.json. Returns each run's summary, or the DivergenceError that
  stopped it (the others train on).

  The workdirs must be `fresh`: a stack does not resume. Checkpoints are
  saved at epochs' ends (`checkpoint_every_steps` does not apply) and, as
  in a single run, at the step where a preemption notice comes; Preempted
  then carries the outcomes so far (`outcomes`), and each run resumes
  alone. A record's `epoch_seconds` and `images_per_second` are the whole
  stack's.
  """
  with contextlib.ExitStack() as held:
    notice = held.enter_context(preemption.Notice())
    host = devices.host()
    for workdir in workdirs:
      held.enter_context(workdir_lock.hold(workdir, host))
      if not fresh(workdir):
        raise L2JaxError(f'{workdir} holds a run already; resume it alone')
    dataset = dataset or data_lib.load(configs[0])
    steps_per_epoch = train.epoch_steps(configs[0], dataset)
    hyper = hyperparameters(configs, steps_per_epoch)
    model = models.from_config(configs[0], dataset.num_classes)
    init_rng, train_rng = jax.random.split(jax.random.key(configs[0].seed))
    # One initialization: the cells share it, and their penalties differ
    # in λ alone (`STACKED`).
    state, _, shared = train.initialize(configs[0], model, dataset.image_shape,
                                        steps_per_epoch, init_rng)
    structure = train.structure(model, state, dataset, shared)
    runs = []
    for config, workdir in zip(configs, workdirs):
      penalties = dataclasses.replace(
          shared, l2_weight=optim.l2_weight(config, steps_per_epoch))
      _, learning_rate = optim.make_optimizer(config, penalties,
                                              steps_per_epoch)
      ckpt = held.enter_context(checkpoints.Checkpointer(
          workdir, config.checkpoints_to_keep))
      events = held.enter_context(events_lib.EventWriter(
          workdir, config, host.index == 0))
      runs.append(train.Run(config, workdir, dataset, steps_per_epoch,
                            learning_rate, penalties, ckpt, host, structure,
                            events, notice))
    return _train(runs, model, stack(state, len(configs)), hyper, train_rng)


def _train(runs: list, model, state, hyper: dict, train_rng) -> list:
  config, steps_per_epoch = runs[0].config, runs[0].steps_per_epoch
  dataset, host = runs[0].dataset, runs[0].host
  writers = [outputs.MetricsWriter(r.workdir, 0, write=host.index == 0)
             for r in runs]
  mean, std = dataset.channel_stats()
  step_fn = pmap_train_step(config, runs[0].penalties, steps_per_epoch)
  p_train_step = progress.first_call_timed(
      lambda *args: step_fn(*args, hyper, (mean, std)),
      f'the training step of {len(runs)} cells')
  # One evaluation pass for the whole stack.
  evaluate = evaluation.Evaluator(config, evaluation.stacked_apply(model.apply),
                                  mean, std, host)
  state, rng = devices.replicate(state), jax_utils.replicate(train_rng)
  outcomes = [None] * len(runs)  # A run's DivergenceError, once it has one.
  notice = runs[0].preemption
  for epoch in range(1, config.num_epochs + 1):
    start, metrics = time.perf_counter(), StackedMetrics(len(runs))
    step, end = (epoch - 1) * steps_per_epoch, epoch * steps_per_epoch
    batches = data_lib.train_batches(dataset.train, config.batch_size,
                                     config.seed, epoch, host=host)
    for images, labels in progress.bar(
        jax_utils.prefetch_to_device(batches, 2), total=steps_per_epoch,
        desc=f'epoch {epoch}/{config.num_epochs}, {len(runs)} cells',
        unit='steps'):
      state, step_metrics = p_train_step(state, images, labels, rng)
      metrics.add(step_metrics)
      step += 1
      # As train.train_epoch: every step asks, and a notice saves it.
      if step != end and notice.reached(step):
        per_cell = metrics.fetch()
        for k, run, host_state, _ in _checked(runs, state, step, per_cell,
                                              outcomes):
          run.checkpointer.save(step, host_state, run.config, per_cell[k])
        _stop(runs, step, outcomes)
    state = jax.block_until_ready(state)
    seconds, per_cell = time.perf_counter() - start, metrics.fetch()
    evaluations = None
    if epoch % config.eval_every_epochs == 0 or epoch == config.num_epochs:
      evaluations = evaluate(state, {'val': dataset.validation,
                                     'test': dataset.test})
    for k, run, host_state, measures in _checked(runs, state, step, per_cell,
                                                 outcomes):
      # The record's seconds and images are the whole stack's.
      train.record_epoch(
          run, writers[k], lambda *_, k=k: _cell(evaluations, k), None,
          epoch, per_cell[k], measures, seconds,
          steps_per_epoch * config.batch_size * len(runs))
      run.checkpointer.save(step, host_state, run.config, {})
    if all(outcomes):
      break
    if epoch < config.num_epochs and notice.reached(step):
      _stop(runs, step, outcomes)
  params = devices.unreplicate_to_host(state.params)
  return [outcome or train.finish(run, jax.tree.map(lambda x, k=k: x[k],
                                                     params), writer.records)
          for k, (run, writer, outcome) in enumerate(zip(runs, writers,
                                                          outcomes))]


def _cell(evaluations: dict, k: int) -> dict:
  """Cell k's values of a stacked evaluation (a split's nan, where it is
  empty, is every cell's)."""
  return {name: v[k] if isinstance(v, list) else v
          for name, v in evaluations.items()}


def _checked(runs: list, state, step: int, per_cell: list, outcomes: list):
  """(k, run, its state on the host, its weight measures) of each cell
  still training whose losses and weights are finite
  (`train.checked_measures`); a cell that diverged gets its
  DivergenceError in `outcomes` and trains on unrecorded."""
  stacked = devices.unreplicate_to_host(state)
  last = (step - 1) // runs[0].steps_per_epoch * runs[0].steps_per_epoch
  for k, run in enumerate(runs):
    if outcomes[k] is not None:
      continue
    host_state = jax.tree.map(lambda x, k=k: x[k], stacked)
    try:
      measures = train.checked_measures(run, host_state, step, per_cell[k],
                                        last)
    except DivergenceError as e:
      logging.warning('%s: %s', run.workdir, e)
      outcomes[k] = e
      continue
    yield k, run, host_state, measures


def _stop(runs: list, step: int, outcomes: list) -> None:
  """Waits for every cell's checkpoint of `step`, then raises Preempted,
  carrying `outcomes` (the cells that diverged before)."""
  for run in runs:
    run.checkpointer.wait()
  stopped = preemption.Preempted(
      step, runs[0].preemption.name(),
      ', '.join(run.checkpointer.directory for run in runs))
  stopped.outcomes = outcomes
  raise stopped
