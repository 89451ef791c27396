"""L2 and L2 Init: penalties on the parameters, as optax gradient transformations.

References:
  Kumar, Marklund & Van Roy, "Maintaining Plasticity in Continual Learning via
  Regenerative Regularization", CoLLAs 2024 (arXiv 2308.11958): L2 Init.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from snr_jax._src.checks import number_in, optax_transformation, state_type


def _check_strength(lam: Any) -> float:
  return number_in('the penalty strength', lam, 0.0, float('inf'))


def add_l2(strength: float) -> optax.GradientTransformation:
  """Adds the gradient of ``strength·‖θ‖²`` (that is ``2·strength·θ``) to the updates.

  Chain it before an optimizer: ``optax.chain(add_l2(λ), optax.sgd(lr))`` minimises
  ``loss + λ‖θ‖²`` (note optax's ``add_decayed_weights(w)`` adds ``w·θ``, the gradient
  of ``(w/2)‖θ‖²``).

  Args:
    strength: λ ≥ 0; every parameter is penalised, biases included.

  Returns:
    An ``optax.GradientTransformation``.
  """
  lam = _check_strength(strength)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('add_l2 needs params: call update(grads, state, params).')
    return jax.tree.map(lambda g, p: g + 2 * lam * p, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class L2InitState(NamedTuple):
  initial_params: Any


def add_l2_init(strength: float) -> optax.GradientTransformation:
  """Adds the gradient of ``strength·‖θ − θ₀‖²`` to the updates (L2 Init).

  θ₀ are the parameters ``init`` was called with (the network's initialisation), so the
  penalty pulls towards the initial weights rather than towards zero.

  Args:
    strength: λ ≥ 0.

  Returns:
    An ``optax.GradientTransformation`` whose state keeps θ₀.
  """
  lam = _check_strength(strength)

  def init_fn(params):
    return L2InitState(jax.tree.map(lambda p: p, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('add_l2_init needs params: call update(grads, state, params).')
    state_type('state', state, L2InitState, 'tx.init(params)')
    out = jax.tree.map(
        lambda g, p, p0: g + 2 * lam * (p - p0), updates, params, state.initial_params
    )
    return out, state

  return optax.GradientTransformation(init_fn, update_fn)


def l2(inner: optax.GradientTransformation, strength: float = 1e-4) -> optax.GradientTransformation:
  """``inner`` on ``loss + strength·‖θ‖²``. Kumar et al. sweep λ over powers of 10."""
  return optax.chain(add_l2(strength), optax_transformation('inner', inner))


def l2_init(
    inner: optax.GradientTransformation, strength: float = 1e-4
) -> optax.GradientTransformation:
  """``inner`` on ``loss + strength·‖θ − θ₀‖²`` (Kumar et al.'s L2 Init)."""
  return optax.chain(add_l2_init(strength), optax_transformation('inner', inner))
