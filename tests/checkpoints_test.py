"""A failed save is one line naming its step and the OS's reason, whichever
way orbax reports it, with orbax's own writer replaced by one that fails.
(A real full disk: resume_test.py, as root.)"""

import copy
import errno
import types

import jax
import pytest

from configs import cifar
from l2jax import checkpoints
from l2jax import models
from l2jax import train
from l2jax.errors import ConfigError, WriteError

NO_SPACE = OSError(errno.ENOSPC, 'No space left on device')
# How TensorStore reports it from orbax's background thread.
TENSORSTORE = ValueError(
    'RESOURCE_EXHAUSTED: Error writing local file "/x/4.orbax-checkpoint-tmp/'
    "d/1\": Failed to write 281 bytes to file 6: No space left on device "
    "[os_error_code='28']")


class FailingManager:
  """Orbax's CheckpointManager as far as Checkpointer uses it to save."""

  def __init__(self):
    self.on_save = self.on_wait = None

  def save(self, step, args):
    del step, args
    if self.on_save:
      raise self.on_save

  def wait_until_finished(self):
    error, self.on_wait = self.on_wait, None  # Orbax raises it once.
    if error:
      raise error

  def close(self):
    self.wait_until_finished()


@pytest.fixture
def checkpointer(tmp_path):
  """(a Checkpointer, the FailingManager it saves through)."""
  ckpt = checkpoints.Checkpointer(str(tmp_path), 3)
  ckpt._manager.close()  # pylint: disable=protected-access
  manager = ckpt._manager = FailingManager()  # pylint: disable=protected-access
  return ckpt, manager


def save(ckpt, step):
  state = types.SimpleNamespace(params={}, opt_state={}, step=step,
                                batch_stats={})
  ckpt.save(step, state, types.SimpleNamespace(to_dict=dict), {})


def test_an_os_error_of_a_save_is_one_line_naming_the_step(checkpointer):
  ckpt, manager = checkpointer
  manager.on_save = NO_SPACE
  with pytest.raises(WriteError) as error:
    save(ckpt, 3)
  assert str(error.value) == (
      f'cannot write the checkpoint of step 3 to {ckpt.directory} '
      '(No space left on device); the checkpoints saved before are intact: '
      'free space or make the folder writable, then run the same command to '
      'resume')


def test_a_background_failure_names_the_save_it_belongs_to(checkpointer):
  ckpt, manager = checkpointer
  save(ckpt, 4)
  manager.on_wait = TENSORSTORE
  with pytest.raises(WriteError) as error:
    save(ckpt, 5)  # Waits for step 4's save first.
  assert str(error.value).startswith(
      'cannot write the checkpoint of step 4 to ')
  assert '(No space left on device)' in str(error.value)


def test_other_errors_pass_unchanged_and_the_first_error_wins(checkpointer):
  ckpt, manager = checkpointer
  manager.on_save = ValueError('a bug')
  with pytest.raises(ValueError, match='^a bug$'):
    save(ckpt, 1)
  # An error inside `with` is reported, not the failed save it waits for.
  with pytest.raises(KeyError):
    with ckpt:
      manager.on_wait = NO_SPACE
      raise KeyError('first')


def test_only_closed_event_loops_are_kept_quiet():
  seen = []
  hook = checkpoints.quiet_unraisable(seen.append)
  closed = types.SimpleNamespace(exc_value=RuntimeError('Event loop is closed'))
  other = types.SimpleNamespace(exc_value=RuntimeError('something else'))
  hook(closed)
  hook(other)
  assert seen == [other]


def test_a_checkpoint_from_before_a_key_was_added_resumes_at_its_value(
    tmp_path):
  """A checkpoint whose config lacks a key of `configuration.ADDED` ran
  with that key's value: the same run at that value, another at any other."""
  config = cifar.get_config()
  config.model = 'seed_cnn_narrow'
  state = train.initialize(config, models.create_model('seed_cnn_narrow', 4),
                           (8, 8, 3), 2, jax.random.key(0))[0]
  before = copy.deepcopy(config)
  del before['lr_floor']
  with checkpoints.Checkpointer(str(tmp_path), 1) as ckpt:
    ckpt.save(3, state, before, {})
  with checkpoints.Checkpointer(str(tmp_path), 1) as ckpt:
    assert ckpt.check_config(config) == 3
    config.lr_floor = 0.1
    with pytest.raises(ConfigError, match=r'config\.lr_floor: 0\.0 then, 0\.1 now'):
      ckpt.check_config(config)
