"""Resetting neurons: the one mechanism shared by SNR, ReDo and continual backprop.

Given a boolean mask per neuron group, [`reset_neurons`][snr_jax.reset_neurons] (design §4)

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

from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from snr_jax._src import checks as _checks
from snr_jax._src.util import any_in_batch, cond, key_path_to_path
from snr_jax._src.groups import NeuronGroup, ParamSlice, Path, get_path, leaf_value

Masks = Mapping[str, jax.Array]


def _unit_ids(group: NeuronGroup, s: ParamSlice, n: int) -> np.ndarray:
  """The unit of each of the ``n`` elements along ``s.axis`` (-1: none)."""
  if s.unit_of is not None:
    return np.asarray(s.unit_of, np.int32)
  return np.arange(n, dtype=np.int32) % group.units


def _unit_mask(
    mask: jax.Array, group: NeuronGroup, s: ParamSlice, shape: tuple[int, ...]
) -> jax.Array:
  """Broadcasts a per-unit mask (size,) onto the parameter's unit (and layer) axes."""
  nd = len(shape)
  axis = s.axis % nd
  ids = _unit_ids(group, s, shape[axis])
  m = mask.reshape(group.layers, group.units)
  if not np.array_equal(ids, np.arange(group.units)):  # else the mask itself: no gather
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
  problems = (
      [f'missing {[n for n in names if n not in masks]}'] if not set(names) <= set(masks) else []
  )
  if set(masks) - set(names):
    problems.append(f'no group is named {sorted(set(masks) - set(names))}')
  if problems:
    raise ValueError(
        f'reset masks must have one entry per neuron group {names}: ' + '; '.join(problems) + '.'
    )
  for g in groups:
    m = masks[g.name]
    if np.shape(m) != (g.size,) or jnp.result_type(m) != jnp.bool_:
      raise ValueError(
          f"reset mask of group '{g.name}' has shape {np.shape(m)} and dtype "
          f'{jnp.result_type(m)}; expected bool ({g.size},): True for each unit to reset'
          + (
              f' (units indexed (layer, unit), layer-major, for its {g.layers} layers)'
              if g.layers > 1
              else ''
          )
          + '.'
      )


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
  one = shape[:la] + shape[la + 1 :]
  keys = jax.random.split(key, shape[la])
  return jax.vmap(lambda k: sample(k, one), out_axes=la)(keys)


def draw_fresh(params: Any, groups: Sequence[NeuronGroup], key: jax.Array) -> dict[Path, jax.Array]:
  """Fresh values for every incoming parameter, from each slice's own initializer.

  Returns:
    ``{param path: array of the parameter's shape and dtype}``. Keys are split in
    declaration order, so the draws do not depend on Python's hash seed.
  """
  leaves = {
      key_path_to_path(kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  slices: dict[Path, ParamSlice] = {}
  for g in groups:
    for s in g.incoming:
      slices.setdefault(s.path, s)
  keys = jax.random.split(key, max(len(slices), 1))
  return {
      path: _draw(s, k, leaves[path].shape, leaves[path].dtype)
      for k, (path, s) in zip(keys, slices.items())
  }


def apply_reset(
    params: Any, groups: Sequence[NeuronGroup], masks: Masks, fresh: Mapping[Path, jax.Array]
) -> Any:
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


AUTO_RESETS = (16, 16)
"""``max_resets_per_step='auto'``: at most ``max(16, ⌈size / 16⌉)`` units per group and step."""


def max_resets_arg(value: Any) -> Any:
  """Validates a ``max_resets_per_step`` argument: None, ``'auto'`` or an int ≥ 1."""
  if value is None or (isinstance(value, str) and value == 'auto'):
    return value
  return _checks.integer_in('max_resets_per_step', value, 1, what=" (or 'auto', or None)")


def resets_cap(setting: Any, size: int) -> Optional[int]:
  """The most units of a ``size``-unit group reset in one step, or None for no cap.

  ``setting`` is a rule's ``max_resets_per_step``: None (no cap: the exact path, fresh
  values for whole parameters), ``'auto'`` (``max(16, ⌈size / 16⌉)``) or an int. A cap
  of at least ``size`` is no cap.
  """
  if setting is None:
    return None
  least, fraction = AUTO_RESETS
  k = max(least, -(-size // fraction)) if setting == 'auto' else int(setting)
  return None if k >= size else k


def cap_mask(
    mask: jax.Array,
    k: Optional[int],
    priority: Optional[jax.Array] = None,
    control_flow: str = 'auto',
) -> jax.Array:
  """``mask`` with at most ``k`` True entries (None: unchanged).

  Keeps the ``k`` masked entries of highest ``priority`` (ties: the lower index), or the
  first ``k`` without one. The others stay False for this step: a rule defers them. The
  ranking (a sort) runs only on steps with more than ``k`` masked entries, under a
  ``lax.cond``; with ``control_flow='select'`` (see `snr_jax._src.util.cond`) on every step.
  """
  if k is None:
    return mask
  if priority is None:
    return mask & (jnp.cumsum(mask, dtype=jnp.int32) <= k)
  if jnp.issubdtype(priority.dtype, jnp.integer):
    lowest = jnp.iinfo(priority.dtype).min
  else:
    lowest = -jnp.inf

  def ranked(operands):
    m, p = operands
    _, top = jax.lax.top_k(jnp.where(m, p, lowest), k)
    return m & jnp.zeros_like(m).at[top].set(True)

  # at most k masked: all of them are kept, no ranking needed
  over = jnp.sum(mask, dtype=jnp.int32) > k
  return cond(over, ranked, lambda operands: operands[0], (mask, priority), control_flow)


def _ranks(group: NeuronGroup, s: ParamSlice, n: int) -> tuple[np.ndarray, int]:
  """``(rank, m)``: each element's position among its unit's elements along ``s.axis``
  (0 for elements of no unit), and ``m``, the most elements a unit owns there."""
  ids = _unit_ids(group, s, n)
  rank = np.zeros(n, np.int32)
  seen = np.zeros(group.units + 1, np.int32)
  for e, u in enumerate(ids):
    rank[e] = seen[u]
    seen[u] += 1
  return rank, max(1, int(seen[: group.units].max(initial=0)))


def _fan_free(init: Any, axis: int, nd: int) -> bool:
  """Whether ``init``'s law per element ignores the length of ``axis`` (so ``k`` slices can
  be drawn alone): False for jax's variance scaling unless ``axis`` is its output axis in
  ``fan_in`` mode (Flax's default lecun_normal), its input axis in ``fan_out`` mode, or a
  batch axis; False for orthogonal; True for anything else (normal, uniform, constants)."""
  names = getattr(getattr(init, '__code__', None), 'co_freevars', ())
  cells = dict(zip(names, (c.cell_contents for c in (init.__closure__ or ())))) if names else {}
  if 'column_axis' in cells:  # orthogonal: not elementwise
    return False
  if 'mode' not in cells:
    return True
  ax = lambda a: a % nd
  if axis in {ax(a) for a in np.atleast_1d(cells.get('batch_axis', ()))}:
    return True
  return (cells['mode'] == 'fan_in' and axis == ax(cells['out_axis'])) or (
      cells['mode'] == 'fan_out' and axis == ax(cells['in_axis'])
  )


class _Capped(NamedTuple):
  """A capped group's slice in a reset plan: ``k`` slots of ``m`` elements each.

  ``select`` is the group's mask restricted to its first ``k`` units (the ones reset),
  ``slot`` each group index's slot among them (its rank in the mask)."""

  select: jax.Array
  slot: jax.Array
  k: int
  m: int

  def idx(self, size: int) -> jax.Array:
    """The ``(k,)`` group indices of the slots (``size`` for an empty one)."""
    return jnp.nonzero(self.select, size=self.k, fill_value=size)[0]


def _capped_select(mask: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """``(select, slot)`` of `_Capped` for a group mask and its cap."""
  count = jnp.cumsum(mask, dtype=jnp.int32)
  return mask & (count <= k), count - 1


def _draw_slices(
    group: NeuronGroup, s: ParamSlice, key: jax.Array, shape: tuple[int, ...], dtype, cap: _Capped
) -> jax.Array:
  """Fresh values for the ``k`` slots' incoming slices: one layer's shape with ``k·m``
  elements along the unit axis (slot-major), from the slice's initializer. An initializer
  whose scale depends on that axis' length draws one whole layer instead and keeps the
  slots' slices (exact law, cost of one layer)."""
  nd = len(shape)
  axis = s.axis % nd
  la = None if s.layer_axis is None else s.layer_axis % nd
  one = tuple(n for i, n in enumerate(shape) if i != la)
  ax1 = axis - (la is not None and la < axis)
  k, m = cap.k, cap.m
  sample = lambda shp: jnp.asarray(leaf_value(s.init(key, shp, dtype))).astype(dtype)
  if _fan_free(s.init, ax1, len(one)):
    return sample(one[:ax1] + (k * m,) + one[ax1 + 1 :])
  # the slots' elements along the unit axis: unit idx % units, its m entries in order
  ids = _unit_ids(group, s, one[ax1])
  table = np.full((group.units, m), one[ax1] - 1, np.int32)
  for u in range(group.units):
    rows = np.nonzero(ids == u)[0]
    table[u, : len(rows)] = rows
  rows = jnp.asarray(table)[cap.idx(group.size) % group.units].reshape(
      -1
  )  # empty slots: any element
  return jnp.take(sample(one), rows, axis=ax1, mode='clip')


def _gather_slots(
    group: NeuronGroup, s: ParamSlice, shape: tuple[int, ...], fresh: jax.Array, cap: _Capped
) -> jax.Array:
  """``fresh`` (`_draw_slices`) laid out as the whole leaf: each element of a selected
  unit gets its slot's value (others some slot's, to be masked off by the caller). A
  gather fused with the select that applies it: no parameter-sized buffer, no scatter."""
  nd = len(shape)
  axis = s.axis % nd
  la = None if s.layer_axis is None else s.layer_axis % nd
  ax1 = axis - (la is not None and la < axis)
  ids = _unit_ids(group, s, shape[axis])
  rank, _ = _ranks(group, s, shape[axis])
  slot = jnp.clip(cap.slot, 0, cap.k - 1).reshape(group.layers, group.units)
  at = slot[:, np.maximum(ids, 0)] * cap.m + jnp.asarray(rank)  # (layers, n) into k·m
  if la is None:
    return jnp.take(fresh, at[0], axis=ax1, mode='clip')
  return jnp.moveaxis(jnp.take(fresh, at, axis=ax1, mode='clip'), (ax1, ax1 + 1), (la, axis))


def _capped_plan(
    params: Any, groups: Sequence[NeuronGroup], masks: Masks, caps: Mapping[str, Optional[int]]
):
  """``{param path: [(group, slice, mask, incoming, cap)]}``: a capped group's entries carry
  its `_Capped` (its mask restricted to the first ``k`` units), the others None."""
  capped = {}
  for g in groups:
    if caps.get(g.name) is not None:
      capped[g.name] = _capped_select(masks[g.name], caps[g.name])
  leaves = {
      key_path_to_path(kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  plan: dict[Path, list] = {}
  for path, entries in _slices_by_path(groups, masks).items():
    for g, s, mask, incoming in entries:
      cap = None
      if g.name in capped:
        n = np.shape(leaves[path])[s.axis % np.ndim(leaves[path])]
        cap = _Capped(*capped[g.name], caps[g.name], _ranks(g, s, n)[1])
        mask = cap.select
      plan.setdefault(path, []).append((g, s, mask, incoming, cap))
  return plan


def _draw_plan(params: Any, groups: Sequence[NeuronGroup], plan, key: jax.Array) -> dict:
  """Fresh values: ``{path: whole parameter}`` for uncapped incoming slices (as
  `draw_fresh`) and ``{(path, group): k slots' slices}`` for capped ones."""
  full = [
      g
      for g in groups
      if any(e[0] is g and e[3] and e[4] is None for es in plan.values() for e in es)
  ]
  full_key, key = jax.random.split(key)
  fresh: dict = draw_fresh(params, full, full_key) if full else {}
  leaves = {
      key_path_to_path(kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  capped = [(path, e) for path, es in plan.items() for e in es if e[3] and e[4] is not None]
  keys = jax.random.split(key, max(len(capped), 1))
  for k, (path, (g, s, _, _, cap)) in zip(keys, capped):
    leaf = leaves[path]
    fresh[(path, g.name)] = _draw_slices(g, s, k, leaf.shape, leaf.dtype, cap)
  return fresh


def _apply_plan(tree: Any, plan, fresh: Optional[dict]) -> Any:
  """Applies ``plan`` to ``tree`` (params, or with ``fresh=None`` a copy of them in an
  optimizer state: every reset slice zeroed). Every entry is an elementwise select by
  its unit mask, which XLA fuses with the update; a capped group's fresh values are
  gathered from its ``k`` slots inside that select."""

  def one(key_path, leaf):
    path = key_path_to_path(key_path)
    for g, s, mask, incoming, cap in plan.get(path, ()):
      m = _unit_mask(mask, g, s, leaf.shape)
      if incoming and fresh:
        value = fresh.get((path, g.name), fresh.get(path))
        if cap is not None:
          value = _gather_slots(g, s, leaf.shape, value, cap)
      else:
        value = jnp.zeros((), leaf.dtype)
      leaf = jnp.where(m, value, leaf)
    return leaf

  return jax.tree_util.tree_map_with_path(one, tree)


def _zero_state_plan(optimizer: Any, opt_state: Any, params: Any, plan) -> Any:
  """`reset_optimizer_state` for a plan: every param-shaped leaf's reset slices zeroed
  (a capped group's: those of the units it resets)."""
  names = jax.tree_util.tree_map_with_path(lambda kp, _: '/'.join(key_path_to_path(kp)), params)
  by_name = {'/'.join(path): entries for path, entries in plan.items()}

  def zero(state_leaf, name, param):
    entries = by_name.get(name)
    if not entries or not hasattr(state_leaf, 'shape') or state_leaf.shape != param.shape:
      return state_leaf
    for g, s, mask, _, _ in entries:
      m = _unit_mask(mask, g, s, state_leaf.shape)
      state_leaf = jnp.where(m, jnp.zeros((), state_leaf.dtype), state_leaf)
    return state_leaf

  try:
    return optax.tree_utils.tree_map_params(
        optimizer,
        zero,
        opt_state,
        names,
        params,
        is_leaf=lambda x: x is None or isinstance(x, optax.MaskedNode),
    )
  except Exception:  # pylint: disable=broad-except; as in reset_optimizer_state
    return _map_params_copies(zero, opt_state, names, params)


def reset_params(params: Any, groups: Sequence[NeuronGroup], masks: Masks, key: jax.Array) -> Any:
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


def reset_optimizer_state(
    optimizer: Any, opt_state: Any, params: Any, groups: Sequence[NeuronGroup], masks: Masks
) -> Any:
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
        optimizer,
        zero,
        opt_state,
        keep,
        params,
        is_leaf=lambda x: x is None or isinstance(x, optax.MaskedNode),
    )
  except Exception:  # pylint: disable=broad-except; any failure of init on the placeholder
    return _map_params_copies(zero, opt_state, keep, params)


def _map_params_copies(f, opt_state: Any, keep: Any, params: Any) -> Any:
  """``f(state leaf, keep leaf, param)`` over every subtree of ``opt_state`` with the
  params' tree structure (``f`` leaves alone the leaves not of their parameter's shape,
  e.g. L-BFGS's ``(memory, *shape)`` histories); the rest is returned as is."""
  treedef = jax.tree.structure(params)
  is_copy = lambda x: jax.tree.structure(x) == treedef
  return jax.tree.map(
      lambda s: jax.tree.map(f, s, keep, params) if is_copy(s) else s, opt_state, is_leaf=is_copy
  )


def reset_neurons(
    params: Any,
    opt_state: Any,
    groups: Sequence[NeuronGroup],
    masks: Masks,
    key: jax.Array,
    optimizer: Optional[Any] = None,
    axis_name: Optional[str] = None,
) -> tuple[Any, Any]:
  """Resets the masked units of params and optimizer state (design §4), if any.

  Fresh weights are drawn (under ``lax.cond``) only when at least one unit is masked.

  Args:
    params: params tree.
    opt_state: the inner optimizer's state (or None).
    groups: neuron groups.
    masks: ``{group name: bool (size,)}``.
    key: PRNG key.
    optimizer: the optax optimizer owning ``opt_state``; needed to find its
      parameter-shaped leaves. If None, ``opt_state`` is returned unchanged.
    axis_name: the name of an enclosing vmap/pmap axis (see `any_in_batch`).

  Returns:
    ``(params, opt_state)`` after the reset.
  """
  optimizer = _checks.optax_transformation_or_none('optimizer', optimizer)
  params, opt_state, _ = reset_neurons_and_advance_key(
      params, opt_state, groups, masks, key, optimizer, axis_name
  )
  return params, opt_state


def reset_neurons_and_advance_key(
    params: Any,
    opt_state: Any,
    groups: Sequence[NeuronGroup],
    masks: Masks,
    key: jax.Array,
    optimizer: Optional[Any] = None,
    axis_name: Optional[str] = None,
    caps: Optional[Mapping[str, Optional[int]]] = None,
    control_flow: str = 'branch',
) -> tuple[Any, Any, jax.Array]:
  """[`reset_neurons`][snr_jax.reset_neurons] that also returns the key to use next time.

  The key is split only when something is reset (inside the ``lax.cond``), so steps
  without resets cost no random-number work at all.

  ``caps`` (``{group: k or None}``, see `resets_cap`) says which groups reset at
  most ``k`` units (their masks must hold at most ``k`` True): those draw fresh values for
  ``k`` units' slices only and scatter them (and the zeros) into place, so a step's reset
  work follows the resets, not the parameters' size. Groups without a cap take the exact
  path: whole parameters drawn and selected by mask (the released code's draws).
  ``control_flow='select'`` draws on every step and keeps no ``lax.cond``; the results
  are the same (the key still advances only on steps that reset something).
  """
  check_masks(groups, masks)
  any_reset = jnp.any(jnp.stack([jnp.any(masks[g.name]) for g in groups]))
  caps = {g.name: (caps or {}).get(g.name) for g in groups}
  if any(k is not None for k in caps.values()):
    return _reset_capped(
        params, opt_state, groups, masks, key, optimizer, axis_name, caps, control_flow, any_reset
    )

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

  fresh, next_key = cond(any_in_batch(any_reset, axis_name), draw, skip, key, control_flow)
  params_out = apply_reset(params, groups, masks, fresh)
  if optimizer is not None and opt_state is not None:
    opt_state = reset_optimizer_state(optimizer, opt_state, params, groups, masks)
  return params_out, opt_state, next_key


def _reset_capped(
    params, opt_state, groups, masks, key, optimizer, axis_name, caps, control_flow, any_reset
):
  """`reset_neurons_and_advance_key` with some groups capped (see there)."""
  plan = _capped_plan(params, groups, masks, caps)

  def draw(k):
    next_key, draw_key = jax.random.split(k)
    return _draw_plan(params, groups, plan, draw_key), jnp.where(any_reset, next_key, k)

  def skip(k):
    shapes = jax.eval_shape(lambda kk: _draw_plan(params, groups, plan, kk), k)
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes), k

  # on a step without resets the capped groups' buffers are k slices, and their
  # scatters have only out-of-range (dropped) indices: nothing parameter-sized is written
  fresh, next_key = cond(any_in_batch(any_reset, axis_name), draw, skip, key, control_flow)
  params_out = _apply_plan(params, plan, fresh)
  if optimizer is not None and opt_state is not None:
    opt_state = _zero_state_plan(optimizer, opt_state, params, plan)
  return params_out, opt_state, next_key


def reset_model_state(state: Any, groups: Sequence[NeuronGroup], masks: Masks) -> Any:
  """Puts the reset units' model-state slices back to their initial values.

  Discovered groups behind a BatchNorm record its running mean and variance in
  ``group.state``; after a reset, hand the model state over to this function (the
  linen variables, e.g. ``{'batch_stats': ...}``, or ``nnx.state(model)``) with the
  step's reset masks (``opt_state.resets.last_resets`` for [`snr`][snr_jax.snr]).

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
  leaves = {
      key_path_to_path(kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
  }
  fresh = {}
  for g in stated:
    for s in g.incoming:
      if s.path not in leaves:
        raise ValueError(
            f"model state has no leaf '{'/'.join(s.path)}' (group '{g.name}'); "
            'pass the whole variables dict (linen) or nnx.state(model).'
        )
      fresh[s.path] = _draw(s, jax.random.PRNGKey(0), leaves[s.path].shape, leaves[s.path].dtype)
  return apply_reset(state, stated, masks, fresh)
