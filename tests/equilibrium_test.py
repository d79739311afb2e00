"""The angular update against NumPy, the equilibrium Δθ* against a trained
scale-invariant toy, and which kernel groups the models make invariant."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cifar
from l2jax import configuration
from l2jax import equilibrium
from l2jax import models
from l2jax import optim


@pytest.mark.parametrize('scale', [1e-3, 0.3, 3.0])
def test_angular_update_is_the_angle_numpy_computes(scale):
  """A hand-made step of two kernels; NumPy's arccos in float64."""
  rng = np.random.default_rng(0)
  old = {'a': rng.normal(size=(3, 3, 2, 4)), 'b': rng.normal(size=(5,))}
  new = {k: 0.9 * v + scale * rng.normal(size=v.shape) for k, v in old.items()}
  flat_old = np.concatenate([old['a'].ravel(), old['b']])
  flat_new = np.concatenate([new['a'].ravel(), new['b']])
  want = np.arccos(flat_old @ flat_new / np.linalg.norm(flat_old)
                   / np.linalg.norm(flat_new))
  as32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
  got = float(equilibrium.angular_update(as32(old), as32(new)))
  assert got == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_angular_update_of_a_zero_kernel_is_nan():
  zero, one = {'k': jnp.zeros(4)}, {'k': jnp.ones(4)}
  assert np.isnan(equilibrium.angular_update(zero, one))


@pytest.mark.parametrize('beta', [0.0, 0.5, 0.9])
@pytest.mark.parametrize('s', [1e-4, 1e-2, 0.2])
def test_equilibrium_angle_has_the_heavy_ball_closed_form(beta, s):
  """sin² Δθ* = (2s − s²)(1 − β + βs)/(1 + β − βs); cos Δθ* = 1 − s at β=0."""
  got = float(equilibrium.equilibrium_angle(s, equilibrium.Filter(
      0.0, 1.0, beta) if beta else equilibrium.Filter(1.0, 0.0, 0.0)))
  want = np.arcsin(np.sqrt((2 * s - s * s) * (1 - beta + beta * s)
                           / (1 + beta - beta * s)))
  assert got == pytest.approx(want, rel=1e-5)
  if not beta:
    assert got == pytest.approx(np.arccos(1 - s), rel=1e-5)
  assert np.isnan(equilibrium.equilibrium_angle(0.0, equilibrium.Filter(
      0.0, 1.0, beta)))


def toy_angles(optimizer: str, mode: str, lr: float, weight: float,
               steps: int = 6000):
  """A linear layer (64 → 8) followed by batch normalization, so its kernel
  is scale-invariant, trained on fresh noise (random inputs and labels) at a
  constant learning rate by the run's own optimizer chain. Returns the mean
  measured Δθ and predicted Δθ* over the last quarter of the steps."""
  config = cifar.get_config()
  config.update(optimizer=optimizer, learning_rate=lr, schedule='constant')
  config.l2.update(mode=mode, weight=weight)
  params = {'Dense_0': {'kernel': jax.random.normal(jax.random.key(0),
                                                    (64, 8))}}
  penalties = configuration.make_penalties(config, params, steps)
  tx, _ = optim.make_optimizer(config, penalties, steps)
  rotation = optim.make_equilibrium(config, penalties, steps)

  def loss(p, x, y):
    z = x @ p['Dense_0']['kernel']
    z = (z - z.mean(0)) / jnp.sqrt(z.var(0) + 1e-5)
    return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

  def step(carry, key):
    p, opt_state, t = carry
    x = jax.random.normal(key, (32, 64))
    y = jax.random.randint(jax.random.fold_in(key, 1), (32,), 0, 8)
    updates, opt_state = tx.update(jax.grad(loss)(p, x, y), opt_state, p)
    new = optax.apply_updates(p, updates)
    m = rotation.measures(t, p, new, opt_state)
    return (new, opt_state, t + 1), (m['angular_update/Dense_0'],
                                     m['angular_update_equilibrium/Dense_0'])

  _, (measured, predicted) = jax.lax.scan(
      step, (params, tx.init(params), 0),
      jax.random.split(jax.random.key(1), steps))
  tail = slice(3 * steps // 4, None)
  return float(measured[tail].mean()), float(predicted[tail].mean())


@pytest.mark.parametrize('optimizer, mode, lr, weight', [
    ('sgd', 'coupled', 0.1, 5e-3),     # s = α λ / (1 − β) = 5e-3.
    ('sgd', 'decoupled', 0.1, 5e-3),   # s = λ: the same equilibrium.
    ('adam', 'decoupled', 1e-2, 1e-3),  # AdamW.
])
def test_a_scale_invariant_toy_reaches_the_predicted_equilibrium(
    optimizer, mode, lr, weight):
  measured, predicted = toy_angles(optimizer, mode, lr, weight)
  assert measured == pytest.approx(predicted, rel=0.10)


@pytest.mark.parametrize('optimizer, mode, lr, weight', [
    ('sgd', 'coupled', 0.1, 5e-3), ('adam', 'coupled', 1e-2, 1e-3),
    ('adam', 'decoupled', 1e-2, 1e-3)])
def test_the_equilibrium_angle_depends_on_lr_to_the_power_p_times_lambda(
    optimizer, mode, lr, weight):
  """4α with λ·4^−p turns the toy by the same measured Δθ; λ·4^(1−p) (the
  next power's answer) by a different one. Coupled Adam's p = 2 (its Δθ*
  from the per-coordinate shrink, checked here too) is why its best λ
  should move as α^−2."""
  p = equilibrium.lr_power(optimizer, mode)
  base, predicted = toy_angles(optimizer, mode, lr, weight)
  same, _ = toy_angles(optimizer, mode, 4 * lr, weight * 4.0 ** -p)
  other, _ = toy_angles(optimizer, mode, 4 * lr, weight * 4.0 ** (1 - p))
  assert base == pytest.approx(predicted, rel=0.10)
  assert same == pytest.approx(base, rel=0.05)
  assert abs(other / base - 1) > 0.15


def test_without_decay_there_is_no_equilibrium_to_predict():
  measured, predicted = toy_angles('sgd', 'none', 0.1, 0.0, steps=400)
  assert measured > 0 and np.isnan(predicted)


@pytest.mark.parametrize('name, options, invariant', [
    ('seed_cnn_narrow', {}, set()),
    ('seed_cnn_narrow', {'batch_norm': True}, {'Conv_0', 'Conv_1'}),
    ('resnet20', {}, {'Conv_0', *(f'ResidualBlock_{i}' for i in range(9))}),
])
def test_the_models_kernels_before_batch_norm_are_the_invariant_ones(
    name, options, invariant):
  model = models.create_model(name, 10, **options)
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  got = equilibrium.scale_invariant_groups(model, variables, x, 'batch')
  assert {g for g, v in got.items() if v} == invariant
  assert 'Dense_0' in got or 'Dense_1' in got
  every = jax.tree.map(lambda _: True, variables['params'])
  leaves = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
  inside = sum(np.size(w) for path, w in leaves
               if path[0].key in invariant and path[-1].key == 'kernel')
  assert equilibrium.invariant_share(variables['params'], every, got) == (
      pytest.approx(inside / sum(np.size(w) for _, w in leaves)))


def test_the_decay_share_of_adams_denominator_by_hand():
  """λ|w_i|/(√v̂_i + ε), weighted by w_i² over the group, from a hand-made
  Adam state (v̂ = v/(1 − b2^count)); recorded only under coupled Adam."""
  w = np.array([[0.5, -2.0], [1.0, 0.0]], np.float32)
  v = np.array([[1e-4, 4e-4], [2.5e-5, 1e-6]], np.float32)
  params = {'Conv_0': {'kernel': jnp.asarray(w)},
            'Dense_0': {'kernel': jnp.asarray(w)}}
  state = (optax.ScaleByAdamState(
      count=jnp.asarray(3), mu=jax.tree.map(jnp.zeros_like, params),
      nu=jax.tree.map(lambda _: jnp.asarray(v), params)),)
  mask = {'Conv_0': {'kernel': True}, 'Dense_0': {'kernel': False}}

  @jax.jit
  def measures(weight):  # λ traced, as in the training step.
    rotation = equilibrium.Equilibrium(
        equilibrium.Filter(0.0, 1.0, 0.9), lambda step: 1e-5 * weight, mask,
        per_coordinate=True, weight=weight)
    return rotation.measures(0, params, params, state)

  v_hat = v.astype(np.float64) / (1 - 0.999 ** 3)
  share = 0.01 * np.abs(w) / (np.sqrt(v_hat) + 1e-8)
  want = (share * w ** 2).sum() / (w ** 2).sum()
  got = measures(0.01)
  assert float(got['decay_share/Conv_0']) == pytest.approx(want, rel=1e-4)
  assert float(got['decay_share/Dense_0']) == 0.0  # Outside L2's mask.
  rotation = equilibrium.Equilibrium(
      equilibrium.Filter(0.0, 1.0, 0.9), lambda step: 1e-7, mask,
      per_coordinate=True, weight=0.01)
  plain = dataclasses.replace(rotation, per_coordinate=False)
  assert 'decay_share/Conv_0' not in plain.measures(0, params, params, state)


def test_a_groups_measures_against_numpy():
  """One step of a two-kernel group, L2 on one kernel only: Δθ over both
  kernels, the shrink as the ‖w‖²-weighted mean of s and 0, and Δθ* of
  that shrink, each against NumPy in float64; a lone kernel's group too."""
  rng = np.random.default_rng(3)
  old = {'Block_0': {'Conv_0': {'kernel': rng.normal(size=(3, 3, 4, 8))},
                     'Conv_1': {'kernel': 2 * rng.normal(size=(3, 3, 8, 8)),
                                'bias': rng.normal(size=8)}},
         'Dense_0': {'kernel': rng.normal(size=(16, 10))}}
  new = jax.tree.map(lambda w: 0.99 * w + 0.01 * rng.normal(size=w.shape),
                     old)
  mask = {'Block_0': {'Conv_0': {'kernel': True},
                      'Conv_1': {'kernel': False, 'bias': False}},
          'Dense_0': {'kernel': True}}
  s, f = 3e-3, equilibrium.Filter(0.0, 1.0, 0.9)
  rotation = equilibrium.Equilibrium(f, lambda step: jnp.float32(s), mask)
  as32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
  got = jax.jit(rotation.measures)(0, as32(old), as32(new), None)

  def angle(a, b):
    a, b = (np.concatenate([x.ravel() for x in xs]) for xs in (a, b))
    return np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b),
                             -1, 1))

  block = [old['Block_0'][c]['kernel'] for c in ('Conv_0', 'Conv_1')]
  moved = [new['Block_0'][c]['kernel'] for c in ('Conv_0', 'Conv_1')]
  squares = [np.sum(w ** 2) for w in block]
  want_shrink = s * squares[0] / sum(squares)
  want = {'Block_0': (angle(block, moved), want_shrink),
          'Dense_0': (angle([old['Dense_0']['kernel']],
                            [new['Dense_0']['kernel']]), s)}
  for group, (delta, shrink) in want.items():
    assert float(got[f'angular_update/{group}']) == pytest.approx(
        delta, rel=1e-4)
    assert float(got[f'shrink/{group}']) == pytest.approx(shrink, rel=1e-5)
    assert float(got[f'angular_update_equilibrium/{group}']) == (
        pytest.approx(float(equilibrium.equilibrium_angle(shrink, f)),
                      rel=1e-4))
