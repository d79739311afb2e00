"""benchmarks/time_to_accuracy.py: both frameworks train the recipe and
report; the PyTorch twin's augmentation and initialization are l2jax's
(benchmarks/torch_twins.py)."""

import importlib.util
import math

import numpy as np
import pytest

from benchmarks import time_to_accuracy
from benchmarks import torch_twins
from l2jax import data as data_lib

HAS_TORCH = importlib.util.find_spec('torch') is not None


def tiny_cifar(train: int, test: int) -> data_lib.Dataset:
  """Random CIFAR-shaped uint8 images: `train` and `test` of them."""
  rng = np.random.default_rng(0)
  split = lambda n: data_lib.Split(
      rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
      rng.integers(0, 10, n, dtype=np.int32))
  return data_lib.Dataset(split(train), None, split(test), 10)


def test_smoke_run_reports_both_frameworks(tmp_path):
  """Two epochs of two steps each: the report's rows and cumulative times.
  The narrow network stands in for the seed network (compiled in seconds)."""
  config = time_to_accuracy.make_config('cifar10', epochs=2)
  config.model = 'seed_cnn_narrow'
  dataset = tiny_cifar(256, 100)
  results = {'l2jax': time_to_accuracy.train_l2jax(config, dataset,
                                                   str(tmp_path))}
  if HAS_TORCH:
    results['PyTorch'] = time_to_accuracy.train_torch(config, dataset)
  report = time_to_accuracy.report(
      config, results, {n: (1.0, 2.0) for n in results}, target=0.0)
  rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
          for line in report.splitlines() if line.startswith('| ')}
  columns = 2 if HAS_TORCH else 1
  # Any accuracy reaches 0 %: the time to it is the first epoch's.
  assert rows['time to 0% test accuracy [s]'] == rows['first epoch [s]']
  assert len(rows['final test accuracy']) == columns
  for name, epochs in results.items():
    assert [e for e, _, _ in epochs] == [1, 2], name
    assert all(seconds > 0 and 0 <= accuracy <= 1
               for _, seconds, accuracy in epochs), name
  for epoch, (_, seconds, accuracy) in zip(('1', '2'), results['l2jax']):
    assert rows[epoch][1] == f'{accuracy:.4f}', report
  assert float(rows['2'][0]) >= float(rows['1'][0])  # Cumulative.
  assert 'mask all' in report and 'lr 0.01 cosine' in report, report


@pytest.mark.skipif(not HAS_TORCH, reason='PyTorch is not installed')
def test_torch_crop_and_flip_is_a_crop_of_the_zero_padded_image():
  import torch  # pylint: disable=g-import-not-at-top
  images = torch.from_numpy(
      np.random.default_rng(0).integers(1, 256, (16, 3, 6, 5), dtype=np.uint8))
  out = torch_twins.crop_and_flip(images, torch.Generator().manual_seed(0))
  padded = np.pad(images.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)))
  flips = 0
  for i in range(16):
    crops = {(dy, dx, flip): padded[i, :, dy:dy + 6, dx:dx + 5][..., ::-1]
             if flip else padded[i, :, dy:dy + 6, dx:dx + 5]
             for dy in range(9) for dx in range(9) for flip in (0, 1)}
    matches = [k for k, c in crops.items() if np.array_equal(c, out[i])]
    assert matches, i
    flips += all(k[2] for k in matches)
  assert 0 < flips < 16


@pytest.mark.skipif(not HAS_TORCH, reason='PyTorch is not installed')
def test_torch_twin_initialization_has_flax_distributions():
  """Kernels: a normal truncated at ±2σ of variance 1/fan-in (flax's
  lecun_normal); biases zero."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  layer = torch.nn.Conv2d(64, 128, 3)
  torch_twins.flax_init_(layer)
  w = layer.weight.detach().numpy()
  np.testing.assert_allclose(w.var(), 1 / (64 * 9), rtol=0.02)
  sigma = math.sqrt(1 / (64 * 9)) / torch_twins.TRUNCATED_STD
  assert np.abs(w).max() <= 2 * sigma
  assert not layer.bias.detach().numpy().any()
