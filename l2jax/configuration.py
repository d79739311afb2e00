"""Checks a config once, before any work, with one-line messages."""

import math
import numbers
import os
from typing import Optional

import ml_collections

from l2jax import data
from l2jax import models
from l2jax import optim
from l2jax import regularization
from l2jax.errors import ConfigError


# Every key a config must have, by group ('' for the top level): those
# configs/cifar.py sets.
KEYS = {
    '': ('dataset', 'data_dir', 'manual_dir', 'validation_fraction',
         'folds', 'fold', 'max_train_examples', 'augment', 'model', 'batch_norm', 'dropout',
         'layers', 'optimizer', 'learning_rate', 'momentum', 'nesterov',
         'schedule', 'lr_floor', 'warmup_epochs', 'step_boundaries',
         'step_decay',
         'batch_size', 'eval_batch_size', 'num_epochs', 'eval_every_epochs',
         'noise_sigmas', 'seed', 'checkpoint_every_steps',
         'checkpoints_to_keep', 'log_every_steps', 'rotation_every_steps'),
    'adam': ('b1', 'b2', 'eps'),
    'l2': ('mode', 'weight', 'mask', 'normalized', 'schedule'),
    'l1': ('weight', 'mask'),
    'l2sp': ('weight', 'mode', 'mask', 'init_from'),
    'activity_l2': ('weight',),
}
# Keys added after runs were recorded, with the value that reproduces those
# runs: a recorded config without one (a checkpoint's, a sweep cell's) ran
# with this value, so resuming or reusing it stays allowed.
ADDED = {'lr_floor': 0.0, 'rotation_every_steps': 1}
# The step counter is int32 (flax's TrainState, optax's schedules).
MAX_STEPS = 2**31 - 1


def completed(recorded: dict) -> dict:
  """A recorded config (a plain dict) with each key of `ADDED` it lacks."""
  return {**{k: v for k, v in ADDED.items() if k not in recorded}, **recorded}


def _show(value) -> str:
  """`value` as the message shows it, on one line (a ConfigDict's own repr
  takes several)."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return repr(value)


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _value(config, name: str):
  """config.<name>, `name` dotted."""
  value = config
  for part in name.split('.'):
    value = value[part]
  return value


def _number(config, name: str, low=None, high=None, integer=False,
            low_open=False, high_open=False) -> None:
  value = _value(config, name)
  kind = numbers.Integral if integer else numbers.Real
  _require(isinstance(value, kind) and not isinstance(value, bool)
           and math.isfinite(value),
           f'config.{name}={_show(value)} must be '
           f'{"an integer" if integer else "a finite number"}')
  upper = 'inf)' if high is None else f'{high}' + (')' if high_open else ']')
  interval = ('(' if low_open else '[') + f'{low}, {upper}'
  _require(low is None or (value > low if low_open else value >= low),
           f'config.{name}={_show(value)} must lie in {interval}')
  _require(high is None or (value < high if high_open else value <= high),
           f'config.{name}={_show(value)} must lie in {interval}')


def _choice(value, name: str, choices) -> None:
  _require(value in choices,
           f'config.{name}={_show(value)} is not one of {", ".join(choices)}')


def _require_keys(config) -> None:
  """Every key of KEYS is there, each group a group of keys."""
  for group, names in KEYS.items():
    values = config[group] if group else config
    _require(isinstance(values, ml_collections.ConfigDict),
             f'config.{group}={_show(values)} must be a group of keys '
             f'({", ".join(names)}), as in configs/cifar.py')
    for name in names:
      _require(name in values,
               f'config.{group + "." if group else ""}{name} is missing; set '
               'every key that configs/cifar.py sets')


def _boolean(config, name: str) -> None:
  value = _value(config, name)
  _require(isinstance(value, bool),
           f'config.{name}={_show(value)} must be True or False')


def validate(config, num_devices: int) -> None:
  """Raises ConfigError naming the first value that cannot be run."""
  _require_keys(config)
  _data(config)
  _model_and_optimizer(config)
  _regularizers(config)
  _check_mask_syntax(config)
  _schedule(config)
  _run(config, num_devices)


def _data(config) -> None:
  _require(isinstance(config.dataset, str) and config.dataset,
           f'config.dataset={_show(config.dataset)} must name a TFDS data set '
           'or folder:PATH')
  for name in ('data_dir', 'manual_dir'):
    _require(isinstance(config[name], str),
             f'config.{name}={_show(config[name])} must be a path, or empty')
    _require(not (config.dataset.startswith(data.FOLDER_PREFIX) and config[name]),
             f'config.{name}={_show(config[name])} has no effect with '
             f'config.dataset={_show(config.dataset)}; it is for TFDS data '
             'sets')
  _boolean(config, 'augment')
  _number(config, 'validation_fraction', low=0, high=1, high_open=True)
  _number(config, 'folds', low=0, integer=True)
  _require(config.folds != 1,
           'config.folds=1 is one fold; use 0 (a hold-out of '
           'config.validation_fraction) or 2 or more folds')
  _number(config, 'fold', low=0, high=max(config.folds - 1, 0), integer=True)
  _number(config, 'max_train_examples', low=0, integer=True)
  _require(isinstance(config.noise_sigmas, (tuple, list)) and all(
      isinstance(s, numbers.Real) and not isinstance(s, bool) and 0 <= s <= 1
      for s in config.noise_sigmas),
           f'config.noise_sigmas={_show(config.noise_sigmas)} must be a tuple '
           'of noise levels in [0, 1] (fractions of the pixel range), or ()')


def _model_and_optimizer(config) -> None:
  for name in ('batch_norm', 'nesterov'):
    _boolean(config, name)
  _number(config, 'dropout', low=0, high=1, high_open=True)
  _choice(config.model, 'model', tuple(models.MODELS))
  _choice(config.layers, 'layers', models.LAYER_CHOICES)
  _choice(config.optimizer, 'optimizer', optim.OPTIMIZERS)
  _choice(config.l2.mode, 'l2.mode', optim.L2_MODES)
  _number(config, 'l2.weight', low=0)
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


def _schedule(config) -> None:
  _choice(config.schedule, 'schedule', optim.SCHEDULES)
  _number(config, 'num_epochs', low=1, integer=True)
  _number(config, 'eval_every_epochs', low=1, integer=True)
  _number(config, 'warmup_epochs', low=0)
  _number(config, 'lr_floor', low=0, high=1)
  _require(not config.lr_floor or config.schedule == 'cosine',
           f'config.lr_floor={config.lr_floor} has no effect with '
           f'config.schedule={config.schedule}; it is for cosine')
  _require(config.warmup_epochs < config.num_epochs,
           f'config.warmup_epochs={config.warmup_epochs} must be shorter than '
           f'config.num_epochs={config.num_epochs}')
  _require(isinstance(config.step_boundaries, (tuple, list)) and all(
      isinstance(b, numbers.Real) and not isinstance(b, bool) and 0 < b < 1
      for b in config.step_boundaries),
           f'config.step_boundaries={_show(config.step_boundaries)} must be '
           'fractions of training in (0, 1)')
  _require(config.schedule != 'step' or all(
      b * config.num_epochs > config.warmup_epochs
      for b in config.step_boundaries),
           f'config.step_boundaries={_show(tuple(config.step_boundaries))} '
           'has a boundary within the warmup (config.warmup_epochs='
           f'{config.warmup_epochs} of config.num_epochs={config.num_epochs}); '
           'put every boundary after it')
  _number(config, 'step_decay', low=0)


def _run(config, num_devices: int) -> None:
  # jax.random.key takes a C long.
  _number(config, 'seed', low=0, high=2**63 - 1, integer=True)
  _number(config, 'checkpoints_to_keep', low=1, integer=True)
  _number(config, 'checkpoint_every_steps', low=0, integer=True)
  _number(config, 'log_every_steps', low=1, integer=True)
  _number(config, 'rotation_every_steps', low=0, integer=True)
  for name in ('batch_size', 'eval_batch_size'):
    _number(config, name, low=1, integer=True)
    _require(config[name] % num_devices == 0,
             f'config.{name}={config[name]} does not divide by the '
             f'{num_devices} devices; use a multiple of {num_devices}')


def _regularizers(config) -> None:
  """L2's normalization and schedule, L1, L2-SP and activity L2."""
  _boolean(config, 'l2.normalized')
  _choice(config.l2.schedule, 'l2.schedule', optim.L2_SCHEDULES)
  _require(config.l2.schedule != 'constant'
           or config.l2.mode in optim.DECOUPLED_MODES,
           f'config.l2.schedule=constant needs config.l2.mode decoupled or '
           f'decoupled_lr, not {config.l2.mode}: in that mode the decay is in '
           'the gradient, which α_t scales')
  _number(config, 'l1.weight', low=0)
  _number(config, 'l2sp.weight', low=0)
  _number(config, 'activity_l2.weight', low=0)
  _choice(config.l2sp.mode, 'l2sp.mode', optim.L2SP_MODES)
  init_from = config.l2sp.init_from
  _require(isinstance(init_from, str),
           f'config.l2sp.init_from={_show(init_from)} must be a path or empty')
  _require(not config.l2sp.weight or init_from,
           f'config.l2sp.weight={config.l2sp.weight} needs '
           'config.l2sp.init_from, the workdir or checkpoint that w₀ comes from')
  _require(not init_from or os.path.exists(os.path.expanduser(init_from)),
           f'config.l2sp.init_from={_show(init_from)} does not exist; name the '
           'workdir of an earlier run or one of its checkpoints')


MASKS = ('l2.mask', 'l1.mask', 'l2sp.mask')


def _check_mask_syntax(config) -> None:
  """Each mask is `kernels`, `all` or a valid regex; whether it selects a
  parameter is checked on the run's parameters (`make_penalties`)."""
  for name in MASKS:
    spec = config[name.split('.')[0]].mask
    _require(isinstance(spec, str) and spec,
             f'config.{name} is empty; use kernels, all or a regex')
    try:
      regularization.decay_mask(spec)
    except ValueError as e:
      raise ConfigError(f'config.{name}={e}; use kernels, all, or a regex '
                        'over paths like Conv_0/kernel') from e


def _mask(config, name: str, params, in_use: bool):
  """The mask `config.<name>` resolved on `params`; in use, it must select
  something."""
  spec = config[name.split('.')[0]].mask
  if not in_use:
    return regularization.decay_mask(spec)(params)
  try:
    return regularization.resolve_mask(spec, params)
  except ValueError as e:
    raise ConfigError(f'config.{name}={e}') from e


def make_penalties(config, params, steps_per_epoch: int,
                   anchor: Optional[regularization.Anchor] = None
                   ) -> regularization.Penalties:
  """The run's penalties, their masks resolved once on its parameters.

  λ is `optim.l2_weight` (normalized or not); in ``loss`` mode the L2 term
  is in the loss, in the other modes the optimizer applies it. ConfigError
  when a mask in use selects no parameter.
  """
  l2sp_mask = None
  if anchor is not None:
    l2sp_mask = regularization.anchored_mask(
        _mask(config, 'l2sp.mask', params, bool(config.l2sp.weight)), anchor)
  return regularization.Penalties(
      l2_weight=optim.l2_weight(config, steps_per_epoch),
      l2_in_loss=config.l2.mode == 'loss',
      l2_mask=_mask(config, 'l2.mask', params, True),
      l1_weight=config.l1.weight,
      l1_mask=_mask(config, 'l1.mask', params, bool(config.l1.weight)),
      l2sp_weight=config.l2sp.weight,
      l2sp_in_loss=config.l2sp.mode == 'loss',
      l2sp_mask=l2sp_mask,
      anchor=anchor,
      activity_weight=config.activity_l2.weight)
