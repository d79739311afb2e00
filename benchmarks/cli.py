"""The command line every sweep script shares: its flags, and starting.

    python -m benchmarks.<name> --preset=P --out=DIR [--data=folder:PATH]
        [--executor=inline|local|slurm --parallel=N --pin=none|cores|gpus]
        [--report_only]

A script calls `define_flags(name, presets)` at import and `start()` first
in its main; its presets come from configs/sweeps/<name>.py.
"""

import importlib
import os
import sys

from absl import flags
from absl import logging
import tensorflow_datasets as tfds

from benchmarks import sweep
from l2jax import caches
from l2jax import cpu
from l2jax import data as data_lib

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = data_lib.FOLDER_PREFIX + os.path.join(REPO, 'data',
                                                   'cifar10-jpeg')


def define_flags(presets) -> None:
  """The shared flags; `presets`: the names the sweep config accepts."""
  flags.DEFINE_enum('preset', 'smoke', list(presets), 'Sweep preset.')
  flags.DEFINE_string('out', None, 'Output folder; cells go in OUT/cells.')
  flags.DEFINE_string('data', DEFAULT_DATA, 'config.dataset for every cell.')
  flags.DEFINE_enum('executor', 'inline', list(sweep.EXECUTORS),
                    'inline: one process; local: submitit subprocesses; '
                    'slurm: a submitit job array.')
  flags.DEFINE_integer('parallel', 1, 'Jobs at once (local, slurm).',
                       lower_bound=1)
  flags.DEFINE_enum('pin', 'none', list(sweep.PINS),
                    'local: one GPU per job, or a group of CPU cores.')
  flags.DEFINE_integer('cells_per_job', 0,
                       'Cells a job trains (0: spread over --parallel).',
                       lower_bound=0)
  flags.DEFINE_integer('stack', 0,
                       'Fresh cells differing only in lr and λ that a job '
                       'trains at once as one program; 0: 1 on a CPU, '
                       f'{sweep.GPU_STACK} on an accelerator '
                       '(docs/performance.md).',
                       lower_bound=0)
  flags.DEFINE_string('slurm_partition', None, 'slurm: the partition.')
  flags.DEFINE_integer('slurm_minutes', 24 * 60, 'slurm: time limit a job.')
  flags.DEFINE_integer('slurm_gpus', 0, 'slurm: GPUs a job.')
  flags.DEFINE_bool('report_only', False,
                    "Rebuild the report from the cells' files; train nothing.")
  flags.DEFINE_bool('keep_checkpoints', False,
                    "Keep a done cell's checkpoints (only resuming uses them).")
  flags.mark_flag_as_required('out')


def load_preset(name: str, preset: str):
  """configs/sweeps/<name>.py's get_config(preset), with --data."""
  config = importlib.import_module(f'configs.sweeps.{name}').get_config(preset)
  config.train.dataset = FLAGS.data
  return config


def executor():
  """The sweep.Executor the flags describe."""
  slurm = {'timeout_min': FLAGS.slurm_minutes}
  if FLAGS.slurm_partition:
    slurm['slurm_partition'] = FLAGS.slurm_partition
  if FLAGS.slurm_gpus:
    slurm['gpus_per_node'] = FLAGS.slurm_gpus
  return sweep.Executor(FLAGS.executor, FLAGS.parallel, FLAGS.pin,
                        FLAGS.cells_per_job, slurm=slurm, stack=FLAGS.stack)


def start(name: str, argv) -> str:
  """Process settings, quiet logs, the data check; returns the absolute
  --out, created."""
  if len(argv) > 1:
    sys.exit(f'{name}: error: unexpected arguments: {" ".join(argv[1:])}')
  cpu.configure()  # As l2jax.main does, before JAX runs anything.
  caches.compilation_cache()
  logging.set_verbosity(logging.WARNING)  # One line a cell, from sweep.
  tfds.disable_progress_bar()
  if (FLAGS.data == DEFAULT_DATA and not FLAGS.report_only and
      not os.path.isdir(DEFAULT_DATA[len(data_lib.FOLDER_PREFIX):])):
    sys.exit(f'{name}: error: no CIFAR-10 copy in data/; run `mkdir -p data '
             '&& tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C data` in the '
             'repository, or pass --data')
  out = os.path.abspath(FLAGS.out)
  os.makedirs(out, exist_ok=True)
  return out
