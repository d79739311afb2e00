"""What the command line prints on stderr: l2jax's log lines, and of the
libraries below it (TensorFlow, TFDS, orbax, clu) only their errors, unless
`--log_all` brings everything back.

TensorFlow prints start-up lines from C++ when imported (absl's "All log
messages before absl::InitializeLog()" and the oneDNN notice, each twice)
whatever TF_CPP_MIN_LOG_LEVEL says: `import_tensorflow` imports it with
stderr closed.
"""

import contextlib
import logging as std_logging
import os
import sys

from absl import logging

PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def is_l2jax_or_error(record) -> bool:
  """A log record from l2jax's code, or an error from anyone's."""
  return (record.levelno >= std_logging.ERROR
          or os.path.abspath(record.pathname).startswith(PACKAGE))


def configure(log_all: bool) -> None:
  """INFO and above. Without `log_all`: only l2jax's lines and errors, and
  TensorFlow's C++ log at errors. With it: everything, TensorFlow's C++
  INFO lines too (imported now, with its start-up lines)."""
  logging.set_verbosity(logging.INFO)
  # JAX's import set TF_CPP_MIN_LOG_LEVEL to 1 if it was unset.
  os.environ['TF_CPP_MIN_LOG_LEVEL'] = '0' if log_all else '2'
  if log_all:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  else:
    logging.get_absl_handler().addFilter(is_l2jax_or_error)


def import_tensorflow() -> None:
  """Imports TensorFlow if it is not yet, dropping its C++ start-up lines
  (an import error still raises)."""
  if 'tensorflow' not in sys.modules:
    with _stderr_closed():
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import


@contextlib.contextmanager
def _stderr_closed():
  """File descriptor 2 to /dev/null: C++ writes there directly."""
  sys.stderr.flush()
  saved = os.dup(2)
  null = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(null, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)
