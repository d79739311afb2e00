"""Loading w₀ from an l2jax checkpoint; a fresh head when the classes differ."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cifar
from l2jax import checkpoints
from l2jax import models
from l2jax import pretrained
from l2jax import train
from l2jax.errors import ConfigError


def init(name, classes, seed):
  model = models.create_model(name, classes)
  return model.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 3)))['params']


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A run's workdir with checkpoints of steps 1 and 2 (4 classes)."""
  path = tmp_path_factory.mktemp('source')
  checkpointer = checkpoints.Checkpointer(str(path), 3)
  for step in (1, 2):
    state = train.TrainState.create(
        apply_fn=None, params=init('seed_cnn_narrow', 4, seed=step),
        tx=optax.sgd(0.1, momentum=0.9), batch_stats={})
    checkpointer.save(step, state, cifar.get_config(), {})
  checkpointer.close()
  return path


def assert_tree_equal(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_workdir_checkpoints_folder_and_one_checkpoint_all_load(workdir):
  latest = init('seed_cnn_narrow', 4, seed=2)
  assert_tree_equal(pretrained.load_params(str(workdir)), latest)
  assert_tree_equal(pretrained.load_params(str(workdir / 'checkpoints')), latest)
  assert_tree_equal(pretrained.load_params(str(workdir / 'checkpoints' / '1')),
                    init('seed_cnn_narrow', 4, seed=1))


def test_other_class_count_gets_a_fresh_head_left_out_of_the_anchor(workdir):
  loaded = pretrained.load_params(str(workdir))
  fresh = init('seed_cnn_narrow', 10, seed=7)
  params, anchor = pretrained.start_from(fresh, loaded, 'src')
  for layer in ('Conv_0', 'Conv_1', 'Dense_0'):
    assert_tree_equal(params[layer], loaded[layer])
    assert anchor.anchored[layer] == {'kernel': True, 'bias': True}
  assert_tree_equal(params['Dense_1'], fresh['Dense_1'])
  assert anchor.anchored['Dense_1'] == {'kernel': False, 'bias': False}
  assert_tree_equal(anchor.params, params)


def test_same_class_count_keeps_and_anchors_the_head(workdir):
  loaded = pretrained.load_params(str(workdir))
  params, anchor = pretrained.start_from(init('seed_cnn_narrow', 4, seed=7),
                                         loaded, 'src')
  assert_tree_equal(params, loaded)
  assert all(jax.tree_util.tree_leaves(anchor.anchored))


def test_another_model_or_no_checkpoint_is_a_one_line_error(workdir, tmp_path):
  loaded = pretrained.load_params(str(workdir))
  other = models.SeedCNN(4, conv_features=(8, 32), hidden=256).init(
      jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
  with pytest.raises(ConfigError, match=r'Conv_0/bias is \(16,\) there but '
                     r'\(8,\) in this model'):
    pretrained.start_from(other, loaded, 'src')
  with pytest.raises(ConfigError, match=f'no l2jax checkpoint in {tmp_path}'):
    pretrained.load_params(str(tmp_path))
