"""`python -m l2jax.main` end to end, on the real data in ../shared/data."""

import json
import os
import pathlib
import re

import jax
import numpy as np
import pytest

from conftest import assert_clean_error
from conftest import final_params
from conftest import read_jsonl
from conftest import run_cli
from conftest import TIMING_KEYS

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
  # Two devices sum each gradient in another order, equal to float rounding.
  # At the default learning rate this batch size makes the first epoch's loss
  # spike, which grows those rounding differences to 1e-3; 0.01 trains stably.
  overrides = [f'--config.dataset=folder:{cifar_small}', '--config.batch_size=32',
               '--config.max_train_examples=256', '--config.num_epochs=2',
               '--config.augment=True', '--config.learning_rate=0.01']
  runs = {}
  for devices in (1, 2):
    workdir = tmp_path / f'devices{devices}'
    result = run_cli(workdir, *overrides, devices=devices)
    assert result.returncode == 0, result.stderr[-3000:]
    runs[devices] = workdir
  one, two = (read_jsonl(runs[d] / 'metrics.jsonl') for d in (1, 2))
  for a, b in zip(one, two, strict=True):
    for key in PER_EPOCH_KEYS - TIMING_KEYS:
      assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
  p1, p2 = final_params(runs[1]), final_params(runs[2])
  for layer in p1:
    for name in p1[layer]:
      np.testing.assert_allclose(p1[layer][name], p2[layer][name],
                                 rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize('override, devices, fragments', [
    ('--config.l2.mode=twice', 1, ['config.l2.mode', 'decoupled']),
    ('--config.l2.weight=-0.001', 1, ['config.l2.weight', '[0,']),
    ('--config.dataset=cifar11', 1, ["'cifar11'", 'folder:PATH']),
    ('--config.dataset=folder:/nonexistent/cifar', 1,
     ['/nonexistent/cifar', 'train/']),
    ('--config.batch_size=127', 2, ['config.batch_size=127', '2 devices']),
    ('--config.l2.mask=BatchNorm', 1, ['matches no parameter']),
])
def test_bad_values_stop_with_one_line(cifar_small, tmp_path, override, devices,
                                       fragments):
  earlier = tmp_path / 'metrics.jsonl'
  earlier.write_text('{"epoch": 1}\n')
  dataset = ([] if '--config.dataset' in override
             else [f'--config.dataset=folder:{cifar_small}'])
  result = run_cli(tmp_path, *dataset, override, devices=devices)
  assert_clean_error(result, 'l2jax: error:', *fragments)
  assert earlier.read_text() == '{"epoch": 1}\n'  # Nothing written is lost.


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
      config='configs/fashion_mnist.py')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'shape (28, 28, 1), 10 classes' in result.stderr
  record = read_jsonl(tmp_path / 'run' / 'metrics.jsonl')[-1]
  assert record['test_accuracy'] >= 0.6, record
