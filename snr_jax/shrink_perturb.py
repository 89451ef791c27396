"""Shrink & Perturb: after each update θ ← p·θ + σ·ε, ε a fresh draw from the
parameters' own initializers.

References:
  Ash & Adams, "On Warm-Starting Neural Network Training", NeurIPS 2020; applied at
  every step as in Kumar et al. 2023 (arXiv 2308.11958) and the SNR paper.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import optax

from snr_jax._checks import number_in


class ShrinkPerturbState(NamedTuple):
  inner_state: Any
  key: jax.Array


def shrink_perturb(inner: optax.GradientTransformation,
                   init_fn: Callable[[jax.Array], Any], *, shrink: float = 1.0 - 1e-4,
                   sigma: float = 1e-4, seed: Any = 0
                   ) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner``: after its update, ``θ ← shrink·θ + sigma·ε`` with ``ε = init_fn(key)``.

  Args:
    inner: the optimizer.
    init_fn: draws a fresh parameter tree from the model's initializers, e.g.
      ``lambda k: model.init(k, x)['params']``; its draws are the noise ε.
    shrink: p in (0, 1] (default 1 − 1e-4, our choice; sweep it).
    sigma: noise scale σ ≥ 0 (default 1e-4, our choice; sweep it).
    seed: int seed or PRNG key; or pass ``key=`` to ``update``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (extra args go to ``inner``; reset
    arguments such as ``activations`` are accepted and ignored).
  """
  shrink = number_in('shrink', shrink, 0.0, 1.0, lo_open=True)
  sigma = number_in('sigma', sigma, 0.0, float('inf'))
  if not callable(init_fn):
    raise ValueError('shrink_perturb needs init_fn(key) -> params, e.g. '
                     "lambda k: model.init(k, x)['params'].")
  inner = optax.with_extra_args_support(inner)
  key0 = jax.random.PRNGKey(seed) if isinstance(seed, int) else seed

  def init(params):
    return ShrinkPerturbState(inner.init(params), key0)

  def update(updates, state, params=None, *, key: Optional[jax.Array] = None,
             activations=None, end_of_task=None, **extra):
    del activations, end_of_task
    if params is None:
      raise ValueError('shrink_perturb needs params: call update(grads, state, params).')
    next_key, sub = jax.random.split(state.key)
    if key is not None:
      sub, next_key = key, state.key
    u, inner_state = inner.update(updates, state.inner_state, params, **extra)
    noise = init_fn(sub)
    new = jax.tree.map(lambda p, d, e: shrink * (p + d) + sigma * e, params, u, noise)
    out = jax.tree.map(lambda n, p: (n - p).astype(p.dtype), new, params)
    return out, ShrinkPerturbState(inner_state, next_key)

  return optax.GradientTransformationExtraArgs(init, update)
