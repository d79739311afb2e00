"""The one place that turns a config into an optax chain.

Notation: λ = `config.l2.weight`, α the base learning rate, η_t the schedule's
multiplier at step t (so the learning rate is α_t = α η_t), g_t the gradient of
the data loss, u_t the optimizer's direction: the momentum buffer for SGD
(`optax.trace`, PyTorch's convention b_t = μ b_{t-1} + g_t) or Adam's
m̂_t / (√v̂_t + ε).
"""

from typing import Callable

import optax

from l2jax import regularization

L2_MODES = ('none', 'loss', 'coupled', 'decoupled', 'decoupled_lr')
OPTIMIZERS = ('sgd', 'adam')
SCHEDULES = ('constant', 'cosine', 'step')


def lr_multiplier(config, steps_per_epoch: int) -> optax.Schedule:
  """η_t: linear warmup from 0 to 1, then constant, cosine to 0, or steps.

  `step` multiplies η by `config.step_decay` at each fraction of training in
  `config.step_boundaries`.
  """
  total = config.num_epochs * steps_per_epoch
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if config.schedule == 'constant':
    main = optax.constant_schedule(1.0)
  elif config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(1.0, decay_steps=max(total - warmup, 1))
  else:
    main = optax.piecewise_constant_schedule(
        1.0, {int(b * total) - warmup: config.step_decay
              for b in config.step_boundaries})
  if not warmup:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, 1.0, warmup), main], [warmup])


def direction(config) -> optax.GradientTransformation:
  """u_t from g_t (or from g_t + λ w in coupled mode): momentum or Adam."""
  if config.optimizer == 'adam':
    return optax.scale_by_adam(
        b1=config.adam.b1, b2=config.adam.b2, eps=config.adam.eps)
  if config.momentum:
    return optax.trace(decay=config.momentum, nesterov=config.nesterov)
  return optax.identity()


def l2_chain(
    direction: optax.GradientTransformation,
    *,
    mode: str,
    weight: float,
    learning_rate: float,
    multiplier: Callable[[int], float],
    mask: regularization.MaskFn,
) -> optax.GradientTransformation:
  """The optimizer with L2 entering in one of five ways.

  Every mode is the same optax pieces in another order; `D` is
  `optax.add_decayed_weights(λ, mask)` (adds λ w to the update):

  * ``none`` and ``loss``: w ← w − α_t u_t. In ``loss`` mode the gradient
    itself carries the penalty, since the loss is data loss + ½ λ Σ w²
    (`loss_l2_weight`).  Chain: direction, lr.
  * ``coupled``: g_t ← g_t + λ w before the direction, as PyTorch's
    ``SGD(weight_decay=λ)`` and ``Adam(weight_decay=λ)``.  Equal to ``loss``
    for every optimizer.  Chain: D, direction, lr.
  * ``decoupled``: w ← w − η_t (α u_t + λ w), SGDW and AdamW of Loshchilov &
    Hutter (ICLR 2019): the decay follows the schedule η_t but is *not*
    multiplied by the base learning rate α.  Chain: direction, ×α, D, ×η_t.
  * ``decoupled_lr``: w ← w − α_t (u_t + λ w), as ``optax.adamw`` and
    PyTorch's ``AdamW``: the decay is multiplied by the full learning rate.
    Chain: direction, D, lr.

  For plain SGD at constant α, ``decoupled`` with λ equals ``coupled`` with
  λ/α, and ``decoupled_lr`` with λ equals ``coupled`` with λ.

  Args:
    direction: the transformation that turns gradients into u_t.
    mode: one of `L2_MODES`.
    weight: λ ≥ 0.
    learning_rate: α, the base learning rate.
    multiplier: η_t, a function of the step count.
    mask: params → pytree of bools; only masked parameters decay.

  Returns:
    An `optax.GradientTransformation` whose updates are added to the params.
  """
  lr = lambda step: learning_rate * multiplier(step)
  decay = optax.add_decayed_weights(weight, mask)
  if mode in ('none', 'loss'):
    return optax.chain(direction, optax.scale_by_learning_rate(lr))
  if mode == 'coupled':
    return optax.chain(decay, direction, optax.scale_by_learning_rate(lr))
  if mode == 'decoupled_lr':
    return optax.chain(direction, decay, optax.scale_by_learning_rate(lr))
  if mode == 'decoupled':
    return optax.chain(direction, optax.scale(learning_rate), decay,
                       optax.scale_by_learning_rate(multiplier))
  raise ValueError(f'unknown L2 mode {mode!r}; expected one of {L2_MODES}')


def loss_l2_weight(mode: str, weight: float) -> float:
  """λ of the ½ λ Σ w² term in the loss: λ in ``loss`` mode, else 0."""
  return weight if mode == 'loss' else 0.0


def make_optimizer(config, steps_per_epoch: int):
  """Returns (optax chain, learning-rate schedule α_t) for a config."""
  multiplier = lr_multiplier(config, steps_per_epoch)
  tx = l2_chain(
      direction(config),
      mode=config.l2.mode,
      weight=config.l2.weight,
      learning_rate=config.learning_rate,
      multiplier=multiplier,
      mask=regularization.decay_mask(config.l2.mask))
  return tx, lambda step: config.learning_rate * multiplier(step)
