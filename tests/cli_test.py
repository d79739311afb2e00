"""`python -m l2jax.main` end to end, on the real data in ../shared/data.
(Runs that stop with an error: cli_errors_test.py.)"""

import json
import os
import pathlib
import re

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from helpers import assert_clean_error
from helpers import final_state
from helpers import foreign_lines
from helpers import read_jsonl
from helpers import run_cli
from helpers import TIMING_KEYS

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
  # As a user runs it: XLA's optimizations on (conftest turns most off),
  # TensorFlow's log level unset; and a temporary folder of its own, to see
  # what it leaves there.
  result = run_cli(workdir, *common, '--config.num_epochs=2',
                   env={'JAX_DISABLE_MOST_OPTIMIZATIONS': None,
                        'TF_CPP_MIN_LOG_LEVEL': None, 'TMPDIR': str(temp)})
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
               '--config.model=seed_cnn_narrow', '--config.batch_norm=True',
               "--config.noise_sigmas=()"]
  runs = {}
  for devices in (1, 2):
    workdir = tmp_path / f'devices{devices}'
    result = run_cli(workdir, *overrides, devices=devices)
    assert result.returncode == 0, result.stderr[-3000:]
    runs[devices] = workdir
  one, two = (read_jsonl(runs[d] / 'metrics.jsonl') for d in (1, 2))
  for a, b in zip(one, two, strict=True):
    for key in {k for k in PER_EPOCH_KEYS - TIMING_KEYS if 'noise' not in k}:
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
