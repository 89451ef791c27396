"""Continual backprop (Dohare et al., Nature 2024).

Per unit a running utility ``u_i ← d·u_i + (1 − d)·|h_i|·Σ_k |w_out,ik|`` (``|h_i|`` the
mean absolute activation on the batch) and an age in steps. Each step the units older
than the maturity threshold ``m`` are eligible; ``ρ·(number eligible)`` is added to a
per-group accumulator, and its whole part is the number of eligible units with the
lowest utility that are reset (shared mechanism), their utility and age set to 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from snr_jax._checks import number_in
from snr_jax.activations import mean_activation
from snr_jax.groups import NeuronGroup
from snr_jax.reset import outgoing_magnitude
from snr_jax.transform import NeuronResets, with_resets


class CBPState(NamedTuple):
  utility: dict[str, jax.Array]   # float32 (size,)
  ages: dict[str, jax.Array]      # int32 (size,), steps since (re)initialisation
  to_replace: dict[str, jax.Array]  # float32 scalar, fractional replacements owed


def lowest_k(values: jax.Array, eligible: jax.Array, k: jax.Array) -> jax.Array:
  """Mask of the ``k`` eligible entries with the smallest values (ties: lower index)."""
  keyed = jnp.where(eligible, values, jnp.inf)
  order = jnp.argsort(keyed, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
  return eligible & (rank < k)


@dataclasses.dataclass(frozen=True)
class CBPRule:
  """Replace the lowest-utility mature units at rate ``replacement_rate``."""

  replacement_rate: float = 1e-4
  maturity: int = 100
  decay: float = 0.99

  def init(self, groups: Sequence[NeuronGroup], params: Any) -> CBPState:
    del params
    return CBPState({g.name: jnp.zeros((g.size,), jnp.float32) for g in groups},
                    {g.name: jnp.zeros((g.size,), jnp.int32) for g in groups},
                    {g.name: jnp.zeros((), jnp.float32) for g in groups})

  def select(self, state: CBPState, groups: Sequence[NeuronGroup],
             activations: Mapping[str, jax.Array], params: Any, *, end_of_task, key):
    del end_of_task, key
    masks, utility, ages, owed = {}, {}, {}, {}
    for g in groups:
      contribution = mean_activation(activations[g.name]) * outgoing_magnitude(params, g)
      u = self.decay * state.utility[g.name] + (1 - self.decay) * contribution
      age = jnp.minimum(state.ages[g.name], jnp.iinfo(jnp.int32).max - 1) + 1
      eligible = age > self.maturity
      acc = state.to_replace[g.name] + self.replacement_rate * jnp.sum(eligible)
      k = jnp.minimum(jnp.floor(acc), jnp.sum(eligible)).astype(jnp.int32)
      mask = lowest_k(u, eligible, k)
      masks[g.name] = mask
      utility[g.name] = jnp.where(mask, 0.0, u)
      ages[g.name] = jnp.where(mask, 0, age)
      owed[g.name] = acc - k
    return masks, CBPState(utility, ages, owed)


def continual_backprop(inner: optax.GradientTransformation, groups: Sequence[NeuronGroup],
                       *, replacement_rate: float = 1e-4, maturity: int = 100,
                       decay: float = 0.99, seed: Any = 0,
                       axis_name: Optional[str] = None
                       ) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` with continual backprop (selective reinitialisation).

  Args:
    inner: the optimizer.
    groups: neuron groups.
    replacement_rate: ρ, fraction of eligible units replaced per step (Dohare et al.
      1e-4 as a typical value; swept over powers of 10).
    maturity: m, steps a unit is protected after (re)initialisation (100).
    decay: d, the utility's running-average decay (0.99).
    seed: int seed or PRNG key for fresh weights.
    axis_name: name of an enclosing vmap/pmap axis (see ``NeuronResets``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` taking ``activations=``.

  References:
    Dohare et al., "Loss of plasticity in deep continual learning", Nature 632, 2024.
  """
  replacement_rate = number_in('replacement_rate', replacement_rate, 0.0, 1.0)
  if not isinstance(maturity, int) or maturity < 0:
    raise ValueError(f'maturity must be an int >= 0 (steps), got {maturity!r}.')
  decay = number_in('decay', decay, 0.0, 1.0, hi_open=True)
  rule = CBPRule(replacement_rate, maturity, decay)
  return with_resets(inner, NeuronResets(tuple(groups), rule, axis_name), seed)
