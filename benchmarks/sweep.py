"""One runner for every sweep: cells, their records, executors and rows.

A sweep is a list of `Cell`s over a base training config (a sweep config
file's `train`, e.g. configs/sweeps/coupled_vs_decoupled.py). Each cell is
one `l2jax.train.train_and_evaluate` call, the training code of
`l2jax.main`, in its own workdir under OUT/cells/, which is its record:

- `summary.json` (l2jax's) once it finished;
- `cell.json` (this module's): its config, wall seconds and `status`:
  `done`, `diverged` (l2jax's DivergenceError: a result, never rerun) or
  `failed` (any other exception, with its one-line message: rerun by the
  next call; the sweep goes on). A collapsed network (weights at 0) is
  `done`: its undefined measures are null in metrics.jsonl, nan in its row.
  Ctrl-C stops the sweep; so does a preemption notice (SIGTERM, SIGUSR1),
  once the cell in training has saved its checkpoint (exit status 75).

`run` trains the cells that are not done, through an executor:

- `inline`: one after another in this process, sharing each read of the
  data among cells that read the same data;
- `local`: submitit's local executor, `parallel` jobs at once as
  subprocesses, each training its share of the cells; `pin` gives each job
  one GPU (`gpus`) or its own group of CPU cores (`cores`);
- `slurm`: submitit's Slurm executor, one job array per call.

Each job trains its cells one after another or, with `stack` = K > 1, up
to K fresh cells that differ only in α and λ at once, as one program
(`l2jax.cells.train_and_evaluate`; `stacks`): that pays on a GPU; on a CPU
core the stacked step is slower a cell (docs/performance.md). A cell killed midway resumes from its own
checkpoints on the next call, alone. Flag-free, so that every script can
import it and define its own flags.
"""

import copy
import csv
import dataclasses
import gc
import io
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
import traceback
from typing import NamedTuple, Optional, Sequence

from absl import logging
import jax

from l2jax import cells as cells_lib
from l2jax import checkpoints
from l2jax import configuration
from l2jax import data as data_lib
from l2jax import outputs
from l2jax import preemption
from l2jax import train
from l2jax.errors import DivergenceError, L2JaxError

CELL = 'cell.json'
EXECUTORS = ('inline', 'local', 'slurm')
# Memory mappings a sweep's process holds before it drops JAX's programs
# (`release_programs`): a third of Linux's default vm.max_map_count.
MAX_MAPPINGS = 20_000
PINS = ('none', 'cores', 'gpus')
# Stacked cells a job trains at once on an accelerator unless told: the
# largest K measured, and the fastest a cell, on an H200
# (docs/performance.md). On a CPU core the stacked step is slower a cell.
GPU_STACK = 16
# Config keys that decide what `data.load` returns: cells equal in these
# share one read of the data.
DATA_KEYS = ('dataset', 'data_dir', 'manual_dir', 'validation_fraction',
             'folds', 'fold', 'max_train_examples', 'seed')


class Cell(NamedTuple):
  """One training run of a sweep.

  name: its workdir under OUT/cells; overrides: flattened config keys
  (`l2.weight`) and values over the sweep's base config; labels: the
  columns it adds to its row (method, lr, λ, seed, ...).
  """
  name: str
  overrides: dict
  labels: dict


@dataclasses.dataclass(frozen=True)
class Executor:
  """How `run` trains the cells; see the module docstring."""
  kind: str = 'inline'
  parallel: int = 1
  pin: str = 'none'
  cells_per_job: int = 0  # 0: the cells spread evenly over `parallel` jobs.
  slurm: dict = dataclasses.field(default_factory=dict)  # submitit's slurm_*.
  stack: int = 0  # Cells a job trains at once (`stacks`); 0: `auto_stack`.


def cell_config(base, cell: Cell):
  """The base config with the cell's overrides."""
  config = copy.deepcopy(base)
  config.unlock()
  config.update_from_flattened_dict(cell.overrides)
  return config


def workdir(out: str, cell: Cell) -> str:
  return os.path.join(out, 'cells', cell.name)


def read_json(folder: str, name: str) -> Optional[dict]:
  """The JSON file `name` in `folder`, or None where there is none."""
  path = os.path.join(folder, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _jsonable(config) -> dict:
  return json.loads(json.dumps(config.to_dict()))


def is_done(folder: str, config) -> bool:
  """Whether the cell finished (summary.json) or diverged; a failed or
  killed cell is not done. L2JaxError when it ran with another config: its
  numbers would not be the sweep's. Not another config: a key added since,
  at the value it ran with (`configuration.ADDED`), and the values a
  resumed run may change (`checkpoints.MAY_CHANGE_ON_RESUME`: where data
  lives, how often to evaluate, save, log or measure rotation), which do
  not change the trained weights."""
  summary = read_json(folder, outputs.SUMMARY)
  record = read_json(folder, CELL) or {}
  if summary is None and record.get('status') != 'diverged':
    return False
  ran = summary['config'] if summary else record['config']
  trained = lambda c: {k: v for k, v in c.items()
                       if k not in checkpoints.MAY_CHANGE_ON_RESUME}
  if trained(configuration.completed(ran)) != trained(_jsonable(config)):
    raise L2JaxError(f'{folder} was run with another config; use another '
                     '--out, or delete it to run it again')
  return True


def one_line(error: BaseException) -> str:
  """`Type: first line of the message`, for cell.json and the report."""
  message = str(error).strip().splitlines()
  return f'{type(error).__name__}: {message[0] if message else ""}'.strip()


def train_cell(folder: str, config, dataset=None,
               keep_checkpoints: bool = False) -> dict:
  """Trains one cell and writes its cell.json; returns that record.

  Any exception but an interrupt is recorded, not raised: the sweep goes on.
  """
  os.makedirs(folder, exist_ok=True)
  start = time.perf_counter()
  try:
    outcome = train.train_and_evaluate(config, folder, dataset)
  except Exception as e:  # pylint: disable=broad-except
    outcome = e
  return write_record(folder, config, outcome, time.perf_counter() - start,
                      keep_checkpoints)


def train_stack(jobs: Sequence[tuple], dataset=None,
                keep_checkpoints: bool = False) -> list:
  """Trains (name, folder, config) jobs that may be stacked as one program
  (`l2jax.cells.train_and_evaluate`) and writes each one's cell.json, its
  wall seconds the stack's over the cells; returns the records. Where the
  stack fails (out of memory, say), each cell is trained alone, resuming
  from what the stack saved."""
  for _, folder, _ in jobs:
    os.makedirs(folder, exist_ok=True)
  start = time.perf_counter()
  try:
    outcomes = cells_lib.train_and_evaluate([j[2] for j in jobs],
                                            [j[1] for j in jobs], dataset)
  except preemption.Preempted as e:
    # The diverged cells are results; the others resume alone.
    for (_, folder, config), outcome in zip(
        jobs, getattr(e, 'outcomes', ())):
      if outcome is not None:
        write_record(folder, config, outcome, math.nan, keep_checkpoints)
    raise
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('a stack of %d cells failed (%s); training them alone:'
                    '\n%s', len(jobs), one_line(e),
                    ''.join(traceback.format_exception(e)))
    return [train_cell(folder, config, dataset, keep_checkpoints)
            for _, folder, config in jobs]
  seconds = (time.perf_counter() - start) / len(jobs)
  return [write_record(folder, config, outcome, seconds, keep_checkpoints,
                       stack=len(jobs))
          for (_, folder, config), outcome in zip(jobs, outcomes)]


def write_record(folder: str, config, outcome, seconds: float,
                 keep_checkpoints: bool, stack: int = 1) -> dict:
  """Writes the cell.json of a run's `outcome` (its summary, or the
  exception that stopped it) and returns it; removes the checkpoints of a
  done or diverged cell unless `keep_checkpoints`."""
  if isinstance(outcome, DivergenceError):
    status, error, result = 'diverged', str(outcome), 'diverged'
  elif isinstance(outcome, BaseException):
    status, error = 'failed', one_line(outcome)
    result = f'failed ({error})'
    logging.warning('cell %s failed:\n%s', folder, ''.join(
        traceback.format_exception(outcome)))
  else:
    final = outcome['final']
    status, error = 'done', None
    result = (f'val {_number(final.get("val_accuracy")):.4f}, '
              f'test {_number(final.get("test_accuracy")):.4f}')
  record = {'config': config.to_dict(), 'status': status, 'error': error,
            'wall_seconds': seconds, 'result': result, 'stack': stack}
  outputs.write_atomic(os.path.join(folder, CELL),
                       json.dumps(record, indent=2) + '\n')
  if not keep_checkpoints and status != 'failed':
    shutil.rmtree(os.path.join(folder, 'checkpoints'), ignore_errors=True)
  return record


def _number(value) -> float:
  """A value of metrics.jsonl as a float: nan for null or absent."""
  return math.nan if value is None else value


def _data_key(config) -> tuple:
  return tuple(json.dumps(config[k]) for k in DATA_KEYS)


class Progress:
  """Prints `[done/total] cell: result, seconds; ETA` as cells finish."""

  def __init__(self, total: int):
    self.total, self.done, self.start = total, 0, time.perf_counter()

  def eta(self) -> str:
    if not self.done or self.done >= self.total:
      return ''
    elapsed = time.perf_counter() - self.start
    left = elapsed / self.done * (self.total - self.done)
    return f'; ETA {time.strftime("%H:%M", time.localtime(time.time() + left))}'\
        f' ({left / 60:.0f} min left)'

  def cell(self, name: str, record: dict) -> None:
    self.done += 1
    print(f'[{self.done}/{self.total}] {name}: {record["result"]}, '
          f'{record["wall_seconds"]:.0f} s{self.eta()}', flush=True)


def auto_stack(stack: int) -> int:
  """`stack`, or where it is 0, 1 on a CPU and GPU_STACK elsewhere."""
  return stack or (1 if jax.default_backend() == 'cpu' else GPU_STACK)


def stacks(jobs: Sequence[tuple], stack: int) -> list:
  """`jobs` in groups to train together: up to `stack` fresh cells whose
  configs differ only in what `l2jax.cells` may stack (α and λ), each other
  cell alone; the groups of one data key together."""
  groups, alone = {}, []
  for job in sorted(jobs, key=lambda job: _data_key(job[2])):
    _, folder, config = job
    if stack > 1 and cells_lib.fresh(folder):
      key = json.dumps({k: v for k, v in cells_lib.flat(config).items()
                        if k not in cells_lib.STACKED}, sort_keys=True,
                       default=str)
      groups.setdefault(key, []).append(job)
    else:
      alone.append([job])
  chunks = alone + [group[i:i + stack] for group in groups.values()
                    for i in range(0, len(group), stack)]
  return sorted(chunks, key=lambda chunk: _data_key(chunk[0][2]))


def train_cells(jobs: Sequence[tuple], keep_checkpoints: bool = False,
                progress: Optional[Progress] = None, stack: int = 0) -> None:
  """(name, folder, config) one after another, or up to `stack` at once
  (`stacks`, `auto_stack`), one read of the data for cells that read the
  same data."""
  progress, stack = progress or Progress(len(jobs)), auto_stack(stack)
  dataset, key = None, None
  for chunk in stacks(jobs, stack):
    config = chunk[0][2]
    if _data_key(config) != key:
      dataset, key = None, _data_key(config)  # Frees the last data first.
      try:
        dataset = data_lib.load(config)
      except L2JaxError:
        dataset = None  # train_cell meets the error again and records it.
    try:
      if len(chunk) == 1:
        chunk_records = [train_cell(chunk[0][1], config, dataset,
                                    keep_checkpoints)]
      else:
        chunk_records = train_stack(chunk, dataset, keep_checkpoints)
    except preemption.Preempted as e:
      # The cells' checkpoints are saved; the next call resumes them.
      print(f'{", ".join(job[0] for job in chunk)}: {e}', flush=True)
      raise SystemExit(preemption.EXIT_STATUS) from e
    for (name, _, _), record in zip(chunk, chunk_records):
      progress.cell(name, record)
    release_programs()


def _mappings() -> Optional[int]:
  """This process's memory mappings, or None where /proc cannot tell."""
  try:
    with open('/proc/self/maps') as f:
      return sum(1 for _ in f)
  except OSError:
    return None


def release_programs() -> None:
  """Drops JAX's compiled programs once the process holds `MAX_MAPPINGS`
  memory mappings (after every cell where that cannot be read).

  Each cell's programs are new closures, so JAX's caches keep all of them,
  and with them some 600 mappings a cell: a job's process reached Linux's
  vm.max_map_count (65,530) after about 100 cells, and XLA then failed with
  "LLVM compilation error: Cannot allocate memory". Dropped, the next cell
  reads its programs back from the persistent compilation cache, at a
  second or two a cell; hence only when needed.
  """
  count = _mappings()
  if count is None or count > MAX_MAPPINGS:
    jax.clear_caches()
    gc.collect()


def _job(jobs: Sequence[tuple], keep_checkpoints: bool, pin: str,
         index: int, parallel: int, stack: int = 0) -> int:
  """The body of one submitit job: pins itself, then `train_cells`."""
  from l2jax import caches  # pylint: disable=g-import-not-at-top
  from l2jax import cpu  # pylint: disable=g-import-not-at-top
  cpu.configure()
  caches.compilation_cache()
  if pin == 'cores' and hasattr(os, 'sched_setaffinity'):
    cores = sorted(os.sched_getaffinity(0))
    share = max(len(cores) // parallel, 1)
    group = cores[(index % parallel) * share:][:share] or cores
    os.sched_setaffinity(0, group)
  logging.set_verbosity(logging.WARNING)
  train_cells(jobs, keep_checkpoints, stack=stack)
  return len(jobs)


def _chunks(jobs: list, size: int) -> list:
  return [jobs[i:i + size] for i in range(0, len(jobs), size)]


def make_submitit_executor(executor: Executor, folder: str, jobs: int):
  """submitit's executor for `executor.kind` ('local' or 'slurm')."""
  import submitit  # pylint: disable=g-import-not-at-top
  if executor.kind == 'local':
    ex = submitit.LocalExecutor(folder=folder)
    parameters = dict(timeout_min=executor.slurm.get('timeout_min', 24 * 60))
    ex.update_parameters(**parameters)
    return ex
  ex = submitit.AutoExecutor(folder=folder, cluster='slurm')
  ex.update_parameters(**{'slurm_array_parallelism': executor.parallel,
                          'name': 'l2jax-sweep', **executor.slurm})
  del jobs
  return ex


def submit(executor: Executor, jobs: list, out: str,
           keep_checkpoints: bool) -> list:
  """Submits `jobs` through submitit; returns the submitit jobs."""
  size = executor.cells_per_job or math.ceil(len(jobs) / executor.parallel)
  chunks = _chunks(sorted(jobs, key=lambda job: _data_key(job[2])), size)
  ex = make_submitit_executor(executor, os.path.join(out, 'submitit'),
                              len(chunks))
  if executor.kind == 'local':
    submitted = []
    for index, chunk in enumerate(chunks):
      if executor.pin == 'gpus':
        ex.update_parameters(visible_gpus=(index % executor.parallel,),
                             gpus_per_node=1)
      submitted.append(ex.submit(_job, chunk, keep_checkpoints,
                                 executor.pin, index, executor.parallel,
                                 executor.stack))
    return submitted
  n = len(chunks)
  return ex.map_array(_job, chunks, [keep_checkpoints] * n,
                      [executor.pin] * n, list(range(n)),
                      [executor.parallel] * n, [executor.stack] * n)


def wait(submitted: list, jobs: list, poll_seconds: float) -> None:
  """Waits for submitit jobs, printing each cell as its cell.json appears;
  Ctrl-C cancels the jobs."""
  progress = Progress(len(jobs))
  seen = set()
  try:
    while True:
      for name, folder, config in jobs:
        record = read_json(folder, CELL)
        if name not in seen and record and record['config'] == _jsonable(
            config):
          seen.add(name)
          progress.cell(name, record)
      if all(job.done() for job in submitted):
        break
      time.sleep(poll_seconds)
  except KeyboardInterrupt:
    for job in submitted:
      job.cancel(check=False)
    raise
  for job in submitted:
    try:
      job.result()
    except Exception as e:  # pylint: disable=broad-except
      print(f'a sweep job ended early ({one_line(e)}); its unfinished cells '
            'run again with the same command', flush=True)


def run(cells: Sequence[Cell], base, out: str,
        executor: Executor = Executor(), keep_checkpoints: bool = False) -> int:
  """Trains the cells not done yet; returns how many it started.

  Every config is validated before any training (ConfigError names the
  first wrong one); a cell done with another config stops the sweep.
  """
  jobs = {}
  for cell in cells:
    config = cell_config(base, cell)
    configuration.validate(config, jax.local_device_count())
    folder = workdir(out, cell)
    if folder not in jobs and not is_done(folder, config):
      jobs[folder] = (cell.name, folder, config)  # Cells may share a folder.
  jobs = list(jobs.values())
  if not jobs:
    return 0
  print(f'{len(jobs)} of {len({c.name for c in cells})} cells to train '
        f'({executor.kind})', flush=True)
  if executor.kind == 'inline':
    train_cells(jobs, keep_checkpoints, stack=executor.stack)
  else:
    # A local job's files are read on this machine; a cluster's through its
    # shared file system, less often.
    wait(submit(executor, jobs, out, keep_checkpoints), jobs,
         poll_seconds=1.0 if executor.kind == 'local' else 10.0)
  return len(jobs)


def row(out: str, cell: Cell, metrics: Sequence[str]) -> dict:
  """A cell's row from its files: labels, status, the final `metrics` (nan
  where absent: a diverged or failed cell), timing and workdir."""
  folder = workdir(out, cell)
  summary = read_json(folder, outputs.SUMMARY)
  record = read_json(folder, CELL) or {}
  final = summary['final'] if summary else {}
  epochs = outputs.read_metrics(folder) if summary else []
  status = 'done' if summary else record.get('status', 'not run')
  return {
      **cell.labels, 'status': status,
      **{k: _number(final.get(k)) for k in metrics},
      'epochs': len(epochs),
      'wall_seconds': record.get('wall_seconds', math.nan),
      # l2jax's per-epoch training time (epoch 1 includes compilation).
      'train_seconds': sum(_number(r['epoch_seconds']) for r in epochs),
      'images_per_second': statistics.median(
          [_number(r['images_per_second']) for r in epochs[1:] or epochs] or
          [math.nan]),
      'error': record.get('error') or '',
      'workdir': os.path.relpath(folder, out),
  }


def best(rows: Sequence[dict]) -> Optional[dict]:
  """The row of highest validation accuracy, ties to lower validation loss;
  never a diverged or failed row (nan); None if there is no other."""
  finite = [r for r in rows if math.isfinite(r['val_accuracy'])]
  return max(finite, key=lambda r: (r['val_accuracy'], -r['val_loss']),
             default=None)


def write_csv(rows: Sequence[dict], columns: Sequence[str], path: str) -> None:
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=columns, extrasaction='ignore')
  writer.writeheader()
  writer.writerows(rows)
  outputs.write_atomic(path, text.getvalue())


def read_csv(path: str) -> list:
  """`write_csv`'s rows back: numbers as floats (`seed` an int), the rest as
  text."""
  def value(key: str, text: str):
    if key == 'seed':
      return int(text)
    try:
      return float(text)
    except ValueError:
      return text
  with open(path, newline='') as f:
    return [{k: value(k, v) for k, v in r.items()} for r in csv.DictReader(f)]


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f
                  if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def machine() -> str:
  device = jax.local_devices()[0]
  kind = '' if device.platform == 'cpu' else f' ({device.device_kind})'
  return (f'{cpu_model()}, {os.cpu_count()} cores; JAX on '
          f'{jax.local_device_count()} {jax.default_backend()} device(s)'
          f'{kind}; '
          f'load average {os.getloadavg()[0]:.2f} at the end')


def command_line() -> str:
  """How this script was started, as a user would type it."""
  module = sys.modules['__main__'].__spec__
  start = ['python', '-m', module.name] if module else ['python', sys.argv[0]]
  return shlex.join(start + sys.argv[1:])


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def config_changes(config, reference) -> str:
  """`key=value` for each value of `config` that differs from `reference`."""
  now, then = _flatten(config.to_dict()), _flatten(reference.to_dict())
  return ', '.join(f'`{k}={v}`' for k, v in now.items() if then.get(k) != v)


def rotation_sampling(config) -> str:
  """How often a run of `config` measures rotation, for a report."""
  every = config.rotation_every_steps
  how = {0: 'off', 1: 'in every step'}.get(every, f'once every {every} steps')
  return f'rotation measures {how} (config.rotation_every_steps)'


def header(preset, rows: Sequence[dict], seconds: float, trained: int,
           reference) -> list:
  """The report's lines on how its numbers were made: the command, the
  preset and its training config (as changes of `reference`), the machine,
  versions, the run time, and the cells that did not finish."""
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  # A cell shared by several rows (a λ = 0 cell of two methods) counts once.
  rows = list({r['workdir']: r for r in rows}.values())
  unfinished = [r for r in rows if r['status'] != 'done']
  return [
      '    ' + command_line(), '',
      f'- Preset `{preset.preset}` (configs/sweeps/); training config: '
      f'configs/cifar.py with {config_changes(preset.train, reference)}',
      f'- Machine: {machine()}',
      f'- Versions: jax {jax.__version__}, flax {flax.__version__}, '
      f'optax {optax.__version__}',
      f'- Run time: {seconds / 60:.1f} min for this command ({trained} of '
      f'{len(rows)} cells trained, the rest done before); '
      f'{sum(r["wall_seconds"] for r in rows if math.isfinite(r["wall_seconds"])) / 60:.1f}'
      " min summed over the cells' last training calls",
      f'- Cells that did not finish (left out): {len(unfinished)}' + ''.join(
          f'; `{r["workdir"]}` {r["status"]}'
          + (f' ({r["error"]})' if r['error'] else '') for r in unfinished),
  ]
