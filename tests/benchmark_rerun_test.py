"""benchmarks/coupled_vs_decoupled.py's no-BN smoke preset killed, then run
again: only the cells left train, a failing cell is recorded and reported,
and λ is then chosen by 2-fold cross-validation."""

import os
import pathlib
import signal
import subprocess
import sys

from benchmarks import coupled_vs_decoupled as cvd
from benchmarks import sweep
from configs.sweeps import coupled_vs_decoupled as presets
from helpers import cpu_env
from helpers import read_csv
from helpers import REPO
from helpers import run_benchmark
from helpers import sweep_args


def test_a_killed_sweep_finishes_only_what_was_left_and_a_failed_cell_is_kept(
    cifar_small, tmp_path):
  """The no-BN smoke sweep, killed once its first cells are done; one cell
  made to fail (a workdir with results but no checkpoint). The rerun
  trains only the rest, records the failure, and reports it."""
  out = tmp_path / 'sweep'
  broken = pathlib.Path(sweep.workdir(str(out), cvd.first_grid(
      presets.get_config('smoke'))[-1]))
  broken.mkdir(parents=True)
  (broken / 'metrics.jsonl').write_text('{"epoch": 1}\n')
  smoke = sweep_args(out, cifar_small, 'smoke')
  command = [sys.executable, '-m', 'benchmarks.coupled_vs_decoupled', *smoke]
  process = subprocess.Popen(command, cwd=REPO, env=cpu_env(),
                             stdout=subprocess.PIPE, text=True)
  total = None
  for line in process.stdout:
    total = total or int(line.split(' of ')[1].split()[0])
    # After the first cell: the rest take long enough (seconds each, the
    # programs compiled) that Ctrl-C lands before the sweep ends, on a
    # loaded machine too.
    if line.startswith('[1/'):
      process.send_signal(signal.SIGINT)  # Ctrl-C.
      break
  process.wait(timeout=120)
  assert process.returncode != 0
  done = sum(1 for p in (out / 'cells').glob('*/*/summary.json'))
  assert 1 <= done < total

  rerun = run_benchmark('coupled_vs_decoupled', *smoke)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f'{total - done} of {total} cells to train' in rerun.stdout
  rows = read_csv(out / 'results.csv')
  failed = [r for r in rows if r['status'] == 'failed']
  assert [r['workdir'] for r in failed] == [os.path.relpath(broken, out)]
  assert 'holds results but there is no checkpoint' in failed[0]['error']
  assert 'failed' in (out / 'report.md').read_text()
  assert all(r['status'] == 'done' for r in rows if r not in failed)

  # λ by 2-fold cross-validation at the select lr: the hold-out cells are
  # the grid's, so only the fold runs, the failed cell (again) and the
  # final run train.
  select = run_benchmark('coupled_vs_decoupled', *smoke, '--select=sgdw',
                         '--folds=2')
  assert select.returncode == 0, select.stderr[-3000:]
  assert '5 of 6 cells to train' in select.stdout  # 2 λ × 2 folds + 1.
  text = (out / 'select_sgdw.md').read_text()
  assert 'over 2 folds' in text and 'Chosen λ = ' in text
  assert 'test accuracy' in text
