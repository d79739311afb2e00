"""The models' shapes, parameter counts and parameter paths, counted by
hand, under both layer sets."""

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
  evaluated = jax.jit(functools.partial(model.apply, train=False))(variables,
                                                                   x)
  chex.assert_shape(evaluated, (4, 10))
  train = jax.jit(lambda key: model.apply(
      variables, x, train=True, mutable=['batch_stats'],
      rngs={'dropout': key})[0])
  trained = [train(jax.random.key(k)) for k in (2, 3)]
  assert not jnp.allclose(trained[0], trained[1])


# VGG is built from the seed network's conv block (and its convolutions on
# inputs smaller than the kernel are layers_test's), so it is not here.
@pytest.mark.parametrize('name, batch_norm', [
    ('seed_cnn', False), ('seed_cnn_narrow', True), ('seed_cnn_narrow', False),
    ('resnet20', True), ('allconv_bn', True)])
@pytest.mark.usefixtures('winograd_from_16')
def test_cpu_tuned_layers_give_the_gradients_of_flax_layers(name,
                                                            batch_norm):
  """In float64, so that rounding cannot hide a wrong formula: float32's
  rounding, amplified by 4-image batch norms and by Winograd's transforms,
  reached 1e-2 of a kernel gradient's largest value (ResNet-20's), where
  float64's differences stay below 1e-13. The seed network and ResNet-20
  take their 3×3 convolutions of 16 or more channels through
  `l2jax.cpu.winograd.winograd_conv` (`winograd_from_16`: on any CPU)."""
  grads = {}
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3), jnp.float64)
    model = {layers.name: models.create_model(name, 10, layers=layers,
                                              axis_name=None,
                                              batch_norm=batch_norm)
             for layers in (models.CPU_TUNED, models.FLAX)}
    init = {key: functools.partial(m.init, train=False)
            for key, m in model.items()}
    variables = jax.jit(init['flax'])(jax.random.key(0), x)
    # One initialization for both (CPU_TUNED's would compile its Winograd
    # convolutions one by one): the trees are the same.
    chex.assert_trees_all_equal_shapes_and_dtypes(
        jax.eval_shape(init['cpu_tuned'], jax.random.key(0), x), variables)
    variables = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64),
                                       variables)
    for key in ('cpu_tuned', 'flax'):

      def loss(params, apply=model[key].apply):
        logits, _ = apply({**variables, 'params': params}, x, train=True,
                          mutable=['batch_stats'])
        return jnp.sum(logits ** 2)

      grads[key] = jax.jit(jax.grad(loss))(variables['params'])
    chex.assert_trees_all_equal_structs(grads['cpu_tuned'], grads['flax'])
    for tuned, reference in zip(jax.tree_util.tree_leaves(grads['cpu_tuned']),
                                jax.tree_util.tree_leaves(grads['flax'])):
      chex.assert_type(tuned, jnp.float64)
      chex.assert_trees_all_close(
          tuned, reference, rtol=1e-10,
          atol=1e-10 * float(jnp.max(jnp.abs(reference))))


@pytest.mark.parametrize('name', sorted(models.MODELS))
@pytest.mark.parametrize('layers, layer_set', [
    ('cpu_tuned', models.CPU_TUNED), ('flax', models.FLAX)])
def test_from_config_builds_the_configured_layers(name, layers, layer_set):
  config = cifar.get_config()
  config.model, config.layers = name, layers
  assert models.from_config(config, 10).layers == layer_set


def test_auto_layers_are_cpu_tuned_on_the_cpu_only():
  assert models.layer_set('auto') is (
      models.CPU_TUNED if jax.default_backend() == 'cpu' else models.FLAX)
  assert models.layer_set('flax') is models.FLAX
  with pytest.raises(ValueError, match='layers'):
    models.layer_set('gpu')


def conv_layer(prefix: str, i: int, c_in: int, c_out: int, batch_norm: bool):
  """{path: shape} of a 3x3 Conv_i [and BatchNorm_i] under `prefix`."""
  if not batch_norm:
    return {f'params/{prefix}Conv_{i}/kernel': (3, 3, c_in, c_out),
            f'params/{prefix}Conv_{i}/bias': (c_out,)}
  return {f'params/{prefix}Conv_{i}/kernel': (3, 3, c_in, c_out),
          **{f'{kind}/{prefix}BatchNorm_{i}/{leaf}': (c_out,)
             for kind, leaf in (('params', 'scale'), ('params', 'bias'),
                                ('batch_stats', 'mean'),
                                ('batch_stats', 'var'))}}


def dense_layers(*sizes):
  return {f'params/Dense_{i}/{leaf}': shape
          for i, (c_in, c_out) in enumerate(zip(sizes, sizes[1:]))
          for leaf, shape in (('kernel', (c_in, c_out)), ('bias', (c_out,)))}


def expected_variables(name: str, batch_norm: bool) -> dict:
  """{path: shape} of every variable on 32x32x3 inputs and 10 classes, as
  masks and checkpoints name them: the layers in order, no block levels."""
  if name == 'resnet20':  # Always with batch norm.
    variables = {**conv_layer('', 0, 3, 16, True), **dense_layers(64, 10)}
    blocks = [(16, 16)] * 3 + [(16, 32)] + [(32, 32)] * 2 + [(32, 64)] + [
        (64, 64)] * 2
    for b, (c_in, c_out) in enumerate(blocks):
      variables.update(conv_layer(f'ResidualBlock_{b}/', 0, c_in, c_out, True))
      variables.update(conv_layer(f'ResidualBlock_{b}/', 1, c_out, c_out, True))
    return variables
  if name == 'allconv_bn':  # Always with batch norm; global pooling.
    widths, batch_norm = (16, 32, 64), True
    variables = dense_layers(64, 10)
  elif name.startswith('vgg'):
    widths = [w for w in models.VGG_LAYERS[int(name[3:])] if w != 'M']
    variables = dense_layers(512, 10)
  else:  # Two pools leave 8x8 maps.
    widths, hidden = {'seed_cnn': ((64, 128), 1024),
                      'seed_cnn_narrow': ((16, 32), 256)}[name]
    variables = dense_layers(8 * 8 * widths[-1], hidden, 10)
  for i, (c_in, c_out) in enumerate(zip((3, *widths), widths)):
    variables.update(conv_layer('', i, c_in, c_out, batch_norm))
  return variables


@pytest.mark.parametrize('name', sorted(models.MODELS))
@pytest.mark.parametrize('batch_norm', [False, True])
@pytest.mark.parametrize('layers', [models.FLAX, models.CPU_TUNED],
                         ids=lambda s: s.name)
def test_parameter_paths_and_shapes_are_the_layers_own(name, batch_norm,
                                                       layers):
  """Masks, checkpoints and pretrained starts name parameters by these
  paths (Conv_0/kernel, ResidualBlock_4/Conv_1/kernel): every layer set
  must give the same tree."""
  variables = shapes(name, batch_norm=batch_norm, layers=layers)
  actual = {'/'.join(k.key for k in path): leaf.shape
            for path, leaf in jax.tree_util.tree_flatten_with_path(
                variables)[0]}
  assert actual == expected_variables(name, batch_norm)
