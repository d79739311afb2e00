"""Trains an image classifier with L2 as the config says.

    python -m l2jax.main --config=configs/cifar.py --workdir=runs/cifar \
        [--config.l2.mode=decoupled --config.l2.weight=5e-4 ...]
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags
import tensorflow_datasets as tfds

from l2jax import configuration
from l2jax import train
from l2jax.errors import L2JaxError

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where metrics, curves and checkpoints go.')
config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def _only_l2jax_info(record) -> bool:
  """Keeps INFO lines from l2jax; orbax and TFDS print many of their own."""
  return record.levelno >= std_logging.WARNING or (
      f'{os.sep}l2jax{os.sep}' in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_only_l2jax_info)
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()
  try:
    configuration.validate(FLAGS.config, jax.local_device_count())
    os.makedirs(FLAGS.workdir, exist_ok=True)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except L2JaxError as e:
    sys.exit(f'l2jax: error: {e}')


if __name__ == '__main__':
  app.run(main)
