"""Preemption notices (l2jax.preemption), in process: SIGTERM and SIGUSR1
are noted while a run trains, and the handlers before are put back. (A real
run preempted and resumed: resume_test.py.)"""

import signal
import threading

import pytest

from l2jax import preemption


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGUSR1])
def test_a_notice_is_noted_and_the_handlers_restored(signum):
  before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  with preemption.Notice() as notice:
    assert not notice.reached(1)
    signal.raise_signal(signum)  # Handled before the call returns.
    assert notice.reached(2) and notice.reached(3)
    assert notice.name() == signum.name
  assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before


def test_outside_the_main_thread_nothing_is_listened_for():
  reached = []

  def run():
    with preemption.Notice() as notice:
      reached.append(notice.reached(1))

  before = signal.getsignal(signal.SIGTERM)
  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  assert reached == [False]
  assert signal.getsignal(signal.SIGTERM) == before


def test_preempted_is_not_an_exception_that_records_of_errors_catch():
  error = preemption.Preempted(7, 'SIGUSR1', '/runs/x/checkpoints')
  assert not isinstance(error, Exception)
  assert str(error) == ('preempted (SIGUSR1) at step 7; saved the checkpoint '
                        '/runs/x/checkpoints/7; run the same command to resume')
