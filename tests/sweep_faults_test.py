"""A sweep (benchmarks.sweep.run) outlives its cells: a network that
collapses is a result, a cell that raises is recorded as failed in one line
and the sweep goes on; Ctrl-C and a preemption notice stop it."""

import json
import math
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from benchmarks import sweep
from configs import cifar
from helpers import read_jsonl
from l2jax import preemption
from l2jax import train


def base_config(dataset: str):
  config = cifar.get_config()
  config.update(dataset=dataset, model='seed_cnn_narrow', augment=False,
                max_train_examples=128, batch_size=32, num_epochs=1,
                noise_sigmas=(), checkpoint_every_steps=0)
  return config


def image_folder(root, per_class: dict) -> str:
  """root/{train,test}/{0,1}/*.png: random 8x8 images, `per_class[split]`
  of each class."""
  rng = np.random.default_rng(0)
  for split, n in per_class.items():
    for label in '01':
      (root / split / label).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            root / split / label / f'{i}.png')
  return f'folder:{root}'


def cell_record(out, name) -> dict:
  return json.loads((out / 'cells' / name / sweep.CELL).read_text())


def test_a_collapsed_network_and_a_failing_cell_leave_the_sweep_running(
    tmp_path):
  # SGD without momentum at α = 1 with coupled λ = 1: w ← w − (w + g), so
  # the kernels go to 0 within the epoch's 4 steps, batch norm or not.
  collapse = sweep.Cell('collapse', {
      'batch_norm': True, 'momentum': 0.0, 'learning_rate': 1.0,
      'l2.weight': 1.0, 'schedule': 'constant'}, {'name': 'collapse'})
  # Raises inside training: no parameter matches the mask.
  failing = sweep.Cell('failing', {'l2.mask': '^Nothing/'}, {'name': 'failing'})
  # 160 training images: 16 held out, 128 trained on in 4 steps of 32.
  base = base_config(image_folder(tmp_path / 'data', {'train': 80, 'test': 8}))
  out = tmp_path / 'out'
  assert sweep.run([failing, collapse], base, str(out)) == 2

  assert cell_record(out, 'collapse')['status'] == 'done'
  record = read_jsonl(out / 'cells' / 'collapse' / 'metrics.jsonl')[-1]
  assert record['kernel_norm/Conv_0'] == 0.0
  assert record['effective_lr/Conv_0'] is None  # α / 0²: not a number.
  assert math.isfinite(record['val_accuracy'])

  failed = cell_record(out, 'failing')
  assert failed['status'] == 'failed'
  assert failed['error'].startswith(
      "ConfigError: config.l2.mask='^Nothing/' matches no parameter")
  assert '\n' not in failed['error']
  assert not sweep.is_done(str(out / 'cells' / 'failing'),
                           sweep.cell_config(base, failing))  # Rerun next.

  # The report's header names the failed cell and its error.
  rows = [sweep.row(str(out), c, ('val_accuracy', 'val_loss'))
          for c in (collapse, failing)]
  assert [r['status'] for r in rows] == ['done', 'failed']
  assert sweep.best(rows) == rows[0]
  header = sweep.header(ml_collections.ConfigDict(dict(preset='t', train=base)),
                        rows, 1.0, 2, cifar.get_config())
  assert header[-1].startswith('- Cells that did not finish (left out): 1; '
                               '`cells/failing` failed (ConfigError:')


def cells():
  return [sweep.Cell(name, {'seed': seed}, {'name': name})
          for seed, name in enumerate(('first', 'second'))]


def test_any_exception_of_a_cell_is_recorded_in_one_line(tmp_path,
                                                          monkeypatch):
  def train_and_evaluate(config, folder, dataset):
    del folder, dataset
    if config.seed == 0:
      raise RuntimeError('out of memory\nat some place')
    return {'final': {'val_accuracy': None, 'test_accuracy': 0.5}}

  monkeypatch.setattr(train, 'train_and_evaluate', train_and_evaluate)
  assert sweep.run(cells(), base_config('folder:/nonexistent'),
                   str(tmp_path)) == 2
  assert cell_record(tmp_path, 'first')['error'] == (
      'RuntimeError: out of memory')
  second = cell_record(tmp_path, 'second')
  assert second['status'] == 'done'
  assert second['result'] == 'val nan, test 0.5000'  # A null is nan.


@pytest.mark.parametrize('interrupt, stop', [
    (KeyboardInterrupt(), KeyboardInterrupt),
    (preemption.Preempted(3, 'SIGTERM', 'checkpoints'), SystemExit)])
def test_ctrl_c_and_a_preemption_notice_stop_the_sweep(
    tmp_path, monkeypatch, interrupt, stop):
  trained = []

  def train_and_evaluate(config, folder, dataset):
    del folder, dataset
    trained.append(config.seed)
    raise interrupt

  monkeypatch.setattr(train, 'train_and_evaluate', train_and_evaluate)
  with pytest.raises(stop) as stopped:
    sweep.run(cells(), base_config('folder:/nonexistent'), str(tmp_path))
  if stop is SystemExit:
    assert stopped.value.code == preemption.EXIT_STATUS
  assert trained == [0]
  # Nothing recorded: the next call trains (or resumes) the cell.
  assert not (tmp_path / 'cells' / 'first' / sweep.CELL).exists()


class MappingCount(sweep.Progress):
  """Progress that counts this process's memory mappings after each cell."""

  def __init__(self, total: int):
    super().__init__(total)
    self.mappings = []

  def cell(self, name: str, record: dict) -> None:
    super().cell(name, record)
    with open('/proc/self/maps') as f:
      self.mappings.append(sum(1 for _ in f))


@pytest.mark.skipif(not os.path.exists('/proc/self/maps'), reason='Linux')
def test_cells_in_one_process_do_not_accumulate_memory_mappings(
    tmp_path, monkeypatch):
  """Each cell's compiled programs held some 600 mappings until the process
  ended, and a job of about 100 cells reached vm.max_map_count. With the
  budget at 0 the programs are dropped after every cell."""
  monkeypatch.setattr(sweep, 'MAX_MAPPINGS', 0)
  base = base_config(image_folder(tmp_path / 'data', {'train': 80, 'test': 8}))
  jobs = []
  for seed in range(2):
    config = sweep.cell_config(base, sweep.Cell(f'{seed}', {'seed': seed}, {}))
    jobs.append((f'{seed}', str(tmp_path / 'out' / f'{seed}'), config))
  progress = MappingCount(len(jobs))
  sweep.train_cells(jobs, progress=progress)
  first, last = progress.mappings
  assert last - first < 50, progress.mappings
