"""The pmapped training step, in process, on synthetic data."""

import functools

import chex
import jax
import numpy as np

from configs import cifar
from l2jax import models
from l2jax import optim
from l2jax import regularization
from l2jax import train


def test_train_step_compiles_once():
  config = cifar.get_config()
  tx, _ = optim.make_optimizer(config, steps_per_epoch=10)
  model = models.create_model('seed_cnn_narrow', 10)
  state = train.create_train_state(jax.random.key(0), model, (8, 8, 3), tx)
  step = chex.assert_max_traces(train.train_step, n=1)
  p_step = jax.pmap(
      functools.partial(step, mean=np.zeros(3, np.float32),
                        std=np.ones(3, np.float32), augment_images=True,
                        l2_loss_weight=0.0,
                        mask_fn=regularization.decay_mask('kernels')),
      axis_name=train.AXIS, donate_argnums=(0,))
  state = train.replicate(state)
  rng = train.replicate(jax.random.key(1))
  n = jax.local_device_count()
  images = np.zeros((n, 4, 8, 8, 3), np.uint8)
  labels = np.zeros((n, 4), np.int32)
  for _ in range(3):
    state, metrics = p_step(state, images, labels, rng)
  assert int(state.step[0]) == 3
  chex.assert_tree_all_finite(metrics)
