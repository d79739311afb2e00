"""Checks a config once, before any work, with one-line messages."""

import math
import numbers

import jax
import jax.numpy as jnp

from l2jax import data
from l2jax import models
from l2jax import optim
from l2jax import regularization
from l2jax.errors import ConfigError


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _number(config, name: str, low=None, high=None, integer=False,
            low_open=False, high_open=False) -> None:
  value = config
  for part in name.split('.'):
    value = value[part]
  kind = numbers.Integral if integer else numbers.Real
  _require(isinstance(value, kind) and not isinstance(value, bool)
           and math.isfinite(value),
           f'config.{name}={value!r} must be '
           f'{"an integer" if integer else "a finite number"}')
  upper = 'inf)' if high is None else f'{high}' + (')' if high_open else ']')
  interval = ('(' if low_open else '[') + f'{low}, {upper}'
  _require(low is None or (value > low if low_open else value >= low),
           f'config.{name}={value!r} must lie in {interval}')
  _require(high is None or (value < high if high_open else value <= high),
           f'config.{name}={value!r} must lie in {interval}')


def _choice(value, name: str, choices) -> None:
  _require(value in choices,
           f'config.{name}={value!r} is not one of {", ".join(choices)}')


def validate(config, num_devices: int) -> None:
  """Raises ConfigError naming the first value that cannot be run."""
  _require(isinstance(config.dataset, str) and config.dataset,
           'config.dataset is empty; name a TFDS data set or folder:PATH')
  for name in ('data_dir', 'manual_dir'):
    _require(not (config.dataset.startswith(data.FOLDER_PREFIX) and config[name]),
             f'config.{name}={config[name]!r} has no effect with '
             f'config.dataset={config.dataset}; it is for TFDS data sets')
  _choice(config.model, 'model', tuple(models.MODELS))
  _choice(config.optimizer, 'optimizer', optim.OPTIMIZERS)
  _choice(config.schedule, 'schedule', optim.SCHEDULES)
  _choice(config.l2.mode, 'l2.mode', optim.L2_MODES)
  _number(config, 'l2.weight', low=0)
  _require(isinstance(config.l2.mask, str) and config.l2.mask,
           'config.l2.mask is empty; use kernels, all or a regex')
  _check_mask(config.l2.mask, config.model)
  _require(config.l2.mode != 'none' or config.l2.weight == 0,
           f'config.l2.weight={config.l2.weight} has no effect with '
           'config.l2.mode=none; set the weight to 0 or choose a mode')
  _number(config, 'learning_rate', low=0, low_open=True)
  _number(config, 'momentum', low=0, high=1, high_open=True)
  _require(not config.nesterov or config.momentum > 0,
           'config.nesterov=True needs config.momentum > 0')
  _require(not config.nesterov or config.optimizer == 'sgd',
           f'config.nesterov=True has no effect with '
           f'config.optimizer={config.optimizer}; it is for sgd')
  _number(config, 'adam.b1', low=0, high=1, high_open=True)
  _number(config, 'adam.b2', low=0, high=1, high_open=True)
  _number(config, 'adam.eps', low=0)
  _number(config, 'num_epochs', low=1, integer=True)
  _number(config, 'eval_every_epochs', low=1, integer=True)
  _number(config, 'warmup_epochs', low=0)
  _require(config.warmup_epochs < config.num_epochs,
           f'config.warmup_epochs={config.warmup_epochs} must be shorter than '
           f'config.num_epochs={config.num_epochs}')
  _require(all(isinstance(b, numbers.Real) and 0 < b < 1
               for b in config.step_boundaries),
           f'config.step_boundaries={tuple(config.step_boundaries)} must be '
           'fractions of training in (0, 1)')
  _require(config.schedule != 'step' or all(
      b * config.num_epochs > config.warmup_epochs
      for b in config.step_boundaries),
           f'config.step_boundaries={tuple(config.step_boundaries)} has a '
           'boundary within the warmup (config.warmup_epochs='
           f'{config.warmup_epochs} of config.num_epochs={config.num_epochs}); '
           'put every boundary after it')
  _number(config, 'step_decay', low=0)
  _number(config, 'validation_fraction', low=0, high=1, high_open=True)
  _number(config, 'max_train_examples', low=0, integer=True)
  _number(config, 'seed', low=0, integer=True)
  _number(config, 'checkpoints_to_keep', low=1, integer=True)
  for name in ('batch_size', 'eval_batch_size'):
    _number(config, name, low=1, integer=True)
    _require(config[name] % num_devices == 0,
             f'config.{name}={config[name]} does not divide by the '
             f'{num_devices} devices; use a multiple of {num_devices}')


def _check_mask(spec: str, model_name: str) -> None:
  """A mask that is not a regex, or selects no parameter of the model."""
  mask_fn = regularization.decay_mask(spec)
  model = models.create_model(model_name, num_classes=10)
  # Parameter paths depend on neither the image size nor the class count.
  variables = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  regularization.check_mask_selects_something(mask_fn, variables['params'],
                                               spec)
