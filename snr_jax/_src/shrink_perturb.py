"""Shrink & Perturb: after each update θ ← p·θ + σ·ε, ε fresh noise with the parameters'
own initializers' mean and scale.

Drawing ε from the initializers themselves (``init_fn(key)``, ``noise='init'``) costs a
full initialisation per step: about 5× a plain SGD step of the paper's MLP on CPU, most
of it in threefry normal sampling. The default, ``noise='fast'``, reads each leaf's mean
``m`` and standard deviation ``s`` once, from one ``init_fn`` draw at ``init``, and then
draws ``ε = m + s·z`` per element, with ``z`` uniform on ``[−√3, √3]`` (mean 0, variance
1) from a counter-based integer hash of the element's index, seeded per leaf and step
by one small threefry draw. This keeps each leaf's first two moments but not the shape
of its initializer's distribution; over the ``~1/(1 − p)`` steps that the shrink
remembers, the summed perturbation is Gaussian either way. A run stays a pure function
of the seed. ``experiments/bench_shrink_perturb.py`` measures both modes.

References:
  Ash & Adams, "On Warm-Starting Neural Network Training", NeurIPS 2020; applied at
  every step as in Kumar et al. 2023 (arXiv 2308.11958) and the SNR paper.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from snr_jax._src.checks import (
    DEFAULT_KEY,
    ignores_reset_args,
    key_or_seed,
    no_extra_positional,
    number_in,
    optax_transformation,
    prng_key,
    state_type,
)
from snr_jax._src.util import key_path_to_path, member_key

NOISES = ('fast', 'init')


class ShrinkPerturbState(NamedTuple):
  """State of [`shrink_perturb`][snr_jax.shrink_perturb].

  Attributes:
    inner_state: the wrapped optimizer's state.
    key: the PRNG key of the next step's noise.
    moments: ``noise='fast'``: ``(mean, std)`` float32 scalars per params leaf, read
      from one ``init_fn`` draw; ``noise='init'``: None.
  """

  inner_state: Any
  key: jax.Array
  moments: Any = None


def _mix(x: jax.Array) -> jax.Array:
  """A 32-bit integer finaliser (xor-shift-multiply): a bijection that scrambles bits."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def hash_uniform(word: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniform float32 noise on ``[−√3, √3]`` (unit variance) of ``shape``, a function of
  the 32-bit ``word`` and each element's flat index."""
  n = 1
  for d in shape:
    n *= d
  x = _mix(jax.lax.iota(jnp.uint32, n) * jnp.uint32(0x9E3779B9) ^ word)
  u = (x >> 8).astype(jnp.float32) * (1.0 / (1 << 24))  # [0, 1), 24 bits
  return ((u - 0.5) * 3.4641016).reshape(shape)


def leaf_moments(params: Any) -> Any:
  """``(mean, std)`` float32 scalars of every leaf of ``params``."""

  def one(p):
    p = jnp.asarray(p, jnp.float32)
    return jnp.mean(p), jnp.std(p)

  return jax.tree.map(one, params)


def _check_like_params(drawn: Any, params: Any) -> None:
  """Refuses an ``init_fn`` whose draw differs from ``params`` in leaves or shapes (another
  model's): its noise would not fit, or would perturb the wrong parameters."""

  def shapes(tree):
    return {
        '/'.join(key_path_to_path(kp)): tuple(jnp.shape(x))
        for kp, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }

  got, want = shapes(drawn), shapes(params)
  if got == want:
    return
  problems = []
  if set(got) - set(want):
    problems.append(f'leaves not in params {sorted(set(got) - set(want))}')
  if set(want) - set(got):
    problems.append(f'params leaves it lacks {sorted(set(want) - set(got))}')
  problems += [
      f"'{k}' of shape {got[k]} (params: {want[k]})"
      for k in sorted(set(got) & set(want))
      if got[k] != want[k]
  ]
  raise ValueError(
      "init_fn(key) must return a tree shaped like params (the same model's "
      f'fresh parameters), but it returns {"; ".join(problems)}. Pass the '
      "model's own initializer, e.g. lambda k: model.init(k, x)['params']."
  )


def _as_params_tree(drawn: Any, params: Any) -> Any:
  """``drawn`` (checked to have params' leaves) in params' own containers (a dict draw
  for FrozenDict params, say), so that the two trees map together."""
  return jax.tree.unflatten(jax.tree.structure(params), jax.tree.leaves(drawn))


def shrink_perturb(
    inner: optax.GradientTransformation,
    init_fn: Callable[[jax.Array], Any],
    *,
    shrink: float = 1.0 - 1e-4,
    sigma: float = 1e-4,
    noise: str = 'fast',
    key: Any = DEFAULT_KEY,
    seed: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner``: after its update, ``θ ← shrink·θ + sigma·ε``.

  Args:
    inner: the optimizer.
    init_fn: draws a fresh parameter tree from the model's initializers, e.g.
      ``lambda k: model.init(k, x)['params']``; its leaves and shapes must be the
      params' (``init`` refuses another model's).
    shrink: p in (0, 1] (default 1 − 1e-4, our choice; sweep it).
    sigma: noise scale σ ≥ 0 (default 1e-4, our choice; sweep it).
    noise: ``'fast'`` (default): ε per element with each leaf's initial mean and
      standard deviation, from a cheap counter-based hash (see the module docstring);
      ``'init'``: ε = ``init_fn(key)``, a full draw from the initializers every step.
    key: int seed or PRNG key (default 0), folded at ``init`` with a fingerprint of the
      params (members with different initial params draw different noise from one key);
      or pass ``key=`` to ``update``.
    seed: deprecated name of ``key`` (a ``DeprecationWarning``; removed in the next
      release).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (extra args go to ``inner``; reset
    arguments such as ``activations`` are accepted and ignored).
  """
  shrink = number_in('shrink', shrink, 0.0, 1.0, lo_open=True)
  sigma = number_in('sigma', sigma, 0.0, float('inf'))
  if not callable(init_fn):
    raise ValueError(
        'shrink_perturb needs init_fn(key) -> params, e.g. ' "lambda k: model.init(k, x)['params']."
    )
  if noise not in NOISES:
    raise ValueError(
        f"noise must be one of {NOISES} ('fast': cheap noise with each "
        f"leaf's initial mean and std; 'init': init_fn draws), got {noise!r}."
    )
  inner = optax.with_extra_args_support(optax_transformation('inner', inner))
  key0 = prng_key('key', key_or_seed('shrink_perturb', key, seed))

  def init(params):
    key = jax.random.fold_in(key0, 0x5EED)
    moments = None
    if noise == 'fast':
      drawn = init_fn(key)
      _check_like_params(drawn, params)
      moments = leaf_moments(_as_params_tree(drawn, params))
    else:  # checked from shapes alone: this mode draws at every step, not here
      _check_like_params(jax.eval_shape(init_fn, key), params)
    # the noise stream is folded with the initial params, so members initialised
    # together (jax.vmap(tx.init)(stacked_params)) never share it
    return ShrinkPerturbState(inner.init(params), member_key(key0, params), moments)

  def draw(sub, params, moments):
    if noise == 'init':
      return _as_params_tree(init_fn(sub), params)
    leaves, treedef = jax.tree.flatten(params)
    stats = treedef.flatten_up_to(moments)
    words = jax.random.bits(sub, (max(len(leaves), 1),), jnp.uint32)
    return treedef.unflatten(
        [
            m + s * hash_uniform(words[i], jnp.shape(p))
            for i, (p, (m, s)) in enumerate(zip(leaves, stats))
        ]
    )

  @ignores_reset_args
  def update(
      updates,
      state,
      params=None,
      *args,
      key: Optional[jax.Array] = None,
      activations=None,
      end_of_task=None,
      **extra,
  ):
    del activations, end_of_task
    no_extra_positional(args)
    if params is None:
      raise ValueError('shrink_perturb needs params: call update(grads, state, params).')
    state_type('state', state, ShrinkPerturbState, 'tx.init(params)')
    next_key, sub = jax.random.split(state.key)
    if key is not None:
      sub, next_key = prng_key('key', key), state.key
    u, inner_state = inner.update(updates, state.inner_state, params, **extra)
    eps = draw(sub, params, state.moments)
    new = jax.tree.map(lambda p, d, e: shrink * (p + d) + sigma * e, params, u, eps)
    out = jax.tree.map(lambda n, p: (n - p).astype(p.dtype), new, params)
    return out, ShrinkPerturbState(inner_state, next_key, state.moments)

  return optax.GradientTransformationExtraArgs(init, update)
