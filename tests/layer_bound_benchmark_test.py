"""benchmarks/layer_bound.py finds each model's layers and reports them."""

import importlib.util

import pytest

from benchmarks import layer_bound
from helpers import run_benchmark
from l2jax.errors import L2JaxError

HAS_TORCH = importlib.util.find_spec('torch') is not None


def describe(found) -> list:
  """(kind, kernel shape, input side, stride, count) of each layer."""
  out = []
  for primitive, lhs, rhs, params, count in found:
    if primitive.name == 'conv_general_dilated':
      out.append(('conv', rhs, lhs[1], params['window_strides'][0], count))
    else:
      out.append(('dense', rhs, None, None, count))
  return out


def test_resnet20_has_he_et_als_nineteen_convolutions_and_one_dense():
  # He et al. (2016), CIFAR ResNet with n = 3: a 3×3 convolution to 16
  # channels, then three stages of 2n 3×3 convolutions at 16, 32, 64
  # channels on 32², 16², 8² maps (each later stage's first strided, its
  # shortcuts without weights), average pooling and a 64 → 10 dense layer.
  assert describe(layer_bound.layers('resnet20', True, 4)) == [
      ('conv', (3, 3, 3, 16), 32, 1, 1),
      ('conv', (3, 3, 16, 16), 32, 1, 6),
      ('conv', (3, 3, 16, 32), 32, 2, 1),
      ('conv', (3, 3, 32, 32), 16, 1, 5),
      ('conv', (3, 3, 32, 64), 16, 2, 1),
      ('conv', (3, 3, 64, 64), 8, 1, 5),
      ('dense', (64, 10), None, None, 1)]


def test_the_seed_network_has_the_seed_articles_layers():
  # conv64 - pool - conv128 - pool - fc1024 - fc10 on 32×32×3 images.
  assert describe(layer_bound.layers('seed_cnn', False, 4)) == [
      ('conv', (3, 3, 3, 64), 32, 1, 1),
      ('conv', (3, 3, 64, 128), 16, 1, 1),
      ('dense', (8 * 8 * 128, 1024), None, None, 1),
      ('dense', (1024, 10), None, None, 1)]


def test_a_model_spec_names_a_model_and_batch_norm():
  assert layer_bound.parse('seed_cnn_narrow+bn') == ('seed_cnn_narrow', True)
  assert layer_bound.parse('vgg11') == ('vgg11', False)
  with pytest.raises(L2JaxError, match="unknown model 'resnet56'"):
    layer_bound.parse('resnet56')


def test_a_models_sums_count_each_layer_and_the_goal_is_pytorchs_faster_step():
  columns = {'l2jax': 0, 'XLA': 0, 'PyTorch NCHW': 0,
             'PyTorch channels-last': 0}
  rows = [('conv a', 3, {**columns, 'l2jax': 2.0, 'XLA': 5.0,
                         'PyTorch NCHW': 4.0, 'PyTorch channels-last': 1.0}),
          ('dense b', 2, {**columns, 'l2jax': 1.5, 'XLA': 1.0,
                          'PyTorch NCHW': 3.0, 'PyTorch channels-last': 3.0})]
  steps = {'l2jax': 20.0, 'PyTorch NCHW': 30.0, 'PyTorch channels-last': 24.0}
  lines, summary = layer_bound.model_report('m', rows, steps)
  # l2jax 3·2 + 2·1.5; XLA 3·5 + 2·1; PyTorch 3·4 + 2·3, 3·1 + 2·3;
  # fastest 3·1 + 2·1; goal 24 / 1.5.
  assert summary == ('m', 20.0, 24.0, 16.0, 9.0, 5.0)
  total = next(line for line in lines if 'all layers' in line)
  assert [c.strip().strip('*') for c in total.split('|')[3:-1]] == [
      '9.0', '17.0', '18.0', '9.0', '5.0']


@pytest.mark.skipif(not HAS_TORCH, reason='PyTorch not installed')
def test_report_sums_each_layer_times_its_count(tmp_path):
  out = tmp_path / 'bound.md'
  result = run_benchmark('layer_bound', '--models=seed_cnn_narrow',
                         '--batch_size=8', '--calls=1', '--rounds=1',
                         '--steps=1', f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [[c.strip().strip('*') for c in line.split('|')[1:-1]]
          for line in out.read_text().splitlines() if line.startswith('| ')]
  layer_rows = [r for r in rows if r[0].startswith(('conv', 'dense'))]
  assert [r[0] for r in layer_rows] == [
      'conv 3×3, 3→16 on 32×32 (no input gradient)',
      'conv 3×3, 16→32 on 16×16', 'dense 2048→256', 'dense 256→10']
  total = next(r for r in rows if r[0] == 'all layers, × count')
  for column in range(2, 6):  # l2jax, XLA, PyTorch in both layouts.
    expected = sum(float(r[column]) * int(r[1]) for r in layer_rows)
    assert abs(float(total[column]) - expected) < 0.1 + 0.01 * expected
  summary = next(r for r in rows if r[0] == 'seed_cnn_narrow')
  step, torch_step, goal, alone = map(float, summary[1:5])
  assert step > 0 and abs(goal - torch_step / 1.5) < 0.1
  assert abs(alone - float(total[2])) < 0.1


@pytest.mark.skipif(HAS_TORCH, reason='PyTorch installed')
def test_without_pytorch_it_says_how_to_install_it():
  result = run_benchmark('layer_bound', '--models=seed_cnn_narrow')
  assert result.returncode != 0
  assert 'layer_bound: error: PyTorch is not installed' in result.stderr
