"""`python -m l2jax.main` end to end, on the real data in ../shared/data."""

import concurrent.futures
import json
import os
import pathlib
import re
import shutil
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np
from PIL import Image
import pytest

from helpers import assert_clean_error
from helpers import final_params
from helpers import final_state
from helpers import read_jsonl
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


def test_real_cifar_slice_learns_writes_every_output_and_resumes(
    cifar_small, tmp_path):
  common = [f'--config.dataset=folder:{cifar_small}', '--config.batch_size=32',
            '--config.learning_rate=0.02', '--config.augment=False']
  result = run_cli(tmp_path, *common, '--config.num_epochs=3')
  assert result.returncode == 0, result.stderr[-3000:]

  records = read_jsonl(tmp_path / 'metrics.jsonl')
  assert [r['epoch'] for r in records] == [1, 2, 3]
  for record in records:
    assert PER_EPOCH_KEYS <= set(record), PER_EPOCH_KEYS - set(record)
    assert all(np.isfinite(v) for v in record.values())
  # 2,700 training images / 32 = 84 steps an epoch, 252 in all.
  assert records[-1]['step'] == 252
  assert records[-1]['test_accuracy'] >= 0.30, records[-1]
  # Coupled decay is not in the loss, but its penalty is still reported.
  assert records[-1]['train_loss'] == records[-1]['data_loss']
  assert records[-1]['l2_penalty'] == pytest.approx(
      0.5 * 5e-4 * records[-1]['weight_norm'] ** 2, rel=1e-4)

  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['final'] == records[-1]
  assert summary['config']['l2'] == {'mode': 'coupled', 'weight': 5e-4,
                                     'mask': 'kernels', 'normalized': False,
                                     'schedule': 'lr'}
  assert (tmp_path / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert (tmp_path / 'checkpoints' / '252').is_dir()

  # The same command again resumes after the last step: nothing to train,
  # the same results.
  resumed = run_cli(tmp_path, *common, '--config.num_epochs=3')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resuming from the checkpoint of step 252' in resumed.stderr
  assert read_jsonl(tmp_path / 'metrics.jsonl') == records
  assert json.loads((tmp_path / 'summary.json').read_text()) == summary
  # Another config would not give the run it claims to be: refused.
  changed = run_cli(tmp_path, *common, '--config.num_epochs=4')
  assert_clean_error(changed, 'another config', 'config.num_epochs: 3 then, 4 now',
                     'new --workdir')
  assert read_jsonl(tmp_path / 'metrics.jsonl') == records


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


BAD_INPUTS = [
    # Flags and the config file.
    BadInput('unknown key', ('--config.l2.wieght=1',),
             ('--config.l2.wieght:', "no key 'wieght'", 'Did you mean "weight"')),
    BadInput('not an integer', ('--config.num_epochs=abc',),
             ('--config.num_epochs=abc', 'invalid literal for int()')),
    BadInput('not a boolean', ('--config.augment=maybe',),
             ('--config.augment=maybe', 'Non-boolean')),
    BadInput('no config file', (), ('cannot load the config file',
                                    'configs/missing.py'),
             config='configs/missing.py'),
    BadInput('no workdir', (), ('--workdir', 'must have a value'), workdir=None),
    BadInput('a stray argument', ('epochs=3',),
             ('unexpected arguments: epochs=3', '--config.KEY=VALUE')),
    # Values out of range or not among the choices.
    BadInput('no epochs', ('--config.num_epochs=0',),
             ('config.num_epochs=0 must lie in [1, inf)',)),
    BadInput('infinite learning rate', ('--config.learning_rate=inf',),
             ('config.learning_rate=inf must be a finite number',)),
    BadInput('unknown optimizer', ('--config.optimizer=lamb',),
             ("config.optimizer='lamb' is not one of sgd, adam",)),
    BadInput('validation is all of train', ('--config.validation_fraction=1',),
             ('config.validation_fraction=1.0 must lie in [0, 1)',)),
    BadInput('invalid mask regex', ('--config.l2.mask=(',),
             ("config.l2.mask='('", 'not a valid regular expression')),
    # Combinations.
    BadInput('L2 weight without a mode', ('--config.l2.mode=none',),
             ('config.l2.weight=0.0005 has no effect', 'config.l2.mode=none')),
    BadInput('warmup as long as training',
             ('--config.warmup_epochs=3', '--config.num_epochs=3'),
             ('config.warmup_epochs=3.0', 'config.num_epochs=3')),
    BadInput('mask matching no parameter',
             ('--config.l2.mask=BatchNorm', '--config.batch_size=4'),
             ("config.l2.mask='BatchNorm' matches no parameter",
              'Conv_0/kernel')),
    BadInput('manual_dir with a folder', ('--config.manual_dir=/tmp',),
             ("config.manual_dir='/tmp' has no effect",)),
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
    BadInput('no such folder', ('--config.dataset=folder:{data}/elsewhere',),
             ('{data}/elsewhere has no train/ folder',)),
    BadInput('no test split', (), ('{data} has no test/ folder',),
             breaks=lambda data: shutil.rmtree(data / 'test')),
    BadInput('empty split', (), ('{data}/test is empty',),
             breaks=lambda data: _empty(data / 'test')),
    BadInput('class without images', (),
             ('class folder {data}/train/dog holds no', 'image'),
             breaks=lambda data: _empty(data / 'train/dog')),
    BadInput('classes differ', (), ('only in train: dog', 'only in test: cow'),
             breaks=lambda data: (data / 'test/dog').rename(data / 'test/cow')),
    BadInput('a file among the classes', (), ('{data}/train/notes.txt is a file',),
             breaks=lambda data: (data / 'train/notes.txt').write_text('cats')),
    BadInput('corrupt image', (),
             ('cannot decode the image {data}/train/dog/3.jpg',),
             breaks=lambda data: (data / 'train/dog/3.jpg').write_bytes(
                 b'\xff' * 99)),
    BadInput('images of two sizes', (),
             ('{data}/train/dog/1.png is 7x6 pixels', 'one size'),
             breaks=lambda data: _write_image(data / 'train/dog/1.png', (7, 6, 3))),
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
  # Nothing written before is lost, and nothing new is written.
  assert os.listdir(workdir) == ['metrics.jsonl']
  assert (workdir / 'metrics.jsonl').read_text() == EARLIER


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
