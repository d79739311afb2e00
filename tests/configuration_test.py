"""configuration.validate: the shipped configs pass; wrong values and
combinations are refused with a message naming them. (The CLI test drives
more such values through `python -m l2jax.main`.)"""

import pytest

from configs import cifar
from configs import fashion_mnist
from l2jax import configuration
from l2jax.errors import ConfigError


@pytest.mark.parametrize('get_config', [cifar.get_config,
                                        fashion_mnist.get_config])
@pytest.mark.parametrize('model, mask', [
    ('seed_cnn', 'kernels'), ('seed_cnn_narrow', 'all'),
    ('seed_cnn', r'^Dense_1/kernel$')])
def test_shipped_configs_and_masks_pass(get_config, model, mask):
  config = get_config()
  config.model, config.l2.mask = model, mask
  configuration.validate(config, num_devices=1)


@pytest.mark.parametrize('changes, fragments', [
    (dict(learning_rate=-0.1), ['config.learning_rate=-0.1 must lie in (0, inf)']),
    (dict(momentum=1.0), ['config.momentum=1.0 must lie in [0, 1)']),
    ({'l2.mode': 'twice'}, ["config.l2.mode='twice'", 'decoupled_lr']),
    ({'l2.weight': -1e-3}, ['config.l2.weight=-0.001 must lie in [0, inf)']),
    ({'l2.weight': float('nan')}, ['config.l2.weight=nan must be a finite']),
    ({'adam.b2': 1.0}, ['config.adam.b2=1.0 must lie in [0, 1)']),
    (dict(eval_every_epochs=0), ['config.eval_every_epochs=0 must lie in [1, inf)']),
    (dict(checkpoints_to_keep=0), ['config.checkpoints_to_keep=0']),
    (dict(step_boundaries=(0.5, 1.5)), ['config.step_boundaries=(0.5, 1.5)', '(0, 1)']),
    (dict(schedule='step', warmup_epochs=10.0, num_epochs=20,
          step_boundaries=(0.25, 0.75)),
     ['config.step_boundaries=(0.25, 0.75)', 'within the warmup']),
    (dict(optimizer='adam', nesterov=True),
     ['config.nesterov=True has no effect', 'config.optimizer=adam']),
    (dict(dataset='folder:/data/x', data_dir='/tfds'),
     ["config.data_dir='/tfds' has no effect", 'folder:/data/x']),
    (dict(model='resnet'), ["config.model='resnet' is not one of seed_cnn"]),
])
def test_wrong_values_are_named(changes, fragments):
  config = cifar.get_config()
  config.update_from_flattened_dict(changes)
  with pytest.raises(ConfigError) as error:
    configuration.validate(config, num_devices=1)
  for fragment in fragments:
    assert fragment in str(error.value)
