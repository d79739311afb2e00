"""benchmarks/regimes.py: the presets' analyses joined, one column each."""

from benchmarks import regimes


def analysis(share: float, slope: float) -> dict:
  """One preset's analysis.json, reduced to what the joined report reads,
  for the `sgd` method only."""
  interval = {'slope': slope, 'low': slope - 0.1, 'high': slope + 0.1,
              'defined': 1.0}
  return {'scale_invariant_share': share, 'sgd': {
      'slope_vertex': interval, 'slope_argmax': interval,
      'gain': {'gain': 0.01, 'low': -0.005, 'high': 0.02},
      'shrink_at_vertex': {'0.001': 0.95, '0.01': None},
      'vertex': {'0.001': 0.0371, '0.01': None},
      'angle_at_vertex': {'0.001': 0.0031, '0.01': None},
      'peak': {'0.001': {'height': 0.029, 'low': 0.004, 'high': 0.055},
               '0.01': {'height': None, 'low': None, 'high': None}},
      'angle_ratio_mid': {'n': 4, 'median': 0.96, 'within_20pct': 1.0},
      'angle_ratio_last': {'n': 0}}}


def test_each_regime_is_a_column_with_its_mechanism():
  text = regimes.report([('cpu_bn', analysis(0.97, -1.03)),
                         ('cpu', analysis(0.0, 0.2))],
                        'python -m benchmarks.regimes --runs=a,b --out=c')
  assert '\n    python -m benchmarks.regimes --runs=a,b --out=c\n' in text
  assert ('| sgd | -1 | -1.03 [-1.13, -0.93] (mechanism: -1) | '
          '+0.20 [+0.10, +0.30] (mechanism: +0) |') in text, text
  assert '| sgdw | +0 | – | – |' in text, text
  assert '| sgd | +1.00 [-0.50, +2.00] | +1.00 [-0.50, +2.00] |' in text
  assert '| sgd | 0.001: 0.95, 0.01: – | 0.001: 0.95, 0.01: – |' in text
  assert '| sgd | 0.001: 0.0371, 0.01: – | 0.001: 0.0371, 0.01: – |' in text
  assert '| sgd | 0.001: 0.0031, 0.01: – | 0.001: 0.0031, 0.01: – |' in text
  assert ('| sgd | 0.001: +2.9 [+0.4, +5.5], 0.01: n/a | 0.001: +2.9 [+0.4, '
          '+5.5], 0.01: n/a |') in text, text
  assert ('| sgd | mid 0.96 (100% within 20%); last n/a | mid 0.96 (100% '
          'within 20%); last n/a |') in text, text
