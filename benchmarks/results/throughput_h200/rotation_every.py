"""A step with its rotation measures in every N-th step, on a GPU.

    python benchmarks/results/throughput_h200/rotation_every.py

`benchmarks.throughput`'s l2jax column (flax's layers on a GPU) for
`allconv_bn` at batch 32 and `seed_cnn` at batch 128, built once per
`config.rotation_every_steps` (1, 10, 0) and timed interleaved: 8 rounds
of 50 steps each; per round the mean step, and the speed-up over measuring
every step, median over rounds (min–max). Made on one H200 (report.md)
when every 10th step went through a `lax.cond` on every backend.
"""
import statistics
from l2jax import cpu
cpu.configure()
import jax
from benchmarks import throughput, timing
from configs import cifar
for model, bs in (('allconv_bn', 32), ('seed_cnn', 128)):
  cols = {}
  for e in (1, 10, 0):
    c = cifar.get_config(); c.model, c.batch_size, c.rotation_every_steps = model, bs, e
    cols[e], _ = throughput.l2jax_column(c, timing.synthetic_data(bs))
  res = timing.interleave(cols, rounds=8, steps=50, reference=timing.matmul_step())['columns']
  means = {e: [statistics.fmean(b) for b in res[e]['rounds']] for e in cols}
  for e in cols:
    ups = [a / b for a, b in zip(means[1], means[e])]
    print(jax.default_backend(), model, bs, 'every', e, 'mean step ms', round(1e3 * statistics.median(means[e]), 3),
          'speed-up over every step', round(statistics.median(ups), 3), round(min(ups), 3), round(max(ups), 3), flush=True)
