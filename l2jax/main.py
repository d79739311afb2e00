r"""Trains an image classifier with L2 as the config says.

    l2jax --config=configs/cifar.py --workdir=runs/cifar \
        [--config.l2.mode=decoupled --config.l2.weight=5e-4 ...]

(`l2jax` is the command `pip install` makes; `python -m l2jax.main` is the
same.)

Several processes (one per host, or several on one host) train one model
on JAX's distributed runtime when each is started with
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or
JAX_COORDINATOR_ADDRESS in the environment), or with `--distributed` where
JAX detects the cluster itself (Slurm, Open MPI, Cloud TPU).

Exit status: 0 when training finished; 1 after a one-line error (the input,
a workdir in use, a full or read-only disk, divergence); 75
(`preemption.EXIT_STATUS`) after a preemption notice, its checkpoint saved.
"""

import errno
import os
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow_datasets as tfds

from l2jax import caches
from l2jax import checkpoints
from l2jax import configuration
from l2jax import cpu
from l2jax import logs
from l2jax import preemption
from l2jax import train
from l2jax.errors import ConfigError, L2JaxError

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where metrics, curves and checkpoints go.')
config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])
flags.DEFINE_string('coordinator_address', None,
                    'HOST:PORT of process 0, for a multi-process run.')
flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
flags.DEFINE_integer('process_id', None, "This process's index, 0 to N-1.")
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() even without the '
                  'flags above, letting JAX detect the cluster.')
flags.DEFINE_bool('log_all', False,
                  "Log every library's lines (TensorFlow's C++ log, TFDS, "
                  "orbax), not only l2jax's and errors.")


def initialize_distributed() -> None:
  """Joins the other processes, if this run has several."""
  if not (FLAGS.distributed or FLAGS.coordinator_address
          or os.environ.get('JAX_COORDINATOR_ADDRESS')):
    return
  # Cross-process collectives on CPU devices (GPUs and TPUs have their own).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                               FLAGS.process_id)
  except (ValueError, TypeError, RuntimeError) as e:
    raise L2JaxError(
        f'cannot join the multi-process run ({str(e).splitlines()[0]}); give '
        'every process --coordinator_address=HOST:PORT, --num_processes and '
        '--process_id, or run a single process without them') from e
  logging.info('process %d of %d; %d of %d devices here',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


# Errors of writing that the user can mend: a full disk or quota, a
# read-only or forbidden folder, a file over its size limit.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                errno.EPERM, errno.EFBIG)


def _fail(message: str):
  sys.exit(f'l2jax: error: {message}')


def _unknown_key(error: Exception, argv) -> str | None:
  """The message for an override that names no key of the config (config_flags
  raises a KeyError, bare or in an AttributeError); None for other errors."""
  if isinstance(error, AttributeError) and isinstance(
      error.args[0] if error.args else None, KeyError):
    error = error.args[0]
  if not (isinstance(error, KeyError) and error.args
          and isinstance(error.args[0], str)):
    return None
  key, *hint = error.args[0].splitlines()  # 'wieght', Did you mean "weight"?
  flag = next((a.split('=')[0] for a in argv[1:] if a.startswith('--config.')
               and key.strip("'") in a.split('=')[0].split('.')), '--config')
  return (f'{flag}: the config has no key {key}'
          + (f' ({hint[0]})' if hint else '')
          + '; see the keys in the --config file')


def parse_flags(argv):
  """absl's parsing, with a wrong flag or config file reported in one line."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.lock()  # A config file that failed to load raises on first use.
  except flags.Error as e:
    _fail(str(e))
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()  # [Errno 2] No such file...
    _fail(f'cannot load the config file ({reason}); pass '
          '--config=configs/<name>.py')
  except (AttributeError, KeyError) as e:
    message = _unknown_key(e, argv)
    if message is None:
      raise
    _fail(message)
  if len(rest) > 1:
    _fail(f'unexpected arguments: {" ".join(rest[1:])}; overrides take the '
          'form --config.KEY=VALUE')
  return rest


def make_workdir(path: str) -> list:
  """Creates `path` if need be; a folder that cannot be written is an error.
  Returns the folders it created, deepest first."""
  created, folder = [], os.path.abspath(path)
  while not os.path.exists(folder):
    created.append(folder)
    folder = os.path.dirname(folder)
  try:
    os.makedirs(path, exist_ok=True)
    tempfile.TemporaryFile(dir=path).close()
  except OSError as e:
    raise ConfigError(f'--workdir={path} cannot be written to ({e.strerror}); '
                      'name a folder you can write in') from e
  return created


def remove_if_empty(folders: list) -> None:
  """Removes `folders` (deepest first) while they are empty: what a run that
  failed before writing anything created."""
  for folder in folders:
    try:
      os.rmdir(folder)
    except OSError:
      return


def main(argv):
  del argv  # parse_flags has refused any.
  logs.configure(FLAGS.log_all)
  logging.get_absl_handler().addFilter(checkpoints.no_save_tracebacks)
  sys.unraisablehook = checkpoints.quiet_unraisable(sys.unraisablehook)
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()
  cpu.configure()  # Before JAX runs anything.
  caches.compilation_cache()
  try:
    initialize_distributed()
    configuration.validate(FLAGS.config, jax.device_count())
    created = make_workdir(FLAGS.workdir)
    try:
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    finally:
      remove_if_empty(created)
  except L2JaxError as e:
    _fail(str(e))
  except OSError as e:  # metrics.jsonl, summary.json, curves.png.
    if e.errno not in WRITE_ERRNOS:
      raise
    _fail(f'cannot write {e.filename or "to " + FLAGS.workdir} ({e.strerror}); '
          'free space or make the folder writable, then run the same command '
          'to resume')
  except preemption.Preempted as e:
    print(f'l2jax: {e}', file=sys.stderr)
    sys.exit(preemption.EXIT_STATUS)


def run():
  """The `l2jax` command (pyproject.toml's [project.scripts]), the same as
  `python -m l2jax.main`."""
  # --help shows the __main__ module's docstring and --helpshort the flags
  # of the module sys.argv[0] names: here the command's script, not this.
  script = sys.modules['__main__']
  script.__doc__ = script.__doc__ or __doc__
  for flag in FLAGS.get_key_flags_for_module(__name__):
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
