"""The angular update of each kernel group, and its equilibrium under decay.

For a scale-invariant weight w (followed by a normalization: L(c w) = L(w)
for c > 0) L2 does not change the function; it sets ‖w‖, and with it the
angle Δθ = ∠(w_t, w_{t+1}) a step turns w by (van Laarhoven 2017; Wan et
al., NeurIPS 2021; Kosson et al., ICML 2024). Write a step as

  w_{t+1} = (1 − s_t) w_t − α'_t u_t,    u_t = Σ_k c_k g_{t−k},

with s_t the step's shrink from the decay and u_t the optimizer's direction
as a linear filter of past gradients (`momentum_filter`). With gradients
orthogonal to w (scale invariance) and uncorrelated from step to step, the
expected ‖w‖² stops changing when

  sin² Δθ* = (2s − s²) C₀ / (C₀ + 2 (1 − s) C₁(s)),
  C₀ = Σ_k c_k²,  C₁(s) = Σ_{k≥1} c_k Σ_{j=1..k} (1 − s)^{j−1} c_{k−j},

(`equilibrium_angle`), the second term of the denominator being the
outward push of momentum: the part of u_t from earlier gradients has turned
radial. For heavy-ball momentum β (c_k = β^k) this is
sin² Δθ* = (2s − s²)(1 − β + βs)/(1 + β − βs) ≈ 2s (1 − β)/(1 + β), and for
β = 0 exactly cos Δθ* = 1 − s. The shrink a step, by `config.l2.mode`
(λ the L2 weight, α_t = α η_t; `shrink_per_step`):

* ``coupled``, ``loss``: λ w enters the gradient, so the filter carries it
  too: s_t = α_t λ Σ_k c_k (SGD: α_t λ / (1 − β)); under Adam each
  coordinate's share is divided by √v̂_i + ε, and s_t is the ‖w‖²-weighted
  mean over the group (an approximation: the shrink is not uniform);
* ``decoupled``: s_t = η_t λ (``l2.schedule=constant``: λ);
* ``decoupled_lr``: s_t = α_t λ (constant: α λ);
* ``none``, or a group outside L2's mask: s_t = 0, no equilibrium (nan).

The equilibrium is reached after about 1/(2s) steps and follows a schedule
only while s_t changes slowly on that scale.

**How Δθ* moves with α** (`lr_power`): Δθ* is a function of α^p λ, so
holding it fixed takes λ ∝ α^−p, the separability slope of a scale-invariant
network. SGD: p = 1 coupled (s ∝ α λ), 0 decoupled (s = η λ), 1
`decoupled_lr`. AdamW: its step is about α per coordinate whatever ‖w‖ is,
so with C coordinates ‖w‖² settles where 2 s ‖w‖² ≈ α² C κ and Δθ* ≈ √(2 s
κ'), p = 0 (`decoupled`; 1 for `decoupled_lr`); κ, κ' are momentum factors.
Coupled Adam divides the decay by √v̂ too. With the gradient of the data
loss of norm G/‖w‖ (G: at unit norm) dominating v̂, √v̂ ≈ G/(‖w‖ √C) and
s = α λ ‖w‖ √C / G; putting that into the balance above gives

  Δθ*³ ≈ 2 κ'' α² λ C / G,

p = 2: coupled Adam's best λ moves as α^−2, not α^−1 (with Kosson et al.'s
Adam+L2 equilibrium; the per-coordinate s above is what a run records).
As λ ‖w‖ grows against G/‖w‖ the decay takes over v̂: its share of the
denominator (`Equilibrium.decay_share`) rises toward 1, every coordinate
steps by about α toward 0 and the gradient's part of the step shrinks. That
caps the rotation a small α can reach, below the α^−2 optimum
(benchmarks/results/separability/cpu_bn_adam_convs/ measures where). A
trained toy checks every p (tests/equilibrium_test.py).
"""

import dataclasses
import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2jax import regularization


def sum_of_squares(x) -> jax.Array:
  """Σ x² over every element of `x`, as the dot product of the flattened x
  with itself, which XLA's CPU backend sums faster than
  `jnp.sum(jnp.square(x))` (docs/performance.md). Full float32 precision on
  every backend (a GPU's default would round the products to TF32)."""
  x = x.reshape(-1)
  return jnp.dot(x, x, precision=jax.lax.Precision.HIGHEST)


def angular_update(old, new, squares=None) -> jax.Array:
  """∠(old, new) = arccos(⟨old, new⟩ / (‖old‖ ‖new‖)) over all the leaves
  of two like pytrees, as 2 arcsin(‖new/‖new‖ − old/‖old‖‖ / 2), which
  keeps its precision for small angles; nan when either norm is 0.
  `squares`: (‖old‖², ‖new‖²), where the caller has them already."""
  old_leaves, new_leaves = jax.tree.leaves(old), jax.tree.leaves(new)
  total = lambda leaves: sum(sum_of_squares(x) for x in leaves)
  if squares is None:
    squares = total(old_leaves), total(new_leaves)
  old_norm, new_norm = (jnp.sqrt(s) for s in squares)
  chord = jnp.sqrt(total([n / new_norm - o / old_norm
                          for o, n in zip(old_leaves, new_leaves)]))
  return 2 * jnp.arcsin(jnp.minimum(chord / 2, 1.0))


def group_kernels(params) -> dict:
  """{group: {path: kernel}}: each top-level module's kernels (`Conv_0`,
  `ResidualBlock_4`, ...), the groups of `regularization.kernel_norms`,
  keyed by their full paths (`ResidualBlock_4/Conv_0/kernel`)."""
  groups = {}
  for path, leaf in _with_paths(params).items():
    if path.rsplit('/', 1)[-1] == 'kernel':
      groups.setdefault(path.split('/', 1)[0], {})[path] = leaf
  return groups


class Filter(NamedTuple):
  """The direction as a filter of gradients: c_k = a δ_k0 + b β^k."""
  a: float
  b: float
  beta: float

  def total(self) -> float:
    """Σ_k c_k: how much of λ w a coupled decay's filter passes."""
    return self.a + self.b / (1 - self.beta)


def momentum_filter(config) -> Filter:
  """`config`'s direction (optim.update_direction) as a `Filter`: SGD with
  heavy-ball momentum μ (c_k = μ^k), Nesterov (u = g + μ b: c_0 = 1 + μ,
  c_k = μ^{k+1}), plain SGD (c_0 = 1), Adam's first moment (c_k =
  (1 − β₁) β₁^k, in units of √v̂)."""
  if config.optimizer == 'adam':
    return Filter(0.0, 1 - config.adam.b1, config.adam.b1)
  mu = config.momentum
  if not mu:
    return Filter(1.0, 0.0, 0.0)
  if config.nesterov:
    return Filter(1.0, mu, mu)
  return Filter(0.0, 1.0, mu)


def equilibrium_angle(shrink, f: Filter):
  """Δθ* for a shrink s a step (module docstring); nan where s ≤ 0."""
  a, b, beta = f
  q = 1 - shrink
  c0 = a * a + 2 * a * b + b * b / (1 - beta * beta)
  c1 = a * b * beta / (1 - beta * q) + b * b * beta / (
      (1 - beta * q) * (1 - beta * beta))
  sin2 = (2 * shrink - shrink * shrink) * c0 / (c0 + 2 * q * c1)
  angle = jnp.arcsin(jnp.sqrt(jnp.clip(sin2, 0.0, 1.0)))
  return jnp.where(shrink > 0, angle, jnp.nan)


def lr_power(optimizer: str, mode: str) -> int:
  """p such that a scale-invariant weight's Δθ* is a function of α^p λ
  (module docstring): the best λ then moves as α^−p."""
  if mode in ('none', 'decoupled'):
    return 0
  if mode == 'decoupled_lr':
    return 1
  return 2 if optimizer == 'adam' else 1


def _adam_nu(opt_state):
  """(v, count) of the chain's optax.scale_by_adam."""
  states = [s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]
  return states[0].nu, states[0].count


# The names of `Equilibrium.measures`' metrics (each `<name>/<group>`).
MEASURES = ('angular_update', 'shrink', 'angular_update_equilibrium',
            'decay_share')


@dataclasses.dataclass(frozen=True, eq=False)
class Equilibrium:
  """What a run's step measures of rotation (`measures`), built inside the
  step from its α and λ (`train.train_step`).

  shrink: step -> the shrink s_t of a decayed weight (for Adam's coupled
  decay, before the division by √v̂ + ε, which `per_coordinate` asks for).
  weight: λ, for the decay's share of Adam's denominator (`per_coordinate`).
  every, epoch_steps: `sampled_measures` measures every `every`-th step of
  each epoch of `epoch_steps` steps.
  """
  filter: Filter
  shrink: Callable[[jax.Array], jax.Array]
  mask: optax.Params  # L2's mask.
  per_coordinate: bool = False
  eps: float = 1e-8
  b2: float = 0.999
  weight: float = 0.0
  every: int = 1
  epoch_steps: int = 1

  def _weighted(self, params, per_coordinate, squares=None) -> dict:
    """{group: the ‖w‖²-weighted mean of `per_coordinate` (a tree like
    params, a leaf of it an array or one value for the whole kernel) over
    its kernels}; nan for a group whose kernels are all 0. `squares`:
    {path: ‖w‖²} of the kernels, where the caller has them already."""
    values = _with_paths(per_coordinate)
    result = {}
    for group, kernels in group_kernels(params).items():
      norms = {p: squares[p] if squares else sum_of_squares(w)
               for p, w in kernels.items()}
      # A value per kernel weighs by its ‖w‖²; a value per coordinate
      # needs a pass over the kernel.
      weighted = [values[p] * norms[p] if jnp.ndim(values[p]) == 0
                  else jnp.sum(values[p] * jnp.square(w))
                  for p, w in kernels.items()]
      result[group] = sum(weighted) / sum(norms.values())
    return result

  def inverse_denominator(self, opt_state):
    """1/(√v̂ + ε) of each coordinate, from the chain's Adam state."""
    nu, count = _adam_nu(opt_state)
    correction = 1 - self.b2 ** count.astype(jnp.float32)
    return jax.tree.map(lambda v: 1 / (jnp.sqrt(v / correction) + self.eps),
                        nu)

  def group_shrink(self, step, params, inverse=None, squares=None) -> dict:
    """{group: s_t}, the ‖w‖²-weighted mean of its kernels' shrinks; nan
    (recorded as null) for a group whose kernels are all 0. `inverse`
    (`inverse_denominator`, per-coordinate shrinks only) divides s_t by
    √v̂ + ε. `squares`: as `_weighted`'s."""
    if self.per_coordinate and inverse is None:
      raise ValueError('a per-coordinate shrink needs Adam\'s inverse '
                       'denominator')
    s = self.shrink(step)
    scale = jax.tree.map(lambda m: s * m, self.mask)
    if inverse is not None:
      scale = jax.tree.map(jnp.multiply, scale, inverse)
    return self._weighted(params, scale, squares)

  def decay_share(self, params, inverse, squares=None) -> dict:
    """Coupled Adam: {group: the ‖w‖²-weighted mean of λ|w_i|/(√v̂_i + ε)},
    how much of Adam's denominator the decay makes up (v̂ is the EMA of
    (g + λw)²; `inverse`: `inverse_denominator`). Near 0 the data gradient
    sets √v̂ and each coordinate's shrink is α λ/√v̂; toward 1 the decay
    drowns the gradient in the denominator: every decayed coordinate steps
    by about α toward 0 and its gradient's share of the step shrinks (it
    can pass 1 where g opposes λw)."""
    share = jax.tree.map(
        lambda m, w, d: self.weight * m * jnp.abs(w) * d, self.mask, params,
        inverse)
    return self._weighted(params, share, squares)

  def measures(self, step, old_params, new_params, opt_state) -> dict:
    """Per kernel group: the step's Δθ (`angular_update/<group>`), the
    shrink s_t (`shrink/<group>`), Δθ*(s_t)
    (`angular_update_equilibrium/<group>`) and, under coupled Adam, the
    decay's share of the denominator (`decay_share/<group>`)."""
    old, new = group_kernels(old_params), group_kernels(new_params)
    # Each kernel's ‖w‖², before and after the step, computed once: the
    # shrink's weights and the angle's norms. (The seed network's Dense
    # kernel holds 8.4M weights; every pass over it costs a few ms.)
    squares = [{p: sum_of_squares(w) for kernels in groups.values()
                for p, w in kernels.items()} for groups in (old, new)]
    inverse = (self.inverse_denominator(opt_state) if self.per_coordinate
               else None)
    shrink = self.group_shrink(step, old_params, inverse, squares[0])
    result = {}
    if self.per_coordinate:
      result = {f'decay_share/{group}': share for group, share in
                self.decay_share(old_params, inverse, squares[0]).items()}
    for group in old:
      result[f'angular_update/{group}'] = angular_update(
          old[group], new[group],
          tuple(sum(s[p] for p in old[group]) for s in squares))
      result[f'shrink/{group}'] = shrink[group]
      result[f'angular_update_equilibrium/{group}'] = equilibrium_angle(
          shrink[group], self.filter)
    return result

  def sampled_measures(self, step, old_params, new_params, opt_state) -> dict:
    """`measures` of every `every`-th step of each epoch (its steps 0, every,
    2·every, ...: `config.rotation_every_steps`), nan in the others, which
    an epoch's means leave out (`records.epoch_record`); {} for every = 0.
    On the CPU a skipped step does not compute them (`lax.cond`); a GPU's
    conditional costs about what the measures do, so there they are
    computed and masked (docs/performance.md), as under vmap (`l2jax.cells`),
    where the cond becomes a select."""
    if not self.every:
      return {}
    measure = lambda: self.measures(step, old_params, new_params, opt_state)
    if self.every == 1:
      return measure()
    measured = step % self.epoch_steps % self.every == 0
    if jax.default_backend() != 'cpu':
      return jax.tree.map(lambda v: jnp.where(measured, v, jnp.nan),
                          measure())
    skipped = lambda: jax.tree.map(
        lambda s: jnp.full(s.shape, jnp.nan, s.dtype), jax.eval_shape(measure))
    return jax.lax.cond(measured, measure, skipped)


def _with_paths(tree) -> dict:
  return {regularization.param_path(p): leaf for p, leaf in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


@functools.partial(jax.jit, static_argnames=('model', 'axis_name'))
def _train_logits(model, variables, x, axis_name):
  """Training-mode logits on `x`, compiled once per model (modules compare
  by their fields, so a sweep's cells share it) and reused for every group's
  doubling."""
  out, _ = jax.vmap(
      lambda v: model.apply(variables, v, train=True, mutable=['batch_stats'],
                            rngs={'dropout': jax.random.key(0)}),
      axis_name=axis_name)(x[None])
  return out[0]


def scale_invariant_groups(model, variables, x, axis_name: Optional[str],
                           rtol: float = 1e-4) -> dict:
  """{group: whether `model`'s training-mode logits on `x` stay the same
  when the group's kernels are doubled}: a kernel followed by a
  normalization is scale-invariant, one that reaches the output unnormalized
  is not.

  `axis_name`: the models' batch-norm axis, bound here by a vmap of one.
  The logits are computed at float32's full precision: GPUs' default
  TensorFloat-32 products round at about 1e-3, which would hide the
  invariance.
  """
  def logits(params):
    with jax.default_matmul_precision('highest'):
      out = _train_logits(model, {**variables, 'params': params}, x,
                          axis_name)
    return np.asarray(out, np.float64)

  params = variables['params']
  base = logits(params)
  result = {}
  for group, kernels in group_kernels(params).items():
    doubled = jax.tree_util.tree_map_with_path(
        lambda p, w: 2 * w if regularization.param_path(p) in kernels else w,
        params)
    change = np.abs(logits(doubled) - base).max()
    result[group] = bool(change <= rtol * (np.abs(base).max() + 1e-6))
  return result


def invariant_share(params, mask, invariant: dict) -> float:
  """The share of the masked (decayed) parameters' elements that are kernels
  of scale-invariant groups (`invariant`: {group: bool})."""
  sizes = {p: np.size(w) for p, w in _with_paths(params).items()}
  chosen = {p for p, m in _with_paths(mask).items() if m}
  total = sum(sizes[p] for p in chosen)
  inside = sum(sizes[p] for p in chosen if p.rsplit('/', 1)[-1] == 'kernel'
               and invariant.get(p.split('/', 1)[0]))
  return inside / total if total else float('nan')
