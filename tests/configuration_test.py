"""configuration.validate: the shipped configs pass; wrong values and
combinations are refused with one-line messages naming them. (The CLI test
drives more such values through `python -m l2jax.main`.)"""

import ml_collections
import pytest

from configs import cifar
from configs import fashion_mnist
from l2jax import configuration
from l2jax.errors import ConfigError


def config_with(**overrides):
  """The cifar config with `a__b=v` meaning config.a.b = v, of any type (as a
  config file of one's own may set it)."""
  config = ml_collections.ConfigDict(cifar.get_config().to_dict(),
                                     type_safe=False)
  for key, value in overrides.items():
    node = config
    *parents, name = key.split('__')
    for parent in parents:
      node = node[parent]
    node[name] = value
  return config


def test_the_default_config_and_every_new_regularizer_together_pass(tmp_path):
  configuration.validate(config_with(
      l1__weight=1e-5, activity_l2__weight=1e-3, l2__normalized=True,
      l2__mode='decoupled', l2__schedule='constant', l2sp__weight=0.01,
      l2sp__mode='decoupled', l2sp__init_from=str(tmp_path),
      noise_sigmas=()), 1)


@pytest.mark.parametrize('overrides, fragment', [
    (dict(l1__weight=-1.0), 'config.l1.weight=-1.0 must lie in [0, inf)'),
    (dict(l1__mask=''), 'config.l1.mask is empty'),
    (dict(l2__normalized=1), 'config.l2.normalized=1 must be True or False'),
    (dict(l2__schedule='cosine'), 'config.l2.schedule=\'cosine\' is not one of'),
    (dict(l2__schedule='constant'),
     'config.l2.schedule=constant needs config.l2.mode decoupled'),
    (dict(l2sp__weight=0.1), 'config.l2sp.weight=0.1 needs config.l2sp.init_from'),
    (dict(l2sp__mode='coupled'), "config.l2sp.mode='coupled' is not one of"),
    (dict(l2sp__mask=''), 'config.l2sp.mask is empty'),
    (dict(l2sp__init_from='/nonexistent/run'),
     "config.l2sp.init_from='/nonexistent/run' does not exist"),
    (dict(activity_l2__weight='big'), "config.activity_l2.weight='big' must be"),
    (dict(noise_sigmas=(0.1, 2.0)), 'config.noise_sigmas=(0.1, 2.0) must be'),
    (dict(noise_sigmas=0.1), 'config.noise_sigmas=0.1 must be'),
])
def test_bad_new_values_are_one_line_errors(overrides, fragment):
  with pytest.raises(ConfigError) as error:
    configuration.validate(config_with(**overrides), 1)
  assert fragment in str(error.value)
  assert '\n' not in str(error.value)


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
    (dict(log_every_steps=0), ['config.log_every_steps=0 must lie in [1, inf)']),
    (dict(rotation_every_steps=-1),
     ['config.rotation_every_steps=-1 must lie in [0, inf)']),
    (dict(step_boundaries=(0.5, 1.5)), ['config.step_boundaries=(0.5, 1.5)', '(0, 1)']),
    (dict(schedule='step', warmup_epochs=10.0, num_epochs=20,
          step_boundaries=(0.25, 0.75)),
     ['config.step_boundaries=(0.25, 0.75)', 'within the warmup']),
    (dict(optimizer='adam', nesterov=True),
     ['config.nesterov=True has no effect', 'config.optimizer=adam']),
    (dict(lr_floor=1.5), ['config.lr_floor=1.5 must lie in [0, 1]']),
    (dict(schedule='step', lr_floor=0.1),
     ['config.lr_floor=0.1 has no effect', 'config.schedule=step']),
    (dict(dataset='folder:/data/x', data_dir='/tfds'),
     ["config.data_dir='/tfds' has no effect", 'folder:/data/x']),
    (dict(model='resnet'), ["config.model='resnet' is not one of allconv_bn, "
                             'seed_cnn']),
    (dict(layers='gpu'),
     ["config.layers='gpu' is not one of auto, cpu_tuned, flax"]),
    (dict(learning_rate=float('inf')),
     ['config.learning_rate=inf must be a finite number']),
    (dict(optimizer='lamb'), ["config.optimizer='lamb' is not one of sgd, adam"]),
    (dict(validation_fraction=1.0),
     ['config.validation_fraction=1.0 must lie in [0, 1)']),
    ({'l2.mask': '('}, ["config.l2.mask='('", 'not a valid regular expression']),
    ({'l2.mode': 'none'},
     ['config.l2.weight=0.0005 has no effect', 'config.l2.mode=none']),
    (dict(warmup_epochs=3.0, num_epochs=3),
     ['config.warmup_epochs=3.0', 'config.num_epochs=3']),
    (dict(dataset='folder:/data/x', manual_dir='/tmp'),
     ["config.manual_dir='/tmp' has no effect"]),
])
def test_wrong_values_are_named(changes, fragments):
  config = cifar.get_config()
  config.update_from_flattened_dict(changes)
  with pytest.raises(ConfigError) as error:
    configuration.validate(config, num_devices=1)
  for fragment in fragments:
    assert fragment in str(error.value)
  assert '\n' not in str(error.value)


def test_masks_are_resolved_once_on_the_run_parameters():
  """A mask in use that selects nothing is refused, naming the paths; one not
  in use (L1 at λ₁ = 0) is resolved all the same, for the sparsity measure."""
  params = {'Conv_0': {'kernel': 1.0, 'bias': 0.0}}
  config = cifar.get_config()
  penalties = configuration.make_penalties(config, params, 10)
  assert penalties.l2_mask == {'Conv_0': {'kernel': True, 'bias': False}}
  config.l1.mask = 'BatchNorm'
  assert not any(configuration.make_penalties(
      config, params, 10).l1_mask['Conv_0'].values())
  config.l1.weight = 1e-4
  with pytest.raises(ConfigError) as error:
    configuration.make_penalties(config, params, 10)
  assert str(error.value) == (
      "config.l1.mask='BatchNorm' matches no parameter; paths are: "
      'Conv_0/bias, Conv_0/kernel')
