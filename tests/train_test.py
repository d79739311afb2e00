"""The pmapped training step, in process, on synthetic data."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar
from l2jax import augment
from l2jax import checkpoints
from l2jax import data as data_lib
from l2jax import devices
from l2jax import evaluation
from l2jax import models
from l2jax import records
from l2jax import train


def test_train_step_compiles_once(monkeypatch):
  config = cifar.get_config()
  config.l1.weight, config.activity_l2.weight = 1e-4, 1e-3  # Every loss term.
  config.augment = True
  # Sampled (a lax.cond): steps 0 and 2 measure, so the last step's
  # metrics, checked below, hold finite rotation measures.
  config.rotation_every_steps = 2
  model = models.create_model('seed_cnn_narrow', 10)
  state, _, penalties = train.initialize(config, model, (8, 8, 3), 10,
                                         jax.random.key(0))
  # The step as training builds it, around a train_step that counts traces.
  monkeypatch.setattr(train, 'train_step',
                      chex.assert_max_traces(train.train_step, n=1))
  p_step = train.pmap_train_step(config, penalties, 10)
  state = devices.replicate(state)
  rng = devices.replicate(jax.random.key(1))
  n = jax.local_device_count()
  images = np.zeros((n, 4, 8, 8, 3), np.uint8)
  labels = np.zeros((n, 4), np.int32)
  for _ in range(3):
    state, metrics = p_step(state, images, labels, rng,
                            train.hyperparameters(config, 10),
                            (np.zeros(3, np.float32), np.ones(3, np.float32)))
  assert int(state.step[0]) == 3
  chex.assert_tree_all_finite(metrics)
  assert 'activity_penalty' in metrics


def test_runs_that_differ_in_lr_l2_weight_and_seed_share_one_program():
  """α, λ and the data's channel statistics (which depend on the seed) are
  arguments of the compiled step, so a sweep's cells of one method compile
  it once (and JAX's persistent cache, keyed by the program, holds it)."""
  programs = []
  for lr, weight, seed, mean in ((0.1, 0.0, 0, 0.4), (0.003, 5e-4, 1, 0.6)):
    config = cifar.get_config()
    config.update(model='seed_cnn_narrow', learning_rate=lr, seed=seed)
    config.l2.weight = weight
    model = models.create_model(config.model, 10)
    state, _, penalties = train.initialize(config, model, (8, 8, 3), 10,
                                           jax.random.key(seed))
    p_step = train.pmap_train_step(config, penalties, 10)
    n = jax.local_device_count()
    programs.append(p_step.lower(
        devices.replicate(state), np.zeros((n, 4, 8, 8, 3), np.uint8),
        np.zeros((n, 4), np.int32), devices.replicate(jax.random.key(seed)),
        train.hyperparameters(config, 10),
        (np.full(3, mean, np.float32), np.full(3, 0.2, np.float32))).as_text())
  assert programs[0] == programs[1]


def synthetic(classes: int, n: int, seed: int = 0) -> data_lib.Split:
  rng = np.random.default_rng(seed)
  return data_lib.Split(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
                        rng.integers(0, classes, n, dtype=np.int32))


def test_noise_at_sigma_0_is_the_clean_accuracy_and_noise_is_fixed():
  config = cifar.get_config()
  config.noise_sigmas = (0.0, 0.1)
  model = models.create_model('seed_cnn_narrow', 10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
  split = synthetic(10, 50)
  mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
  # Labels the model gets right for the first half: accuracy about ½.
  predicted = np.argmax(model.apply({'params': params}, augment.normalize(
      split.images, mean, std)), -1)
  split = data_lib.Split(split.images, np.where(
      np.arange(50) < 25, predicted, split.labels).astype(np.int32))
  host = devices.host()
  n = host.local_devices
  config.eval_batch_size = 16 * n
  evaluator = evaluation.Evaluator(config, model.apply, mean, std, host)
  replicated = devices.replicate({'params': params})
  clean = evaluation.evaluate(evaluator.clean, replicated, split, 16 * n,
                              host)['accuracy']
  first = evaluator.noise(replicated, split)
  assert set(first) == {'test_accuracy_noise0', 'test_accuracy_noise0.1'}
  assert first['test_accuracy_noise0'] == clean >= 0.5
  assert first['test_accuracy_noise0.1'] != clean  # The noise reaches the model.
  assert evaluator.noise(replicated, split) == first
  config.eval_batch_size = 25 * n  # The noise is keyed per example.
  assert evaluation.Evaluator(config, model.apply, mean, std, host).noise(
      replicated, split) == first


def test_fine_tuning_with_every_regularizer_end_to_end(tmp_path):
  """A 4-class checkpoint, then 3 classes from it with L2-SP, L1, activity L2
  and noise evaluation: every measure is in metrics.jsonl."""
  config = cifar.get_config()
  config.update(model='seed_cnn_narrow', batch_size=16, num_epochs=1,
                eval_batch_size=32, noise_sigmas=(0.0, 0.05), augment=False)
  source = models.create_model('seed_cnn_narrow', 4)
  checkpointer = checkpoints.Checkpointer(str(tmp_path / 'source'), 1)
  source_state = train.initialize(config, source, (8, 8, 3), 2,
                                  jax.random.key(5))[0]
  checkpointer.save(1, source_state, config, {})
  checkpointer.close()
  config.l2.mode = 'loss'
  config.l1.weight, config.activity_l2.weight = 1e-4, 1e-3
  config.l2sp.update(weight=0.1, init_from=str(tmp_path / 'source'))
  start, _, penalties = train.initialize(
      config, models.create_model('seed_cnn_narrow', 3), (8, 8, 3), 2,
      jax.random.key(0))
  np.testing.assert_array_equal(start.params['Dense_0']['kernel'],
                                source_state.params['Dense_0']['kernel'])
  chex.assert_shape(start.params['Dense_1']['kernel'], (256, 3))
  assert penalties.anchor is not None
  target = data_lib.Dataset(synthetic(3, 32, 2), None, synthetic(3, 32, 3), 3)
  summary = train.train_and_evaluate(config, str(tmp_path / 'target'), target)
  record = summary['final']
  assert record['test_accuracy_noise0'] == record['test_accuracy']
  for key in ('sparsity', 'l1_penalty', 'l2sp_penalty', 'l2sp_distance',
              'activity_penalty', 'test_accuracy_noise0.05'):
    assert np.isfinite(record[key]), key
  # L2-SP's measures agree: ½ λ_sp ‖w − w₀‖², and training moved w off w₀.
  assert record['l2sp_penalty'] == pytest.approx(
      0.5 * 0.1 * record['l2sp_distance'] ** 2, rel=1e-4)
  assert record['l2sp_distance'] > 0


@pytest.mark.parametrize('name, options', [
    ('allconv_bn', {'dropout': 0.3}),
    ('seed_cnn_narrow', {'batch_norm': True, 'dropout': 0.5})])
def test_batch_norm_and_dropout_models_train_and_evaluate(tmp_path, name,
                                                          options):
  config = cifar.get_config()
  config.update(model=name, batch_size=16, num_epochs=1, eval_batch_size=32,
                noise_sigmas=(), augment=False, **options)
  dataset = data_lib.Dataset(synthetic(10, 64, 1), None, synthetic(10, 32, 2),
                             10)
  summary = train.train_and_evaluate(config, str(tmp_path), dataset)
  record = summary['final']
  assert np.isfinite(record['test_loss'])
  # The effective learning rate of each kernel group: α_t / ‖w‖².
  groups = [k.split('/')[1] for k in record if k.startswith('kernel_norm/')]
  assert 'Dense_0' in groups and len(groups) >= 3
  for group in groups:
    assert record['effective_lr/' + group] == pytest.approx(
        record['learning_rate'] / record['kernel_norm/' + group] ** 2)
  # Training moved the running statistics off their start (mean 0, var 1).
  restored = checkpoints.Checkpointer(str(tmp_path), 1)
  model = models.from_config(config, 10)
  start, _, _ = train.initialize(config, model, (8, 8, 3), 4,
                                 jax.random.key(0))
  state, step, _ = restored.restore_latest(start)
  restored.close()
  assert step == 4
  means = [v for path, v in jax.tree_util.tree_flatten_with_path(
      state.batch_stats)[0] if path[-1].key == 'mean']
  assert means and all(np.abs(m).max() > 0 for m in means)
  # Evaluation uses those statistics and no dropout: deterministic, and
  # independent of the batch it is in.
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  x = augment.normalize(dataset.test.images, *dataset.channel_stats())
  # At full precision: a GPU's default TensorFloat-32 rounds differently
  # at another batch size (3e-4 on an H200).
  with jax.default_matmul_precision('highest'):
    whole = model.apply(variables, x, train=False)
    part = model.apply(variables, x[:5], train=False)
  np.testing.assert_allclose(part, whole[:5], rtol=1e-5, atol=1e-5)


def test_rotation_is_measured_every_nth_step_of_each_epoch():
  """`rotation_every_steps=3` with 5 steps an epoch measures each epoch's
  steps 0 and 3 (global 0, 3, 5, 8) as every step's run measures them, nan
  in the others, and trains the same weights; an epoch's record averages
  the measured steps alone, the loss every step. 0 measures nothing."""
  steps, epoch_steps = 10, 5
  images = synthetic(10, 4 * steps)

  def run(every):
    config = cifar.get_config()
    config.update(model='seed_cnn_narrow', batch_norm=True, augment=False,
                  rotation_every_steps=every)
    model = models.from_config(config, 10)
    state, _, penalties = train.initialize(config, model, (8, 8, 3),
                                           epoch_steps, jax.random.key(0))
    p_step = train.pmap_train_step(config, penalties, epoch_steps)
    state, rng = devices.replicate(state), devices.replicate(jax.random.key(1))
    n = jax.local_device_count()
    metrics = []
    for i in range(steps):
      batch = slice(4 * i, 4 * i + 4)
      state, m = p_step(
          state, np.broadcast_to(images.images[batch], (n, 4, 8, 8, 3)),
          np.broadcast_to(images.labels[batch], (n, 4)), rng,
          train.hyperparameters(config, epoch_steps),
          (np.zeros(3, np.float32), np.ones(3, np.float32)))
      metrics.append({k: float(v[0]) for k, v in m.items()})
    return jax.device_get(state.params), metrics

  params_1, every_1 = run(1)
  params_3, every_3 = run(3)
  params_0, every_0 = run(0)
  chex.assert_trees_all_equal(params_1, params_3)
  chex.assert_trees_all_equal(params_1, params_0)
  rotation = [k for k in every_1[0] if k.startswith(
      ('angular_update/', 'shrink/', 'angular_update_equilibrium/'))]
  assert rotation and not any(k in every_0[0] for k in rotation)
  measured = [0, 3, 5, 8]
  for i in range(steps):
    for k in rotation:
      if i in measured:
        assert every_3[i][k] == pytest.approx(every_1[i][k], rel=1e-6)
      else:
        assert np.isnan(every_3[i][k])
  key = rotation[0]
  epoch = {k: [m[k] for m in every_3[5:]] for k in every_3[0]}
  record = records.epoch_record(2, 10, epoch, {}, {}, 0.1, 1.0, 20, 3)
  assert record[key] == pytest.approx(
      (every_1[5][key] + every_1[8][key]) / 2, rel=1e-6)
  assert record['train_loss'] == pytest.approx(
      np.mean([m['train_loss'] for m in every_1[5:]]), rel=1e-6)
  # A measured step's own nan (a group of norm 0, say) is not skipped.
  epoch[key][3] = float('nan')
  assert records.epoch_record(2, 10, epoch, {}, {}, 0.1, 1.0, 20,
                              3)[key] is None
