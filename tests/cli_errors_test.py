"""`python -m l2jax.main` stopped by a wrong input, by divergence, and the
installed `l2jax` command."""

import concurrent.futures
import os
import re
import subprocess
import sys
import tomllib
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np
import pytest

from helpers import assert_clean_error
from helpers import cpu_env
from helpers import final_params
from helpers import foreign_lines
from helpers import read_jsonl
from helpers import REPO
from helpers import run_cli
from helpers import write_folder


class BadInput(NamedTuple):
  """One wrong input to the CLI and the fragments its one-line error must hold.

  `{data}` in arguments and fragments is the case's copy of a tiny image
  folder (`write_folder`), after `breaks` has damaged it; `{workdir}` is a
  workdir holding an earlier metrics.jsonl. The run reads the folder unless
  the case names another --config.dataset.
  """
  name: str
  arguments: tuple
  fragments: tuple
  breaks: Optional[Callable] = None
  workdir: str = '{workdir}'
  devices: int = 1


# One case for each place a run can stop: the flags, the config check, the
# masks on the model's parameters, the devices, the data, the workdir. The
# wording of every other wrong value is checked where it is made, in this
# process: configuration_test, data_test, config_fuzz_test.
BAD_INPUTS = [
    # The flags (the other flag and config-file errors: config_fuzz_test).
    BadInput('unknown key', ('--config.l2.wieght=1',),
             ('--config.l2.wieght:', "no key 'wieght'", 'Did you mean "weight"')),
    # A value out of range; a mask that selects nothing.
    BadInput('no epochs', ('--config.num_epochs=0',),
             ('config.num_epochs=0 must lie in [1, inf)',)),
    BadInput('mask matching no parameter',
             ('--config.l2.mask=BatchNorm', '--config.batch_size=4'),
             ("config.l2.mask='BatchNorm' matches no parameter",
              'Conv_0/kernel')),
    BadInput('batch not divisible by devices', ('--config.batch_size=127',),
             ('config.batch_size=127', '2 devices'), devices=2),
    BadInput('batch larger than the data', ('--config.batch_size=64',),
             ('config.batch_size=64', 'the 5 training examples')),
    # Paths and data.
    BadInput('workdir inside a file', (),
             ('--workdir={workdir}/metrics.jsonl/run', 'Not a directory'),
             workdir='{workdir}/metrics.jsonl/run'),
    BadInput('unknown TFDS name', ('--config.dataset=cifar11',),
             ("config.dataset='cifar11'", 'folder:PATH')),
    # TFDS warns of the empty version folder (not shown).
    BadInput('TFDS source files missing',
             ('--config.dataset=mnist', '--config.data_dir={data}/tfds',
              '--config.manual_dir={data}/train'),
             ('config.manual_dir={data}/train holds none of the files',),
             breaks=lambda data: (data / 'tfds/mnist/3.0.1').mkdir(
                 parents=True)),
    # The workdir the run made is removed.
    BadInput('no such folder, new workdir',
             ('--config.dataset=folder:{data}/elsewhere',),
             ('{data}/elsewhere has no train/ folder',),
             workdir='{workdir}/new/run'),
    BadInput('corrupt image', (),
             ('cannot decode the image {data}/train/dog/3.jpg',),
             breaks=lambda data: (data / 'train/dog/3.jpg').write_bytes(
                 b'\xff' * 99)),
]
EARLIER = '{"epoch": 1}\n'


@pytest.fixture(scope='module')
def bad_input_runs(tmp_path_factory):
  """{case name: (CLI result, workdir, data folder)} for BAD_INPUTS.

  Each run fails before training, in seconds that go mostly to importing JAX
  and TF, so they run side by side.
  """
  def run(case, root):
    data_root, workdir = root / 'data', root / 'workdir'
    write_folder(data_root)
    if case.breaks:
      case.breaks(data_root)
    workdir.mkdir()
    (workdir / 'metrics.jsonl').write_text(EARLIER)
    fill = lambda text: text.format(data=data_root, workdir=workdir)
    arguments = [fill(a) for a in case.arguments]
    if not any(a.startswith('--config.dataset=') for a in arguments):
      arguments.insert(0, f'--config.dataset=folder:{data_root}')
    result = run_cli(fill(case.workdir), *arguments, devices=case.devices,
                     timeout=300)
    return result, workdir, data_root

  # Made here: tmp_path_factory is not thread-safe (two threads making this
  # worker's first temporary folder both made its base folder).
  roots = [tmp_path_factory.mktemp('bad') for _ in BAD_INPUTS]
  with concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count())) as pool:
    return dict(zip((c.name for c in BAD_INPUTS),
                    pool.map(run, BAD_INPUTS, roots)))


@pytest.mark.parametrize('case', BAD_INPUTS, ids=lambda c: c.name)
def test_bad_input_stops_with_one_line(bad_input_runs, case):
  result, workdir, data_root = bad_input_runs[case.name]
  assert_clean_error(result, 'l2jax: error:', *(
      f.format(data=data_root, workdir=workdir) for f in case.fragments))
  assert foreign_lines(result.stderr) == [], result.stderr[-3000:]
  # Nothing written before is lost, and nothing new is written.
  assert os.listdir(workdir) == ['metrics.jsonl']
  assert (workdir / 'metrics.jsonl').read_text() == EARLIER


def test_the_installed_command_runs_main():
  # pip installs [project.scripts]'s `l2jax` as a script that imports the
  # object named and calls it; here that script, run without installing.
  spec = tomllib.loads((REPO / 'pyproject.toml').read_text())['project'][
      'scripts']['l2jax']
  module, function = spec.split(':')
  script = (f'import sys; from {module} import {function}; '
            f'sys.argv[0] = "l2jax"; sys.exit({function}())')
  result = subprocess.run([sys.executable, '-c', script, '--helpshort'],
                          cwd=REPO, env=cpu_env(), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]  # absl's, after help.
  assert 'l2jax --config=configs/cifar.py --workdir=runs/cifar' in result.stdout
  for flag in ('--config:', '--workdir:', '--[no]log_all:'):
    assert flag in result.stdout, result.stdout


def test_divergence_stops_naming_the_step_and_keeps_finite_results(
    cifar_small, tmp_path):
  # 8 steps an epoch; the learning rate jumps from 0.05 to 5000 at step 9.
  result = run_cli(
      tmp_path, f'--config.dataset=folder:{cifar_small}',
      '--config.batch_size=32', '--config.max_train_examples=256',
      '--config.num_epochs=2', '--config.schedule=step',
      '--config.step_boundaries=(0.5,)', '--config.step_decay=1e5',
      '--config.checkpoint_every_steps=3')
  assert_clean_error(result, 'diverged at step', 'learning rate 5000',
                     'is finite')
  message = result.stderr.strip().splitlines()[-1]
  diverged = int(re.search(r'diverged at step (\d+)', message)[1])
  last = int(re.search(r'the last checkpoint, step (\d+)', message)[1])
  assert 8 <= last < diverged
  records = read_jsonl(tmp_path / 'metrics.jsonl')
  assert [r['epoch'] for r in records] == [1]
  assert all(np.isfinite(v) for v in records[0].values())
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()
                 if p.name.isdigit())
  assert saved[-1] == last and 8 in saved
  assert all(np.isfinite(leaf).all()
             for leaf in jax.tree.leaves(final_params(tmp_path)))
