"""benchmarks.sweep with `stack`: fresh cells that differ only in α and λ
train as one program (l2jax.cells.train_and_evaluate), each writing the
outputs its own run writes, with the numbers of its own run."""

import json

import pytest

from benchmarks import sweep
from helpers import read_jsonl
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
  base.num_epochs = 2
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
      for key in ('val_accuracy', 'test_accuracy', 'scale_invariant_share'):
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
  (tmp_path / cells()[0].name / 'checkpoints' / '3').mkdir(parents=True)
  assert sorted(len(g) for g in sweep.stacks(jobs, 2)) == [1, 1, 1, 1]
