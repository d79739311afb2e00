"""Cells per hour of a sweep preset: K cells one after another, against one
program that trains the K cells at once (`l2jax.cells`).

    python -m benchmarks.cells_per_hour [--preset=cpu_bn --cells=1,2,4,8
        --layers=cpu_tuned,flax --rounds=6 --steps=6 --threads=1
        --out=benchmarks/results/cells_per_hour_cpu/report.md]

The cells are the first K of the preset's first grid that share a seed (as
stacked cells must: the same initialization, batches and keys), so they
differ in learning rate and λ. For each layer set, one process times, in
interleaved rounds (the order alternating), a block of `--steps` calls of
one cell's own step (`train.pmap_train_step`: every cell's costs the same)
and of the K-cell step (`cells.pmap_train_step`) for each K, on one
synthetic batch of the preset's size. `--threads=1` pins the process to one
core, as each of the sweep's `--parallel=2 --pin=cores` jobs is.

Cells per hour = 3600 K / (compilation + steps a cell × K × seconds a cell's
step): one way one compilation of a cell's step (α and λ are its arguments,
so the cells share it: `train.hyperparameters`), the other one of the
K-cell step. Only training steps and
compilation are counted; loading data, evaluation and checkpoints cost the
same per cell both ways.
"""

import os
import statistics
import sys

from absl import app
from absl import flags
from flax import jax_utils
import jax

from benchmarks import coupled_vs_decoupled as cvd
from benchmarks import sweep
from benchmarks import timing
from configs.sweeps import coupled_vs_decoupled as presets
from l2jax import cells
from l2jax import cpu
from l2jax import devices
from l2jax import models
from l2jax import outputs
from l2jax import train
from l2jax.errors import L2JaxError

CIFAR10_TRAIN = 50_000  # Images in CIFAR-10's training split.


def preset_cells(preset, k: int) -> list:
  """The configs of the first `k` cells of the preset's first grid with
  seed 0 and the first method's optimizer and mode (λ > 0)."""
  method = preset.methods[0]
  chosen = [c for c in cvd.first_grid(preset)
            if c.labels['method'] == method and c.labels['seed'] == 0
            and c.labels['l2_weight'] > 0]
  if not 1 <= k <= len(chosen):
    raise L2JaxError(f'--cells={k}: preset {preset.preset} has {len(chosen)} '
                     f'cells to stack; use values from 1 to {len(chosen)}')
  return [sweep.cell_config(preset.train, c) for c in chosen[:k]]


def steps_per_cell(config, dataset_size: int) -> int:
  """Training steps of one of the preset's cells on a training split of
  `dataset_size` images: as `l2jax.data` splits it, validation is held out
  first and `max_train_examples` caps what remains."""
  if config.folds >= 2:  # np.array_split's sizes.
    held = dataset_size // config.folds + (
        config.fold < dataset_size % config.folds)
  else:
    held = int(round(config.validation_fraction * dataset_size))
  train_size = dataset_size - held
  if config.max_train_examples:
    train_size = min(train_size, config.max_train_examples)
  return train_size // config.batch_size * config.num_epochs


def measure(preset, layers: str, ks: list, rounds: int, steps: int) -> dict:
  """{'cells': {'single' or K: {'compile_s', 'wall', 'cpu'}}, ...}: each
  step's compile seconds and its per-cell step seconds (the median of a
  round's block over K), by round."""
  configs = preset_cells(preset, max(ks))
  for config in configs:
    config.layers = layers
  dataset = timing.synthetic_data(configs[0].batch_size)
  mean, std = dataset.channel_stats()
  model = models.from_config(configs[0], timing.NUM_CLASSES)
  init_rng, train_rng = jax.random.split(jax.random.key(configs[0].seed))
  state, _, penalties = train.initialize(configs[0], model,
                                         dataset.image_shape, 100, init_rng)
  batch = (*timing.first_batch(configs[0], dataset),
           jax_utils.replicate(train_rng))

  def column(p_step, stacked_state, *extra):
    box = [stacked_state]

    def step():
      box[0], metrics = p_step(box[0], *batch, *extra)
      jax.block_until_ready((box[0], metrics))
    return step

  columns = {'single': column(
      train.pmap_train_step(configs[0], penalties, 100),
      devices.replicate(state), train.hyperparameters(configs[0], 100),
      (mean, std))}
  for k in ks:
    columns[k] = column(
        cells.pmap_train_step(configs[0], penalties, 100),
        devices.replicate(cells.stack(state, k)),
        cells.hyperparameters(configs[:k], 100), (mean, std))
  timed = timing.interleave(columns, rounds, steps, timing.matmul_step())
  result = {}
  for name, t in timed['columns'].items():
    k = 1 if name == 'single' else name
    result[name] = {
        'compile_s': t['first_s'],
        'wall': [statistics.median(r) / k for r in t['rounds']],
        'cpu': [statistics.median(r) / k for r in t['cpu_rounds']]}
  return {'cells': result,
          'steps_per_cell': steps_per_cell(configs[0], CIFAR10_TRAIN),
          'cells_config': [(c.learning_rate, c.l2.weight) for c in configs]}


def per_hour(compile_s: float, cell_step_s: float, k: int,
             per_cell: int) -> float:
  return 3600 * k / (compile_s + per_cell * k * cell_step_s)


def report(preset, measurements: dict, ks: list, rounds: int,
           steps: int) -> str:
  lines = [
      '# Cells per hour: one after another, and K at once', '',
      '    ' + sweep.command_line(), '',
      f'- Machine: {sweep.machine()}; this process on '
      f'{len(os.sched_getaffinity(0))} core(s)',
      f'- Preset `{preset.preset}`: {preset.train.model}, batch '
      f'{preset.train.batch_size}, {preset.train.optimizer} (first method: '
      f'{preset.methods[0]})',
      f'- Timing: {rounds} interleaved rounds of {steps} calls of each step; '
      'per-cell step time = the block\'s median / K; speed-up = the median '
      'over rounds of each round\'s ratio (min–max)',
      '- Cells per hour: 3600 K / (one compilation + steps a cell × K × a '
      'cell\'s step), training steps and compilation only', '',
  ]
  for layers, m in measurements.items():
    cells_m, per_cell = m['cells'], m['steps_per_cell']
    single = cells_m['single']
    lines += [f'## Layers `{layers}`', '',
              f'Cells (lr, λ): {m["cells_config"]}; {per_cell} steps a cell; '
              f'compilation: one cell\'s step {single["compile_s"]:.1f} s', '',
              '| K | K-cell step compile [s] | per-cell step, one after '
              'another [ms] (wall / CPU) | per-cell step, K at once [ms] '
              '(wall / CPU) | speed-up, wall (min–max) | speed-up, CPU | '
              'cells/hour one after another | cells/hour K at once |',
              '|---|---|---|---|---|---|---|---|']
    for k in ks:
      stacked = cells_m[k]
      speed = [a / b for a, b in zip(single['wall'], stacked['wall'])]
      speed_cpu = [a / b for a, b in zip(single['cpu'], stacked['cpu'])]
      one_wall = statistics.median(single['wall'])
      k_wall = statistics.median(stacked['wall'])
      lines.append(
          f'| {k} | {stacked["compile_s"]:.1f} | {1e3 * one_wall:.1f} / '
          f'{1e3 * statistics.median(single["cpu"]):.1f} | '
          f'{1e3 * k_wall:.1f} / {1e3 * statistics.median(stacked["cpu"]):.1f}'
          f' | {statistics.median(speed):.2f} ({min(speed):.2f}–'
          f'{max(speed):.2f}) | {statistics.median(speed_cpu):.2f} | '
          f'{per_hour(single["compile_s"], one_wall, k, per_cell):.0f} | '
          f'{per_hour(stacked["compile_s"], k_wall, k, per_cell):.0f} |')
    lines.append('')
  return '\n'.join(lines)


def main(argv):
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.threads:  # Before JAX's thread pool.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:FLAGS.threads])
  cpu.configure()
  try:
    ks = [int(k) for k in FLAGS.cells]
    preset = presets.get_config(FLAGS.preset)
    preset_cells(preset, max(ks))
    if min(ks) < 1:
      raise ValueError(f'--cells={min(ks)}: K must be at least 1')
    for layers in FLAGS.layers:
      models.layer_set(layers)
  except (ValueError, L2JaxError) as e:
    sys.exit(f'cells_per_hour: error: {e}')
  measurements = {layers: measure(preset, layers, ks, FLAGS.rounds,
                                  FLAGS.steps) for layers in FLAGS.layers}
  text = report(preset, measurements, ks, FLAGS.rounds, FLAGS.steps)
  print(text)
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    outputs.write_atomic(FLAGS.out, text)
    print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  flags.DEFINE_enum('preset', 'cpu_bn', presets.PRESETS, 'Sweep preset.')
  flags.DEFINE_list('cells', ['1', '2', '4', '8'], 'Values of K.')
  flags.DEFINE_list('layers', ['cpu_tuned', 'flax'], 'Layer sets.')
  flags.DEFINE_integer('rounds', 6, 'Interleaved rounds.')
  flags.DEFINE_integer('steps', 6, 'Calls of each step a round.')
  flags.DEFINE_integer('threads', 1, 'Cores to run on; 0: all.')
  flags.DEFINE_string('out', None, 'Markdown report to write.')
  app.run(main)
