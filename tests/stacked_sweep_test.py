"""benchmarks.sweep with `stack`: fresh cells that differ only in α and λ
train as one program (l2jax.cells.train_and_evaluate), each writing the
outputs its own run writes, with the numbers of its own run."""

import json

import pytest

from benchmarks import sweep
from helpers import read_jsonl
from l2jax import cells as cells_lib
from l2jax import preemption
from sweep_faults_test import base_config, image_folder

# (α, λ) of three cells of one seed; the last diverges (its loss overflows).
CELLS = [(0.05, 1e-3), (0.01, 3e-2), (1e8, 1e-3)]


def cells():
  return [sweep.Cell(f'lr{lr:g}_l{weight:g}',
                     {'learning_rate': lr, 'l2.weight': weight,
                      'l2.mode': 'coupled'}, {}) for lr, weight in CELLS]


@pytest.fixture(scope='module')
def sweeps(tmp_path_factory):
  """The same cells one after another and stacked: {stack: OUT}."""
  root = tmp_path_factory.mktemp('stacked')
  base = base_config(image_folder(root / 'data', {'train': 80, 'test': 8}))
  base.num_epochs, base.noise_sigmas = 2, (0.1,)  # The noisy pass too.
  outs = {}
  for stack in (1, 3):
    outs[stack] = root / f'stack{stack}'
    sweep.run(cells(), base, str(outs[stack]), sweep.Executor(stack=stack))
  return outs


def test_each_stacked_cell_writes_the_numbers_of_its_own_run(sweeps):
  for cell in cells()[:2]:
    alone, stacked = (read_jsonl(sweeps[s] / 'cells' / cell.name /
                                 'metrics.jsonl') for s in (1, 3))
    assert [r['epoch'] for r in stacked] == [1, 2]
    for a, s in zip(alone, stacked):
      for key in ('train_loss', 'weight_norm', 'val_loss', 'test_loss',
                  'learning_rate', 'angular_update/Conv_0'):
        assert s[key] == pytest.approx(a[key], rel=1e-4), key
      for key in ('val_accuracy', 'test_accuracy', 'test_accuracy_noise0.1',
                  'scale_invariant_share'):
        assert s[key] == a[key], key
    record = json.loads((sweeps[3] / 'cells' / cell.name /
                         sweep.CELL).read_text())
    assert (record['status'], record['stack']) == ('done', 3)
    assert (sweeps[3] / 'cells' / cell.name / 'summary.json').exists()


def test_a_cell_that_diverges_in_a_stack_is_diverged_alone(sweeps):
  diverged = cells()[2].name
  for stack in (1, 3):
    record = json.loads((sweeps[stack] / 'cells' / diverged /
                         sweep.CELL).read_text())
    assert record['status'] == 'diverged', record
    assert record['error'].startswith('training diverged at step 3 '), record
  stacked = sweeps[3] / 'cells'
  assert not (stacked / diverged / 'summary.json').exists()
  assert (stacked / cells()[0].name / 'summary.json').exists()


def test_only_fresh_cells_of_one_kind_are_stacked(tmp_path):
  base = base_config('folder:unused')
  jobs = [(c.name, str(tmp_path / c.name), sweep.cell_config(base, c))
          for c in cells()]
  other_seed = sweep.Cell('seed1', {'seed': 1}, {})
  jobs.append((other_seed.name, str(tmp_path / other_seed.name),
               sweep.cell_config(base, other_seed)))
  started = tmp_path / cells()[1].name
  started.mkdir()
  (started / 'metrics.jsonl').write_text('{"epoch": 1}\n')
  groups = sweep.stacks(jobs, 2)
  names = sorted(sorted(job[0] for job in group) for group in groups)
  assert names == sorted([[cells()[0].name, cells()[2].name],
                          [cells()[1].name], ['seed1']])
  assert [len(g) for g in sweep.stacks(jobs, 1)] == [1, 1, 1, 1]
  (started / 'metrics.jsonl').unlink()
  assert sorted(len(g) for g in sweep.stacks(jobs, 2)) == [1, 1, 2]
  (tmp_path / cells()[0].name / 'checkpoints' / '3').mkdir(parents=True)
  groups = sweep.stacks(jobs, 2)
  assert sorted(sorted(job[0] for job in group) for group in groups) == sorted(
      [[cells()[0].name], [cells()[1].name, cells()[2].name], ['seed1']])


def test_cells_of_a_stack_that_fails_train_alone(tmp_path, monkeypatch):
  """A stack that raises (out of memory, say) trains its cells one after
  another, each recorded on its own."""
  def fail(*args):
    raise RuntimeError('RESOURCE_EXHAUSTED: out of memory')
  monkeypatch.setattr(cells_lib, 'train_and_evaluate', fail)
  base = base_config(image_folder(tmp_path / 'data', {'train': 80, 'test': 8}))
  out = tmp_path / 'out'
  sweep.run(cells()[:2], base, str(out), sweep.Executor(stack=2))
  for cell in cells()[:2]:
    record = json.loads((out / 'cells' / cell.name / sweep.CELL).read_text())
    assert (record['status'], record['stack']) == ('done', 1), record


def test_a_preempted_stack_saves_every_cell_and_they_resume_alone(
    tmp_path, monkeypatch):
  """A notice at step 6 (epoch 2 of 4 steps each): the cells still training
  save step 6 and stop the sweep; the one that diverged in epoch 1 is
  recorded. The same command then resumes the two alone to the end."""
  monkeypatch.setattr(preemption.Notice, 'reached',
                      lambda self, step: step == 6)
  base = base_config(image_folder(tmp_path / 'data', {'train': 80, 'test': 8}))
  base.num_epochs = 3
  out = tmp_path / 'out'
  with pytest.raises(SystemExit) as stopped:
    sweep.run(cells(), base, str(out), sweep.Executor(stack=3))
  assert stopped.value.code == preemption.EXIT_STATUS
  folders = [out / 'cells' / c.name for c in cells()]
  for folder in folders[:2]:
    assert (folder / 'checkpoints' / '6').is_dir()
    assert [r['epoch'] for r in read_jsonl(folder / 'metrics.jsonl')] == [1]
    assert not (folder / sweep.CELL).exists()
  record = json.loads((folders[2] / sweep.CELL).read_text())
  assert record['status'] == 'diverged'
  monkeypatch.undo()
  assert sweep.run(cells(), base, str(out), sweep.Executor(stack=3)) == 2
  for folder in folders[:2]:
    record = json.loads((folder / sweep.CELL).read_text())
    assert (record['status'], record['stack']) == ('done', 1)
    assert [r['epoch'] for r in read_jsonl(folder / 'metrics.jsonl')] == [
        1, 2, 3]
