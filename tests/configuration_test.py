"""`configuration.validate`: each new value's one-line error."""

import ml_collections
import pytest

from configs import cifar
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
    (dict(l1__weight=-1.0), 'config.l1.weight=-1.0 must lie in [0, None]'),
    (dict(l1__mask=''), 'config.l1.mask is empty'),
    (dict(l2__normalized=1), 'config.l2.normalized=1 must be True or False'),
    (dict(l2__schedule='cosine'), 'config.l2.schedule=\'cosine\' is not one of'),
    (dict(l2__schedule='constant'),
     'config.l2.schedule=constant needs config.l2.mode decoupled'),
    (dict(l2sp__weight=0.1), 'config.l2sp.weight=0.1 needs config.l2sp.init_from'),
    (dict(l2sp__mode='coupled'), "config.l2sp.mode='coupled' is not one of"),
    (dict(l2sp__mask=''), 'config.l2sp.mask is empty'),
    (dict(l2sp__init_from='/nonexistent/run'),
     'config.l2sp.init_from=/nonexistent/run does not exist'),
    (dict(activity_l2__weight='big'), "config.activity_l2.weight='big' must be"),
    (dict(noise_sigmas=(0.1, 2.0)), 'config.noise_sigmas=(0.1, 2.0) must be'),
    (dict(noise_sigmas=0.1), 'config.noise_sigmas=0.1 must be'),
])
def test_bad_new_values_are_one_line_errors(overrides, fragment):
  with pytest.raises(ConfigError) as error:
    configuration.validate(config_with(**overrides), 1)
  assert fragment in str(error.value)
  assert '\n' not in str(error.value)
