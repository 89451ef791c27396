"""How ages move after a batch (design §2, §3c): the one place where they are counted.

* `batch_ages`: examples (or steps) since a unit last fired; a unit that fired
  anywhere in the batch goes back to 0 (design §2).
* `position_ages`: positions (examples × tokens or × spatial positions) for the
  per-token estimator (design §3c); after a batch in which the unit fired at ``c`` of its
  ``BT`` positions the age is ``⌊BT / c⌋``, the mean gap between its firings within the
  batch, instead of 0.

Ages are int32 and saturate at the dtype's maximum instead of wrapping.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def saturating_add(ages: jax.Array, increment: int) -> jax.Array:
  """``ages + increment`` clipped at the dtype's maximum instead of wrapping."""
  top = jnp.iinfo(ages.dtype).max
  return jnp.where(ages > top - increment, top, ages + increment)


def batch_ages(ages: jax.Array, fired: jax.Array, increment: int) -> jax.Array:
  """Ages after a batch, batch-level firing (design §2).

  Args:
    ages: int ``(units,)``, the ages before the batch.
    fired: bool ``(units,)``, whether each unit fired anywhere in the batch.
    increment: the batch's length in the ages' unit (examples, or 1 for steps).

  Returns:
    ``0`` where the unit fired, ``ages + increment`` (saturating) elsewhere.
  """
  return jnp.where(fired, 0, saturating_add(ages, increment))


def position_ages(ages: jax.Array, positions: int, counts: jax.Array) -> jax.Array:
  """Ages in positions after a batch, per-token firing (design §3c).

  A unit silent at every position of the batch ages by the batch's ``positions``
  (saturating). A unit that fired at ``c ≥ 1`` of them gets ``⌊positions / c⌋``, the
  mean gap between its firings in this batch. The floor keeps ages integers without
  changing any reset decision: thresholds are integers, and for an integer τ,
  ``⌊x⌋ ≥ τ ⇔ x ≥ τ``, so ``age ≥ τ`` is decided exactly as with the real-valued gap.
  Since ``c ≤ positions`` the age after a firing batch is at least 1.

  Args:
    ages: int ``(units,)``, the ages before the batch.
    positions: the number of positions in the batch (``BT``).
    counts: int ``(units,)``, the positions at which each unit fired.

  Returns:
    The new ages, same dtype as ``ages``.
  """
  gap = (positions // jnp.maximum(counts, 1)).astype(ages.dtype)
  return jnp.where(counts > 0, gap, saturating_add(ages, positions))
