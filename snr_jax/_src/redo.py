"""ReDo: recycle dormant neurons (Sokar, Agarwal, Castro & Evci, ICML 2023).

Every ``period`` steps, per group, each unit's score is its mean absolute activation on
the batch normalised by its layer's average (each layer of a scanned stack by its own),
``s_i = mean|h_i| / ((1/N) Σ_j mean|h_j|)``, and units with ``s_i ≤ threshold`` are reset
with the shared mechanism (incoming re-drawn, outgoing and optimizer state zeroed).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from snr_jax._src.checks import DEFAULT_KEY, axis_name_or_none, integer_in, key_or_seed, number_in
from snr_jax._src.activations import mean_activation, mean_activations
from snr_jax._src.groups import NeuronGroup
from snr_jax._src.reset import cap_mask, max_resets_arg, resets_cap
from snr_jax._src.transform import NeuronResets, ResetRule, with_resets
from snr_jax._src.util import control_flow_arg


class ReDoState(NamedTuple):
  steps: jax.Array  # steps taken so far
  # {group: bool (size,)}: dormant units found at a check and not yet reset (a group
  # with more than max_resets_per_step of them resets them over several steps)
  pending: Optional[dict] = None


def redo_scores(preactivation: jax.Array, data_axis=None) -> jax.Array:
  """The normalised activity ``s_i`` of each unit (0 for every unit of a silent layer)."""
  return normalised_scores(mean_activation(preactivation, data_axis))


def normalised_scores(a: jax.Array, layers: int = 1) -> jax.Array:
  """ReDo's ``s_i = a_i / mean(a)`` from the units' mean activity ``a`` (0 if all silent),
  normalised within each layer: ``a`` holds ``layers`` layers' units, layer-major (a
  scanned stack's group)."""
  by_layer = a.reshape(layers, -1)
  avg = jnp.mean(by_layer, axis=-1, keepdims=True)
  return jnp.where(avg > 0, by_layer / jnp.where(avg > 0, avg, 1.0), 0.0).reshape(a.shape)


@dataclasses.dataclass(frozen=True)
class ReDoRule(ResetRule):
  """Reset units whose normalised score is ``≤ threshold``, every ``period`` steps."""

  threshold: float = 0.1
  period: int = 1000
  data_axis: Optional[str] = None
  max_resets_per_step: Any = None
  state_type: ClassVar[type] = ReDoState

  def __post_init__(self):
    inf = float('inf')
    object.__setattr__(self, 'threshold', number_in('threshold', self.threshold, 0.0, inf))
    object.__setattr__(self, 'period', integer_in('period', self.period, 1, what=' (steps)'))

  def init(self, groups: Sequence[NeuronGroup], params: Any) -> ReDoState:
    del params
    return ReDoState(jnp.zeros((), jnp.int32), {g.name: jnp.zeros((g.size,), bool) for g in groups})

  def select(
      self,
      state: ReDoState,
      groups: Sequence[NeuronGroup],
      activations: Mapping[str, jax.Array],
      params: Any,
      *,
      end_of_task,
      key,
  ):
    del params, end_of_task, key
    steps = state.steps + 1
    now = steps % self.period == 0
    means = mean_activations({g.name: activations[g.name] for g in groups}, self.data_axis)
    masks, pending = {}, {}
    for g in groups:
      due = state.pending[g.name] | (
          now & (normalised_scores(means[g.name], g.layers) <= self.threshold)
      )
      masks[g.name] = cap_mask(due, resets_cap(self.max_resets_per_step, g.size))
      pending[g.name] = due & ~masks[g.name]
    return masks, ReDoState(steps, pending)


def redo(
    inner: optax.GradientTransformation,
    groups: Sequence[NeuronGroup],
    *,
    threshold: float = 0.1,
    period: int = 1000,
    key: Any = DEFAULT_KEY,
    axis_name: Optional[str] = None,
    data_axis: Optional[str] = None,
    control_flow: str = 'auto',
    max_resets_per_step: Any = None,
    seed: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` with ReDo.

  Args:
    inner: the optimizer.
    groups: neuron groups.
    threshold: τ ≥ 0; a unit with score ``≤ τ`` is dormant (Sokar et al. use 0.1 for
      their default agent and 0.025 in other settings; 0 resets only silent units).
    period: F, steps between two dormancy checks (our default 1000 steps; Sokar et al.
      recycle every 1000 gradient steps in their Atari runs).
    key: int seed or PRNG key for fresh weights (default 0).
    axis_name: name of an enclosing vmap/pmap axis (see ``NeuronResets``).
    data_axis: the data-parallel axis inside ``shard_map``/``pmap``: scores are taken
      over the global batch (see [`self_normalized_resets`][snr_jax.self_normalized_resets]).
    control_flow: ``'branch'``, ``'select'`` or ``'auto'`` (see
      [`self_normalized_resets`][snr_jax.self_normalized_resets]).
    max_resets_per_step: the most units of a group reset in one step (see
      [`self_normalized_resets`][snr_jax.self_normalized_resets]); dormant units over it are reset
      on the
      following steps, the lowest indices first.
    seed: deprecated name of ``key`` (a ``DeprecationWarning``; removed in the next
      release).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` taking ``activations=``.

  References:
    Sokar et al., "The Dormant Neuron Phenomenon in Deep Reinforcement Learning",
    ICML 2023, https://arxiv.org/abs/2302.12902.
  """
  threshold = number_in('threshold', threshold, 0.0, float('inf'))
  period = integer_in('period', period, 1, what=' (steps)')
  rule = ReDoRule(
      threshold,
      period,
      axis_name_or_none('data_axis', data_axis),
      max_resets_arg(max_resets_per_step),
  )
  return with_resets(
      inner,
      NeuronResets(groups, rule, axis_name, control_flow=control_flow_arg(control_flow)),
      key_or_seed('redo', key, seed),
  )
