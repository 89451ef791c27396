"""One registry from a method's name to its constructor, so experiments choose by name.

Every method built here has the same face: an ``optax.GradientTransformationExtraArgs``
whose ``update(grads, state, params, activations=, end_of_task=, key=)`` accepts the
reset arguments (methods that do not reset ignore them), so one jitted train step
serves them all.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Sequence

import optax

from snr_jax._src.checks import (
    DEFAULT_KEY,
    ignores_reset_args,
    key_or_seed,
    no_extra_positional,
    optax_transformation,
)
from snr_jax._src.cbp import continual_backprop
from snr_jax._src.groups import NeuronGroup
from snr_jax._src.penalties import l2, l2_init
from snr_jax._src.redo import redo
from snr_jax._src.shrink_perturb import shrink_perturb
from snr_jax._src.schedules import RefreshSchedule
from snr_jax._src.snr import snr

RESET_ARGS = ('activations', 'end_of_task', 'key')


def ignoring_reset_args(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``tx`` with an update that accepts, and ignores, the reset arguments."""
  tx = optax.with_extra_args_support(tx)

  @ignores_reset_args
  def update(updates, state, params=None, *args, **extra):
    no_extra_positional(args)
    for name in RESET_ARGS:
      extra.pop(name, None)
    return tx.update(updates, state, params, **extra)

  return optax.GradientTransformationExtraArgs(tx.init, update)


def snr_l2(
    inner: optax.GradientTransformation,
    groups: Sequence[NeuronGroup],
    *,
    strength: float = 1e-4,
    key: Any = DEFAULT_KEY,
    eta: float = 0.08,
    estimator: str = 'histogram',
    tau_init: Optional[int] = None,
    tau_min: Optional[int] = None,
    tau_max: Optional[int] = None,
    expansion: Optional[float] = None,
    schedule: Optional[RefreshSchedule] = None,
    age_unit: Optional[str] = None,
    batch_size: Optional[int] = None,
    axis_name: Optional[str] = None,
    check_finite: bool = False,
    state_budget: int = 2**30,
    data_axis: Optional[str] = None,
    control_flow: str = 'auto',
    max_resets_per_step: Any = None,
    seed: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """SNR+L2: SNR wrapping ``inner`` on ``loss + strength·‖θ‖²`` (a composition).

  ``snr(l2(inner, strength), groups, ...)``: see [`snr`][snr_jax.snr] and
  [`l2`][snr_jax.l2].

  Args:
    inner: the optimizer, e.g. ``optax.sgd(1e-2)``.
    groups: neuron groups.
    strength: the L2 coefficient λ.
    key: int seed or PRNG key for the fresh weights (default 0).
    eta: SNR's rejection percentile η (see [`snr`][snr_jax.snr] for this and the rest).
    estimator: SNR's threshold estimator.
    tau_init: initial threshold τ_0.
    tau_min: floor on τ.
    tau_max: ceiling on τ.
    expansion: factor applied to τ when the estimate does not lie below it.
    schedule: when thresholds refresh.
    age_unit: the ages' unit.
    batch_size: examples per step over the whole batch.
    axis_name: the enclosing vmap/pmap axis when runs are batched.
    check_finite: check that every pre-activation is finite.
    state_budget: the most bytes SNR's state may take.
    data_axis: the data-parallel axis inside ``shard_map``/``pmap``.
    control_flow: ``'branch'``, ``'select'`` or ``'auto'``.
    max_resets_per_step: the most units of a group reset in one step.
    seed: deprecated name of ``key`` (a ``DeprecationWarning``; removed in the next
      release).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  return snr(
      l2(inner, strength),
      groups,
      key=key_or_seed('snr_l2', key, seed),
      eta=eta,
      estimator=estimator,
      tau_init=tau_init,
      tau_min=tau_min,
      tau_max=tau_max,
      expansion=expansion,
      schedule=schedule,
      age_unit=age_unit,
      batch_size=batch_size,
      axis_name=axis_name,
      check_finite=check_finite,
      state_budget=state_budget,
      data_axis=data_axis,
      control_flow=control_flow,
      max_resets_per_step=max_resets_per_step,
  )


def _none(inner):
  return inner


METHODS: dict[str, Callable[..., Any]] = {
    'none': _none,
    'l2': l2,
    'l2_init': l2_init,
    'shrink_perturb': shrink_perturb,
    'redo': redo,
    'cbp': continual_backprop,
    'snr': snr,
    'snr_l2': snr_l2,
}


def method_hyperparameters(name: str) -> list[str]:
  """The hyperparameter names ``make_method`` accepts for method ``name``."""
  fn = _lookup(name)
  params = [
      p
      for p in inspect.signature(fn).parameters
      if p not in ('inner', 'groups', 'init_fn', 'axis_name', 'data_axis', 'seed')
  ]
  return params


def _lookup(name: str):
  if name not in METHODS:
    raise ValueError(f'unknown method {name!r}: choose one of {sorted(METHODS)}.')
  return METHODS[name]


def make_method(
    name: str,
    inner: optax.GradientTransformation,
    *,
    groups: Optional[Sequence[NeuronGroup]] = None,
    init_fn: Optional[Callable] = None,
    axis_name: Optional[str] = None,
    data_axis: Optional[str] = None,
    **hyperparams,
) -> optax.GradientTransformationExtraArgs:
  """Builds a method by name around an optimizer.

  Args:
    name: one of ``METHODS`` (none, l2, l2_init, shrink_perturb, redo, cbp, snr,
      snr_l2).
    inner: the optimizer, e.g. ``optax.sgd(1e-2)`` or ``optax.adam(1e-3)``.
    groups: neuron groups (needed by redo, cbp, snr, snr_l2).
    init_fn: ``key -> params`` drawing fresh parameters (needed by shrink_perturb).
    axis_name: name of an enclosing vmap/pmap axis, for the resetting methods (see
      [`NeuronResets`][snr_jax.NeuronResets]); ignored by the others.
    data_axis: the data-parallel axis inside ``shard_map``/``pmap``, for the resetting
      methods: their statistics cover the global batch; ignored by the others (their
      updates need no batch statistics).
    **hyperparams: the method's hyperparameters (see
      [`method_hyperparameters`][snr_jax.method_hyperparameters]);
      ``key`` (int seed or PRNG key) is accepted by every method (``seed``, its
      deprecated name, too).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` accepting the reset arguments.

  Raises:
    ValueError: an unknown method or hyperparameter (the message lists the valid
      ones), or a missing ``groups`` / ``init_fn``.
  """
  fn = _lookup(name)
  inner = optax_transformation('inner', inner)
  valid = method_hyperparameters(name)
  if 'key' not in valid:  # deterministic methods: a key is accepted and unused
    key_or_seed(
        f'make_method({name!r})', hyperparams.pop('key', DEFAULT_KEY), hyperparams.pop('seed', None)
    )
  elif 'seed' in hyperparams:  # the deprecated name: the method warns
    valid = valid + ['seed']
  unknown = sorted(set(hyperparams) - set(valid))
  if unknown:
    raise ValueError(
        f'unknown hyperparameter(s) {unknown} for method {name!r}: valid ' f'ones are {valid}.'
    )
  sig = inspect.signature(fn).parameters
  args = {}
  if 'groups' in sig:
    if groups is None:
      raise ValueError(
          f'method {name!r} resets neurons and needs groups= '
          '(snr_jax.discover_groups(model, params, x)).'
      )
    args['groups'] = groups
  if 'init_fn' in sig:
    if init_fn is None:
      raise ValueError(
          f'method {name!r} needs init_fn= (key -> fresh params, e.g. '
          "lambda k: model.init(k, x)['params'])."
      )
    args['init_fn'] = init_fn
  if 'groups' in sig:
    args['axis_name'] = axis_name
    args['data_axis'] = data_axis
  tx = fn(inner, **args, **hyperparams)
  if name in ('none', 'l2', 'l2_init'):
    tx = ignoring_reset_args(tx)
  return tx
