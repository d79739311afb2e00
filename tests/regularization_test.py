"""The mask and the L2 measures against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2jax import models
from l2jax import regularization
from l2jax.errors import ConfigError


@pytest.fixture(scope='module')
def params():
  model = models.create_model('seed_cnn', 10)
  return model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']


def selected(mask) -> set:
  return {regularization.param_path(path)
          for path, chosen in jax.tree_util.tree_flatten_with_path(mask)[0]
          if chosen}


def test_kernels_mask_selects_every_kernel_and_no_bias(params):
  assert selected(regularization.decay_mask('kernels')(params)) == {
      'Conv_0/kernel', 'Conv_1/kernel', 'Dense_0/kernel', 'Dense_1/kernel'}


def test_all_and_regex_masks(params):
  assert len(selected(regularization.decay_mask('all')(params))) == 8
  assert selected(regularization.decay_mask(r'^Dense_\d/kernel$')(params)) == {
      'Dense_0/kernel', 'Dense_1/kernel'}


def test_bad_masks_are_config_errors(params):
  with pytest.raises(ConfigError, match='not a valid regular expression'):
    regularization.decay_mask('Conv[')
  mask_fn = regularization.decay_mask('BatchNorm')
  with pytest.raises(ConfigError, match='matches no parameter'):
    regularization.check_mask_selects_something(mask_fn, params, 'BatchNorm')


def test_penalty_and_norm_match_numpy(params):
  mask = regularization.decay_mask('kernels')(params)
  kernels = [np.asarray(params[layer]['kernel'], np.float64)
             for layer in ('Conv_0', 'Conv_1', 'Dense_0', 'Dense_1')]
  total = sum(float(np.sum(k ** 2)) for k in kernels)
  assert float(regularization.l2_penalty(params, mask, 5e-4)) == pytest.approx(
      0.5 * 5e-4 * total, rel=1e-5)
  assert float(regularization.weight_norm(params, mask)) == pytest.approx(
      np.sqrt(total), rel=1e-5)


def test_penalty_gradient_is_weight_times_lambda(params):
  mask = regularization.decay_mask('kernels')(params)
  grads = jax.grad(regularization.l2_penalty)(params, mask, 0.3)
  np.testing.assert_allclose(grads['Conv_0']['kernel'],
                             0.3 * params['Conv_0']['kernel'], rtol=1e-6)
  assert not np.any(grads['Conv_0']['bias'])
