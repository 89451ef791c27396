"""Glue for training loops: a Flax ``TrainState`` step that passes activations, and one
flat metrics dict for every method's optimizer state.

``flax.training.train_state.TrainState.apply_gradients(grads=..., **kwargs)`` treats its
keyword arguments as fields to replace, so it cannot hand ``activations=`` to the
optimizer; [`apply_gradients`][snr_jax.apply_gradients] is the same step with the extra arguments
forwarded
to ``tx.update``. With NNX, ``nnx.Optimizer.update(model, grads, activations=acts)``
already forwards them (see the README).

Gradient accumulation: wrap the *inner* optimizer, ``snr(optax.MultiSteps(inner, k),
groups)``, so that SNR sees every micro-batch's firing (its ages count every example) and
a reset also clears the accumulated gradients of the reset slices. The other nesting,
``optax.MultiSteps(snr(inner, groups), k)``, would run SNR only on the last micro-batch
of each accumulation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from snr_jax._src.checks import IGNORES_RESET_ARGS
from snr_jax._src.methods import RESET_ARGS
from snr_jax._src.snr import SNRState, dead_fraction
from snr_jax._src.transform import find_reset_state


def apply_gradients(state: Any, grads: Any, **extra_args) -> Any:
  """``TrainState.apply_gradients`` that forwards ``activations=``, ``end_of_task=``, ...

  Args:
    state: a ``flax.training.train_state.TrainState`` (or anything with ``params``,
      ``opt_state``, ``tx``, ``step`` and ``replace``).
    grads: gradients of the loss with respect to ``state.params``.
    **extra_args: passed to ``state.tx.update`` (e.g. ``activations=acts``).

  Returns:
    The state after one step: new params, optimizer state and step count.

  Raises:
    ValueError: reset arguments (``activations=``, ...) given with a ``state.tx`` that
      holds no resetting method (a plain optax optimizer would drop them silently).
  """
  given = sorted(k for k in RESET_ARGS if k in extra_args)
  if (
      given
      and find_reset_state(state.opt_state) is None
      and not getattr(state.tx.update, IGNORES_RESET_ARGS, False)
  ):
    raise ValueError(
        f'{", ".join(g + "=" for g in given)} given, but state.opt_state holds no resetting '
        "method's state: state.tx is a plain optax optimizer, which would drop them, so "
        'nothing would be reset. Create the TrainState with the method as tx, e.g. '
        'tx=snr_jax.snr(optax.adam(1e-3), groups) or snr_jax.make_method(name, inner, ...); '
        'for a plain optimizer, leave the reset arguments out.'
    )
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params, **extra_args)
  return state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
  )


def reset_metrics(
    opt_state: Any, dead_after: int = 1000, *, nested: bool = False
) -> dict[str, Any]:
  """Per-group figures of any method's optimizer state, for logging (jit-friendly).

  The figures are the units reset at the latest step (``resets``) for every resetting
  method (SNR, ReDo, continual backprop), plus, for SNR, the fraction of units silent for
  ``dead_after`` or more (``dead_fraction``, in the ages' unit) and the mean threshold
  (``mean_threshold``). A method that resets nothing (none, L2, L2 Init, Shrink & Perturb)
  gives an empty dict. The values are scalar arrays.

  Args:
    opt_state: the optimizer state of any method (an optax chain holding one included), a
      [`NeuronResetsState`][snr_jax.NeuronResetsState], or an NNX optimizer's
      ``nnx.Optimizer(...).opt_state``.
    dead_after: age (in the ages' unit: examples, steps, or positions for the per-token
      estimator; see [`dead_fraction`][snr_jax.dead_fraction]) from which a unit counts as
      dead.
    nested: False (default): one flat dict for a logger, keyed ``'resets/<group>'``,
      ``'dead_fraction/<group>'``, ``'mean_threshold/<group>'``. True: one dict per figure,
      ``{'resets': {group: ...}, 'dead_fraction': {...}, 'mean_threshold': {...}}``.

  Returns:
    The figures, flat or nested.

  Examples:
    >>> import jax.numpy as jnp, optax, snr_jax
    >>> params = {'l1': {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros(4)},
    ...           'l2': {'kernel': jnp.ones((4, 2))}}
    >>> groups = [snr_jax.dense_group('h', 4, layer='l1', consumer='l2')]
    >>> state = snr_jax.snr(optax.sgd(0.1), groups).init(params)
    >>> {k: float(v) for k, v in snr_jax.reset_metrics(state).items()}
    {'resets/h': 0.0, 'dead_fraction/h': 0.0, 'mean_threshold/h': 20000.0}
    >>> sorted(snr_jax.reset_metrics(state, nested=True))
    ['dead_fraction', 'mean_threshold', 'resets']
  """
  rs = find_reset_state(opt_state)
  figures = {}
  if rs is not None:
    figures['resets'] = {k: jnp.sum(v) for k, v in rs.last_resets.items()}
    if isinstance(rs.rule, SNRState):
      figures['dead_fraction'] = {k: dead_fraction(v, dead_after) for k, v in rs.rule.ages.items()}
      figures['mean_threshold'] = {
          k: jnp.mean(v.astype(jnp.float32)) for k, v in rs.rule.thresholds.items()
      }
  if nested:
    return figures
  return {f'{name}/{k}': v for name, per_group in figures.items() for k, v in per_group.items()}


def snr_info(state: Any, dead_after: int = 1000) -> dict[str, dict[str, jax.Array]]:
  """Deprecated: ``reset_metrics(state, dead_after, nested=True)``.

  Raises ``ValueError`` when ``state`` holds no reset state (``reset_metrics`` gives
  ``{}``).
  """
  if find_reset_state(state) is None:
    raise ValueError('no reset state found: pass the state of snr(...) / with_resets(...).')
  return reset_metrics(state, dead_after, nested=True)
