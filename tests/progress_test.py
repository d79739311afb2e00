"""Progress off a terminal: a log line every interval, and compile timing."""

import logging
import re
import time

import pytest

from l2jax import progress


@pytest.fixture
def lines(caplog, monkeypatch):
  """The lines l2jax.progress logs, off a terminal (as pytest's capture is);
  not other modules' (an orbax thread a checkpoint test left behind may log
  to absl meanwhile)."""
  monkeypatch.setattr('sys.stderr.isatty', lambda: False)
  caplog.set_level(logging.INFO, logger='absl')
  return lambda: [r.getMessage() for r in caplog.records
                  if r.module == 'progress']


def test_off_a_terminal_a_line_every_interval(lines):
  # 12 steps of 25 ms or more, a line every 100 ms at most, the first after
  # 100 ms: the bar's numbers without the bar.
  start = time.perf_counter()
  for _ in progress.bar(range(12), total=12, desc='epoch 1/3', unit='steps',
                        interval=0.1):
    time.sleep(0.025)
  logged = lines()
  assert 1 <= len(logged) <= (time.perf_counter() - start) / 0.1, logged
  for line in logged:
    match = re.fullmatch(r'epoch 1/3: (\d+)/12 steps, \d\d:\d\d elapsed, '
                         r'about \d\d:\d\d left', line)
    assert match and 1 <= int(match[1]) <= 12, line


def test_a_phase_shorter_than_the_interval_logs_nothing(lines):
  for _ in progress.bar(range(3), total=3, desc='evaluating', unit='passes',
                        interval=10):
    pass
  assert lines() == []


def test_the_first_call_is_timed_and_only_it(lines):
  calls = []

  def step(x):
    calls.append(x)
    time.sleep(0.2)
    return 2 * x

  timed = progress.first_call_timed(step, 'the step')
  assert [timed(1), timed(2), timed(3)] == [2, 4, 6]
  assert calls == [1, 2, 3]
  first, second = lines()
  assert first == 'compiling the step…'
  seconds = float(re.fullmatch(r'compiled the step in (\d+\.\d) s', second)[1])
  assert 0.2 <= seconds < 2
