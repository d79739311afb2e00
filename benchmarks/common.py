"""What the benchmark scripts share: the machine line, cells' done check, CSV.

Flag-free, so that every script can import it (the scripts define their own
absl flags).
"""

import csv
import json
import os
import platform

import jax

from l2jax import outputs
from l2jax.errors import L2JaxError

CELL = 'cell.json'  # Beside summary.json: config, wall seconds, divergence.


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f
                  if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def machine() -> str:
  return (f'{cpu_model()}, {os.cpu_count()} cores; JAX on '
          f'{jax.local_device_count()} {jax.default_backend()} device(s); '
          f'load average {os.getloadavg()[0]:.2f} at the end')


def read_json(workdir: str, name: str):
  """The JSON file `name` in `workdir`, or None where there is none."""
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def is_done(workdir: str, config) -> bool:
  """Whether the cell has a summary.json, or diverged (no summary, ever).

  A done cell run with another config stops the sweep: its numbers would
  not be the preset's.
  """
  summary = read_json(workdir, outputs.SUMMARY)
  cell = read_json(workdir, CELL)
  if summary is None and not (cell and cell['diverged']):
    return False
  ran = summary['config'] if summary else cell['config']
  if ran != json.loads(json.dumps(config.to_dict())):
    raise L2JaxError(f'{workdir} was run with another config; use another '
                     '--out, or delete it to run it again')
  return True


def write_csv(rows: list, columns: list, path: str) -> None:
  with open(path + '.tmp', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(path + '.tmp', path)
