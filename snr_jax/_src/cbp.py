"""Continual backprop (Dohare et al., Nature 2024), as in the authors' reference.

Per unit ``i`` of a group, with ``h_i`` its post-ReLU activation averaged over the batch
(and positions), an age ``a_i`` in steps and a decay ``d``:

* ages first advance by one, then the running utility
  ``u_i ← d·u_i + (1 − d)·y_i`` with the *contribution* utility
  ``y_i = mean|w_out,i| · mean|h_i|`` (the mean over every outgoing weight of unit ``i``,
  pooled over all of the group's outgoing slices) and the running mean activation
  ``f_i ← d·f_i + (1 − d)·mean(h_i)``;
* both are bias-corrected: ``û_i = u_i / (1 − d^{a_i})``, ``f̂_i = f_i / (1 − d^{a_i})``;
* units with ``a_i > m`` (maturity) are eligible. With ``rounding='accumulate'``,
  ``ρ·(number eligible)`` is added to a per-layer accumulator (one per group, one per
  layer of a scanned stack, as the reference goes layer by layer) whose whole part is
  the number replaced (the remainder carries over; the reference's ``accumulate=True``).
  With ``rounding='stochastic'`` the number is ``⌊ρ·n⌋`` plus one with probability
  equal to the fractional part (no carry-over). The reference rounds only a number
  below one this way and truncates larger ones; for the paper's networks ``ρ·n < 1``
  and the two agree;
* the eligible units with the lowest ``û`` in their layer are replaced. Before the shared reset
  zeroes their outgoing weights, each replaced unit's mean contribution is folded into
  the consumer's bias, ``b_out ← b_out + w_out,i · f̂_i`` (`CBPRule.adjust`), so
  the network's output is unchanged in expectation; then the shared reset (design §4)
  re-draws the incoming weights and zeroes the outgoing weights and optimizer state;
  ``u_i, f_i, a_i ← 0``.

The consumer's bias is the parameter ``bias`` next to the outgoing slice's ``kernel``;
an outgoing slice with no such sibling transfers nothing (``init`` warns, naming it). A unit may
own several entries of a consumer's input axis (Conv -> flatten -> Dense: every row ``r`` with
``r % C == c``; Conv -> Conv: every spatial tap of input channel ``c``). ``f̂_c`` is the
channel's mean over positions, and the transfer adds ``f̂_c · Σ w[r, k]`` over all of
the channel's entries: the exact mean contribution when the channel's mean activation
is the same at every position, and otherwise its position-averaged reading (for
Conv -> Conv it also ignores the zero padding at the borders).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from snr_jax._src.checks import DEFAULT_KEY, axis_name_or_none, integer_in, key_or_seed, number_in
from snr_jax._src.activations import mean_activations
from snr_jax._src.ages import saturating_add
from snr_jax._src.groups import NeuronGroup, ParamSlice, get_path
from snr_jax._src.util import cond, control_flow_arg, key_path_to_path, run_if
from snr_jax._src.reset import _unit_ids, cap_mask, max_resets_arg, resets_cap
from snr_jax._src.transform import NeuronResets, ResetRule, with_resets

ROUNDINGS = ('accumulate', 'stochastic')


class CBPState(NamedTuple):
  """State of [`CBPRule`][snr_jax.CBPRule].

  Attributes:
    utility: ``{group: float32 (size,)}``, the running utility ``u`` (not bias-corrected).
    mean_act: ``{group: float32 (size,)}``, the running mean activation ``f``.
    ages: ``{group: int32 (size,)}``, steps since (re)initialisation.
    to_replace: ``{group: float32}``, fractional replacements owed
      (``rounding='accumulate'``; stays 0 with ``'stochastic'``): a scalar, or one per
      layer ``(layers,)`` for a scanned stack's group.
    transfer: ``{group: float32 (size,)}``, ``f̂_i`` of the units replaced at the
      latest step, 0 elsewhere: what `CBPRule.adjust` folds into the biases.
    steps: int32 scalar, steps taken (mixed into the rounding's random stream).
  """

  utility: dict[str, jax.Array]
  mean_act: dict[str, jax.Array]
  ages: dict[str, jax.Array]
  to_replace: dict[str, jax.Array]
  transfer: dict[str, jax.Array]
  steps: jax.Array


def lowest_k(values: jax.Array, eligible: jax.Array, k: jax.Array) -> jax.Array:
  """Mask of the ``k`` eligible entries with the smallest values (ties: lower index)."""
  keyed = jnp.where(eligible, values, jnp.inf)
  order = jnp.argsort(keyed, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
  return eligible & (rank < k)


def _unit_sums(w: jax.Array, group: NeuronGroup, s: ParamSlice):
  """Per unit, ``w`` summed over the entries it owns: ``(layers, units, consumer outputs)``,
  and the number of summed weights per unit (a static array). Entries follow the slice's
  row -> unit map (``unit_of``, or ``r % units``)."""
  nd = w.ndim
  axis = s.axis % nd
  if axis == nd - 1:
    raise ValueError(
        f"outgoing slice '{'/'.join(s.path)}' indexes units on its last axis; "
        "continual backprop reads the consumer's outputs there."
    )
  lead = (axis,) if s.layer_axis is None else (s.layer_axis % nd, axis)
  w = jnp.moveaxis(w.astype(jnp.float32), lead, tuple(range(len(lead))))
  if s.layer_axis is None:
    w = w[None]
  n, out = w.shape[1], w.shape[-1]
  w = w.reshape(w.shape[0], n, -1, out)
  taps = w.shape[2]
  w = w.sum(axis=2)  # (layers, n, out)
  ids = _unit_ids(group, s, n)
  keep = ids >= 0
  sums = jnp.zeros((w.shape[0], group.units, out), jnp.float32).at[:, ids[keep]].add(w[:, keep])
  counts = np.bincount(ids[keep], minlength=group.units) * taps * out
  return sums, counts


def outgoing_mean_magnitude(params: Any, group: NeuronGroup) -> jax.Array:
  """``mean|w_out,i|`` per unit: the mean absolute value over every outgoing weight of
  unit ``i``, pooled over all of the group's outgoing slices (ones without any)."""
  if not group.outgoing:
    return jnp.ones((group.size,), jnp.float32)
  total = jnp.zeros((group.layers, group.units), jnp.float32)
  count = np.zeros((group.units,))
  for s in group.outgoing:
    sums, n = _unit_sums(jnp.abs(get_path(params, s.path)), group, s)
    total = total + sums.sum(axis=-1)
    count = count + n
  return (total / np.maximum(count, 1)).reshape(-1)


def consumer_bias_path(params: Any, s: ParamSlice) -> Optional[tuple[str, ...]]:
  """The path of the bias next to the outgoing slice's ``kernel``, or None."""
  if not s.path or s.path[-1] != 'kernel':
    return None
  path = tuple(s.path[:-1]) + ('bias',)
  try:
    get_path(params, path)
  except ValueError:
    return None
  return path


def transfer_to_biases(
    params: Any, groups: Sequence[NeuronGroup], amounts: Mapping[str, jax.Array]
) -> Any:
  """Adds ``Σ_i amounts_i · Σ_{entries of i} w_out[·, k]`` to each consumer's bias ``k``.

  Args:
    params: the params tree (outgoing weights not yet zeroed).
    groups: neuron groups.
    amounts: ``{group: float32 (size,)}``, e.g. ``f̂_i`` on replaced units and 0 elsewhere.

  Returns:
    The params tree with the consumers' biases shifted.
  """
  deltas: dict[tuple[str, ...], jax.Array] = {}
  for g in groups:
    for s in g.outgoing:
      path = consumer_bias_path(params, s)
      if path is None:
        continue
      w, _ = _unit_sums(get_path(params, s.path), g, s)  # (layers, units, out)
      a = amounts[g.name].astype(jnp.float32).reshape(g.layers, g.units)
      d = jnp.einsum('lu,luk->lk', a, w)
      deltas[path] = deltas[path] + d if path in deltas else d

  def one(key_path, leaf):
    d = deltas.get(key_path_to_path(key_path))
    return leaf if d is None else (leaf + d.reshape(leaf.shape)).astype(leaf.dtype)  # (L, out)

  return jax.tree_util.tree_map_with_path(one, params)


@dataclasses.dataclass(frozen=True)
class CBPRule(ResetRule):
  """Replace the lowest-utility mature units at rate ``replacement_rate`` (see module doc)."""

  replacement_rate: float = 1e-4
  maturity: int = 100
  decay: float = 0.99
  rounding: str = 'accumulate'
  data_axis: Optional[str] = None
  control_flow: str = 'auto'
  max_resets_per_step: Any = None
  state_type: ClassVar[type] = CBPState

  def __post_init__(self):
    put = lambda name, value: object.__setattr__(self, name, value)
    put('replacement_rate', number_in('replacement_rate', self.replacement_rate, 0.0, 1.0))
    put('maturity', integer_in('maturity', self.maturity, 0, what=' (steps)'))
    put('decay', number_in('decay', self.decay, 0.0, 1.0, hi_open=True))

  def init(self, groups: Sequence[NeuronGroup], params: Any) -> CBPState:
    alone = sorted(
        {
            '/'.join(s.path)
            for g in groups
            for s in g.outgoing
            if consumer_bias_path(params, s) is None
        }
    )
    if alone:
      warnings.warn(
          f'continual_backprop: no consumer bias beside the outgoing weights {alone}, so '
          "replaced units' mean contributions are not transferred there (the reference "
          "folds them into the consumer's bias). The bias is the parameter 'bias' next to "
          "a 'kernel': name a plain function's parameters so; a consumer without a bias "
          'has nothing to transfer into.',
          stacklevel=2,
      )
    zeros = lambda g, dt=jnp.float32: jnp.zeros((g.size,), dt)
    return CBPState(
        {g.name: zeros(g) for g in groups},
        {g.name: zeros(g) for g in groups},
        {g.name: zeros(g, jnp.int32) for g in groups},
        {g.name: jnp.zeros(() if g.layers == 1 else (g.layers,), jnp.float32) for g in groups},
        {g.name: zeros(g) for g in groups},
        jnp.zeros((), jnp.int32),
    )

  def select(
      self,
      state: CBPState,
      groups: Sequence[NeuronGroup],
      activations: Mapping[str, jax.Array],
      params: Any,
      *,
      end_of_task,
      key,
  ):
    del end_of_task
    d = self.decay
    steps = state.steps + 1
    out = CBPState({}, {}, {}, {}, {}, steps)
    masks = {}
    # post-ReLU: mean|h| = mean h; with a data_axis, all groups in one buffer
    means = mean_activations({g.name: activations[g.name] for g in groups}, self.data_axis)
    for gi, g in enumerate(groups):
      h = means[g.name]
      age = saturating_add(state.ages[g.name], 1)
      u = d * state.utility[g.name] + (1 - d) * outgoing_mean_magnitude(params, g) * h
      f = d * state.mean_act[g.name] + (1 - d) * h
      correction = 1 - jnp.power(jnp.asarray(d, jnp.float32), age.astype(jnp.float32))
      u_hat, f_hat = u / correction, f / correction
      eligible = age > self.maturity
      # counts, owed replacements and the ranking are per layer (a scanned stack's
      # group holds several, layer-major): shape () for one layer, (layers,) for more
      shape = () if g.layers == 1 else (g.layers,)
      per_layer = lambda x, shape=shape, units=g.units: x.reshape(shape + (units,))
      n_eligible = jnp.sum(per_layer(eligible), axis=-1)
      owed = self.replacement_rate * n_eligible.astype(jnp.float32)
      if self.rounding == 'accumulate':
        owed = state.to_replace[g.name] + owed
        k = jnp.floor(owed)
      else:
        draw = jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, steps), gi), shape)
        k = jnp.floor(owed) + (draw < owed - jnp.floor(owed))
      k = jnp.minimum(k, n_eligible).astype(jnp.int32)
      rank = lowest_k if g.layers == 1 else jax.vmap(lowest_k)
      # the sort runs only on steps that replace something (most steps replace nothing)
      mask = cond(
          jnp.any(k > 0),
          lambda a, rank=rank: rank(*a).reshape(-1),
          lambda a: jnp.zeros_like(a[1]).reshape(-1),
          (per_layer(u_hat), per_layer(eligible), k),
          self.control_flow,
      )
      # over the cap, the lowest utilities go now; the rest stay owed ('accumulate')
      mask = cap_mask(mask, resets_cap(self.max_resets_per_step, g.size), -u_hat, self.control_flow)
      k = jnp.sum(per_layer(mask), axis=-1).astype(jnp.int32)
      masks[g.name] = mask
      out.utility[g.name] = jnp.where(mask, 0.0, u)
      out.mean_act[g.name] = jnp.where(mask, 0.0, f)
      out.ages[g.name] = jnp.where(mask, 0, age)
      out.to_replace[g.name] = (
          owed - k if self.rounding == 'accumulate' else jnp.zeros(shape, jnp.float32)
      )
      out.transfer[g.name] = jnp.where(mask, f_hat, 0.0)
    return masks, out

  def adjust(
      self,
      params: Any,
      masks: Mapping[str, jax.Array],
      state: CBPState,
      groups: Sequence[NeuronGroup],
  ) -> Any:
    """Folds the replaced units' mean contributions into the consumers' biases
    ([`ResetRule.adjust`][snr_jax.ResetRule.adjust], run before the shared reset)."""
    any_replaced = jnp.any(jnp.stack([jnp.any(masks[g.name]) for g in groups]))
    # state.transfer is 0 off the masks; run_if skips the work (and any copy) otherwise
    return run_if(
        any_replaced,
        lambda p: transfer_to_biases(p, groups, state.transfer),
        params,
        self.control_flow,
    )


def continual_backprop(
    inner: optax.GradientTransformation,
    groups: Sequence[NeuronGroup],
    *,
    replacement_rate: float = 1e-4,
    maturity: int = 100,
    decay: float = 0.99,
    rounding: str = 'accumulate',
    key: Any = DEFAULT_KEY,
    axis_name: Optional[str] = None,
    data_axis: Optional[str] = None,
    control_flow: str = 'auto',
    max_resets_per_step: Any = None,
    seed: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` with continual backprop (selective reinitialisation).

  Args:
    inner: the optimizer.
    groups: neuron groups.
    replacement_rate: ρ, fraction of eligible units replaced per step (Dohare et al.
      1e-4 as a typical value; swept over powers of 10).
    maturity: m, steps a unit is protected after (re)initialisation (100).
    decay: d, the running averages' decay (0.99).
    rounding: ``'accumulate'`` (carry the fractional replacements over; the
      reference's ``accumulate=True``) or ``'stochastic'`` (replace one more unit with
      probability equal to the fractional part; the reference's default).
    key: int seed or PRNG key for fresh weights and the stochastic rounding (default 0).
    axis_name: name of an enclosing vmap/pmap axis (see ``NeuronResets``).
    data_axis: the data-parallel axis inside ``shard_map``/``pmap``: activity statistics
      are taken over the global batch (see
      [`self_normalized_resets`][snr_jax.self_normalized_resets]).
    control_flow: ``'branch'``, ``'select'`` or ``'auto'`` (see
      [`self_normalized_resets`][snr_jax.self_normalized_resets]): with ``'select'`` the ranking
      and the bias
      transfer run on every step, kept by ``jnp.where``.
    max_resets_per_step: the most units of a group replaced in one step (see
      [`self_normalized_resets`][snr_jax.self_normalized_resets]); with ``rounding='accumulate'``
      the units
      over it stay owed and are replaced on the following steps.
    seed: deprecated name of ``key`` (a ``DeprecationWarning``; removed in the next
      release).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` taking ``activations=``.

  References:
    Dohare et al., "Loss of plasticity in deep continual learning", Nature 632, 2024;
    reference implementation ``lop/algos/gnt.py`` in shibhansh/loss-of-plasticity.
  """
  replacement_rate = number_in('replacement_rate', replacement_rate, 0.0, 1.0)
  maturity = integer_in('maturity', maturity, 0, what=' (steps)')
  decay = number_in('decay', decay, 0.0, 1.0, hi_open=True)
  if rounding not in ROUNDINGS:
    raise ValueError(f'rounding must be one of {ROUNDINGS}, got {rounding!r}.')
  control_flow = control_flow_arg(control_flow)
  rule = CBPRule(
      replacement_rate,
      maturity,
      decay,
      rounding,
      axis_name_or_none('data_axis', data_axis),
      control_flow,
      max_resets_arg(max_resets_per_step),
  )
  return with_resets(
      inner,
      NeuronResets(groups, rule, axis_name, control_flow=control_flow),
      key_or_seed('continual_backprop', key, seed),
  )
