"""l2jax.cpu.layers and l2jax.cpu.winograd against XLA's own layers: values
and gradients, ties included.

Every expected value comes from the reference (nn.max_pool, nn.Conv with
lax.conv_general_dilated, a float64 convolution in NumPy, SeedCNN with
models.FLAX), never from l2jax.cpu.
"""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2jax import models
from l2jax.cpu import layers
from l2jax.cpu import winograd

# Routes as on an AVX2 CPU (Winograd's from 16 channels), on any CPU.
pytestmark = pytest.mark.usefixtures('winograd_from_16')

# (batch, height, width, channels): odd batches, MNIST-sized, odd sides.
POOL_SHAPES = [(5, 28, 28, 1), (3, 32, 32, 3), (1, 7, 9, 4), (2, 16, 16, 64)]
# (nn.Conv arguments, input shape): first inputs smaller than the kernel,
# which layers.conv_general_dilated computes as a product with the patch
# matrix; then convolutions it leaves to lax.
PATCH_CONVS = [
    (dict(features=32, kernel_size=(3, 3)), (3, 2, 2, 64)),  # VGG's last maps.
    (dict(features=8, kernel_size=(3, 3)), (5, 1, 1, 16)),
    (dict(features=4, kernel_size=(3, 3)), (2, 2, 7, 5)),  # One side only.
    (dict(features=4, kernel_size=(5, 5)), (2, 3, 3, 3)),
    (dict(features=4, kernel_size=(3, 3), padding=((2, 0), (1, 1))),
     (2, 2, 2, 3)),
]
# 3×3, stride 1, padding 1, H and W multiples of 4, 16 or more channels in
# and out (`WINOGRAD_MIN_CHANNELS`, set to 16 for every test here):
# winograd.winograd_conv.
WINOGRAD_CONVS = [
    (dict(features=32, kernel_size=(3, 3)), (2, 8, 12, 32)),
    (dict(features=16, kernel_size=(3, 3)), (2, 8, 8, 16)),
    (dict(features=48, kernel_size=(3, 3), padding=((1, 1), (1, 1))),
     (1, 4, 4, 64)),
]
LAX_CONVS = [
    (dict(features=8, kernel_size=(3, 3)), (3, 16, 16, 64)),
    (dict(features=32, kernel_size=(3, 3)), (2, 16, 16, 8)),
    (dict(features=32, kernel_size=(3, 3)), (2, 6, 8, 32)),
    (dict(features=32, kernel_size=(3, 3), padding='VALID'), (2, 8, 8, 32)),
    (dict(features=6, kernel_size=(3, 3), strides=2), (2, 2, 2, 4)),
    (dict(features=6, kernel_size=(3, 3), kernel_dilation=2), (2, 2, 2, 4)),
    (dict(features=6, kernel_size=(3, 3), feature_group_count=2), (2, 2, 2, 4)),
    (dict(features=6, kernel_size=(5, 5), padding='VALID'), (2, 12, 12, 4)),
]


def normal(seed, shape):
  # NumPy's generator: jax.random compiles anew for each shape (seconds).
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape),
                     jnp.float32)


def random_params(module, x, seed):
  """Parameters of module's shapes, scaled by 1/√fan-in, drawn by NumPy."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)['params']
  leaves, tree = jax.tree_util.tree_flatten(shapes)
  return tree.unflatten([
      normal(seed + i, leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
      for i, leaf in enumerate(leaves)])


def reference_pool(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def pool_inputs(shape, kind):
  rng = np.random.default_rng(sum(shape))
  if kind == 'random':
    x = rng.normal(size=shape)
  elif kind == 'integers':  # Two or more maxima in most windows.
    x = rng.integers(-1, 2, size=shape)
  elif kind == 'constant_windows':  # Every window holds one repeated value.
    n, h, w, c = shape
    x = np.repeat(np.repeat(rng.normal(size=(n, h // 2 + 1, w // 2 + 1, c)),
                            2, axis=1), 2, axis=2)[:, :h, :w]
  else:  # All zeros, as after a ReLU of negative inputs.
    x = np.zeros(shape)
  return jnp.asarray(x, jnp.float32)


def value_and_vjp(f, *args, jit):
  """f(*args) and its VJP at a fixed random cotangent, jitted or op by op."""
  y = jax.eval_shape(f, *args)
  g = normal(1, y.shape).astype(y.dtype)

  def both(*args):
    y, vjp = jax.vjp(f, *args)
    return y, vjp(g)

  return (jax.jit(both) if jit else both)(*args)


# Op by op (each op compiled apart) on the two smallest cases only.
@pytest.mark.parametrize('shape, kind, jit', [
    (shape, kind, True) for shape in POOL_SHAPES
    for kind in ('random', 'integers', 'constant_windows', 'zeros')
] + [((1, 7, 9, 4), 'integers', False), ((1, 7, 9, 4), 'random', False)])
def test_max_pool_value_and_gradient_equal_nn_max_pool(shape, kind, jit):
  x = pool_inputs(shape, kind)
  expected = value_and_vjp(reference_pool, x, jit=jit)
  # Maxima and the routing of the gradient to one element are exact.
  chex.assert_trees_all_equal(
      value_and_vjp(layers.max_pool_2x2, x, jit=jit), expected)


@pytest.mark.parametrize('pool', [reference_pool, layers.max_pool_2x2])
def test_max_pool_gradient_goes_to_the_first_maximum_in_row_major_order(pool):
  x = jnp.array([[1., 3.], [3., 3.]]).reshape(1, 2, 2, 1)
  dx = jax.grad(lambda x: pool(x).sum())(x)
  np.testing.assert_array_equal(dx.reshape(2, 2), [[0., 1.], [0., 0.]])


@pytest.mark.parametrize('dtype', ['float32', 'float64'])
@pytest.mark.parametrize('jit', [True, False])
def test_relu_value_and_gradient_equal_jax_nn_relu(dtype, jit):
  """Exactly, zeros included (their gradient is 0, as jax.nn.relu's)."""
  with jax.enable_x64(dtype == 'float64'):
    x = jnp.asarray(np.random.default_rng(3).integers(-2, 3, (4, 5, 6, 3))
                    * 0.5, dtype)
    assert jnp.any(x == 0)
    chex.assert_trees_all_equal(value_and_vjp(layers.relu, x, jit=jit),
                                value_and_vjp(jax.nn.relu, x, jit=jit))


def assert_close(actual, expected, tolerance=1e-5):
  """Float tolerance scaled by each array's magnitude."""
  chex.assert_trees_all_equal_structs(actual, expected)
  for a, e in zip(jax.tree_util.tree_leaves(actual),
                  jax.tree_util.tree_leaves(expected)):
    chex.assert_trees_all_close(a, e, rtol=tolerance,
                                atol=tolerance * float(jnp.max(jnp.abs(e))))


@pytest.mark.parametrize('kwargs, shape, jit, tolerance', [
    (kwargs, shape, True, 1e-5) for kwargs, shape in PATCH_CONVS + LAX_CONVS
] + [(kwargs, shape, True, 3e-5) for kwargs, shape in WINOGRAD_CONVS] + [
    (*PATCH_CONVS[1], False, 1e-5), (*PATCH_CONVS[4], False, 1e-5),
    (*WINOGRAD_CONVS[1], False, 3e-5)])
def test_conv_value_and_gradients_equal_nn_conv(kwargs, shape, jit,
                                                tolerance):
  """Output and the gradients for kernel, bias and input, as nn.Conv's;
  Winograd's rounding (6e-6 of the largest value, from float64) allowed."""
  reference = nn.Conv(**kwargs)
  fast = nn.Conv(conv_general_dilated=layers.conv_general_dilated, **kwargs)
  x = normal(2, shape)
  params = random_params(reference, x, 3)
  apply = lambda module: (lambda p, x: module.apply({'params': p}, x))
  expected = value_and_vjp(apply(reference), params, x, jit=jit)
  assert_close(value_and_vjp(apply(fast), params, x, jit=jit), expected,
               tolerance)


@pytest.mark.parametrize('kwargs, shape, route', [
    (kwargs, shape, route)
    for route, convs in (('patches', PATCH_CONVS), ('winograd', WINOGRAD_CONVS),
                         ('lax', LAX_CONVS))
    for kwargs, shape in convs])
def test_conv_routes(kwargs, shape, route):
  fast = nn.Conv(conv_general_dilated=layers.conv_general_dilated, **kwargs)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  params = jax.eval_shape(fast.init, jax.random.key(0), x)
  jaxpr = str(jax.make_jaxpr(fast.apply)(params, x))
  assert ('conv_general_dilated' in jaxpr) == (route == 'lax'), jaxpr
  assert ('winograd_conv' in jaxpr) == (route == 'winograd'), jaxpr


@pytest.mark.parametrize('dtype, padding, route', [
    (jnp.float32, 'SAME', 'winograd'), (jnp.float64, 'SAME', 'winograd'),
    (jnp.float32, ((1, 1), (1, 1)), 'winograd'),
    (jnp.bfloat16, 'SAME', 'lax'), (jnp.float16, 'SAME', 'lax'),
    (jnp.float32, ((1, 1), (0, 2)), 'lax')])
def test_conv_routes_only_float32_and_float64_with_padding_1(dtype, padding,
                                                             route):
  x = jax.ShapeDtypeStruct((2, 8, 8, 32), dtype)
  kernel = jax.ShapeDtypeStruct((3, 3, 32, 32), dtype)
  with jax.enable_x64(dtype == jnp.float64):
    jaxpr = str(jax.make_jaxpr(
        lambda x, k: layers.conv_general_dilated(
            x, k, (1, 1), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    )(x, kernel))
  assert ('winograd_conv' in jaxpr) == (route == 'winograd'), jaxpr


@pytest.mark.parametrize('channels, route', [(32, 'lax'), (64, 'winograd')])
def test_from_64_channels_only_where_the_threshold_says(monkeypatch, channels,
                                                        route):
  """An AVX-512 CPU's threshold: 32 channels in and out go to lax."""
  monkeypatch.setattr(layers, 'WINOGRAD_MIN_CHANNELS', 64)
  x = jax.ShapeDtypeStruct((2, 8, 8, channels), jnp.float32)
  kernel = jax.ShapeDtypeStruct((3, 3, channels, channels), jnp.float32)
  jaxpr = str(jax.make_jaxpr(
      lambda x, k: layers.conv_general_dilated(
          x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  )(x, kernel))
  assert ('winograd_conv' in jaxpr) == (route == 'winograd'), jaxpr


def test_the_threshold_follows_the_cpus_avx512(monkeypatch, tmp_path):
  """`_has_avx512` reads the flags line of /proc/cpuinfo."""
  real_open = open
  for flags, want in (('fpu avx2 avx512f avx512dq', True),
                      ('fpu avx2 fma', False)):
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text(f'processor\t: 0\nflags\t\t: {flags}\n')
    monkeypatch.setattr('builtins.open', lambda path, *a, **k: real_open(
        cpuinfo if path == '/proc/cpuinfo' else path, *a, **k))
    assert layers._has_avx512() is want  # pylint: disable=protected-access


def float64_conv_and_gradients(x, kernel, g):
  """A 3×3 'SAME' convolution and its input and kernel gradients at g, as
  sums over the nine kernel taps in NumPy's float64."""
  x, kernel, g = (np.asarray(a, np.float64) for a in (x, kernel, g))
  _, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y, dxp, dkernel = 0., np.zeros_like(xp), np.zeros_like(kernel)
  for i in range(3):
    for j in range(3):
      window = (slice(None), slice(i, i + h), slice(j, j + w))
      y = y + np.einsum('nhwc,cd->nhwd', xp[window], kernel[i, j])
      dkernel[i, j] = np.einsum('nhwc,nhwd->cd', xp[window], g)
      dxp[window] += np.einsum('nhwd,cd->nhwc', g, kernel[i, j])
  return y, (dxp[:, 1:-1, 1:-1], dkernel)


@pytest.mark.parametrize('shape, features, dtype, tolerance', [
    ((4, 16, 16, 64), 128, jnp.float32, 2e-5),  # The seed network's conv2.
    ((2, 32, 32, 16), 16, jnp.float32, 2e-5),  # ResNet-20's first stage.
    ((3, 8, 12, 32), 48, jnp.float32, 2e-5),
    ((2, 4, 4, 40), 33, jnp.float32, 2e-5),
    ((1, 4, 8, 1), 2, jnp.float32, 2e-5),
    ((3, 8, 12, 32), 48, jnp.float64, 1e-12),
])
def test_winograd_conv_equals_a_float64_convolution(shape, features, dtype,
                                                    tolerance):
  """Output, input and kernel gradients, within `tolerance` of each one's
  largest value. In float32 Winograd's errors were up to 6e-6 of it (its
  transforms add and scale by up to 8 and 1/24), XLA's direct convolution's
  3e-7 to 5e-7."""
  x = normal(4, shape)
  kernel = normal(5, (3, 3, shape[-1], features)) / np.sqrt(9 * shape[-1])
  g = normal(6, (*shape[:3], features))
  expected = float64_conv_and_gradients(x, kernel, g)
  with jax.enable_x64(dtype == jnp.float64):
    x, kernel, g = (a.astype(dtype) for a in (x, kernel, g))
    y, vjp = jax.vjp(jax.jit(winograd.winograd_conv), x, kernel)
    actual = y, vjp(g)
  chex.assert_trees_all_equal_shapes(actual, expected)
  for a, e in zip(jax.tree_util.tree_leaves(actual),
                  jax.tree_util.tree_leaves(expected)):
    assert a.dtype == dtype
    np.testing.assert_allclose(a, e, rtol=0,
                               atol=tolerance * np.abs(e).max())


@pytest.mark.parametrize('kwargs, shape', [
    (dict(features=8, kernel_size=(3, 3)), (3, 16, 16, 4)),
    (dict(features=5, kernel_size=(3, 3), strides=2), (2, 7, 9, 3)),
    (dict(features=4, kernel_size=(1,)), (6, 11, 2)),  # 1-D: (N, W, C).
])
def test_biased_conv_equals_nn_conv(kwargs, shape):
  """Same parameter tree and initial values; output and gradients for
  kernel, bias and input as nn.Conv(use_bias=True)'s."""

  class Wrapped(nn.Module):  # BiasedConv as the models use it: in a parent.
    @nn.compact
    def __call__(self, x):
      return layers.BiasedConv(nn.Conv(use_bias=False, **kwargs))(x)

  class Reference(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Conv(**kwargs)(x)

  x = normal(4, shape)
  chex.assert_trees_all_equal(Wrapped().init(jax.random.key(1), x),
                              Reference().init(jax.random.key(1), x))
  params = random_params(Reference(), x, 5)
  apply = lambda module: (lambda p, x: module.apply({'params': p}, x))
  assert_close(value_and_vjp(apply(Wrapped()), params, x, jit=True),
               value_and_vjp(apply(Reference()), params, x, jit=True))


@pytest.mark.parametrize('shape', [(4, 6, 5, 3), (7, 2), (32, 4, 4, 16),
                                   (33, 4, 4, 16), (40, 3, 2, 5)])
def test_sum_to_channels_equals_a_float64_sum(shape):
  """Both ways: a product with ones (batch ≤ 32), two sums (batch > 32)."""
  x = normal(11, shape)
  expected = np.asarray(x, np.float64).reshape(-1, shape[-1]).sum(0)
  for f in (layers.sum_to_channels, jax.jit(layers.sum_to_channels)):
    np.testing.assert_allclose(f(x), expected, rtol=0,
                               atol=1e-6 * np.sqrt(x.size))


class FlaxNormReLU(nn.Module):
  """The reference: nn.BatchNorm, then + residual, then jax.nn.relu."""
  relu: bool
  kwargs: dict

  @nn.compact
  def __call__(self, x, residual=None):
    y = nn.BatchNorm(name='BatchNorm_0', **self.kwargs)(x)
    y = y if residual is None else y + residual
    return jax.nn.relu(y) if self.relu else y


class Wrapped(nn.Module):
  """layers.BatchNorm in a parent, as the models use it."""
  relu: bool
  kwargs: dict

  @nn.compact
  def __call__(self, x, residual=None):
    return layers.BatchNorm(relu=self.relu, **self.kwargs)(x, residual)


@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('shape, relu, residual, dtype', [
    ((4, 6, 5, 3), False, False, 'float32'), ((7, 2), False, False, 'float32'),
    ((4, 6, 5, 3), True, True, 'float32'), ((4, 6, 5, 3), False, False,
                                            'float64'),
    ((4, 6, 5, 3), True, False, 'float64'), ((4, 6, 5, 3), True, True,
                                             'float64'),
    ((40, 4, 4, 3), True, True, 'float64')])  # Two-step sums (N > 32).
def test_batch_norm_equals_flax_batch_norm(train, shape, relu, residual,
                                           dtype):
  """Variables at init; output, gradients (x, residual, scale and bias) and
  updated statistics, with the statistics averaged over a named axis
  (vmap's, as pmap's in training). In float64 to 1e-12: the formula of
  `batch_norm_train`'s gradient against autodiff through flax's layer."""
  with jax.enable_x64(dtype == 'float64'):
    kwargs = dict(use_running_average=not train, momentum=0.9,
                  axis_name='devices' if train else None)
    cast = lambda tree: jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)
    x = cast(2 * normal(6, (3, *shape)) + 1)  # 3 members of the named axis.
    r = cast(normal(11, (3, *shape))) if residual else None
    c = shape[-1]
    variables = cast({
        'params': {'BatchNorm_0': {'scale': 1 + normal(7, (c,)),
                                   'bias': normal(8, (c,))}},
        'batch_stats': {'BatchNorm_0': {'mean': normal(9, (c,)),
                                        'var': jnp.exp(normal(10, (c,)))}}})

    def run(module):
      def loss(params, x, r):
        y, updated = module.apply(
            {'params': params, 'batch_stats': variables['batch_stats']}, x,
            r, mutable=['batch_stats'])
        return jnp.sum(jnp.sin(y)), (y, updated)
      grad = jax.grad(loss, (0, 1, 2), has_aux=True)
      return jax.jit(jax.vmap(grad, (None, 0, 0), axis_name='devices'))(
          variables['params'], x, r)

    fast, reference = Wrapped(relu, kwargs), FlaxNormReLU(relu, kwargs)
    chex.assert_trees_all_equal(fast.init(jax.random.key(0), x[0]),
                                reference.init(jax.random.key(0), x[0]))
    actual, expected = run(fast), run(reference)
    chex.assert_trees_all_equal_shapes_and_dtypes(actual, expected)
    if relu:  # Some outputs are cut, some pass.
      assert 0 < float(jnp.mean(expected[1][0] == 0)) < 1
    assert_close(actual, expected, 1e-12 if dtype == 'float64' else 1e-5)


@pytest.mark.parametrize('train', [True, False])
def test_batch_norm_output_dtype_is_flax_batch_norms(train):
  """bfloat16 in, float32 out (statistics and parameters are float32)."""
  x = jnp.ones((2, 4, 4, 3), jnp.bfloat16)

  def output(module):
    variables = module.init(jax.random.key(0), x)
    return jax.eval_shape(
        lambda v: module.apply(v, x, mutable=['batch_stats']), variables)

  kwargs = dict(use_running_average=not train)
  chex.assert_trees_all_equal_shapes_and_dtypes(
      output(layers.BatchNorm(**kwargs)), output(nn.BatchNorm(**kwargs)))


@pytest.mark.parametrize('shape, batch, integers', [
    ((32, 32, 3), 3, False), ((28, 28, 1), 5, True)])
def test_seed_cnn_cpu_tuned_layers_equal_flax_layers(shape, batch, integers):
  """Same parameters, logits and gradients. 32×32 inputs take the second
  convolution (16×16, 64 -> 128) through Winograd. With 28×28 integer inputs
  and conv kernels both convolutions are lax's and exact, and about 1 in 8
  of the first pooling windows has a tied maximum."""
  reference = models.SeedCNN(num_classes=10, layers=models.FLAX)
  fast = models.SeedCNN(num_classes=10, layers=models.CPU_TUNED)
  x = normal(7, (batch, *shape))
  params = random_params(reference, x, 8)
  chex.assert_trees_all_equal_shapes_and_dtypes(
      jax.eval_shape(fast.init, jax.random.key(0), x)['params'], params)
  if integers:
    x = jnp.round(2 * x)
    params = {k: ({'kernel': jnp.round(4 * v['kernel']), 'bias': v['bias']}
                  if k.startswith('Conv') else v) for k, v in params.items()}
  labels = jnp.arange(batch) % 10

  def loss(model):
    def f(p):
      logits = model.apply({'params': p}, x)
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(batch), labels])
    return jax.jit(jax.value_and_grad(f))

  assert_close(loss(fast)(params), loss(reference)(params))


def test_fusion_barrier_is_the_identity_on_every_float32_and_float64():
  for dtype, bits in ((np.float32, np.uint32), (np.float64, np.uint64)):
    info = np.finfo(dtype)
    x = np.array([0.0, -0.0, 1.0, -3.5, info.tiny, info.smallest_subnormal,
                  -info.smallest_subnormal, info.max, -info.max, info.eps,
                  np.inf, -np.inf, np.nan, 1 / 3], dtype)
    x = np.concatenate([x, (np.random.default_rng(0).standard_normal(1000)
                            * 10.0 ** np.arange(-20, 20, 0.04)).astype(dtype)])
    with jax.enable_x64(dtype == np.float64):
      y = np.asarray(jax.jit(layers.fusion_barrier)(jnp.asarray(x)))
      g = np.asarray(jax.grad(lambda v: jnp.sum(
          layers.fusion_barrier(v) * jnp.arange(v.size, dtype=v.dtype)))(
              jnp.asarray(x[np.isfinite(x)])))
    np.testing.assert_array_equal(y.view(bits), x.view(bits))  # Bitwise.
    np.testing.assert_array_equal(g, np.arange(g.size, dtype=dtype))


def test_dense_with_the_barred_product_equals_nn_dense_in_float64():
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 2, 2, 8)))
    reference = nn.Dense(5, param_dtype=jnp.float64)
    barred = nn.Dense(5, param_dtype=jnp.float64,
                      dot_general=layers.dot_general)
    params = reference.init(jax.random.key(0), x)
    assert jax.tree.structure(barred.init(jax.random.key(0), x)) == (
        jax.tree.structure(params))
    y, (g_params, g_x) = value_and_vjp(
        lambda p, x: barred.apply(p, x), params, x, jit=True)
    y_ref, (g_params_ref, g_x_ref) = value_and_vjp(
        lambda p, x: reference.apply(p, x), params, x, jit=True)
    chex.assert_trees_all_close((y, g_params, g_x),
                                (y_ref, g_params_ref, g_x_ref), rtol=1e-13)


def ynn_fusion_ops(compiled_text: str) -> list:
  """The set of ops in each YNNPACK fusion of an optimized HLO module."""
  bodies = {m.group(1): m.group(2) for m in re.finditer(
      r'^(%\S+) \([^\n]*\{\n(.*?)\n\}', compiled_text, re.S | re.M)}
  ops = []
  for line in compiled_text.splitlines():
    if '"__ynn_fusion"' in line:
      body = bodies[re.search(r'calls=(%[^,\s]+)', line).group(1)]
      ops.append({re.search(r'= \S+ (\S+?)\(', l).group(1)
                  for l in body.splitlines() if ' = ' in l} - {'parameter'})
  assert ops, 'no YNNPACK fusion: is l2jax.cpu.configure() applied?'
  return ops


def test_ynnpack_runs_the_dense_products_alone():
  """In the narrow seed network's jitted gradient (batch 8), compiled with
  XLA's optimizations on as users run it, each YNNPACK fusion holds a
  product and reshapes (bitcasts), no bias sum or broadcast; with nn.Dense
  it takes them in."""
  x = normal(0, (8, 32, 32, 3))

  def fusions(layers_):
    model = models.SeedCNNNarrow(num_classes=10, layers=layers_)
    params = model.init(jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2)))
    optimizations_off = jax.config.read('jax_disable_most_optimizations')
    jax.config.update('jax_disable_most_optimizations', False)
    try:
      return ynn_fusion_ops(grad.lower(params).compile().as_text())
    finally:
      jax.config.update('jax_disable_most_optimizations', optimizations_off)

  assert all(ops <= {'dot', 'bitcast'} for ops in fusions(models.CPU_TUNED))
  unbarred = fusions(models.CPU_TUNED._replace(dense=nn.Dense))
  assert any(ops & {'add', 'broadcast'} for ops in unbarred), unbarred
