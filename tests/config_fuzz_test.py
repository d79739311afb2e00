"""Any value of any config key, set in a config file or given on the command
line, makes a config that `configuration.validate` accepts or one line of
ConfigError (or of `l2jax: error:` from the flag parser): never another
exception. Property-based (hypothesis), bounded to a few seconds. Also the
flag parser's one-line errors for a missing config file or workdir and a
stray argument."""

import contextlib
import math
import sys
from unittest import mock

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import ml_collections
import pytest

from configs import cifar
from l2jax import configuration
from l2jax import main
from l2jax.errors import ConfigError


def flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


DEFAULTS = flatten(cifar.get_config().to_dict())
GROUPS = sorted({k.split('.')[0] for k in DEFAULTS if '.' in k})
KEYS = sorted(DEFAULTS) + GROUPS
# Values near the edges of what each key takes, so that the draws get past
# the first checks to the later ones and the combinations.
EDGES = [0, 1, -1, 2, 0.5, 1.0, 0.0, 1e-8, 1e308, -0.0, 2**31, 2**63, 2**64,
         math.nan, math.inf, -math.inf, True, False, None, '', 'kernels',
         'all', '(', 'a{4294967296}', 'none', 'loss', 'coupled', 'decoupled',
         'decoupled_lr', 'lr', 'constant', 'cosine', 'step', 'sgd', 'adam',
         'seed_cnn_narrow', 'auto', 'flax', 'folder:/nonexistent', 'cifar10',
         'line\nbreak', (), (0.5,), (0.25, 0.75), [0.1], (1.5,), ('a',)]
SCALARS = st.one_of(st.sampled_from(EDGES), st.none(), st.booleans(),
                    st.integers(), st.floats(), st.text(max_size=6))
VALUES = st.one_of(
    SCALARS, st.lists(SCALARS, max_size=3).map(tuple),
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.sampled_from(['mode', 'weight', 'x']), SCALARS,
                    max_size=2))
OVERRIDES = st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1,
                            max_size=4)


def assert_one_line(message: str) -> None:
  assert message and '\n' not in message, repr(message)


def config_with(overrides: dict):
  """The cifar config with `overrides` ({dotted key: value of any type}),
  as a config file of one's own may set them."""
  config = ml_collections.ConfigDict(cifar.get_config().to_dict(),
                                     type_safe=False)
  for key, value in overrides.items():
    *parents, name = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    if isinstance(node, ml_collections.ConfigDict):  # Not a group replaced.
      node[name] = value
  return config


@settings(max_examples=400, deadline=None)
@given(OVERRIDES, st.sampled_from([1, 2, 3]))
def test_validate_accepts_or_refuses_in_one_line(overrides, num_devices):
  try:
    configuration.validate(config_with(overrides), num_devices)
  except ConfigError as e:
    assert_one_line(str(e))


# What a value looks like on a command line: any text, and the text of the
# values above (tuples, None, nan, ...).
FLAG_VALUES = st.one_of(st.text(max_size=8), SCALARS.map(str),
                        VALUES.map(repr), st.sampled_from(
                            ['()', '(0.5,', '[1, 2]', '{1: 2}', "'a'", '1e400',
                             '0x10', '1_000', ' 1', 'True', 'none']))
FLAG_OVERRIDES = st.dictionaries(st.sampled_from(KEYS), FLAG_VALUES,
                                 min_size=1, max_size=3)


@contextlib.contextmanager
def fresh_flags(argv):
  """absl's flags as a new process has them, with `argv` as sys.argv
  (config_flags reads the overrides from there)."""
  for name in list(main.FLAGS):
    if name.startswith('config.'):  # Defined by the last parse.
      delattr(main.FLAGS, name)
  main.FLAGS.unparse_flags()
  try:
    with mock.patch.object(sys, 'argv', argv):
      yield
  finally:
    for name in list(main.FLAGS):
      if name.startswith('config.'):
        delattr(main.FLAGS, name)
    main.FLAGS.unparse_flags()


RUN = ('--config=configs/cifar.py', '--workdir=unused')


@pytest.mark.parametrize('arguments, fragments', [
    ((*RUN, '--config.num_epochs=abc'),
     ['--config.num_epochs=abc', 'invalid literal for int()']),
    ((*RUN, '--config.augment=maybe'), ['--config.augment=maybe',
                                       'Non-boolean']),
    ((*RUN, '--config.l2.wieght=1'), ["no key 'wieght'",
                                      'Did you mean "weight"']),
    (('--config=configs/missing.py', '--workdir=unused'),
     ['cannot load the config file', 'configs/missing.py']),
    (RUN[:1], ['--workdir', 'must have a value']),
    ((*RUN, 'epochs=3'), ['unexpected arguments: epochs=3',
                          '--config.KEY=VALUE']),
], ids=['not an int', 'not a bool', 'unknown key', 'no config file',
        'no workdir', 'a stray argument'])
def test_a_flag_that_does_not_parse_stops_in_one_line_naming_it(arguments,
                                                                fragments):
  argv = ['l2jax', *arguments]
  with fresh_flags(argv), pytest.raises(SystemExit) as stop:
    main.parse_flags(list(argv))
  assert stop.value.code.startswith('l2jax: error: ')
  assert_one_line(stop.value.code)
  for fragment in fragments:
    assert fragment in stop.value.code


@settings(max_examples=150, deadline=None)
@given(FLAG_OVERRIDES)
def test_command_line_overrides_parse_and_validate_or_stop_in_one_line(
    overrides):
  """`l2jax.main`'s flag parsing and the check after it, in this process:
  what `python -m l2jax.main` does before it reads any data."""
  argv = ['l2jax', '--config=configs/cifar.py', '--workdir=unused',
          *(f'--config.{k}={v}' for k, v in overrides.items())]
  with fresh_flags(argv):
    try:
      main.parse_flags(list(argv))
      configuration.validate(main.FLAGS.config, 1)
    except SystemExit as e:  # main._fail: the message is the exit code.
      assert isinstance(e.code, str) and e.code.startswith('l2jax: error: ')
      assert_one_line(e.code)
    except ConfigError as e:
      assert_one_line(str(e))


def test_keys_are_those_of_the_shipped_config():
  """`configuration.KEYS`, which validate requires, are configs/cifar.py's."""
  assert {f'{g}.{k}' if g else k for g, keys in configuration.KEYS.items()
          for k in keys} == set(DEFAULTS)
