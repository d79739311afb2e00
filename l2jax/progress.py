"""Progress through a run's long phases (compiling, training, evaluating).

On a terminal a tqdm bar; off one (a pipe, a file, a batch job) the bar's
numbers as a log line every `INTERVAL` seconds, so a piped run is never
silent for long.
"""

import functools
import sys
import time

from absl import logging
from tqdm import tqdm

INTERVAL = 30.0  # Seconds between progress lines off a terminal.
# The log line's format: the bar's numbers, without the bar.
LINE_FORMAT = ('{desc}: {n_fmt}/{total_fmt} {unit}{postfix}, {elapsed} '
               'elapsed, about {remaining} left')


class _LogLines:
  """A file for tqdm that logs each line tqdm writes (it writes '\\r' and a
  line, and blanks when it clears the bar)."""

  def write(self, text: str) -> None:
    text = text.strip()
    if text:
      logging.info('%s', text)

  def flush(self) -> None:
    pass


def bar(iterable=None, *, total: int = None, desc: str, unit: str,
        interval: float = INTERVAL) -> tqdm:
  """A tqdm over `iterable` (`unit`: the plural, as 'steps'): a bar on a
  terminal, else a log line every `interval` seconds, the first after
  `interval`, none when the phase is shorter."""
  if sys.stderr.isatty():
    # Not drawn until the first item is done, so the line a first jitted
    # call logs (`first_call_timed`) comes before the bar, not across it.
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False,
                delay=0.5)
  return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False,
              file=_LogLines(), mininterval=interval, maxinterval=interval,
              delay=interval, bar_format=LINE_FORMAT, ascii=True)


def first_call_timed(fn, what: str):
  """`fn`, logging 'compiling <what>…' before its first call and how long
  that took after it: a jitted function compiles in its first call."""
  called = False

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    nonlocal called
    if called:
      return fn(*args, **kwargs)
    called = True
    logging.info('compiling %s…', what)
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    logging.info('compiled %s in %.1f s', what, time.perf_counter() - start)
    return result

  return wrapper
