"""Facts about the L2 modes, each checked against an independent computation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import small_params as make_params
from l2jax import configuration
from l2jax import optim
from l2jax import regularization

LAM = 0.01
ALPHA = 0.1
ETA = 0.5  # A schedule multiplier ≠ 1 tells α from η_t in the formulas.


def data_loss(params, step):
  """A smooth, non-quadratic loss whose gradient changes from step to step."""
  x = jnp.linspace(-1.0, 1.0, 3) + 0.1 * step
  h = jnp.tanh(x @ params['Dense_0']['kernel'] + params['Dense_0']['bias'])
  y = h @ params['Dense_1']['kernel'] + params['Dense_1']['bias']
  return jnp.sum(jnp.sin(y)) + jnp.sum(y ** 2)


MASK = regularization.decay_mask('kernels')


def chain(optimizer, mode, weight=LAM, learning_rate=ALPHA,
          multiplier=lambda step: ETA):
  direction = {'sgd': optax.identity(), 'momentum': optax.trace(0.9),
               'adam': optax.scale_by_adam()}[optimizer]
  return optim.l2_chain(direction, mode=mode, weight=weight,
                        learning_rate=learning_rate, multiplier=multiplier,
                        mask=MASK)


def run(tx, steps, l2_loss_weight=0.0, params=None):
  """`steps` updates of `tx` on data loss (+ ½ λ Σ w² over kernels)."""
  params = make_params() if params is None else params
  state = tx.init(params)

  def loss(p, step):
    return data_loss(p, step) + regularization.l2_penalty(
        p, MASK(p), l2_loss_weight)

  for step in range(steps):
    grads = jax.grad(loss)(params, step)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize('optimizer', ['momentum', 'adam'])
def test_loss_term_equals_coupled_decay(optimizer):
  in_loss = run(chain(optimizer, 'loss'), 10, l2_loss_weight=LAM)
  coupled = run(chain(optimizer, 'coupled'), 10)
  chex.assert_trees_all_close(in_loss, coupled, rtol=1e-5, atol=1e-6)
  # And L2 did something: without it the result is different.
  assert not np.allclose(in_loss['Dense_0']['kernel'],
                         run(chain(optimizer, 'none'), 10)['Dense_0']['kernel'])


def numpy_grads(params, step):
  grads = jax.grad(data_loss)(params, step)
  return jax.tree_util.tree_map(np.asarray, grads)


@pytest.mark.parametrize('optimizer', ['momentum', 'adam'])
def test_decoupled_matches_handwritten_sgdw_and_adamw(optimizer):
  """Loshchilov & Hutter, Algorithms 1 and 2: w ← w − η_t (α u_t + λ w)."""
  steps, mu, b1, b2, eps = 3, 0.9, 0.9, 0.999, 1e-8
  got = run(chain(optimizer, 'decoupled'), steps)

  w = jax.tree_util.tree_map(np.asarray, make_params())
  b = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in w.items()}
  m = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in w.items()}
  v = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in w.items()}
  for t in range(1, steps + 1):
    g = numpy_grads(jax.tree_util.tree_map(jnp.asarray, w), t - 1)
    for layer in w:
      for name in w[layer]:
        gi, wi = g[layer][name], w[layer][name]
        if optimizer == 'momentum':
          b[layer][name] = mu * b[layer][name] + gi
          u = b[layer][name]
        else:
          m[layer][name] = b1 * m[layer][name] + (1 - b1) * gi
          v[layer][name] = b2 * v[layer][name] + (1 - b2) * gi ** 2
          m_hat = m[layer][name] / (1 - b1 ** t)
          v_hat = v[layer][name] / (1 - b2 ** t)
          u = m_hat / (np.sqrt(v_hat) + eps)
        decay = LAM * wi if name == 'kernel' else 0.0
        w[layer][name] = wi - ETA * (ALPHA * u + decay)
  chex.assert_trees_all_close(got, w, rtol=1e-5, atol=1e-6)


def test_decoupled_differs_from_coupled_under_adam():
  decoupled = run(chain('adam', 'decoupled', weight=0.1), 10)
  coupled = run(chain('adam', 'coupled', weight=0.1), 10)
  diff = np.abs(decoupled['Dense_0']['kernel'] - coupled['Dense_0']['kernel'])
  assert diff.max() > 1e-3


def test_plain_sgd_decoupled_equals_coupled_with_weight_over_lr():
  """Proposition 1 of Loshchilov & Hutter, at constant α."""
  one = lambda step: 1.0
  decoupled = run(chain('sgd', 'decoupled', multiplier=one), 10)
  coupled = run(chain('sgd', 'coupled', weight=LAM / ALPHA, multiplier=one), 10)
  chex.assert_trees_all_close(decoupled, coupled, rtol=1e-5, atol=1e-6)


def test_plain_sgd_decoupled_lr_equals_coupled():
  one = lambda step: 1.0
  decoupled_lr = run(chain('sgd', 'decoupled_lr', multiplier=one), 10)
  coupled = run(chain('sgd', 'coupled', multiplier=one), 10)
  chex.assert_trees_all_close(decoupled_lr, coupled, rtol=1e-5, atol=1e-6)


def test_decoupled_lr_under_adam_is_optax_adamw():
  schedule = optax.cosine_decay_schedule(1.0, 10)
  ours = run(chain('adam', 'decoupled_lr', multiplier=schedule), 10)
  adamw = run(optax.adamw(lambda s: ALPHA * schedule(s), weight_decay=LAM,
                          mask=MASK), 10)
  chex.assert_trees_all_close(ours, adamw, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('optimizer', ['momentum', 'adam'])
@pytest.mark.parametrize('mode', ['loss', 'coupled', 'decoupled', 'decoupled_lr'])
def test_biases_never_decay(optimizer, mode):
  """With a zero data gradient only the decay moves the weights."""
  params = make_params()
  tx = chain(optimizer, mode, weight=0.5)
  state = tx.init(params)
  for _ in range(3):
    grads = jax.grad(lambda p: regularization.l2_penalty(
        p, MASK(p), optim.loss_l2_weight(mode, 0.5)))(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  before = make_params()
  for layer in params:
    np.testing.assert_array_equal(params[layer]['bias'], before[layer]['bias'])
    shrunk = np.abs(params[layer]['kernel']) < np.abs(before[layer]['kernel'])
    assert shrunk.all(), f'{mode}: {layer}/kernel did not decay'


def test_lr_multiplier_shapes():
  from ml_collections import ConfigDict
  config = ConfigDict(dict(num_epochs=10, warmup_epochs=1.0, schedule='cosine',
                           lr_floor=0.0, step_boundaries=(0.5, 0.75),
                           step_decay=0.1))
  cosine = optim.lr_multiplier(config, steps_per_epoch=10)
  assert float(cosine(0)) == 0.0
  assert float(cosine(5)) == pytest.approx(0.5)
  assert float(cosine(10)) == pytest.approx(1.0)
  # Halfway through the 90 cosine steps: ½ (1 + cos(π/2)) = ½.
  assert float(cosine(55)) == pytest.approx(0.5, abs=1e-6)
  # With a floor f: f + (1 − f) ½ (1 + cos(π t / 90)) after the warmup.
  config.lr_floor = 0.1
  floored = optim.lr_multiplier(config, steps_per_epoch=10)
  assert [float(floored(s)) for s in (10, 55, 100, 150)] == pytest.approx(
      [1.0, 0.55, 0.1, 0.1], abs=1e-6)
  config.schedule, config.warmup_epochs = 'step', 0.0
  step = optim.lr_multiplier(config, steps_per_epoch=10)
  assert [float(step(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
      [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def varying(step):
  """η_t that changes every step, so that a missing or extra η_t shows."""
  return 1.0 / (1.0 + step)


def numpy_sgd_momentum(steps, decay, mu=0.9):
  """w ← w − η_t α b_t − decay(w, t) with b_t = μ b_{t−1} + g_t, in NumPy."""
  w = jax.tree_util.tree_map(np.asarray, make_params())
  b = jax.tree_util.tree_map(np.zeros_like, w)
  for t in range(steps):
    g = numpy_grads(jax.tree_util.tree_map(jnp.asarray, w), t)
    for layer in w:
      for name in w[layer]:
        b[layer][name] = mu * b[layer][name] + g[layer][name]
        w[layer][name] = (w[layer][name] - varying(t) * ALPHA * b[layer][name]
                          - decay(layer, name, w[layer][name], t))
  return w


@pytest.mark.parametrize('mode', ['decoupled', 'decoupled_lr'])
def test_constant_decay_schedule_does_not_follow_eta(mode):
  """decoupled: w ← w − η_t α u_t − λ w; decoupled_lr: ... − α λ w."""
  got = run(optim.l2_chain(optax.trace(0.9), mode=mode, weight=LAM,
                           learning_rate=ALPHA, multiplier=varying, mask=MASK,
                           schedule='constant'), 4)
  scale = ALPHA if mode == 'decoupled_lr' else 1.0
  want = numpy_sgd_momentum(4, lambda layer, name, w, t: (
      scale * LAM * w if name == 'kernel' else 0.0))
  chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


def test_constant_decay_schedule_needs_a_decoupled_mode():
  with pytest.raises(ValueError, match='decoupled'):
    optim.l2_chain(optax.trace(0.9), mode='coupled', weight=LAM,
                   learning_rate=ALPHA, multiplier=varying, mask=MASK,
                   schedule='constant')


@pytest.mark.parametrize('schedule', ['lr', 'constant'])
def test_decoupled_l2sp_decays_toward_the_anchor(schedule):
  """w ← w − η_t (α u_t + λ_sp (w − w₀)) − η_t λ w (or λ w, constant), with
  L2-SP on Dense_0's kernel only (the anchored mask) and L2 on kernels."""
  w0 = jax.tree_util.tree_map(lambda x: 0.5 * x + 0.2, make_params())
  sp_mask = regularization.decay_mask(r'^Dense_0/kernel$')
  got = run(optim.l2_chain(
      optax.trace(0.9), mode='decoupled', weight=LAM, learning_rate=ALPHA,
      multiplier=varying, mask=MASK, schedule=schedule,
      anchor_decay=optim.decay_toward(w0, 0.3, sp_mask(w0))), 4)
  w0_np = jax.tree_util.tree_map(np.asarray, w0)

  def decay(layer, name, w, t):
    eta = varying(t)
    l2 = LAM * w * (eta if schedule == 'lr' else 1.0) if name == 'kernel' else 0
    sp = (eta * 0.3 * (w - w0_np[layer][name])
          if (layer, name) == ('Dense_0', 'kernel') else 0)
    return l2 + sp

  chex.assert_trees_all_close(got, numpy_sgd_momentum(4, decay),
                              rtol=1e-5, atol=1e-6)


def test_decay_toward_at_the_anchor_adds_nothing():
  params = make_params()
  tx = optim.decay_toward(params, 0.3, MASK(params))
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  chex.assert_trees_all_equal(updates, grads)


def test_normalized_weight_follows_the_formula():
  """λ = λ_norm √(b / (B T)), B the examples an epoch trains on."""
  from configs import cifar  # pylint: disable=g-import-not-at-top
  config = cifar.get_config()
  config.l2.update(mode='decoupled', weight=0.05, normalized=True)
  config.update(batch_size=64, num_epochs=7, momentum=0.0, schedule='constant')
  steps_per_epoch = 30  # B = 30 · 64 = 1,920 examples an epoch.
  want = 0.05 * np.sqrt(64 / (1920 * 7))
  assert optim.l2_weight(config, steps_per_epoch) == pytest.approx(want)
  params = make_params()
  penalties = configuration.make_penalties(config, params, steps_per_epoch)
  assert penalties.l2_weight == pytest.approx(want)
  # One decoupled step on a zero gradient shrinks the kernels by 1 − λ.
  tx, _ = optim.make_optimizer(config, penalties, steps_per_epoch)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates['Dense_0']['kernel'],
                             -want * np.asarray(params['Dense_0']['kernel']),
                             rtol=1e-5)
  np.testing.assert_array_equal(updates['Dense_0']['bias'], 0.0)
