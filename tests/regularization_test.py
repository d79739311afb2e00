"""The mask and the L2 measures against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import small_params
from l2jax import models
from l2jax import regularization


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


def test_bad_masks_are_value_errors(params):
  with pytest.raises(ValueError, match='not a valid regular expression'):
    regularization.decay_mask('Conv[')
  with pytest.raises(ValueError, match='matches no parameter'):
    regularization.resolve_mask('BatchNorm', params)


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


KERNELS = regularization.decay_mask('kernels')


def test_l1_value_and_gradient_match_numpy():
  params = small_params()
  kernels = [np.asarray(params[k]['kernel'], np.float64)
             for k in ('Dense_0', 'Dense_1')]
  value = float(regularization.l1_penalty(params, KERNELS(params), 0.2))
  assert value == pytest.approx(0.2 * sum(np.abs(k).sum() for k in kernels),
                                rel=1e-6)
  grads = jax.grad(regularization.l1_penalty)(params, KERNELS(params), 0.2)
  np.testing.assert_allclose(grads['Dense_1']['kernel'],
                             0.2 * np.sign(kernels[1]), rtol=1e-6)
  assert not np.any(grads['Dense_1']['bias'])


def test_sparsity_counts_small_masked_weights_only():
  params = {'Dense_0': {'kernel': jnp.array([[0.0, 5e-4], [-2e-3, 1.0]]),
                        'bias': jnp.zeros(3)}}  # Unmasked zeros do not count.
  assert float(regularization.sparsity(params, KERNELS(params))) == 0.5


def test_l2sp_at_the_anchor_is_zero_with_zero_gradient():
  params = small_params()
  mask = KERNELS(params)
  assert float(regularization.l2sp_penalty(params, params, mask, 0.3)) == 0.0
  grads = jax.grad(regularization.l2sp_penalty)(params, params, mask, 0.3)
  for leaf in jax.tree_util.tree_leaves(grads):
    np.testing.assert_array_equal(leaf, 0.0)


def test_l2sp_value_and_gradient_skip_parameters_not_anchored():
  params, w0 = small_params(), jax.tree_util.tree_map(lambda x: x * 0.5 + 0.1,
                                                    small_params())
  anchored = {'Dense_0': {'kernel': True, 'bias': True},
              'Dense_1': {'kernel': False, 'bias': False}}  # A fresh head.
  mask = regularization.anchored_mask(
      KERNELS(params), regularization.Anchor(w0, anchored))
  diff = np.asarray(params['Dense_0']['kernel'], np.float64) - np.asarray(
      w0['Dense_0']['kernel'], np.float64)
  assert float(regularization.l2sp_penalty(params, w0, mask, 0.3)) == (
      pytest.approx(0.5 * 0.3 * np.sum(diff ** 2), rel=1e-6))
  grads = jax.grad(regularization.l2sp_penalty)(params, w0, mask, 0.3)
  np.testing.assert_allclose(grads['Dense_0']['kernel'], 0.3 * diff, rtol=1e-5)
  for name in ('kernel', 'bias'):
    assert not np.any(grads['Dense_1'][name])
  assert not np.any(grads['Dense_0']['bias'])


def test_activity_penalty_reaches_the_penultimate_features_only():
  """λ_a mean ‖relu(Dense_0(x))‖², and no gradient into the head."""
  from l2jax import train  # pylint: disable=g-import-not-at-top
  model = models.create_model('seed_cnn_narrow', 10)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  params = model.init(jax.random.key(0), x)['params']
  penalties = regularization.Penalties(activity_weight=0.01)

  def activity(p):
    return train.apply_with_penalties(model.apply, p, {}, x, penalties,
                                      jax.random.key(0))[1]['activity_penalty']

  # Dense_0's output before the ReLU, captured by flax, not by our sow.
  _, state = model.apply({'params': params}, x, capture_intermediates=True)
  h = np.maximum(np.asarray(state['intermediates']['Dense_0']['__call__'][0],
                            np.float64), 0)
  assert float(activity(params)) == pytest.approx(
      0.01 * np.mean(np.sum(h ** 2, axis=1)), rel=1e-5)
  grads = jax.grad(activity)(params)
  for name in ('kernel', 'bias'):
    np.testing.assert_array_equal(grads['Dense_1'][name], 0.0)
  assert np.abs(grads['Dense_0']['kernel']).max() > 0
  assert np.abs(grads['Conv_0']['kernel']).max() > 0


def test_kernel_norms_per_top_level_module_match_numpy():
  rng = np.random.default_rng(3)
  params = {
      'Conv_0': {'kernel': rng.normal(size=(3, 3, 2, 4)), 'bias': np.ones(4)},
      'Block_0': {'Conv_0': {'kernel': rng.normal(size=(3, 3, 4, 4))},
                  'Conv_1': {'kernel': rng.normal(size=(3, 3, 4, 4))},
                  'BatchNorm_0': {'scale': np.ones(4), 'bias': np.zeros(4)}},
      'BatchNorm_0': {'scale': np.ones(4), 'bias': np.zeros(4)}}
  norms = regularization.kernel_norms(params)
  assert set(norms) == {'Conv_0', 'Block_0'}
  np.testing.assert_allclose(norms['Conv_0'],
                             np.sqrt((params['Conv_0']['kernel'] ** 2).sum()))
  block = params['Block_0']
  np.testing.assert_allclose(norms['Block_0'], np.sqrt(
      (block['Conv_0']['kernel'] ** 2).sum()
      + (block['Conv_1']['kernel'] ** 2).sum()))
