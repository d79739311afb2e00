"""The seed network's shapes and parameter count, counted by hand."""

import chex
import jax
import jax.numpy as jnp
import pytest

from l2jax import models


def count(params) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize('shape, classes', [((32, 32, 3), 10),
                                            ((28, 28, 1), 10),
                                            ((32, 32, 3), 100)])
def test_seed_cnn_shapes_and_parameter_count(shape, classes):
  model = models.create_model('seed_cnn', classes)
  x = jnp.zeros((5, *shape))
  params = model.init(jax.random.key(0), x)['params']
  height, width, channels = shape
  flat = (height // 4) * (width // 4) * 128  # Two 2x2 pools, 128 channels.
  expected = ((3 * 3 * channels * 64 + 64) + (3 * 3 * 64 * 128 + 128)
              + (flat * 1024 + 1024) + (1024 * classes + classes))
  assert count(params) == expected
  chex.assert_shape(params['Conv_0']['kernel'], (3, 3, channels, 64))
  chex.assert_shape(params['Conv_1']['kernel'], (3, 3, 64, 128))
  chex.assert_shape(params['Dense_0']['kernel'], (flat, 1024))
  chex.assert_shape(params['Dense_1']['kernel'], (1024, classes))
  chex.assert_shape(model.apply({'params': params}, x), (5, classes))


def test_narrow_variant_has_a_quarter_of_the_widths():
  model = models.create_model('seed_cnn_narrow', 10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  assert count(params) == ((3 * 3 * 3 * 16 + 16) + (3 * 3 * 16 * 32 + 32)
                           + (8 * 8 * 32 * 256 + 256) + (256 * 10 + 10))


def test_cifar_seed_cnn_has_8_475_530_parameters():
  # 1,792 + 73,856 + 8,389,632 + 10,250, as PyTorch reports for the seed.
  model = models.create_model('seed_cnn', 10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  assert count(params) == 8_475_530
