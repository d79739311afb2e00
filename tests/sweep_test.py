"""benchmarks/sweep.py: the Slurm path up to submission (no cluster here),
through submitit's own mocked Slurm, and the cells' records."""

import json

import pytest

from submitit.slurm import test_slurm

from benchmarks import sweep
from configs import cifar


def test_slurm_submits_one_job_array_with_the_flags_parameters(tmp_path):
  base = cifar.get_config()
  cells = [sweep.Cell(f'm/c{i}', {'l2.weight': i * 1e-3}, {})
           for i in range(5)]
  jobs = [(c.name, sweep.workdir(str(tmp_path), c),
           sweep.cell_config(base, c)) for c in cells]
  executor = sweep.Executor(
      'slurm', parallel=3, cells_per_job=2,
      slurm={'slurm_partition': 'gpu', 'timeout_min': 90, 'gpus_per_node': 1})
  with test_slurm.mocked_slurm():
    submitted = sweep.submit(executor, jobs, str(tmp_path), False)
  scripts = list((tmp_path / 'submitit').glob('*_submission.sh'))
  assert len(scripts) == 1  # One job array.
  text = scripts[0].read_text()
  for line in ('#SBATCH --array=0-2%3', '#SBATCH --partition=gpu',
               '#SBATCH --time=90', '#SBATCH --gpus-per-node=1'):
    assert line in text, text
  # Each array task trains its share of the cells; together, each once.
  shares = [job.submission().args[0] for job in submitted]
  assert [len(s) for s in shares] == [2, 2, 1]
  assert sorted(name for s in shares for name, _, _ in s) == sorted(
      c.name for c in cells)
  weights = {name: config.l2.weight for s in shares for name, _, config in s}
  assert weights == {c.name: c.overrides['l2.weight'] for c in cells}


def test_a_cell_done_with_another_config_stops_the_sweep(tmp_path):
  base = cifar.get_config()
  cell = sweep.Cell('m/c', {'l2.weight': 1e-3}, {})
  folder = tmp_path / 'cells' / 'm' / 'c'
  folder.mkdir(parents=True)
  other = sweep.cell_config(base, sweep.Cell('x', {'l2.weight': 2e-3}, {}))
  (folder / 'summary.json').write_text(json.dumps(
      {'config': other.to_dict(), 'final': {}}))
  try:
    sweep.run([cell], base, str(tmp_path))
  except sweep.L2JaxError as e:
    assert 'was run with another config' in str(e)
  else:
    raise AssertionError('a done cell of another config was accepted')


def done_without(folder, config, key: str):
  """`folder` as a cell that finished with `config` recorded without
  `key` (a key added since)."""
  folder.mkdir()
  recorded = config.to_dict()
  del recorded[key]
  (folder / 'summary.json').write_text(json.dumps(
      {'config': recorded, 'final': {}}))


def test_a_cell_done_before_a_key_was_added_is_done_at_its_value(tmp_path):
  """configuration.ADDED: a cell recorded without `lr_floor` ran with 0."""
  base = cifar.get_config()
  folder = tmp_path / 'c'
  done_without(folder, base, 'lr_floor')
  assert sweep.is_done(str(folder), base)
  base.lr_floor = 0.1
  with pytest.raises(sweep.L2JaxError, match='was run with another config'):
    sweep.is_done(str(folder), base)


def test_a_cell_done_is_done_whatever_a_resumed_run_may_change(tmp_path):
  """A cell recorded before `rotation_every_steps` (it measured every
  step) is done under today's default of 10 and another log interval: they
  do not change the trained weights (`checkpoints.MAY_CHANGE_ON_RESUME`)."""
  base = cifar.get_config()
  folder = tmp_path / 'c'
  done_without(folder, base, 'rotation_every_steps')
  base.log_every_steps = 7
  assert base.rotation_every_steps != 1 and sweep.is_done(str(folder), base)
