"""Wrapping an optax optimizer with a neuron-reset rule.

Every resetting method (SNR, ReDo, continual backprop) is a [`ResetRule`][snr_jax.ResetRule]: a pure
function that reads the batch's pre-activations and its own state and returns which
units to reset. Its ``adjust(params, masks, state, groups)``, run after ``select`` and
before the reset, may change parameters that the reset itself leaves alone (continual
backprop's bias transfer; the protocol's default changes nothing). Everything else is
shared:

* [`NeuronResets`][snr_jax.NeuronResets] pairs a rule with the neuron groups;
  [`reset_state`][snr_jax.reset_state] is the pure step (bookkeeping, then resets) for users who
  drive optax themselves;
* [`with_resets`][snr_jax.with_resets] wraps an inner optimizer into an
  ``optax.GradientTransformationExtraArgs`` that runs the inner update, then the
  rule, then the shared reset of `snr_jax.reset`, returning updates that land
  on the reset parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.experimental import checkify

from snr_jax._src import checks as _checks, optional as _optional
from snr_jax._src.util import control_flow_arg, key_path_to_path, member_key
from snr_jax._src.activations import ActivationError, check_activations, merge_layers
from snr_jax._src.groups import GroupError, NeuronGroup, validate_groups
from snr_jax._src.reset import reset_neurons_and_advance_key, resets_cap


class ResetRule(Protocol):
  """Decides which units to reset.

  Implementations are frozen dataclasses that subclass this protocol
  (``class MyRule(snr_jax.ResetRule)``), define ``init`` and ``select``, and inherit the
  no-op ``adjust`` unless they change parameters before the reset (SNR, ReDo and
  continual backprop subclass it). A plain dataclass with ``init`` and ``select`` only is
  accepted too, and its ``adjust`` is this default;
  [`NeuronResets`][snr_jax.NeuronResets] refuses a rule without ``init`` or ``select``.
  """

  def init(self, groups: Sequence[NeuronGroup], params: Any) -> Any:
    """Returns the rule's initial state."""

  def select(
      self,
      state: Any,
      groups: Sequence[NeuronGroup],
      activations: Any,
      params: Any,
      *,
      end_of_task: jax.Array,
      key: jax.Array,
  ) -> tuple[dict[str, jax.Array], Any]:
    """Returns ``({group: bool (size,) reset mask}, new_state)``.

    ``key`` is this step's key (also used, after a split, for fresh weights when
    something is reset): a rule that needs randomness must derive its own stream from
    it, e.g. with ``jax.random.fold_in``.
    """

  def adjust(
      self, params: Any, masks: dict[str, jax.Array], state: Any, groups: Sequence[NeuronGroup]
  ) -> Any:
    """Changes ``params`` after ``select`` and before the shared reset (default: none).

    Given the masks and the state ``select`` returned. Continual backprop
    ([`CBPRule`][snr_jax.CBPRule]) folds the replaced units' mean contributions into the
    consumers' biases here, while their outgoing weights still hold their values. Must
    keep the tree's structure, shapes and dtypes.

    Returns:
      The params; this default returns them unchanged.
    """
    del masks, state, groups
    return params


class NeuronResetsState(NamedTuple):
  """State of a [`NeuronResets`][snr_jax.NeuronResets] (without the inner optimizer's state).

  Attributes:
    rule: the rule's own state (for SNR: ages, thresholds, gap statistics).
    key: PRNG key used when no key is passed to [`reset_state`][snr_jax.reset_state].
    last_resets: ``{group: bool (size,)}``, the units reset at the latest step.
  """

  rule: Any
  key: jax.Array
  last_resets: dict[str, jax.Array]


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class ParamsLayout:
  """The leaf paths of the params a state was initialised for: static (pytree aux data,
  no leaves), so it costs nothing inside jit and survives scan, vmap and checkpoints."""

  paths: tuple[str, ...]

  def tree_flatten(self):
    return (), self.paths

  @classmethod
  def tree_unflatten(cls, paths, children):
    del children
    return cls(paths)


try:  # Flax's own checkpoints (msgpack) store a layout as nothing, restoring the target's
  from flax import serialization as _flax_serialization

  _flax_serialization.register_serialization_state(
      ParamsLayout, lambda layout: {}, lambda target, state: target
  )
except ImportError:
  pass


class WithResetsState(NamedTuple):
  """State of the optimizer returned by [`with_resets`][snr_jax.with_resets] (and so by
  [`snr`][snr_jax.snr], [`redo`][snr_jax.redo] and
  [`continual_backprop`][snr_jax.continual_backprop]).

  Attributes:
    inner_state: the wrapped optimizer's state.
    resets: the [`NeuronResetsState`][snr_jax.NeuronResetsState] of the rule and groups.
    layout: the leaf paths of the params the state was initialised for.
  """

  inner_state: Any
  resets: NeuronResetsState
  layout: Optional[ParamsLayout] = None


def find_reset_state(state: Any) -> Optional[NeuronResetsState]:
  """The reset state inside an optimizer state (e.g. within a chain), or None.

  ``state`` may also be an NNX optimizer's ``opt_state`` (``nnx.Optimizer(...).opt_state``:
  an ``nnx.State`` whose leaves are ``OptArray`` variables); the state returned then holds
  the variables' arrays, for reading (logging).
  """
  is_node = lambda x: isinstance(x, (WithResetsState, NeuronResetsState))
  for leaf in jax.tree_util.tree_leaves(state, is_leaf=is_node):
    if isinstance(leaf, WithResetsState):
      return _variable_values(leaf.resets)
    if isinstance(leaf, NeuronResetsState):
      return _variable_values(leaf)
  return None


def _variable_values(tree: Any) -> Any:
  """``tree`` with every NNX variable replaced by its array (no-op without variables)."""
  is_var = _optional.is_nnx_variable  # without importing flax
  return jax.tree.map(lambda x: x.get_value() if is_var(x) else x, tree, is_leaf=is_var)


def _as_key(key: Any) -> jax.Array:
  return _checks.prng_key('key', key)


@dataclasses.dataclass(frozen=True)
class NeuronResets:
  """A reset rule bound to neuron groups, with pure ``init`` and ``apply``.

  ``apply`` is [`reset_state`][snr_jax.reset_state].

  Attributes:
    groups: the neuron groups (see [`discover_groups`][snr_jax.discover_groups]).
    rule: the rule choosing units to reset.
    axis_name: set it to the name of the vmap/pmap axis when batching runs (e.g.
      ``jax.vmap(run, axis_name='seeds')``): the reset branch then runs only on steps
      where some member resets, instead of on every step. Results are unchanged.
    check_finite: check with ``jax.experimental.checkify`` that every pre-activation is
      finite (opt-in; run the step under ``checkify.checkify``). Unchecked, a NaN
      pre-activation counts as silent.
    control_flow: ``'branch'`` draws fresh weights under a ``lax.cond`` (only on steps
      that reset something), ``'select'`` draws on every step and keeps the draw with
      ``jnp.where`` (no conditional: XLA:GPU evaluates a conditional's predicate on the
      host), ``'auto'`` (default) is ``'select'`` on a GPU backend and ``'branch'``
      elsewhere (see [`self_normalized_resets`][snr_jax.self_normalized_resets] for the
      measurements).
      Results are the same either way.

  A rule with a ``max_resets_per_step`` attribute (SNR, ReDo, continual backprop) caps
  the units it resets per group and step (see
  [`self_normalized_resets`][snr_jax.self_normalized_resets]);
  the reset then draws and writes only those units' slices. A rule without one takes the
  exact path (whole parameters drawn, selected by mask).
  """

  groups: tuple[NeuronGroup, ...]
  rule: ResetRule
  axis_name: Optional[str] = None
  check_finite: bool = False
  control_flow: str = 'auto'

  def __post_init__(self):
    # A single group is accepted; names (strings) or other objects are errors.
    object.__setattr__(self, 'groups', _checks.neuron_groups(self.groups, NeuronGroup, GroupError))
    missing = [m for m in ('init', 'select') if not callable(getattr(self.rule, m, None))]
    if missing:
      raise TypeError(
          f'rule {type(self.rule).__name__} has no {", ".join(m + "()" for m in missing)}: a '
          'reset rule subclasses snr_jax.ResetRule (which gives it a no-op adjust) and '
          'defines init and select.'
      )
    control_flow_arg(self.control_flow)

  def init(self, params: Any, key: Any = 0) -> NeuronResetsState:
    """Validates the groups against ``params`` and builds the initial state.

    The state's key is the seed's key folded with a fingerprint of the initial
    ``params``, so runs whose initial params differ never share a reset stream, even
    when one optimizer (one seed) is initialised for several members at once
    (``jax.vmap(tx.init)(stacked_params)``). It stays a pure function of seed and params.

    Args:
      params: the params tree.
      key: a PRNG key or an int seed, for the fresh weights drawn at resets.
    """
    groups = validate_groups(self.groups, params)
    masks = {g.name: jnp.zeros((g.size,), bool) for g in groups}
    key = member_key(_as_key(key), params)
    return NeuronResetsState(self.rule.init(groups, params), key, masks)

  def adjust(self, params: Any, masks: dict[str, jax.Array], rule_state: Any) -> Any:
    """The rule's [`ResetRule.adjust`][snr_jax.ResetRule.adjust] on the groups; for a rule
    that neither subclasses [`ResetRule`][snr_jax.ResetRule] nor defines ``adjust``, the
    protocol's default (params unchanged)."""
    rule_adjust = getattr(self.rule, 'adjust', None)
    if rule_adjust is None:
      return ResetRule.adjust(self.rule, params, masks, rule_state, self.groups)
    return rule_adjust(params, masks, rule_state, self.groups)

  def apply(
      self,
      params: Any,
      opt_state: Any,
      state: NeuronResetsState,
      activations: Any,
      *,
      optimizer: Optional[Any] = None,
      key: Optional[jax.Array] = None,
      end_of_task: Any = False,
  ) -> tuple[Any, Any, NeuronResetsState]:
    """``reset_state(self, ...)``: see [`reset_state`][snr_jax.reset_state]."""
    return reset_state(
        self,
        params,
        opt_state,
        state,
        activations,
        optimizer=optimizer,
        key=key,
        end_of_task=end_of_task,
    )


def reset_state(
    resets: NeuronResets,
    params: Any,
    opt_state: Any,
    state: NeuronResetsState,
    activations: Any,
    *,
    optimizer: Optional[Any] = None,
    key: Optional[jax.Array] = None,
    end_of_task: Any = False,
) -> tuple[Any, Any, NeuronResetsState]:
  """One step of bookkeeping and resets, after the optimizer's update (pure).

  The functional form of a resetting method: the optimizer returned by
  [`with_resets`][snr_jax.with_resets] (and so [`snr`][snr_jax.snr], [`redo`][snr_jax.redo],
  [`continual_backprop`][snr_jax.continual_backprop]) calls it after the inner update. Use it
  directly
  to drive optax (or any update rule) yourself.

  Args:
    resets: the rule bound to its neuron groups.
    params: params after this step's optimizer update.
    opt_state: the optimizer's state after the update (or None).
    state: the [`NeuronResetsState`][snr_jax.NeuronResetsState] (from
      ``resets.init(params, key)``).
    activations: ``{group name: pre-activation (batch, ..., size)}`` from this
      step's forward pass.
    optimizer: the optax optimizer owning ``opt_state``; its parameter-shaped state
      is zeroed on reset slices. None leaves ``opt_state`` alone.
    key: PRNG key for this step. By default the state's key, which is split (and
      advanced) only on steps that reset something, so steps without resets do no
      random-number work.
    end_of_task: True on the last step of a task (a bool or traced bool scalar);
      refreshes thresholds on the rules that refresh at task boundaries.

  Returns:
    ``(params, opt_state, state)``.
  """
  _checks.state_type('state', state, NeuronResetsState, 'resets.init(params)')
  _checks.rule_state(state.rule, resets.rule)
  optimizer = _checks.optax_transformation_or_none(
      'optimizer (the optax optimizer owning opt_state, or None)', optimizer
  )
  check_activations(resets.groups, activations)
  _checks.activation_keys(resets.groups, activations, ActivationError)
  _checks.bound_axis('axis_name', resets.axis_name)
  _checks.bound_axis('data_axis', getattr(resets.rule, 'data_axis', None))
  # shapes are static: params of another model are an error at trace time, not a
  # silently misapplied mask
  validate_groups(resets.groups, params)
  if resets.check_finite:
    for g in resets.groups:
      checkify.check(
          jnp.all(jnp.isfinite(activations[g.name])),
          f"group '{g.name}': non-finite pre-activations (NaN or inf); they count "
          'as silent, so these units age towards a reset.',
      )
  given = key is not None
  key = _checks.prng_key('key', key) if given else state.key
  end_of_task = jnp.asarray(_checks.flag('end_of_task', end_of_task), bool)
  activations = merge_layers(resets.groups, activations)
  masks, rule_state = resets.rule.select(
      state.rule, resets.groups, activations, params, end_of_task=end_of_task, key=key
  )
  # e.g. continual backprop's bias transfer, before the reset (a no-op for most rules)
  params = resets.adjust(params, masks, rule_state)
  setting = getattr(resets.rule, 'max_resets_per_step', None)
  caps = {g.name: resets_cap(setting, g.size) for g in resets.groups}
  params, opt_state, next_key = reset_neurons_and_advance_key(
      params,
      opt_state,
      resets.groups,
      masks,
      key,
      optimizer,
      resets.axis_name,
      caps,
      resets.control_flow,
  )
  # The carried key moves on only when it was used to draw fresh weights.
  return params, opt_state, NeuronResetsState(rule_state, state.key if given else next_key, masks)


def _leaf_paths(tree: Any) -> tuple[str, ...]:
  return tuple(
      '/'.join(key_path_to_path(kp)) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
  )


def _check_same_tree(params: Any, layout: Optional[ParamsLayout]) -> None:
  """Refuses params whose tree is not the one the state was initialised for."""
  paths = _leaf_paths(params)
  if layout is None or paths == layout.paths:
    return
  known = layout.paths
  extra = sorted(set(paths) - set(known))
  missing = sorted(set(known) - set(paths))
  raise ValueError(
      'the params given to update differ from those the optimizer state was initialised '
      f'with (tx.init(params)): extra leaves {extra}, missing leaves {missing}. Call update '
      "with the state's own params, or initialise a state for the new params with "
      'tx.init(new_params).'
  )


def with_resets(
    inner: optax.GradientTransformation,
    resets: NeuronResets,
    key: Any = _checks.DEFAULT_KEY,
    *,
    seed: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Optax wrapper for any rule: ``inner`` whose updates also reset the units a rule chooses.

  ``update(grads, state, params, activations=..., end_of_task=False, key=None,
  **extra)`` runs ``inner`` (``extra`` is forwarded to it), computes the updated
  params, lets ``resets`` reset units of the params and of ``inner``'s state, and
  returns the updates that carry ``params`` to the reset params, so that
  ``optax.apply_updates(params, updates)`` gives them (up to the rounding of
  ``p + (new - p)``).

  Args:
    inner: the optimizer to wrap (any optax transformation).
    resets: the rule and groups.
    key: int seed or PRNG key for the state's key (default 0).
    seed: deprecated name of ``key`` (a ``DeprecationWarning``; removed in the next
      release).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, snr_jax
    >>> params = {'l1': {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros(4)},
    ...           'l2': {'kernel': jnp.ones((4, 2))}}
    >>> groups = [snr_jax.dense_group('h', 4, layer='l1', consumer='l2')]
    >>> resets = snr_jax.self_normalized_resets(groups, tau_min=1, tau_max=8)
    >>> opt = snr_jax.with_resets(optax.adam(1e-3), resets, key=0)
    >>> state = opt.init(params)
    >>> acts = {'h': -jnp.ones((8, 4))}    # this step's pre-activations: all silent
    >>> grads = jax.tree.map(jnp.zeros_like, params)
    >>> updates, state = opt.update(grads, state, params, activations=acts)
    >>> state.resets.last_resets['h'].tolist()    # age 8 reached the threshold 8
    [True, True, True, True]
  """
  inner = optax.with_extra_args_support(_checks.optax_transformation('inner', inner))
  init_key = _checks.key_or_seed('with_resets', key, seed)
  _as_key(init_key)  # a bad key is an error now, not at the first update

  def init_fn(params):
    # the layout lets update tell params of another model from the state's own (an
    # SGD state holds no copy of the params to compare with)
    return WithResetsState(
        inner.init(params), resets.init(params, init_key), ParamsLayout(_leaf_paths(params))
    )

  def update_fn(
      updates,
      state,
      params=None,
      *args,
      activations=None,
      end_of_task=False,
      key=None,
      **extra_args,
  ):
    _checks.no_extra_positional(args)
    if params is None:
      raise ValueError(
          'resets need the current params: call ' 'update(grads, state, params, activations=...).'
      )
    _checks.state_type('state', state, WithResetsState, 'tx.init(params)')
    _checks.rule_state(state.resets.rule, resets.rule)
    _check_same_tree(params, state.layout)
    check_activations(resets.groups, activations)  # before the inner update runs
    _checks.activation_keys(resets.groups, activations, ActivationError)
    inner_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    new_params = optax.apply_updates(params, inner_updates)
    new_params, inner_state, resets_state = reset_state(
        resets,
        new_params,
        inner_state,
        state.resets,
        activations,
        optimizer=inner,
        key=key,
        end_of_task=end_of_task,
    )
    out = jax.tree.map(
        lambda n, p: (n - p).astype(p.dtype) if hasattr(p, 'dtype') else n - p, new_params, params
    )
    return out, WithResetsState(inner_state, resets_state, state.layout)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
