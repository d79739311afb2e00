"""Degenerate values give a recorded value, never an exception: every
division by a measured quantity, at 0. (A whole collapsed network in a sweep:
sweep_faults_test.py.)"""

import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import sweep
from configs import cifar
from l2jax import augment
from l2jax import data as data_lib
from l2jax import devices
from l2jax import equilibrium
from l2jax import evaluation
from l2jax import models
from l2jax import records
from l2jax import regularization
from l2jax import train


def test_sparsity_of_an_empty_mask_is_nan_and_otherwise_the_share():
  params = {'a': jnp.array([0.0, 1e-4, 0.5, -2.0]), 'b': jnp.zeros(3)}
  assert math.isnan(regularization.sparsity(params, {'a': False, 'b': False}))
  # |w| < 1e-3: 2 of a's 4 elements.
  assert float(regularization.sparsity(params, {'a': True, 'b': False})) == 0.5


def test_a_constant_channel_is_normalized_to_0_not_divided_by_0():
  images = np.zeros((4, 2, 2, 2), np.uint8)
  images[..., 0] = 77  # Channel 0: the same everywhere; channel 1 varies.
  images[:2, ..., 1] = 255
  split = data_lib.Split(images, np.zeros(4, np.int32))
  mean, std = data_lib.Dataset(split, None, split, 2).channel_stats()
  np.testing.assert_allclose(mean, [77 / 255, 0.5], rtol=1e-6)
  np.testing.assert_allclose(std, [1.0, 0.5], rtol=1e-6)
  x = np.asarray(augment.normalize(images, mean, std))
  assert np.all(x[..., 0] == 0) and set(np.unique(x[..., 1])) == {-1.0, 1.0}


def test_a_validation_fraction_that_rounds_to_no_image_gives_an_empty_split():
  split = data_lib.Split(np.zeros((10, 2, 2, 3), np.uint8), np.arange(10))
  train_split, validation = data_lib.split_validation(split, 0.01, seed=0)
  assert len(train_split) == 10 and len(validation) == 0


def test_an_empty_split_evaluates_to_nan_and_a_huge_batch_as_a_small_one():
  config = cifar.get_config()
  config.noise_sigmas = ()  # Its steps' batches are the same.
  model = models.create_model('seed_cnn_narrow', 10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
  state = types.SimpleNamespace(params=devices.replicate(params),
                                batch_stats={})
  rng = np.random.default_rng(0)
  test = data_lib.Split(rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8),
                        rng.integers(0, 10, 20, dtype=np.int32))
  empty = test.take(slice(0, 0))
  mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
  config.eval_batch_size = 10**12  # Padded to it: 200 TB of images.
  host = devices.host()
  evaluator = evaluation.Evaluator(config, model.apply, mean, std, host)
  result = evaluator(state, {'val': empty, 'test': test})
  assert math.isnan(result['val_loss']) and math.isnan(result['val_accuracy'])
  # As in batches of the split's size.
  variables = evaluation.eval_variables(state)
  devices_in_run = host.count * host.local_devices
  batch = -(-len(test) // devices_in_run) * devices_in_run
  small = evaluation.evaluate(evaluator.clean, variables, test, batch, host)
  assert result['test_loss'] == small['loss']
  assert result['test_accuracy'] == small['accuracy']


def test_zero_norms_zero_learning_rate_and_zero_seconds_are_recorded_null():
  measures = {'weight_norm': 0.0, 'kernel_norm/Conv_0': 0.0,
              'kernel_norm/Dense_0': 2.0}
  record = records.epoch_record(
      1, 10, {'train_loss': [2.3], 'train_accuracy': [0.1],
              'angular_update/Conv_0': [math.nan]},
      measures, {'val_loss': math.nan, 'val_accuracy': math.nan}, 0.0,
      epoch_seconds=0.0, num_images=320)
  assert record['effective_lr/Conv_0'] is None  # 0 / 0²
  assert record['effective_lr/Dense_0'] == 0.0  # 0 / 2²
  assert record['images_per_second'] is None  # 320 / 0 s
  assert record['angular_update/Conv_0'] is None
  assert record['val_loss'] is None and record['val_accuracy'] is None
  json.dumps(record, allow_nan=False)  # Strict JSON.
  # The epoch's log line shows them as nan.
  train._log_epoch(  # pylint: disable=protected-access
      cifar.get_config(), record)
  # And at a learning rate of 1e-3, a zero norm: inf, recorded null too.
  assert records.epoch_record(1, 10, {}, measures, {}, 1e-3, 1.0, 320)[
      'effective_lr/Conv_0'] is None


def test_rotation_of_a_zero_kernel_group_is_nan():
  zero = {'Conv_0': {'kernel': jnp.zeros((3, 3, 1, 2))}}
  one = {'Conv_0': {'kernel': jnp.ones((3, 3, 1, 2))}}
  assert math.isnan(equilibrium.angular_update(zero, one))
  assert math.isnan(equilibrium.angular_update(one, zero))
  rotation = equilibrium.Equilibrium(
      equilibrium.Filter(0.0, 1.0, 0.9), lambda step: 0.01,
      {'Conv_0': {'kernel': True}})
  assert math.isnan(rotation.group_shrink(0, zero, None)['Conv_0'])
  measures = rotation.measures(0, zero, zero, None)
  assert math.isnan(measures['angular_update/Conv_0'])
  assert math.isnan(measures['shrink/Conv_0'])


def test_a_sweep_row_reads_null_timings_as_nan(tmp_path):
  cell = sweep.Cell('c', {}, {'method': 'x'})
  folder = tmp_path / 'cells' / 'c'
  folder.mkdir(parents=True)
  epochs = [{'epoch': 1, 'epoch_seconds': 0.0, 'images_per_second': None,
             'val_accuracy': None}]
  (folder / 'metrics.jsonl').write_text(
      ''.join(json.dumps(r) + '\n' for r in epochs))
  (folder / 'summary.json').write_text(json.dumps({'final': epochs[-1]}))
  row = sweep.row(str(tmp_path), cell, ('val_accuracy',))
  assert row['status'] == 'done'
  assert math.isnan(row['val_accuracy']) and math.isnan(
      row['images_per_second'])
