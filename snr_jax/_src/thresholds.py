"""Per-neuron reset thresholds τ_i: the (1 − η) quantile of a neuron's inter-firing gap.

Three estimators (design §3), each a frozen dataclass with pure methods over a NamedTuple
state for one neuron group:

* [`HistogramEstimator`][snr_jax.HistogramEstimator]: the released code's empirical histogram of
gaps;
* [`GeometricEstimator`][snr_jax.GeometricEstimator]: O(1) memory, the quantile of an exponential
law fitted
  to the mean gap (the authors' transformer code);
* [`PerTokenEstimator`][snr_jax.PerTokenEstimator]: O(1) memory, the quantile of an exponential law
fitted
  to the per-position firing rate (the authors' unpublished "SNR-V2" for token models).

Each estimator also says what one batch's firing is and how it moves the ages:
``observe`` summarises a pre-activation (batch-level: whether each unit fired anywhere;
per-token: at how many positions) and ``advance_ages`` applies `snr_jax.ages`'s
rule for that summary. The SNR rule does everything else (the reset decision
``age ≥ τ``, ages back to 0 on a reset) once, for every estimator.

``record`` stores this step's completed gaps (neurons that fired) and censored gaps
(neurons being reset); ``quantile`` returns the estimator's (1 − η) quantile estimate
per neuron; ``refresh`` hands that estimate to `update_thresholds`, the one
place where the threshold rule (contract, expand, clamp) is written, and clears the
statistics of the neurons selected by ``mask``. The [`Estimator`][snr_jax.Estimator]
protocol declares these methods, with one signature each for every estimator, and the
per-estimator defaults of ``tau_min``, ``tau_max`` and τ_0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp

from snr_jax._src import checks as _checks
from snr_jax._src.util import psum_packed
from snr_jax._src.activations import fire_counts, fired as fired_units
from snr_jax._src.ages import batch_ages, position_ages

INT_MAX = jnp.iinfo(jnp.int32).max


def _log(x):
  # host precision for a Python number; traced (swept) values go through jnp
  return math.log(x) if isinstance(x, (int, float)) else jnp.log(x)


def _expand(tau: jax.Array, expansion: float) -> jax.Array:
  if float(expansion).is_integer():
    return tau * int(expansion)
  return jnp.floor(tau.astype(jnp.float32) * expansion).astype(tau.dtype)


def update_thresholds(
    thresholds: jax.Array,
    estimate: jax.Array,
    mask: jax.Array,
    *,
    tau_min: int,
    tau_max: int,
    expansion: Optional[float],
) -> jax.Array:
  """The threshold rule shared by every estimator (design §3a–§3c).

  On the neurons selected by ``mask``: if the estimate lies below the threshold
  (``estimate < τ``) the threshold contracts to it (``τ ← estimate``), otherwise it
  expands (``τ ← expansion·τ``); then it is clamped into ``[tau_min, tau_max]``. With
  ``expansion=None`` the threshold is simply set to the estimate (no doubling; the
  per-token estimator, design §3c), then clamped.

  design §3a writes the histogram's rule as "if ``q < τ``: contract, else expand" and
  §3b the geometric one as "if ``τ ≤ τ_p``: expand, else contract"; since
  ``τ ≤ τ_p ⇔ not (τ_p < τ)`` both are this one comparison.

  Args:
    thresholds: int32 ``(size,)``, the current τ.
    estimate: int32 ``(size,)``, the estimator's (1 − η) quantile estimate.
    mask: bool ``(size,)``, the neurons refreshed now; the others keep their τ.
    tau_min: floor on τ.
    tau_max: ceiling on τ.
    expansion: factor applied to τ when the estimate does not lie below it, or None.

  Returns:
    The new thresholds, int32 ``(size,)``.
  """
  if expansion is None:
    new = estimate
  else:
    new = jnp.where(estimate < thresholds, estimate, _expand(thresholds, expansion))
  new = jnp.clip(new, tau_min, tau_max)
  return jnp.where(mask, new, thresholds)


class Estimator(Protocol):
  """What the SNR rule asks of a threshold estimator, for one neuron group at a time.

  [`HistogramEstimator`][snr_jax.HistogramEstimator],
  [`GeometricEstimator`][snr_jax.GeometricEstimator] and
  [`PerTokenEstimator`][snr_jax.PerTokenEstimator] implement it (frozen dataclasses over a
  NamedTuple state). Per step and group, [`SNRRule`][snr_jax.SNRRule] calls ``observe``,
  ``advance_ages``, then ``record``; at a refresh, ``refresh`` (which uses ``quantile``
  and ``clear``).
  [`self_normalized_resets`][snr_jax.self_normalized_resets] fills the hyperparameters
  left unset from the class's defaults.

  Attributes:
    eta: the tail probability η in (0, 1).
    tau_min: floor on τ.
    tau_max: ceiling on τ.
    expansion: factor applied to τ at a refresh when the estimate does not lie below
      it, or None (τ set to the estimate).
    age_units: the units the ages may count, the default first.
    default_tau_min: ``tau_min`` when none is given.
    default_tau_max: ``tau_max`` when none is given.
    default_tau_init: the initial threshold τ_0 when none is given (clamped into
      ``[tau_min, tau_max]``); None means ``tau_max``.
  """

  eta: float
  tau_min: int
  tau_max: int
  expansion: Optional[float]
  age_units: ClassVar[tuple[str, ...]]
  default_tau_min: ClassVar[int]
  default_tau_max: ClassVar[int]
  default_tau_init: ClassVar[Optional[int]]

  def init(self, size: int) -> Any:
    """The statistics of a group of ``size`` units (a NamedTuple of arrays)."""

  def observe(self, activation: jax.Array, increment: int, predicate: Any = None) -> Any:
    """This batch's firing of ``activation`` (``(..., units)``), in the estimator's own
    summary (a NamedTuple); ``increment`` is the batch's length in the ages' unit and
    ``predicate`` a declared group's firing test (default ``h > 0``)."""

  def advance_ages(self, ages: jax.Array, firing: Any) -> jax.Array:
    """The ages after a batch with ``firing`` (from ``observe``)."""

  def record(
      self,
      state: Any,
      firing: Any,
      *,
      age_before: jax.Array,
      reset: jax.Array,
      age_at_reset: jax.Array,
  ) -> Any:
    """Adds this step's gaps to the statistics.

    Args:
      state: the statistics.
      firing: this batch's firing, from ``observe`` (under data parallelism, over the
        global batch).
      age_before: int32 ``(size,)``, the ages before this batch.
      reset: bool ``(size,)``, the units reset at this step.
      age_at_reset: int32 ``(size,)``, the ages after this batch (the censored gap of a
        unit being reset).
    """

  def quantile(self, state: Any, increment: int = 1) -> jax.Array:
    """The (1 − η) quantile estimate per unit, int32 ``(size,)``."""

  def clear(self, state: Any, mask: jax.Array) -> Any:
    """The statistics with those of the ``mask``ed units restarted."""

  def refresh(
      self, state: Any, thresholds: jax.Array, mask: jax.Array, increment: int
  ) -> tuple[jax.Array, Any]:
    """``(thresholds, state)``: new thresholds on the ``mask``ed units (see
    `update_thresholds`), their statistics cleared."""


class _RefreshMixin:
  """``refresh`` for an estimator with ``quantile``, ``clear`` and the rule's fields."""

  def __post_init__(self):
    # the library's one path for numeric arguments: NumPy scalars are numbers, bools not
    put = lambda name, value: object.__setattr__(self, name, value)
    put('eta', _checks.number_in('eta', self.eta, 0.0, 1.0, lo_open=True, hi_open=True))
    put('tau_min', _checks.positive_int('tau_min', self.tau_min))
    put('tau_max', _checks.positive_int('tau_max', self.tau_max))
    if self.expansion is not None:  # per_token has none
      put('expansion', _checks.number_at_least('expansion', self.expansion, 1))

  def refresh(self, state, thresholds: jax.Array, mask: jax.Array, increment: int):
    """New thresholds on the ``mask``ed neurons, and their statistics cleared.

    Args:
      state: the estimator's state.
      thresholds: int32 ``(size,)``, the current τ.
      mask: bool ``(size,)``, the neurons to refresh.
      increment: the age increment of one batch (used by the geometric pseudo-count).

    Returns:
      ``(thresholds, state)``.
    """
    new = update_thresholds(
        thresholds,
        self.quantile(state, increment),
        mask,
        tau_min=self.tau_min,
        tau_max=self.tau_max,
        expansion=self.expansion,
    )
    return new, self.clear(state, mask)


class BatchFiring(NamedTuple):
  """One batch's firing as the batch-level estimators see it (design §2).

  Attributes:
    fired: bool ``(units,)``, pre-activation > 0 anywhere in the batch.
    increment: the batch's length in the ages' unit (examples, or 1 in steps).
  """

  fired: jax.Array
  increment: int


class PositionFiring(NamedTuple):
  """One batch's firing as the per-token estimator sees it (design §3c).

  Attributes:
    positions: the positions in the batch, ``BT`` (a Python int).
    counts: int32 ``(units,)``, the positions at which each unit fired.
  """

  positions: int
  counts: jax.Array


def global_firing(firings: dict, axis_name: str, scale_increment: bool) -> dict:
  """Every group's firing over the global batch, under data parallelism (design §8).

  A unit fired if it fired on any shard, per-token counts are summed, and positions (or
  an increment counting examples) grow by the number of shards. Every group's vector is
  packed into one float32 buffer (exact below 2**24; `psum_packed`)
  and summed in one all-reduce, which XLA merges with the float32 gradients' all-reduce:
  the step then has no more collectives than the plain data-parallel step, and one more
  buffer in it however many groups there are.

  Args:
    firings: ``{group: BatchFiring or PositionFiring}`` of this shard.
    axis_name: the data-parallel axis.
    scale_increment: whether a batch-level increment counts examples (not steps).
  """
  n = jax.lax.axis_size(axis_name)
  # a flag sums to at most n, a count to at most the global positions
  exact = lambda f: isinstance(f, BatchFiring) or f.positions * n < 2**24
  local = {k: f.fired if isinstance(f, BatchFiring) else f.counts for k, f in firings.items()}
  summed = psum_packed(
      local, {k: jnp.float32 if exact(f) else jnp.int32 for k, f in firings.items()}, axis_name
  )
  out = {}
  for k, f in firings.items():
    if isinstance(f, BatchFiring):
      out[k] = BatchFiring(summed[k] > 0, f.increment * n if scale_increment else f.increment)
    else:
      out[k] = PositionFiring(f.positions * n, summed[k].astype(jnp.int32))
  return out


class _BatchLevel(_RefreshMixin):
  """Firing and ages of the batch-level estimators: fired anywhere, age back to 0."""

  age_units: ClassVar[tuple[str, ...]] = ('examples', 'steps')
  # the released code's: 100 and 20,000 examples, τ_0 = τ_max
  default_tau_min: ClassVar[int] = 100
  default_tau_max: ClassVar[int] = 20_000
  default_tau_init: ClassVar[Optional[int]] = None

  def observe(self, activation: jax.Array, increment: int, predicate=None) -> BatchFiring:
    """Whether each unit fired anywhere in ``activation`` (``(..., units)``); ``predicate``
    is a declared group's firing test (default ``h > 0``)."""
    return BatchFiring(fired_units(activation, predicate), increment)

  def advance_ages(self, ages: jax.Array, firing: BatchFiring) -> jax.Array:
    """0 where the unit fired, ``+increment`` elsewhere (`batch_ages`)."""
    return batch_ages(ages, firing.fired, firing.increment)


def _quantile_block(bins: int) -> Optional[int]:
  """The block length for `HistogramEstimator.quantile` over ``bins`` bins: a divisor in
  64..256 when there is one (no padding), else 128; None for 512 bins or fewer (one
  running sum is as fast)."""
  if bins <= 512:
    return None
  return next((b for b in range(256, 63, -1) if bins % b == 0), 128)


class HistogramState(NamedTuple):
  """Per-neuron gap counts; ``counts[i, g]`` for gap g in 0..τ_max (last bin: ≥ τ_max)."""

  counts: jax.Array


class GeometricState(NamedTuple):
  """Per-neuron running sum and count of recorded gaps since the last refresh (the
  pseudo-count is added when the mean is taken)."""

  gap_sum: jax.Array
  gap_count: jax.Array


@dataclasses.dataclass(frozen=True)
class HistogramEstimator(_BatchLevel):
  """Empirical-quantile thresholds (design §3a).

  At a refresh, per neuron: ``q`` = the smallest gap ``g ≥ 1`` whose empirical CDF over
  the recorded gaps ``≥ 1`` (bin 0 left out) reaches ``1 − η``; ``q = 1`` when no such
  gap was recorded. If ``q < τ``: ``τ ← q``, else ``τ ← expansion·τ``; then clamp into
  ``[τ_min, τ_max]`` and clear the histogram. Gaps above ``τ_max`` go into the last bin
  (the released code drops them). Memory: ``τ_max + 1`` int32 counters per neuron.
  """

  eta: float
  tau_min: int
  tau_max: int
  expansion: float = 2.0

  def init(self, size: int) -> HistogramState:
    return HistogramState(jnp.zeros((size, self.tau_max + 1), jnp.int32))

  def record(
      self,
      state: HistogramState,
      firing: BatchFiring,
      *,
      age_before: jax.Array,
      reset: jax.Array,
      age_at_reset: jax.Array,
  ) -> HistogramState:
    """Counts the completed gaps (units that fired) and censored gaps (units reset)."""
    fired = firing.fired
    # A neuron that fired has age 0, so it cannot also be reset this step: one scatter.
    gap = jnp.where(fired, age_before, age_at_reset)
    bins = jnp.clip(gap, 0, self.tau_max)
    rows = jnp.arange(gap.shape[0])
    add = (fired | reset).astype(jnp.int32)
    return HistogramState(state.counts.at[rows, bins].add(add, mode='promise_in_bounds'))

  def quantile(self, state: HistogramState, increment: int = 1) -> jax.Array:
    """The (1 − η) empirical quantile of the gaps ≥ 1, per neuron (1 if none).

    The smallest gap ``g`` whose CDF, ``float32(count of gaps 1..g) / float32(total)``,
    reaches ``float32(1 − η)``. The CDF never decreases, so ``g`` is the number of bins
    whose CDF is below that level; they are counted block by block: the blocks' sums and
    their running total find the block where the level is crossed, and only that block
    is summed bin by bin. One pass over the counts, where a running sum over all the
    bins took several (8× the time for 256 units × 20,001 bins on CPU); same result.
    """
    del increment
    counts = state.counts
    size, n = counts.shape
    level = jnp.asarray(1.0 - self.eta, jnp.float32)
    counts = jnp.where(jnp.arange(n) == 0, 0, counts)  # bin 0 (fired again at once) left out
    block = _quantile_block(n)
    if block is None:
      running = jnp.cumsum(counts, axis=1)
      total = running[:, -1]
      below = lambda c: c.astype(jnp.float32) / jnp.maximum(total, 1)[:, None] < level
      return jnp.where(total > 0, jnp.sum(below(running), axis=1, dtype=jnp.int32), 1)
    blocks = -(-n // block)
    if blocks * block != n:
      counts = jnp.pad(counts, ((0, 0), (0, blocks * block - n)))
    counts = counts.reshape(size, blocks, block)
    ends = jnp.cumsum(counts.sum(axis=2), axis=1)  # gaps counted up to each block's end
    total = ends[:, -1]
    below = lambda c: c.astype(jnp.float32) / jnp.maximum(total, 1)[:, None] < level
    k = jnp.minimum(jnp.sum(below(ends), axis=1, dtype=jnp.int32), blocks - 1)  # its block
    before = jnp.take_along_axis(ends, jnp.maximum(k - 1, 0)[:, None], axis=1)
    before = jnp.where(k[:, None] > 0, before, 0)
    inside = jnp.take_along_axis(counts, k[:, None, None], axis=1)[:, 0]
    within = jnp.sum(below(before + jnp.cumsum(inside, axis=1)), axis=1, dtype=jnp.int32)
    return jnp.where(total > 0, k * block + within, 1)

  def clear(self, state: HistogramState, mask: jax.Array) -> HistogramState:
    """Empties the histograms of the ``mask``ed neurons."""
    return HistogramState(jnp.where(mask[:, None], 0, state.counts))


@dataclasses.dataclass(frozen=True)
class GeometricEstimator(_BatchLevel):
  """Thresholds from the mean gap, assuming exponential gaps (design §3b).

  A recorded gap counts the batch in which the neuron fired (``age + increment``), so a
  neuron firing on every batch has a mean gap of one batch; a reset records the age it
  had (a censored gap). Sum and count both carry a pseudo-count of one gap of one batch
  (added when the mean is taken, since the batch size is known only from the
  activations). At a refresh: ``m = sum / count``, ``τ_p = ⌈−ln(η)·m⌉``; if ``τ ≤ τ_p``:
  ``τ ← expansion·τ`` else ``τ ← τ_p``; clamp into ``[τ_min, τ_max]``; reset the sums.
  """

  eta: float
  tau_min: int
  tau_max: int
  expansion: float = 2.0

  def init(self, size: int) -> GeometricState:
    return GeometricState(jnp.zeros((size,), jnp.float32), jnp.zeros((size,), jnp.float32))

  def record(
      self,
      state: GeometricState,
      firing: BatchFiring,
      *,
      age_before: jax.Array,
      reset: jax.Array,
      age_at_reset: jax.Array,
  ) -> GeometricState:
    """Adds the completed gaps (``age + increment``) and censored gaps to the sums."""
    fired = firing.fired
    gap = jnp.where(
        fired, age_before.astype(jnp.float32) + firing.increment, age_at_reset.astype(jnp.float32)
    )
    add = fired | reset
    return GeometricState(
        state.gap_sum + jnp.where(add, gap, 0.0), state.gap_count + add.astype(jnp.float32)
    )

  def quantile(self, state: GeometricState, increment: int = 1) -> jax.Array:
    """⌈−ln(η)·mean gap⌉ per neuron, as int32 (saturating)."""
    mean = (state.gap_sum + increment) / (state.gap_count + 1.0)
    tau_p = jnp.ceil(jnp.asarray(-_log(self.eta), jnp.float32) * mean)
    return jnp.minimum(tau_p, float(INT_MAX // 2)).astype(jnp.int32)

  def clear(self, state: GeometricState, mask: jax.Array) -> GeometricState:
    """Resets the ``mask``ed neurons' sums (to the pseudo-count, added in ``quantile``)."""
    return GeometricState(
        jnp.where(mask, 0.0, state.gap_sum), jnp.where(mask, 0.0, state.gap_count)
    )


RATE_CAP = 2**30
"""Largest ``total`` a [`RateState`][snr_jax.RateState] holds before both of its counters are
halved."""


class RateState(NamedTuple):
  """Per-unit firing-rate counters since the last refresh, pseudo-counts included.

  Attributes:
    count: int32 ``(size,)``, 1 + positions at which the unit fired + its resets.
    total: int32 ``(size,)``, 1 + positions seen.
  """

  count: jax.Array
  total: jax.Array


@dataclasses.dataclass(frozen=True)
class PerTokenEstimator(_RefreshMixin):
  """Thresholds from the per-position firing rate (design §3c; the authors' "SNR-V2").

  For token models, where a batch of ``BT`` positions (examples × tokens, or × spatial
  positions) fires almost every unit somewhere. Per unit, with ``c`` the positions at
  which its pre-activation is > 0:

  * ``count += c`` (``+ 1`` when the unit is reset this step) and ``total += BT``
    every step; both start at a pseudo-count of 1 and restart there at each refresh;
    ``λ̂ = count / total`` is the per-position firing probability;
  * ages count positions (`position_ages`): ``+BT`` after a
    silent batch, ``⌊BT / c⌋`` (the mean gap within the batch, not 0) otherwise;
  * at a refresh ``τ ← ⌈−ln(η) / λ̂⌉``, with no doubling (``expansion`` is None: the
    authors' note says it avoids thresholds shrinking forever), clamped into
    ``[τ_min, τ_max]``.

  A unit is reset when ``⌊BT / c⌋ ≥ τ``, i.e. when its firing rate in this batch is at
  most about ``λ̂ / (−ln η)``: for ``η ≥ 1/e`` (``−ln η ≤ 1``) that includes, up to the
  rounding of τ and of the age, units firing at their own average rate.

  The counters are exact int32. So that they never overflow, when ``total`` passes
  `RATE_CAP` (2³⁰ positions since the refresh: a million steps of 1,024 tokens)
  both are halved (rounding up), which keeps ``λ̂`` up to that rounding and only
  lightens the pseudo-count.

  With one position per example (2-D pre-activations, ``BT`` = batch size) and a batch
  size of 1, the refreshed estimate equals [`GeometricEstimator`][snr_jax.GeometricEstimator]'s
  ``τ_p`` (see
  ``tests/test_per_token.py``); otherwise the two estimate different things (a
  per-position rate against a mean gap counted in whole batches).
  """

  eta: float
  tau_min: int
  tau_max: int

  age_units: ClassVar[tuple[str, ...]] = ('positions',)
  # τ_0 = 10 positions (design §3c); no floor beyond 1 and no effective ceiling:
  # τ = ⌈−ln η / λ̂⌉ is bounded by the positions seen since the refresh.
  default_tau_min: ClassVar[int] = 1
  default_tau_max: ClassVar[int] = RATE_CAP
  default_tau_init: ClassVar[Optional[int]] = 10

  @property
  def expansion(self) -> None:
    """No doubling at a refresh: τ is set to the estimate (design §3c)."""
    return None

  def init(self, size: int) -> RateState:
    return RateState(jnp.ones((size,), jnp.int32), jnp.ones((size,), jnp.int32))

  def observe(self, activation: jax.Array, increment: int, predicate=None) -> PositionFiring:
    """The positions of ``activation`` (``(..., units)``) and each unit's firing count
    (``predicate``: a declared group's firing test, default ``h > 0``)."""
    del increment
    positions, counts = fire_counts(activation, predicate)
    if positions >= RATE_CAP:
      raise ValueError(
          f'a batch of {positions} positions is too many for the per-token '
          f'counters (int32); use batches of fewer than {RATE_CAP} positions.'
      )
    return PositionFiring(positions, counts)

  def advance_ages(self, ages: jax.Array, firing: PositionFiring) -> jax.Array:
    """``+BT`` if silent, else ``⌊BT/c⌋`` (`position_ages`)."""
    return position_ages(ages, firing.positions, firing.counts)

  def record(
      self,
      state: RateState,
      firing: PositionFiring,
      *,
      age_before: jax.Array,
      reset: jax.Array,
      age_at_reset: jax.Array,
  ) -> RateState:
    """Adds this batch's firing counts (and one per reset) and its positions."""
    del age_before, age_at_reset
    count = state.count + firing.counts.astype(jnp.int32) + reset.astype(jnp.int32)
    total = state.total + firing.positions
    halve = total > RATE_CAP
    return RateState(
        jnp.where(halve, (count + 1) // 2, count), jnp.where(halve, (total + 1) // 2, total)
    )

  def rate(self, state: RateState) -> jax.Array:
    """``λ̂ = count / total`` per unit, float32."""
    return state.count.astype(jnp.float32) / state.total.astype(jnp.float32)

  def quantile(self, state: RateState, increment: int = 1) -> jax.Array:
    """``⌈−ln(η) / λ̂⌉`` per unit, as int32 (saturating)."""
    del increment
    mean_gap = state.total.astype(jnp.float32) / state.count.astype(jnp.float32)
    tau = jnp.ceil(jnp.asarray(-_log(self.eta), jnp.float32) * mean_gap)
    return jnp.minimum(tau, float(INT_MAX // 2)).astype(jnp.int32)

  def clear(self, state: RateState, mask: jax.Array) -> RateState:
    """Restarts the ``mask``ed units' counters at the pseudo-count of 1."""
    return RateState(jnp.where(mask, 1, state.count), jnp.where(mask, 1, state.total))


ESTIMATORS = {
    'histogram': HistogramEstimator,
    'geometric': GeometricEstimator,
    'per_token': PerTokenEstimator,
}
