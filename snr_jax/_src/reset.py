"""Resetting neurons: the one mechanism shared by SNR, ReDo and continual backprop.

Given a boolean mask per neuron group, :func:`reset_neurons` (SPEC §4)

* re-draws the incoming slices from each parameter's own initializer,
* zeroes the outgoing slices (a reset unit is invisible downstream at first),
* zeroes every parameter-shaped leaf of the optimizer state (momentum, Adam's mu
  and nu, ...) on all those slices, leaving scalar leaves (step counts) alone.

Where a weight is both an outgoing slice of a reset unit and an incoming slice of
another reset unit, it ends at zero: the outgoing rule wins.
Fresh samples are drawn only when some unit is reset (``lax.cond``); applying the
masks is an elementwise select, a no-op on steps without resets.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from snr_jax._src import checks as _checks
from snr_jax._src.util import any_in_batch, key_path_to_path
from snr_jax._src.groups import NeuronGroup, ParamSlice, Path, get_path, leaf_value

Masks = Mapping[str, jax.Array]


def _unit_ids(group: NeuronGroup, s: ParamSlice, n: int) -> np.ndarray:
  """The unit of each of the ``n`` elements along ``s.axis`` (-1: none)."""
  if s.unit_of is not None:
    return np.asarray(s.unit_of, np.int32)
  return np.arange(n, dtype=np.int32) % group.units


def _unit_mask(mask: jax.Array, group: NeuronGroup, s: ParamSlice,
               shape: tuple[int, ...]) -> jax.Array:
  """Broadcasts a per-unit mask (size,) onto the parameter's unit (and layer) axes."""
  nd = len(shape)
  axis = s.axis % nd
  ids = _unit_ids(group, s, shape[axis])
  m = mask.reshape(group.layers, group.units)
  m = jnp.concatenate([m, jnp.zeros((group.layers, 1), bool)], axis=1)[:, ids]  # -1 -> False
  bshape = [1] * nd
  bshape[axis] = shape[axis]
  if s.layer_axis is None:
    return m[0].reshape(bshape)
  la = s.layer_axis % nd
  bshape[la] = group.layers
  return (m if la < axis else m.T).reshape(bshape)


def outgoing_magnitude(params: Any, group: NeuronGroup) -> jax.Array:
  """``Σ_k |w_out,ik|`` per unit of ``group``: the summed absolute outgoing weights.

  A group without outgoing slices gets ones (its output is not weighed).
  """
  total = jnp.zeros((group.layers, group.units), jnp.float32)
  if not group.outgoing:
    return total.reshape(-1) + 1.0
  for s in group.outgoing:
    w = jnp.abs(get_path(params, s.path).astype(jnp.float32))
    axis = s.axis % w.ndim
    n = w.shape[axis]
    if s.layer_axis is None:
      w = jnp.moveaxis(w, axis, 0).reshape(1, n, -1).sum(-1)
    else:
      w = jnp.moveaxis(w, (s.layer_axis % w.ndim, axis), (0, 1))
      w = w.reshape(group.layers, n, -1).sum(-1)
    ids = _unit_ids(group, s, w.shape[1])
    keep = ids >= 0
    total = total.at[:, ids[keep]].add(w[:, keep])
  return total.reshape(-1)


def check_masks(groups: Sequence[NeuronGroup], masks: Masks) -> None:
  """Refuses reset masks that do not match the groups one to one: a missing or unknown
  group name, a shape other than ``(group.size,)``, a dtype other than bool (a score
  or a count passed by mistake would reset every nonzero unit). Static: it costs nothing
  inside ``jit``."""
  names = [g.name for g in groups]
  problems = ([f'missing {[n for n in names if n not in masks]}']
              if not set(names) <= set(masks) else [])
  if set(masks) - set(names):
    problems.append(f'no group is named {sorted(set(masks) - set(names))}')
  if problems:
    raise ValueError(f'reset masks must have one entry per neuron group {names}: '
                     + '; '.join(problems) + '.')
  for g in groups:
    m = masks[g.name]
    if np.shape(m) != (g.size,) or jnp.result_type(m) != jnp.bool_:
      raise ValueError(
          f"reset mask of group '{g.name}' has shape {np.shape(m)} and dtype "
          f'{jnp.result_type(m)}; expected bool ({g.size},): True for each unit to reset'
          + (f' (units indexed (layer, unit), layer-major, for its {g.layers} layers)'
             if g.layers > 1 else '') + '.')


def _slices_by_path(groups: Sequence[NeuronGroup], masks: Masks):
  """``{param path: [(group, slice, mask, is_incoming), ...]}`` in application order."""
  table: dict[Path, list] = {}
  for g in groups:
    for s in g.incoming:
      table.setdefault(s.path, []).append((g, s, masks[g.name], True))
  for g in groups:  # outgoing after incoming, so zeroing wins on overlaps
    for s in g.outgoing:
      table.setdefault(s.path, []).append((g, s, masks[g.name], False))
  return table


def _draw(s: ParamSlice, key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
  """A fresh sample of a whole parameter; stacked layers are drawn one layer at a time,
  so fan-in based initializers see one layer's shape."""
  # an initializer wrapped by nn.with_partitioning / with_logical_partitioning returns a box
  sample = lambda k, shp: jnp.asarray(leaf_value(s.init(k, shp, dtype))).astype(dtype)
  if s.layer_axis is None:
    return sample(key, shape)
  la = s.layer_axis % len(shape)
  one = shape[:la] + shape[la + 1:]
  keys = jax.random.split(key, shape[la])
  return jax.vmap(lambda k: sample(k, one), out_axes=la)(keys)


def draw_fresh(params: Any, groups: Sequence[NeuronGroup], key: jax.Array
               ) -> dict[Path, jax.Array]:
  """Fresh values for every incoming parameter, from each slice's own initializer.

  Returns:
    ``{param path: array of the parameter's shape and dtype}``. Keys are split in
    declaration order, so the draws do not depend on Python's hash seed.
  """
  leaves = {key_path_to_path(kp): leaf
            for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  slices: dict[Path, ParamSlice] = {}
  for g in groups:
    for s in g.incoming:
      slices.setdefault(s.path, s)
  keys = jax.random.split(key, max(len(slices), 1))
  return {path: _draw(s, k, leaves[path].shape, leaves[path].dtype)
          for k, (path, s) in zip(keys, slices.items())}


def apply_reset(params: Any, groups: Sequence[NeuronGroup], masks: Masks,
                fresh: Mapping[Path, jax.Array]) -> Any:
  """Puts ``fresh`` values on the masked units' incoming slices and zeroes their
  outgoing slices; every other weight is unchanged."""
  table = _slices_by_path(groups, masks)

  def one(key_path, leaf):
    path = key_path_to_path(key_path)
    for g, s, mask, incoming in table.get(path, ()):
      m = _unit_mask(mask, g, s, leaf.shape)
      leaf = jnp.where(m, fresh[path] if incoming else jnp.zeros_like(leaf), leaf)
    return leaf

  return jax.tree_util.tree_map_with_path(one, params)


def reset_params(params: Any, groups: Sequence[NeuronGroup], masks: Masks,
                 key: jax.Array) -> Any:
  """Re-initialises the masked units' incoming slices and zeroes their outgoing slices.

  Args:
    params: the params tree.
    groups: neuron groups.
    masks: ``{group name: bool (size,)}``, True for a unit to reset.
    key: PRNG key for the fresh samples.

  Returns:
    The params tree with the masked slices reset (same structure and dtypes).
  """
  check_masks(groups, masks)
  return apply_reset(params, groups, masks, draw_fresh(params, groups, key))


def keep_masks(params: Any, groups: Sequence[NeuronGroup], masks: Masks) -> Any:
  """A params-shaped tree: False where a reset touches a weight, True elsewhere.

  Untouched leaves hold the Python constant ``True``; touched leaves hold a bool array
  that broadcasts against the parameter.
  """
  table = _slices_by_path(groups, masks)

  def one(key_path, leaf):
    path = key_path_to_path(key_path)
    keep = True
    for g, s, mask, _ in table.get(path, ()):
      keep = keep & ~_unit_mask(mask, g, s, leaf.shape)
    return keep

  return jax.tree_util.tree_map_with_path(one, params)


def reset_optimizer_state(optimizer: Any, opt_state: Any, params: Any,
                          groups: Sequence[NeuronGroup], masks: Masks) -> Any:
  """Zeroes the parameter-shaped optimizer state on the reset slices.

  Uses ``optax.tree_utils.tree_map_params`` to find every copy of the params tree in
  the state of ``optimizer`` (any optax optimizer, including chains); only leaves of
  their parameter's shape are zeroed. Others, such as Adam's step count or Adafactor's
  factored row and column statistics (and their ``(1,)`` placeholders), are left
  untouched, shape and all. An optimizer whose ``init`` reads its params' leaves cannot
  run on optax's placeholder (L-BFGS's line search reads a dtype there): the copies are
  then found as the subtrees of the state with the params' structure.
  """
  check_masks(groups, masks)
  optimizer = _checks.optax_transformation('optimizer', optimizer)
  keep = keep_masks(params, groups, masks)

  def zero(state_leaf, keep_leaf, param):
    if keep_leaf is True or not hasattr(state_leaf, 'shape'):
      return state_leaf
    if state_leaf.shape != param.shape:  # e.g. factored statistics: not param-shaped
      return state_leaf
    return jnp.where(keep_leaf, state_leaf, jnp.zeros_like(state_leaf))

  try:
    return optax.tree_utils.tree_map_params(
        optimizer, zero, opt_state, keep, params,
        is_leaf=lambda x: x is None or isinstance(x, optax.MaskedNode))
  except Exception:  # pylint: disable=broad-except; any failure of init on the placeholder
    return _map_params_copies(zero, opt_state, keep, params)


def _map_params_copies(f, opt_state: Any, keep: Any, params: Any) -> Any:
  """``f(state leaf, keep leaf, param)`` over every subtree of ``opt_state`` with the
  params' tree structure (``f`` leaves alone the leaves not of their parameter's shape,
  e.g. L-BFGS's ``(memory, *shape)`` histories); the rest is returned as is."""
  treedef = jax.tree.structure(params)
  is_copy = lambda x: jax.tree.structure(x) == treedef
  return jax.tree.map(lambda s: jax.tree.map(f, s, keep, params) if is_copy(s) else s,
                      opt_state, is_leaf=is_copy)


def reset_neurons(params: Any, opt_state: Any, groups: Sequence[NeuronGroup],
                  masks: Masks, key: jax.Array, optimizer: Optional[Any] = None,
                  axis_name: Optional[str] = None) -> tuple[Any, Any]:
  """Resets the masked units of params and optimizer state (SPEC §4), if any.

  Fresh weights are drawn (under ``lax.cond``) only when at least one unit is masked.

  Args:
    params: params tree.
    opt_state: the inner optimizer's state (or None).
    groups: neuron groups.
    masks: ``{group name: bool (size,)}``.
    key: PRNG key.
    optimizer: the optax optimizer owning ``opt_state``; needed to find its
      parameter-shaped leaves. If None, ``opt_state`` is returned unchanged.
    axis_name: the name of an enclosing vmap/pmap axis (see :func:`any_in_batch`).

  Returns:
    ``(params, opt_state)`` after the reset.
  """
  optimizer = _checks.optax_transformation_or_none('optimizer', optimizer)
  params, opt_state, _ = reset_neurons_and_advance_key(params, opt_state, groups, masks, key,
                                                       optimizer, axis_name)
  return params, opt_state


def reset_neurons_and_advance_key(params: Any, opt_state: Any, groups: Sequence[NeuronGroup],
                                  masks: Masks, key: jax.Array,
                                  optimizer: Optional[Any] = None,
                                  axis_name: Optional[str] = None
                                  ) -> tuple[Any, Any, jax.Array]:
  """:func:`reset_neurons` that also returns the key to use next time.

  The key is split only when something is reset (inside the ``lax.cond``), so steps
  without resets cost no random-number work at all.
  """
  check_masks(groups, masks)
  any_reset = jnp.any(jnp.stack([jnp.any(masks[g.name]) for g in groups]))

  # Only the random draw sits under the cond. Its operand is just the key: a cond that
  # carried the parameters would make XLA copy them on every step, taken or not (it cost
  # ~40% of an MLP step on CPU). Applying the masks is a select that fuses with the
  # update and is a no-op when nothing is reset.
  def draw(k):
    next_key, draw_key = jax.random.split(k)
    # under a shared (batch-wide) predicate a member with nothing to reset keeps its key
    return draw_fresh(params, groups, draw_key), jnp.where(any_reset, next_key, k)

  def skip(k):
    shapes = jax.eval_shape(lambda kk: draw_fresh(params, groups, kk), k)
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes), k

  fresh, next_key = jax.lax.cond(any_in_batch(any_reset, axis_name), draw, skip, key)
  params_out = apply_reset(params, groups, masks, fresh)
  if optimizer is not None and opt_state is not None:
    opt_state = reset_optimizer_state(optimizer, opt_state, params, groups, masks)
  return params_out, opt_state, next_key


def reset_model_state(state: Any, groups: Sequence[NeuronGroup], masks: Masks) -> Any:
  """Puts the reset units' model-state slices back to their initial values.

  Discovered groups behind a BatchNorm record its running mean and variance in
  ``group.state``; after a reset, hand the model state over to this function (the
  linen variables, e.g. ``{'batch_stats': ...}``, or ``nnx.state(model)``) with the
  step's reset masks (``opt_state.resets.last_resets`` for :func:`snr_jax.snr`).

  Args:
    state: the tree holding the state leaves (paths as in ``group.state``).
    groups: neuron groups.
    masks: ``{group name: bool (size,)}``.

  Returns:
    The state with the masked units' slices re-initialised (mean 0, variance 1).
  """
  check_masks(groups, masks)
  stated = [NeuronGroup(g.name, g.size, g.state, (), layers=g.layers) for g in groups if g.state]
  if not stated:
    return state
  leaves = {key_path_to_path(kp): leaf
            for kp, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
  fresh = {}
  for g in stated:
    for s in g.incoming:
      if s.path not in leaves:
        raise ValueError(f"model state has no leaf '{'/'.join(s.path)}' (group '{g.name}'); "
                         'pass the whole variables dict (linen) or nnx.state(model).')
      fresh[s.path] = _draw(s, jax.random.PRNGKey(0), leaves[s.path].shape,
                            leaves[s.path].dtype)
  return apply_reset(state, stated, masks, fresh)
