"""Errors a user can cause. `l2jax.main` prints them as one line and exits 1."""


class L2JaxError(Exception):
  """A mistake in the input, reported without a traceback."""


class ConfigError(L2JaxError):
  """A config value, or a combination of them, that cannot be run."""


class DataError(L2JaxError):
  """A data set that is missing, unreachable or malformed."""


class DivergenceError(L2JaxError):
  """Training produced a non-finite loss or parameter."""


class WorkdirInUse(L2JaxError):
  """Another run holds the workdir's lock."""


class WriteError(L2JaxError):
  """A checkpoint or output could not be written: a full disk, a folder made
  read-only. What was saved before stays intact."""
