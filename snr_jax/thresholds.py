"""Per-neuron reset thresholds τ_i: the (1 − η) quantile of a neuron's inter-firing gap.

Two estimators (SPEC §3), each a frozen dataclass with pure methods over a NamedTuple
state for one neuron group:

* :class:`HistogramEstimator`: the released code's empirical histogram of gaps;
* :class:`GeometricEstimator`: O(1) memory, the quantile of an exponential law fitted
  to the mean gap (the authors' transformer code).

``record`` stores this step's completed gaps (neurons that fired) and censored gaps
(neurons being reset); ``quantile`` returns the estimator's (1 − η) quantile estimate
per neuron; ``refresh`` hands that estimate to :func:`update_thresholds`, the one
place where the threshold rule (contract, expand, clamp) is written, and clears the
statistics of the neurons selected by ``mask``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

INT_MAX = jnp.iinfo(jnp.int32).max


def _log(x):
  # host precision for a Python number; traced (swept) values go through jnp
  return math.log(x) if isinstance(x, (int, float)) else jnp.log(x)


def _expand(tau: jax.Array, expansion: float) -> jax.Array:
  if float(expansion).is_integer():
    return tau * int(expansion)
  return jnp.floor(tau.astype(jnp.float32) * expansion).astype(tau.dtype)


def update_thresholds(thresholds: jax.Array, estimate: jax.Array, mask: jax.Array, *,
                      tau_min: int, tau_max: int, expansion: Optional[float]) -> jax.Array:
  """The threshold rule shared by every estimator (SPEC §3a–§3c).

  On the neurons selected by ``mask``: if the estimate lies below the threshold
  (``estimate < τ``) the threshold contracts to it (``τ ← estimate``), otherwise it
  expands (``τ ← expansion·τ``); then it is clamped into ``[tau_min, tau_max]``. With
  ``expansion=None`` the threshold is simply set to the estimate (no doubling; the
  per-token estimator, SPEC §3c), then clamped.

  SPEC §3a writes the histogram's rule as "if ``q < τ``: contract, else expand" and
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


class _RefreshMixin:
  """``refresh`` for an estimator with ``quantile``, ``clear`` and the rule's fields."""

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
    new = update_thresholds(thresholds, self.quantile(state, increment), mask,
                            tau_min=self.tau_min, tau_max=self.tau_max,
                            expansion=self.expansion)
    return new, self.clear(state, mask)


class HistogramState(NamedTuple):
  """Per-neuron gap counts; ``counts[i, g]`` for gap g in 0..τ_max (last bin: ≥ τ_max)."""
  counts: jax.Array


class GeometricState(NamedTuple):
  """Per-neuron running sum and count of recorded gaps since the last refresh (the
  pseudo-count is added when the mean is taken)."""
  gap_sum: jax.Array
  gap_count: jax.Array


@dataclasses.dataclass(frozen=True)
class HistogramEstimator(_RefreshMixin):
  """Empirical-quantile thresholds (SPEC §3a).

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

  def record(self, state: HistogramState, *, fired: jax.Array, age_before: jax.Array,
             reset: jax.Array, age_at_reset: jax.Array, increment: int) -> HistogramState:
    del increment
    # A neuron that fired has age 0, so it cannot also be reset this step: one scatter.
    gap = jnp.where(fired, age_before, age_at_reset)
    bins = jnp.clip(gap, 0, self.tau_max)
    rows = jnp.arange(gap.shape[0])
    add = (fired | reset).astype(jnp.int32)
    return HistogramState(state.counts.at[rows, bins].add(add, mode='promise_in_bounds'))

  def quantile(self, state: HistogramState, increment: int = 1) -> jax.Array:
    """The (1 − η) empirical quantile of the gaps ≥ 1, per neuron (1 if none)."""
    del increment
    counts = state.counts[:, 1:]
    total = counts.sum(axis=1)
    cdf = jnp.cumsum(counts, axis=1).astype(jnp.float32) / jnp.maximum(total, 1)[:, None]
    q = jnp.argmax(cdf >= jnp.asarray(1.0 - self.eta, jnp.float32), axis=1).astype(jnp.int32) + 1
    return jnp.where(total > 0, q, 1)

  def clear(self, state: HistogramState, mask: jax.Array) -> HistogramState:
    """Empties the histograms of the ``mask``ed neurons."""
    return HistogramState(jnp.where(mask[:, None], 0, state.counts))


@dataclasses.dataclass(frozen=True)
class GeometricEstimator(_RefreshMixin):
  """Thresholds from the mean gap, assuming exponential gaps (SPEC §3b).

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

  def record(self, state: GeometricState, *, fired: jax.Array, age_before: jax.Array,
             reset: jax.Array, age_at_reset: jax.Array, increment: int) -> GeometricState:
    gap = jnp.where(fired, age_before.astype(jnp.float32) + increment,
                    age_at_reset.astype(jnp.float32))
    add = fired | reset
    return GeometricState(state.gap_sum + jnp.where(add, gap, 0.0),
                          state.gap_count + add.astype(jnp.float32))

  def quantile(self, state: GeometricState, increment: int = 1) -> jax.Array:
    """⌈−ln(η)·mean gap⌉ per neuron, as int32 (saturating)."""
    mean = (state.gap_sum + increment) / (state.gap_count + 1.0)
    tau_p = jnp.ceil(jnp.asarray(-_log(self.eta), jnp.float32) * mean)
    return jnp.minimum(tau_p, float(INT_MAX // 2)).astype(jnp.int32)

  def clear(self, state: GeometricState, mask: jax.Array) -> GeometricState:
    """Resets the ``mask``ed neurons' sums (to the pseudo-count, added in ``quantile``)."""
    return GeometricState(jnp.where(mask, 0.0, state.gap_sum),
                          jnp.where(mask, 0.0, state.gap_count))


ESTIMATORS = {'histogram': HistogramEstimator, 'geometric': GeometricEstimator}
