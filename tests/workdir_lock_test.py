"""One run per workdir (l2jax.workdir_lock), in process: the lock is the
OS's, so a second open of the file, even in this process, is refused. (Two
real runs: resume_test.py.)"""

import logging
import os
import socket

import pytest

from l2jax import workdir_lock
from l2jax.errors import WorkdirInUse


def test_a_held_workdir_is_refused_naming_its_holder(tmp_path):
  with workdir_lock.hold(str(tmp_path)):
    assert (tmp_path / '.lock').read_text() == (
        f'{socket.gethostname()} {os.getpid()}\n')
    with pytest.raises(WorkdirInUse) as refused:
      with workdir_lock.hold(str(tmp_path)):
        pass
  assert str(refused.value) == (
      f'{tmp_path} is in use by another run (pid {os.getpid()} on host '
      f'{socket.gethostname()}); wait for it to end, or use another --workdir')
  # Released: the file is gone and the workdir can be taken again.
  assert not (tmp_path / '.lock').exists()
  with workdir_lock.hold(str(tmp_path)):
    pass


def test_a_lock_file_left_by_a_killed_run_is_taken_over_with_a_warning(
    tmp_path, caplog):
  (tmp_path / '.lock').write_text('elsewhere 4242\n')  # Its holder is gone.
  with caplog.at_level(logging.WARNING):
    with workdir_lock.hold(str(tmp_path)):
      assert (tmp_path / '.lock').read_text().split()[1] == str(os.getpid())
  assert 'was held by pid 4242 on host elsewhere, which ended without ' \
         'releasing it' in caplog.text


def test_the_workdir_is_made_if_need_be(tmp_path):
  with workdir_lock.hold(str(tmp_path / 'new' / 'run')):
    assert (tmp_path / 'new' / 'run' / '.lock').exists()
