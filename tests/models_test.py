"""The seed network's shapes and parameter count, counted by hand."""

import functools

import chex
import jax
import jax.numpy as jnp
import pytest

from configs import cifar
from l2jax import models


def count(params) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize('shape, classes', [((32, 32, 3), 10),
                                            ((28, 28, 1), 10),
                                            ((32, 32, 3), 100)])
def test_seed_cnn_shapes_and_parameter_count(shape, classes):
  model = models.create_model('seed_cnn', classes)
  x = jnp.zeros((5, *shape))
  params = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  height, width, channels = shape
  flat = (height // 4) * (width // 4) * 128  # Two 2x2 pools, 128 channels.
  expected = ((3 * 3 * channels * 64 + 64) + (3 * 3 * 64 * 128 + 128)
              + (flat * 1024 + 1024) + (1024 * classes + classes))
  assert count(params) == expected
  chex.assert_shape(params['Conv_0']['kernel'], (3, 3, channels, 64))
  chex.assert_shape(params['Conv_1']['kernel'], (3, 3, 64, 128))
  chex.assert_shape(params['Dense_0']['kernel'], (flat, 1024))
  chex.assert_shape(params['Dense_1']['kernel'], (1024, classes))
  chex.assert_shape(jax.eval_shape(model.apply, {'params': params}, x),
                    (5, classes))


def test_narrow_variant_has_a_quarter_of_the_widths():
  params = shapes('seed_cnn_narrow')['params']
  assert count(params) == ((3 * 3 * 3 * 16 + 16) + (3 * 3 * 16 * 32 + 32)
                           + (8 * 8 * 32 * 256 + 256) + (256 * 10 + 10))


def test_cifar_seed_cnn_has_8_475_530_parameters():
  # 1,792 + 73,856 + 8,389,632 + 10,250, as PyTorch reports for the seed.
  assert count(shapes('seed_cnn')['params']) == 8_475_530


def init(name, **options):
  model = models.create_model(name, 10, **options)
  return model, jax.jit(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))()


def shapes(name, **options):
  """The variables' shapes and dtypes, without running the model."""
  model = models.create_model(name, 10, **options)
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))


def conv_count(params) -> int:
  return sum(count(v) for k, v in params.items() if k.startswith('Conv'))


@pytest.mark.parametrize('name, conv_params', [
    # Keras' VGG16(include_top=False) and VGG11's (configuration A)
    # published convolution parameter counts.
    ('vgg16', 14_714_688), ('vgg11', 9_220_480)])
def test_vgg_has_the_published_convolution_parameters(name, conv_params):
  variables = shapes(name)
  params = variables['params']
  assert conv_count(params) == conv_params
  assert count(params) == conv_params + 512 * 10 + 10
  assert 'batch_stats' not in variables


def test_vgg_with_batch_norm_drops_conv_biases_for_norm_scales_and_shifts():
  variables = shapes('vgg16', batch_norm=True)
  widths = [w for w in models.VGG_LAYERS[16] if w != 'M']
  biases = sum(widths)
  # Each BatchNorm: scale and bias (params), mean and var (batch_stats).
  assert count(variables['params']) == 14_714_688 - biases + 2 * biases + 5130
  assert count(variables['batch_stats']) == 2 * biases


def test_resnet20_has_0_27_million_parameters():
  # He et al. (2016), Table 6: ResNet-20, 0.27M; 269,722 with the
  # parameter-free shortcut, as the reference reimplementations count.
  variables = shapes('resnet20')
  assert count(variables['params']) == 269_722
  convs = 16 * 3 * 9 + sum(9 * c_in * c_out for c_in, c_out in (
      [(16, 16)] * 6 + [(16, 32)] + [(32, 32)] * 5 + [(32, 64)]
      + [(64, 64)] * 5))
  norms = 2 * (16 + 16 * 6 + 32 * 6 + 64 * 6)
  assert count(variables['params']) == convs + norms + 64 * 10 + 10


@pytest.mark.parametrize('name', ['vgg11', 'resnet20'])
def test_dropout_needs_a_key_in_training_and_none_in_eval(name):
  # Outside pmap: batch statistics over this batch alone.
  model, variables = init(name, dropout=0.5, axis_name=None)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  evaluated = model.apply(variables, x, train=False)
  chex.assert_shape(evaluated, (4, 10))
  trained = [model.apply(variables, x, train=True, mutable=['batch_stats'],
                         rngs={'dropout': jax.random.key(k)})[0]
             for k in (2, 3)]
  assert not jnp.allclose(trained[0], trained[1])


@pytest.mark.parametrize('name, batch_norm', [
    ('seed_cnn', False), ('seed_cnn_narrow', True), ('seed_cnn_narrow', False),
    ('vgg11', False), ('resnet20', True)])
def test_cpu_layers_give_the_gradients_of_xla_layers(name, batch_norm):
  """In float64, so that rounding cannot hide a wrong formula: float32's
  rounding, amplified by 4-image batch norms and by Winograd's transforms,
  reached 1e-2 of a kernel gradient's largest value (ResNet-20's), where
  float64's differences stay below 1e-13. The seed network, VGG-11 and
  ResNet-20 take their 3×3 convolutions of 32 or more channels through
  `layers.winograd_conv`."""
  grads = {}
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3), jnp.float64)
    model = {impl: models.create_model(name, 10, impl=impl, axis_name=None,
                                       batch_norm=batch_norm)
             for impl in ('cpu', 'xla')}
    init = {impl: functools.partial(m.init, train=False)
            for impl, m in model.items()}
    variables = init['xla'](jax.random.key(0), x)
    # One initialization for both (the cpu impl's would take seconds, its
    # Winograd convolutions compiled one by one): the trees are the same.
    chex.assert_trees_all_equal_shapes_and_dtypes(
        jax.eval_shape(init['cpu'], jax.random.key(0), x), variables)
    variables = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64),
                                       variables)
    for impl in ('cpu', 'xla'):

      def loss(params, apply=model[impl].apply):
        logits, _ = apply({**variables, 'params': params}, x, train=True,
                          mutable=['batch_stats'])
        return jnp.sum(logits ** 2)

      grads[impl] = jax.jit(jax.grad(loss))(variables['params'])
    chex.assert_trees_all_equal_structs(grads['cpu'], grads['xla'])
    for cpu, xla in zip(jax.tree_util.tree_leaves(grads['cpu']),
                        jax.tree_util.tree_leaves(grads['xla'])):
      chex.assert_type(cpu, jnp.float64)
      chex.assert_trees_all_close(cpu, xla, rtol=1e-10,
                                  atol=1e-10 * float(jnp.max(jnp.abs(xla))))


@pytest.mark.parametrize('name', sorted(models.MODELS))
@pytest.mark.parametrize('impl', ['cpu', 'xla'])
def test_from_config_builds_the_configured_impl(name, impl):
  config = cifar.get_config()
  config.model, config.impl = name, impl
  assert models.from_config(config, 10).impl == impl
