"""Preemption notices: a run saves at the end of its current step and stops.

Schedulers send SIGTERM some seconds before they preempt a job (Slurm,
Kubernetes, cloud spot and preemptible machines), and Slurm's
`--signal=USR1@SECONDS` sends SIGUSR1 before a time limit. `Notice` listens
for both while a run trains; the loop asks `reached(step)` after every step
and, once it is True, saves that step's checkpoint and raises `Preempted`,
which `l2jax.main` reports in one line, exiting with `EXIT_STATUS`. The same
command then resumes from that checkpoint.

- One process: Python handlers note the signal.
- Several processes must save at the same step. JAX's preemption service,
  started by `jax.distributed.initialize`, catches SIGTERM in any process and
  has all agree on the step to save at (one past the furthest any has
  reached: `multihost_utils.reached_preemption_sync_point`); SIGUSR1 is
  passed on to it as SIGTERM. With the service turned off
  (`jax_enable_preemption_service=False`) the signals end the run as before.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils

# sysexits.h's EX_TEMPFAIL ("temporary failure; try again"): neither success
# (0), an error of the input (1), nor a kill by SIGTERM (143).
EXIT_STATUS = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(BaseException):
  """The run saved the checkpoint of `step` after a preemption notice.

  A BaseException, like KeyboardInterrupt: code that records a run's errors
  and goes on (a sweep's cells) lets it through.
  """

  def __init__(self, step: int, notice: str, directory: str):
    super().__init__(
        f'preempted ({notice}) at step {step}; saved the checkpoint '
        f'{directory}/{step}; run the same command to resume')
    self.step = step


class Notice:
  """Whether a preemption notice has come, listened for inside `with`.

  Signal handlers can only be set from the main thread: called from another
  thread it listens for nothing.
  """

  def __init__(self):
    self.received = None  # The signal's name, in a single process.
    self._distributed = False
    self._previous = {}

  def __enter__(self) -> 'Notice':
    if threading.current_thread() is not threading.main_thread():
      return self
    self._distributed = jax.process_count() > 1
    # Several processes: SIGTERM stays with JAX's preemption service.
    for signum in (signal.SIGUSR1,) if self._distributed else SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    self.received = self.received or signal.Signals(signum).name
    if self._distributed:
      signal.raise_signal(signal.SIGTERM)  # To JAX's preemption service.

  def reached(self, step: int) -> bool:
    """Whether to save at `step` and stop. Every process of a run calls it
    once after each step, with the same steps in increasing order."""
    if not self._distributed:
      return self.received is not None
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # JAX's preemption service is turned off.
      return False

  def name(self) -> str:
    """The notice, for `Preempted`'s message."""
    return self.received or 'a preemption notice'  # Another process's.

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      if handler is not None:  # None: set outside Python; left as it is.
        signal.signal(signum, handler)
    self._previous.clear()
