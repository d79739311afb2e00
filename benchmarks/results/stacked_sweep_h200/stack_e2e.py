"""Scratch: a sweep of 16 cpu_bn-like cells end to end, stacked (16) and
one after another, on synthetic data (the device has no TensorFlow to
decode image folders)."""
import json, os, shutil, sys, time
sys.path.insert(0, os.getcwd())
from l2jax import cpu
cpu.configure()
import numpy as np
import jax
from benchmarks import sweep
from configs import cifar
from l2jax import data as data_lib

rng = np.random.default_rng(0)
def split(n):
  return data_lib.Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, n, dtype=np.int32))
dataset = data_lib.Dataset(split(2000), split(5000), split(10000), 10)
data_lib.load = lambda config: dataset
epochs = int(sys.argv[1]); out = sys.argv[2]
# The order of the runs: `stack` values, comma-separated (default 16,1).
order = [int(k) for k in (sys.argv[3] if len(sys.argv) > 3 else '16,1').split(',')]
base = cifar.get_config()
base.update(model='allconv_bn', batch_size=32, num_epochs=epochs, augment=False,
            noise_sigmas=(), checkpoint_every_steps=0, optimizer='sgd',
            eval_every_epochs=epochs)
base.l2.mode = 'coupled'
jobs = []
for lr in (0.001, 0.003, 0.01, 0.03):
  for w in (1e-4, 1e-3, 1e-2, 1e-1):
    c = sweep.cell_config(base, sweep.Cell('x', {'learning_rate': lr, 'l2.weight': w}, {}))
    jobs.append((f'lr{lr}_l{w}', None, c))
result = {'device': str(jax.devices()[0].device_kind), 'epochs': epochs, 'cells': len(jobs)}
for i, stack in enumerate(order):
  folder = f'/tmp/e2e/stack{stack}_{i}'
  shutil.rmtree(folder, ignore_errors=True)
  these = [(n, f'{folder}/{n}', c) for n, _, c in jobs]
  start = time.perf_counter()
  sweep.train_cells(these, stack=stack)
  result[f'run{i}_stack{stack}_s'] = time.perf_counter() - start
  result[f'run{i}_stack{stack}_val'] = [json.load(open(f'{f}/summary.json'))['final']['val_accuracy'] for _, f, _ in these]
  print(json.dumps(result), flush=True)
  json.dump(result, open(os.path.join(out, 'e2e.json'), 'w'), indent=1)
