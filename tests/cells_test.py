"""l2jax.cells: each cell of a stacked (vmapped) step takes the steps of its
own run, computed by train.pmap_train_step with that cell's config alone."""

from flax import jax_utils
import jax
import numpy as np
import pytest

from configs import cifar
from l2jax import cells
from l2jax import data as data_lib
from l2jax import devices
from l2jax import models
from l2jax import train
from l2jax.errors import ConfigError

# The 16→32 convolution through Winograd's custom VJP, vmapped, on any CPU.
pytestmark = pytest.mark.usefixtures('winograd_from_16')

STEPS, STEPS_PER_EPOCH = 3, 4
# (α, λ) of two cells, λ = 0 in one.
CELLS = [(0.1, 3e-2), (0.01, 0.0)]


@pytest.fixture(autouse=True)
def full_precision():
  """Float32 products at full precision (a CPU's default): a GPU's default
  TensorFloat-32 rounds at about 1e-3, which would swamp the comparison."""
  with jax.default_matmul_precision('highest'):
    yield


def configs(optimizer: str, mode: str) -> list:
  base = cifar.get_config()
  base.update(model='allconv_bn', batch_size=4, augment=False,
              optimizer=optimizer, noise_sigmas=())
  # Adam's m/(√v + ε) is rounding noise wherever the gradient is: with
  # ε = 1e-8 such a coordinate moves by up to α either way. A larger ε
  # keeps the comparison one of float rounding.
  base.adam.eps = 1e-3
  base.l2.mode = mode
  result = []
  for lr, weight in CELLS:
    config = base.copy_and_resolve_references()
    config.learning_rate, config.l2.weight = lr, weight
    result.append(config)
  return result


def tiny_data() -> data_lib.Dataset:
  # 8×8 maps: the 16→32 convolution (4×4) is Winograd's, 32→64 (2×2) lax's.
  rng = np.random.default_rng(0)
  split = data_lib.Split(rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8),
                         rng.integers(0, 10, 16, dtype=np.int32))
  return data_lib.Dataset(split, None, split, 10)


def run(step, state, dataset, config, rng):
  """STEPS steps on the first batches of epoch 1; the last metrics."""
  batches = data_lib.train_batches(dataset.train, config.batch_size,
                                   config.seed, 1)
  for _ in range(STEPS):
    images, labels = next(batches)
    state, metrics = step(state, images, labels, rng)
  return jax.device_get((state, metrics))


@pytest.mark.parametrize('optimizer, mode', [('sgd', 'coupled'),
                                             ('adam', 'decoupled'),
                                             ('sgd', 'loss')])
def test_each_stacked_cell_equals_its_own_run(optimizer, mode):
  cell_configs, dataset = configs(optimizer, mode), tiny_data()
  mean, std = dataset.channel_stats()
  model = models.from_config(cell_configs[0], dataset.num_classes)
  init_rng, train_rng = jax.random.split(jax.random.key(0))
  rng = jax_utils.replicate(train_rng)
  alone = []
  for config in cell_configs:
    state, _, penalties = train.initialize(config, model, dataset.image_shape,
                                           STEPS_PER_EPOCH, init_rng)
    step = train.pmap_train_step(config, penalties, STEPS_PER_EPOCH)
    hyper = train.hyperparameters(config, STEPS_PER_EPOCH)
    alone.append(run(lambda s, *batch, step=step, hyper=hyper:
                     step(s, *batch, hyper, (mean, std)),
                     devices.replicate(state), dataset, config, rng))
  state, _, penalties = train.initialize(
      cell_configs[0], model, dataset.image_shape, STEPS_PER_EPOCH, init_rng)
  hyper = cells.hyperparameters(cell_configs, STEPS_PER_EPOCH)
  stacked_step = cells.pmap_train_step(cell_configs[0], penalties,
                                       STEPS_PER_EPOCH)
  stacked = run(lambda s, *batch: stacked_step(s, *batch, hyper, (mean, std)),
                devices.replicate(cells.stack(state, len(CELLS))), dataset,
                cell_configs[0], rng)
  for k, (cell_state, cell_metrics) in enumerate(alone):
    expected = (cell_state.params, cell_state.batch_stats,
                cell_state.opt_state, cell_state.step, cell_metrics)
    actual = jax.tree.map(lambda x, k=k: x[:, k], (
        stacked[0].params, stacked[0].batch_stats, stacked[0].opt_state,
        stacked[0].step, stacked[1]))
    # Float rounding differs (the stacked products sum in another order;
    # Adam's division by √v̂ magnifies it: on an H200 up to 1.7e-5 of the
    # largest value).
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, e, rtol=1e-5,
                                 atol=3e-5 * np.abs(e).max(initial=1e-30))


def test_cells_may_differ_only_in_learning_rate_and_l2_weight():
  first, second = configs('sgd', 'coupled')
  second.momentum = 0.5
  with pytest.raises(ConfigError, match='differ in momentum'):
    cells.hyperparameters([first, second], STEPS_PER_EPOCH)
