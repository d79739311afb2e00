"""`python -m l2jax.main` end to end, on the real data in ../shared/data."""

import concurrent.futures
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np
from PIL import Image
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from helpers import assert_clean_error
from helpers import cpu_env
from helpers import final_params
from helpers import final_state
from helpers import foreign_lines
from helpers import read_jsonl
from helpers import REPO
from helpers import run_cli
from helpers import TIMING_KEYS
from helpers import write_folder

FASHION_MNIST = pathlib.Path('/usr/share/datasets/fashion-mnist')
PER_EPOCH_KEYS = {
    'epoch', 'train_loss', 'data_loss', 'l2_penalty', 'train_accuracy',
    'val_accuracy', 'test_accuracy', 'weight_norm', 'learning_rate',
    'epoch_seconds', 'images_per_second', 'l1_penalty', 'sparsity',
    'test_accuracy_noise0.02', 'test_accuracy_noise0.05',
    'test_accuracy_noise0.1'}


def test_real_cifar_slice_learns_writes_every_output_and_is_then_complete(
    cifar_small, tmp_path):
  workdir, temp = tmp_path / 'run', tmp_path / 'tmp'
  temp.mkdir()
  common = [f'--config.dataset=folder:{cifar_small}', '--config.batch_size=32',
            '--config.learning_rate=0.02', '--config.augment=False']
  # As a user runs it: TensorFlow's log level unset; and a temporary folder
  # of its own, to see what it leaves there.
  result = run_cli(workdir, *common, '--config.num_epochs=2',
                   env={'TF_CPP_MIN_LOG_LEVEL': None, 'TMPDIR': str(temp)})
  assert result.returncode == 0, result.stderr[-3000:]

  records = read_jsonl(workdir / 'metrics.jsonl')
  assert [r['epoch'] for r in records] == [1, 2]
  for record in records:
    assert PER_EPOCH_KEYS <= set(record), PER_EPOCH_KEYS - set(record)
    assert all(np.isfinite(v) for v in record.values())
  # 2,700 training images / 32 = 84 steps an epoch, 168 in all.
  assert records[-1]['step'] == 168
  assert records[-1]['test_accuracy'] >= 0.30, records[-1]
  # Coupled decay is not in the loss, but its penalty is still reported.
  assert records[-1]['train_loss'] == records[-1]['data_loss']
  assert records[-1]['l2_penalty'] == pytest.approx(
      0.5 * 5e-4 * records[-1]['weight_norm'] ** 2, rel=1e-4)

  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['final'] == records[-1]
  assert summary['config']['l2'] == {'mode': 'coupled', 'weight': 5e-4,
                                     'mask': 'kernels', 'normalized': False,
                                     'schedule': 'lr'}
  assert (workdir / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert (workdir / 'checkpoints' / '168').is_dir()
  _assert_events_equal_records(workdir, records)

  # stderr: l2jax's lines only (no TensorFlow start-up lines, no TFDS
  # warnings), compilation timed; nothing left in the temporary folder.
  assert foreign_lines(result.stderr) == [], result.stderr[-3000:]
  assert re.search(r'compiling the training step…\n.*compiled the training '
                   r'step in \d+\.\d s\n', result.stderr), result.stderr[-3000:]
  assert list(temp.iterdir()) == []

  # The same command again: the run is complete. It stops before reading the
  # data, and every output stays as it was.
  outputs = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
  again = run_cli(workdir, *common, '--config.num_epochs=2')
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'run complete: {workdir} (epoch 2, step 168' in again.stderr
  assert 'reading' not in again.stderr
  assert {p.name: p.read_bytes() for p in workdir.iterdir()
          if p.is_file()} == outputs
  # Another config would not give the run it claims to be: refused.
  changed = run_cli(workdir, *common, '--config.num_epochs=3')
  assert_clean_error(changed, 'another config', 'config.num_epochs: 2 then, 3 now',
                     'new --workdir')
  assert read_jsonl(workdir / 'metrics.jsonl') == records


def _assert_events_equal_records(workdir, records) -> None:
  """TensorBoard's reader finds metrics.jsonl's numbers (as float32) at each
  epoch's last step, every 50th step's loss, and the config as HParams."""
  events = event_accumulator.EventAccumulator(
      str(workdir), size_guidance={event_accumulator.TENSORS: 0})
  events.Reload()
  hparams_tag = hparams_metadata.SESSION_START_INFO_TAG
  tags = set(events.Tags()['tensors'])
  assert hparams_tag in tags
  read = {tag: {e.step: tensor_util.make_ndarray(e.tensor_proto).item()
                for e in events.Tensors(tag)} for tag in tags - {hparams_tag}}
  step_losses = read.pop('step/train_loss')
  assert sorted(step_losses) == [50, 100, 150]
  assert all(0 < loss < 5 for loss in step_losses.values()), step_losses
  expected = {}
  for record in records:
    for key, value in record.items():
      if key != 'step' and type(value) in (int, float):  # Not None nor bool.
        expected.setdefault(key, {})[record['step']] = float(np.float32(value))
  assert read == expected
  hparams = hparams_metadata.parse_session_start_info_plugin_data(
      events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)[hparams_tag]
  ).hparams
  assert hparams['learning_rate'].number_value == 0.02
  assert hparams['l2.weight'].number_value == 5e-4
  assert hparams['l2.mode'].string_value == 'coupled'
  assert hparams['optimizer'].string_value == 'sgd'


def test_two_devices_give_the_same_run_as_one(cifar_small, tmp_path):
  # The gradient mean over devices, each device's share of the batch, and
  # batch norm's statistics over the global batch: per-device statistics
  # would differ from one device's by far more than rounding (checked below).
  # Two devices sum each gradient in another order, equal to float rounding,
  # which training grows (metrics to about 3e-4 in two epochs with batch
  # norm). At the default learning rate this batch size makes the first
  # epoch's loss spike, which grows them further; 0.01 trains stably.
  overrides = [f'--config.dataset=folder:{cifar_small}', '--config.batch_size=32',
               '--config.max_train_examples=256', '--config.num_epochs=1',
               '--config.augment=True', '--config.learning_rate=0.01',
               '--config.model=seed_cnn_narrow', '--config.batch_norm=True']
  runs = {}
  for devices in (1, 2):
    workdir = tmp_path / f'devices{devices}'
    result = run_cli(workdir, *overrides, devices=devices)
    assert result.returncode == 0, result.stderr[-3000:]
    runs[devices] = workdir
  one, two = (read_jsonl(runs[d] / 'metrics.jsonl') for d in (1, 2))
  for a, b in zip(one, two, strict=True):
    for key in PER_EPOCH_KEYS - TIMING_KEYS:
      # Counts move by whole items where rounding crosses a line: a
      # prediction at the decision boundary (a few of the 1,000 test and 256
      # train images), a weight at the sparsity threshold (tens of 532,202).
      tolerance = (0.005 if 'accuracy' in key else
                   1e-4 if key == 'sparsity' else 1e-5)
      assert a[key] == pytest.approx(b[key], rel=1e-3, abs=tolerance), key
  s1, s2 = final_state(runs[1]), final_state(runs[2])
  assert jax.tree.structure(s1) == jax.tree.structure(s2)
  # Over all parameters and statistics: rounding can flip single ReLU or
  # max-pool decisions, which moves single elements (and small biases) far
  # more. Per-device batch norm statistics would move them by 7e-3.
  one, two = (np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(
      {k: s[k] for k in ('params', 'batch_stats')})]) for s in (s1, s2))
  change = np.linalg.norm(two - one) / np.linalg.norm(one)
  assert change <= 1e-3, change


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
  workdir: Optional[str] = '{workdir}'
  config: str = 'configs/cifar.py'
  devices: int = 1


def _write_image(path, shape):
  Image.fromarray(np.zeros(shape, np.uint8)).save(path)


def _empty(folder):
  shutil.rmtree(folder)
  folder.mkdir()


# One case for each place a run can stop: the flags, the config check, the
# masks on the model's parameters, the devices, the data, the workdir. The
# wording of every other wrong value is checked where it is made, in this
# process: configuration_test, data_test, config_fuzz_test.
BAD_INPUTS = [
    # Flags and the config file.
    BadInput('unknown key', ('--config.l2.wieght=1',),
             ('--config.l2.wieght:', "no key 'wieght'", 'Did you mean "weight"')),
    BadInput('no config file', (), ('cannot load the config file',
                                    'configs/missing.py'),
             config='configs/missing.py'),
    BadInput('no workdir', (), ('--workdir', 'must have a value'), workdir=None),
    BadInput('a stray argument', ('epochs=3',),
             ('unexpected arguments: epochs=3', '--config.KEY=VALUE')),
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
  def run(case):
    root = tmp_path_factory.mktemp('bad')
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
    result = run_cli(case.workdir and fill(case.workdir), *arguments,
                     devices=case.devices, config=case.config, timeout=300)
    return result, workdir, data_root

  with concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count())) as pool:
    return dict(zip((c.name for c in BAD_INPUTS), pool.map(run, BAD_INPUTS)))


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


def test_fashion_mnist_from_debian_files_through_tfds(tmp_path):
  if not FASHION_MNIST.exists():
    if os.environ.get('CI'):
      pytest.fail(f'{FASHION_MNIST} missing: apt-get install dataset-fashion-mnist')
    pytest.skip('Debian package dataset-fashion-mnist is not installed')
  result = run_cli(
      tmp_path / 'run', f'--config.data_dir={tmp_path / "tfds"}',
      f'--config.manual_dir={FASHION_MNIST}', '--config.max_train_examples=2048',
      '--config.num_epochs=1', '--config.batch_size=64',
      "--config.noise_sigmas=()", config='configs/fashion_mnist.py')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'shape (28, 28, 1), 10 classes' in result.stderr
  record = read_jsonl(tmp_path / 'run' / 'metrics.jsonl')[-1]
  assert record['test_accuracy'] >= 0.6, record
