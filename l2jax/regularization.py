"""The penalties on weights and activations, and what they are measured by.

Notation: w the parameters, M a mask (the parameters a penalty reaches), w₀
the parameters an L2-SP run starts from (`config.l2sp.init_from`), h the
penultimate features of a batch of b examples (b, d).

* L2: ½ λ Σ_M w² (in the loss in ``loss`` mode; otherwise the optimizer
  applies its gradient λ w, see `l2jax.optim.l2_chain`).
* L1: λ₁ Σ_M |w|, always in the loss; its (sub)gradient is λ₁ sign(w).
  Elastic net is L1 and L2 together.
* L2-SP (Li et al., ICML 2018): ½ λ_sp Σ_{M ∩ A} (w − w₀)², A the parameters
  loaded from the checkpoint with their shape (a re-initialized head is not
  in A); gradient λ_sp (w − w₀), in the loss or as decoupled decay toward w₀.
* Activity L2: λ_a · (1/b) Σ_i ‖h_i‖², the batch mean of the squared norm of
  the penultimate features, always in the loss.
* Sparsity: the share of the parameters in M with |w| < 10⁻³.

Every penalty has its own mask, built by the same rule from its config
value (`config.l2.mask`, `config.l1.mask`, `config.l2sp.mask`):

* ``kernels``: every Conv and Dense kernel (no biases, no norm parameters);
* ``all``: every parameter;
* anything else: a regular expression, searched in each parameter's path
  joined with ``/`` (for example ``Conv_0/kernel``).
"""

import dataclasses
import re
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax


MaskFn = Callable[[optax.Params], optax.Params]


def param_path(path) -> str:
  """`Conv_0/kernel` for the key path of `params['Conv_0']['kernel']`."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def decay_mask(spec: str) -> MaskFn:
  """params -> a same-shaped pytree of bools: ``kernels``, ``all`` or a
  regular expression searched in each parameter's path.

  Raises ValueError for an invalid regular expression.
  """
  if spec == 'kernels':
    selects = lambda path: path.rsplit('/', 1)[-1] == 'kernel'
  elif spec == 'all':
    selects = lambda path: True
  else:
    try:
      pattern = re.compile(spec)
    except (re.error, OverflowError, RecursionError) as e:
      # OverflowError: a repeat count such as a{4294967296}.
      raise ValueError(f'{spec!r} is not a valid regular expression ({e})') from e
    selects = lambda path: pattern.search(path) is not None

  def mask_fn(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: selects(param_path(path)), params)

  return mask_fn


def resolve_mask(spec: str, params) -> optax.Params:
  """`decay_mask(spec)(params)`; ValueError when it selects no parameter."""
  mask = decay_mask(spec)(params)
  if not any(jax.tree_util.tree_leaves(mask)):
    raise ValueError(f'{spec!r} matches no parameter; paths are: '
                     + ', '.join(param_paths(params)))
  return mask


def param_paths(params) -> list:
  return [param_path(p) for p, _ in
          jax.tree_util.tree_flatten_with_path(params)[0]]


def masked_sum(fn, params, mask) -> jax.Array:
  """Σ fn(w) over the elements of the masked parameters."""
  leaves = jax.tree_util.tree_leaves(
      jax.tree_util.tree_map(
          lambda w, m: jnp.sum(fn(w)) if m else jnp.zeros(()), params, mask))
  return sum(leaves, jnp.zeros(()))


def squared_norm(params, mask) -> jax.Array:
  """Σ w² over the masked parameters."""
  return masked_sum(jnp.square, params, mask)


def l2_penalty(params, mask, weight: float) -> jax.Array:
  """½ λ Σ w² over the masked parameters."""
  return 0.5 * weight * squared_norm(params, mask)


def weight_norm(params, mask) -> jax.Array:
  """‖w‖₂ over the masked parameters."""
  return jnp.sqrt(squared_norm(params, mask))


def kernel_norms(params) -> dict:
  """{group: ‖w‖₂ of its kernels}, a group being a top-level module
  (`Conv_0`, `ResidualBlock_4`, ...); groups without kernels are left out.

  Before batch norm a kernel is scale-invariant: L2 does not regularize it
  but sets ‖w‖, and with it the effective learning rate α/‖w‖² (van
  Laarhoven 2017; Zhang et al., ICLR 2019).
  """
  norms = {}
  for group, tree in params.items():
    kernels = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(
        tree)[0] if param_path(path).rsplit('/', 1)[-1] == 'kernel']
    if kernels:
      norms[group] = jnp.sqrt(sum(jnp.sum(jnp.square(k)) for k in kernels))
  return norms


def l1_penalty(params, mask, weight: float) -> jax.Array:
  """λ₁ Σ |w| over the masked parameters."""
  return weight * masked_sum(jnp.abs, params, mask)


SPARSITY_THRESHOLD = 1e-3


def sparsity(params, mask) -> jax.Array:
  """The share of the masked parameters' elements with |w| < 10⁻³; nan
  (recorded as null) when the mask selects nothing."""
  small = masked_sum(lambda w: jnp.abs(w) < SPARSITY_THRESHOLD, params, mask)
  count = sum(w.size for w, m in zip(jax.tree_util.tree_leaves(params),
                                     jax.tree_util.tree_leaves(mask)) if m)
  return small / count if count else jnp.float32(jnp.nan)


class Anchor(NamedTuple):
  """w₀ of L2-SP: `params` has the model's structure; `anchored` (bools, the
  same structure) is False where the model's parameter was initialized
  afresh rather than loaded, and L2-SP leaves it alone."""
  params: optax.Params
  anchored: optax.Params


def anchored_mask(mask, anchor: Anchor) -> optax.Params:
  """M ∩ A: the masked parameters that were loaded."""
  return jax.tree_util.tree_map(lambda m, a: bool(m and a), mask,
                                anchor.anchored)


def l2sp_penalty(params, anchor_params, mask, weight: float) -> jax.Array:
  """½ λ_sp Σ (w − w₀)² over the masked parameters."""
  diff = jax.tree_util.tree_map(jnp.subtract, params, anchor_params)
  return 0.5 * weight * squared_norm(diff, mask)


def activity_penalty(features: jax.Array, weight: float) -> jax.Array:
  """λ_a · (1/b) Σ_i ‖h_i‖² for features h of shape (b, ...)."""
  return weight * jnp.mean(jnp.sum(
      jnp.square(features.reshape(features.shape[0], -1)), axis=1))


@dataclasses.dataclass(frozen=True, eq=False)
class Penalties:
  """Every penalty of a run, with its mask resolved on the run's parameters.

  The loss is data loss + ½ λ Σ_M w² (if `l2_in_loss`) + λ₁ Σ |w| +
  ½ λ_sp Σ (w − w₀)² (if `l2sp_in_loss`) + λ_a mean ‖h‖². The L2 and L2-SP
  terms are measured every epoch whether they are in the loss or applied by
  the optimizer. Masks are pytrees of bools shaped like the parameters (None:
  the penalty is off). Hashed by identity, so it can be a static argument of
  jit.
  """
  l2_weight: float = 0.0
  l2_in_loss: bool = False
  l2_mask: Optional[optax.Params] = None
  l1_weight: float = 0.0
  l1_mask: Optional[optax.Params] = None
  l2sp_weight: float = 0.0
  l2sp_in_loss: bool = False
  l2sp_mask: Optional[optax.Params] = None  # M ∩ A.
  anchor: Optional[Anchor] = None
  activity_weight: float = 0.0

  def weight_terms(self, params) -> dict:
    """The penalties on weights that enter the loss, by metric name."""
    terms = {}
    if self.l2_in_loss:  # λ may be traced (`train.train_step`).
      terms['l2_penalty'] = l2_penalty(params, self.l2_mask, self.l2_weight)
    if self.l1_weight:
      terms['l1_penalty'] = l1_penalty(params, self.l1_mask, self.l1_weight)
    if self.l2sp_in_loss and self.l2sp_weight:
      terms['l2sp_penalty'] = l2sp_penalty(
          params, self.anchor.params, self.l2sp_mask, self.l2sp_weight)
    return terms

  def measures(self, params) -> dict:
    """‖w‖₂ and ½ λ Σ w² over L2's mask; λ₁ Σ |w| and the sparsity over
    L1's; ½ λ_sp Σ (w − w₀)² and ‖w − w₀‖₂ when there is an anchor."""
    result = {'weight_norm': weight_norm(params, self.l2_mask),
              'l2_penalty': l2_penalty(params, self.l2_mask, self.l2_weight),
              'l1_penalty': l1_penalty(params, self.l1_mask, self.l1_weight),
              'sparsity': sparsity(params, self.l1_mask)}
    if self.anchor is not None:
      diff = jax.tree_util.tree_map(jnp.subtract, params, self.anchor.params)
      result['l2sp_penalty'] = l2sp_penalty(params, self.anchor.params,
                                            self.l2sp_mask, self.l2sp_weight)
      result['l2sp_distance'] = weight_norm(diff, self.l2sp_mask)
    return result
