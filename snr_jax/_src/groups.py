"""Neuron groups: which parameters belong to which hidden unit (design §1).

A *neuron* is one output unit of a hidden Dense/Conv layer that feeds a ReLU-type
nonlinearity. A [`NeuronGroup`][snr_jax.NeuronGroup] names, for one such layer, where its
pre-activation comes from and which parameter slices belong to each of its units:

* ``incoming``: slices that produce unit ``i`` (the kernel's last axis, ``bias[i]``);
  they are re-drawn from the parameter's own initializer on a reset;
* ``outgoing``: slices of the consuming layer that read unit ``i``; they are zeroed
  on a reset.

A slice is described by [`ParamSlice`][snr_jax.ParamSlice]: a path into the params tree and the axis
that indexes units. Along that axis the parameter may be longer than the group's units:
``unit_of[r]`` then names the unit that element ``r`` belongs to (-1: none), as
discovery computes it from the layout between a layer and its consumer (a Conv ->
flatten -> Dense kernel, channel-last or channel-first). Without ``unit_of`` the length
must be a whole multiple of the units and element ``r`` belongs to unit ``r % units``
(a channel-last flatten).

Layers stacked with a scan hold one group with ``layers > 1``: ``size = layers * units``,
units indexed (layer, unit) in row-major order, and every slice names the parameter's
``layer_axis``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from snr_jax._src import checks as _checks, optional as _optional
from snr_jax._src.util import key_path_to_path

Path = tuple[str, ...]
Initializer = Callable[..., jax.Array]


class GroupError(ValueError):
  """A neuron group does not match the parameters or the model."""


@dataclasses.dataclass(frozen=True)
class ParamSlice:
  """The slices of one parameter that belong to the units of a group.

  Attributes:
    path: keys leading to the parameter in the params tree, e.g.
      ``('Dense_0', 'kernel')``.
    axis: the axis of that parameter that indexes units (negative values count from
      the end).
    init: for an incoming slice, the initializer that re-draws it (called as
      ``init(key, shape, dtype)`` on the whole parameter's shape, or on one layer's
      shape for stacked parameters, so fan-in based scales are right). ``None`` for an
      outgoing slice, which is zeroed.
    unit_of: optional, the unit that each element along ``axis`` belongs to (-1 for
      none); default ``r % units``.
    layer_axis: the axis of stacked layers, for groups of a scanned stack.
  """

  path: Path
  axis: int
  init: Optional[Initializer] = None
  unit_of: Optional[tuple[int, ...]] = None
  layer_axis: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class NeuronGroup:
  """One hidden layer's units and the parameter slices each of them owns.

  Attributes:
    name: the key of this group in activations, ages and logs.
    size: number of units.
    incoming: slices re-drawn on a reset (kernel columns, bias entries).
    outgoing: slices zeroed on a reset (the consumer's rows / input channels).
    activation: path of the pre-activation in a Flax ``intermediates`` collection
      (declared groups; discovered groups have a ``site`` instead).
    layers: number of stacked layers (a scanned stack); ``size`` counts all of them.
    site: where discovery found the ReLU in the traced forward pass (read by
      [`with_preactivations`][snr_jax.with_preactivations]).
    state: per-unit model-state slices (a BatchNorm's running mean and variance), put
      back to their initial values on a reset when the model state is handed over.
    firing: optional elementwise predicate ``h -> bool`` replacing ``h > 0``, for a
      declared group on a non-ReLU activation. This is outside the paper: a GELU or
      SiLU unit has no silent state, so what "fired" means is the user's choice.
  """

  name: str
  size: int
  incoming: tuple[ParamSlice, ...]
  outgoing: tuple[ParamSlice, ...] = ()
  activation: Optional[Path] = None
  layers: int = 1
  site: Optional['Site'] = None
  state: tuple[ParamSlice, ...] = ()
  firing: Optional[Callable[[jax.Array], jax.Array]] = None

  @property
  def units(self) -> int:
    """Units per layer."""
    return self.size // self.layers


@dataclasses.dataclass(frozen=True)
class Site:
  """Where a discovered group's pre-activation lives in the traced forward pass.

  Attributes:
    loc: eqn indices from the top-level jaxpr down to the ReLU (through calls and scans).
    operand: which operand of that eqn is the pre-activation.
    unit_axis: the axis of the pre-activation that indexes units.
    layers: the length of the enclosing scan (1 outside one).
  """

  loc: tuple[int, ...]
  operand: int
  unit_axis: int
  layers: int = 1


def _as_path(path: Any) -> Path:
  if isinstance(path, str):
    return tuple(p for p in path.split('/') if p)
  return tuple(str(p) for p in path)


def path_str(path: Sequence[str]) -> str:
  return '/'.join(path)


def _child(node: Any, key: str) -> tuple[bool, Any]:
  """``node[key]``: a mapping's entry (str or int keys: NNX lists), a sequence's item, or
  the child of any other pytree node whose jax key path entry reads ``key`` (a module
  attribute: equinox; a dataclass field; a custom node)."""
  if isinstance(node, Mapping):
    if key in node:
      return True, node[key]
    if key.lstrip('-').isdigit() and int(key) in node:
      return True, node[int(key)]
    return False, None
  if isinstance(node, (list, tuple)) and key.isdigit() and int(key) < len(node):
    return True, node[int(key)]
  for name, child in _children(node):
    if name == key:
      return True, child
  return False, None


def _children(node: Any) -> list[tuple[str, Any]]:
  """``(key, child)`` one level down a pytree node, keys as `key_path_to_path` writes
  them (no children for a leaf, a box or an NNX variable, whose value is the leaf)."""
  if _is_box(node):
    return []
  flat = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node or x is None)[0]
  out = []
  for kp, child in flat:
    p = key_path_to_path(kp)
    if len(p) == 1:
      out.append((p[0], child))
  return out


def _is_box(x: Any) -> bool:
  """A partitioning box (``nn.Partitioned``, ``nn.LogicallyPartitioned``: flax's
  ``AxisMetadata``) or an NNX variable: one array with metadata around it."""
  if _optional.is_axis_metadata(x):
    return True
  return not hasattr(x, 'shape') and hasattr(x, 'get_value')


def leaf_value(x: Any) -> Any:
  """The array of a leaf, unwrapping an NNX variable or a partitioning box (its raw
  value: no sharding constraint is applied)."""
  for _ in range(8):  # a box in a box
    if hasattr(x, 'shape'):
      return x
    if _optional.is_axis_metadata(x):
      x = x.value if hasattr(x, 'value') else x.unbox()
    elif hasattr(x, 'get_value'):
      x = x.get_value()
    else:
      return x
  return x


def get_path(tree: Mapping[str, Any], path: Path) -> Any:
  """Returns ``tree[path[0]][path[1]]...``, raising GroupError on a missing key.

  ``path`` is the parameter's jax key path as `key_path_to_path`
  writes it: dict keys, sequence indices and module attributes (equinox) alike; the
  ``value`` of an NNX variable or a partitioning box is not part of it. Keys are matched
  as strings, so integer keys (``nnx.List``, ``nnx.Sequential``) are addressed as
  ``'0'``; the leaf's array is returned, unwrapped from its variable or box.
  """
  node = tree
  for i, key in enumerate(path):
    ok, child = _child(node, key)
    if not ok:
      # the walk above is a shortcut; the params' own key paths are the authority
      flat = {
          key_path_to_path(kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
      }
      if tuple(path) in flat:
        return leaf_value(flat[tuple(path)])
      where = path_str(path[:i]) or '<root>'
      have = (
          sorted(map(str, node.keys()))
          if isinstance(node, Mapping)
          else [k for k, _ in _children(node)] or type(node).__name__
      )
      some = [path_str(p) for p in flat][:12]
      raise GroupError(
          f"unknown parameter path '{path_str(path)}': the params given have no such "
          f"leaf (no key '{key}' under '{where}', which holds {have}). The params' leaves "
          f"are {some}{' ...' if len(flat) > 12 else ''}. Check the group declaration, "
          'or that these are the params the groups were made for.'
      )
    node = child
  return leaf_value(node)


def dense_group(
    name: str,
    size: int,
    *,
    layer: Any,
    consumer: Any = None,
    kernel_init: Optional[Initializer] = None,
    bias_init: Optional[Initializer] = None,
    use_bias: bool = True,
    activation: Any = None,
) -> NeuronGroup:
  """Declares a group for a Dense or Conv layer (kernel last axis = units).

  Works for Dense -> Dense, Conv -> Conv and Conv -> flatten -> Dense: the consumer's
  kernel is read along its input axis (``-2``), whose length must be a multiple of
  ``size``.

  Args:
    name: group name (key of the activations mapping).
    size: number of units.
    layer: path of the layer's params (e.g. ``'Dense_0'`` or ``('Block', 'fc1')``).
    consumer: path of the consuming layer's params, or None (nothing zeroed).
    kernel_init: the layer's kernel initializer (default lecun_normal, Flax's).
    bias_init: the layer's bias initializer (default zeros, Flax's).
    use_bias: whether the layer has a ``bias`` parameter.
    activation: path of the pre-activation in ``intermediates``; default
      ``(*layer, '__call__')``, which ``capture_intermediates`` produces.

  Returns:
    A NeuronGroup; validate it against params with [`validate_groups`][snr_jax.validate_groups]
    (shapes), or
    against the model with [`check_groups`][snr_jax.check_groups], which also refuses a
    ``consumer`` that
    is the wrong layer of the right shape.
  """
  layer = _as_path(layer)
  incoming = [
      ParamSlice(layer + ('kernel',), -1, kernel_init or jax.nn.initializers.lecun_normal())
  ]
  if use_bias:
    incoming.append(ParamSlice(layer + ('bias',), -1, bias_init or jax.nn.initializers.zeros))
  outgoing = ()
  if consumer is not None:
    outgoing = (ParamSlice(_as_path(consumer) + ('kernel',), -2),)
  act = _as_path(activation) if activation is not None else layer + ('__call__',)
  return NeuronGroup(
      name, _checks.positive_int('size', size, error=GroupError), tuple(incoming), outgoing, act
  )


def validate_groups(groups: Sequence[NeuronGroup], params: Any) -> tuple[NeuronGroup, ...]:
  """Checks every group against a params tree; returns the groups as a tuple.

  Raises:
    GroupError: empty or duplicate names, a non-positive size, an unknown path, an
      axis the parameter does not have, an incoming slice whose length differs from
      the group size, an outgoing slice whose length is not a multiple of it, or a
      missing initializer on an incoming slice.
  """
  if isinstance(groups, NeuronGroup):
    groups = (groups,)
  groups = tuple(groups)
  if not groups:
    raise GroupError(
        'no neuron groups given: pass groups=discover_groups(model, params, '
        'sample_input) or declare them with dense_group(...).'
    )
  names = [g.name for g in groups]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise GroupError(f'duplicate neuron group names {dupes}: names must be unique.')
  for g in groups:
    if not isinstance(g, NeuronGroup):
      raise GroupError(f'expected NeuronGroup objects, got {type(g).__name__}.')
    _checks.positive_int(f"group '{g.name}': size", g.size, error=GroupError)
    if not g.incoming:
      raise GroupError(
          f"group '{g.name}' has no incoming slices: a reset needs at least "
          'the kernel that produces the units.'
      )
    _checks.positive_int(f"group '{g.name}': layers", g.layers, error=GroupError)
    if g.size % g.layers:
      raise GroupError(
          f"group '{g.name}': layers must be a positive int dividing size "
          f'({g.size}), got {g.layers!r}.'
      )
    units = g.size // g.layers
    for kind, slices in (('incoming', g.incoming), ('outgoing', g.outgoing)):
      for s in slices:
        leaf = get_path(params, s.path)
        shape = np.shape(leaf)
        _checks.integer_in(
            f"group '{g.name}': the axis of '{path_str(s.path)}'", s.axis, error=GroupError
        )
        _checks.optional(
            _checks.integer_in,
            f"group '{g.name}': the layer_axis of " f"'{path_str(s.path)}'",
            s.layer_axis,
            error=GroupError,
        )
        if not -len(shape) <= s.axis < len(shape):
          raise GroupError(
              f"group '{g.name}': {kind} parameter '{path_str(s.path)}' has shape "
              f'{shape}, which has no axis {s.axis}.'
          )
        if g.layers > 1:
          la = s.layer_axis
          if la is None or not -len(shape) <= la < len(shape) or shape[la] != g.layers:
            raise GroupError(
                f"group '{g.name}' spans {g.layers} stacked layers, but {kind} parameter "
                f"'{path_str(s.path)}' (shape {shape}) has no layer axis of that length "
                f'(layer_axis={la!r}).'
            )
        n = shape[s.axis]
        if s.unit_of is not None:
          if len(s.unit_of) != n or max(s.unit_of) >= units or min(s.unit_of) < -1:
            raise GroupError(
                f"group '{g.name}': {kind} slice '{path_str(s.path)}' maps {len(s.unit_of)} "
                f'elements to units, but axis {s.axis} has {n} (units: {units}).'
            )
          continue
        if kind == 'incoming' and n != units:
          raise GroupError(
              f"group '{g.name}': incoming parameter '{path_str(s.path)}' has "
              f'{n} entries on axis {s.axis} (shape {shape}) but the group has '
              f'{units} units' + (' per layer.' if g.layers > 1 else '.')
          )
        if kind == 'outgoing' and n % units:
          raise GroupError(
              f"group '{g.name}': outgoing parameter '{path_str(s.path)}' has "
              f'{n} entries on axis {s.axis} (shape {shape}), not a multiple of the '
              f'group size {units}.'
          )
        if kind == 'incoming' and s.init is None:
          raise GroupError(
              f"group '{g.name}': incoming slice '{path_str(s.path)}' needs "
              'an initializer to re-draw it.'
          )
  return groups


def _params_of(f: Any, args: tuple) -> Any:
  """The params tree of a model called as discovery calls it (see discover_groups)."""
  if _optional.is_nnx_module(f):
    nnx = _optional.loaded('flax.nnx')
    return nnx.state(f, nnx.Param)
  if not args:
    raise GroupError(
        'check_groups needs the parameters and a sample input: '
        'check_groups(model, params, x, groups=groups).'
    )
  first = args[0]
  if _optional.is_linen_module(f) and isinstance(first, Mapping) and 'params' in first:
    return first['params']
  return first


def check_groups(f: Any, *args, groups: Sequence[NeuronGroup], **kwargs) -> tuple[NeuronGroup, ...]:
  """Checks declared groups against the model itself, not only against the params' shapes.

  [`validate_groups`][snr_jax.validate_groups] sees shapes alone, so a ``consumer`` that is the
  wrong layer of
  the right shape passes it, and a reset would zero weights the units never feed. This
  discovers the model's groups ([`discover_groups`][snr_jax.discover_groups], called with the same
  arguments) and refuses a declared group whose kernel discovery did not find feeding a
  ReLU, whose size differs, whose incoming slices include a parameter that does not
  produce its units, or whose outgoing slices differ from the layers that read its
  output.

  Args:
    f: the model, as for [`discover_groups`][snr_jax.discover_groups] (a linen Module, an
      ``nnx.Module`` or a function ``f(params, *args)``).
    *args: as for [`discover_groups`][snr_jax.discover_groups] (variables or params, then sample
      inputs).
    groups: the declared groups (e.g. from [`dense_group`][snr_jax.dense_group]).
    **kwargs: as for [`discover_groups`][snr_jax.discover_groups] (e.g. ``train=True``).

  Returns:
    The groups as a tuple, unchanged.

  Raises:
    GroupError: the first group that does not match the model, with what discovery found.
  """
  from snr_jax._src.discovery import discover_groups  # pylint: disable=import-outside-toplevel

  groups = validate_groups(groups, _params_of(f, args))
  found = discover_groups(f, *args, **kwargs)
  by_incoming = {s.path: g for g in found for s in g.incoming}
  for d in groups:
    kernel = next((s.path for s in d.incoming if s.path[-1:] == ('kernel',)), d.incoming[0].path)
    g = by_incoming.get(kernel)
    if g is None:
      why = [
          f'{x.layer}: {x.reason}'
          for x in getattr(found, 'left_out', ())
          if x.layer == path_str(kernel[:-1])
      ]
      raise GroupError(
          f"group '{d.name}': discovery found no neuron group produced by "
          f"'{path_str(kernel)}'"
          + (f' ({"; ".join(why)})' if why else '')
          + f'. Discovered groups: {[path_str(s.path) for h in found for s in h.incoming[:1]]}.'
      )
    paths = lambda slices: sorted(path_str(s.path) for s in slices)
    problems = []
    if d.size != g.size:
      problems.append(f'its size is {d.size}, the layer has {g.size} units')
    wrong_in = sorted(set(paths(d.incoming)) - set(paths(g.incoming)))
    if wrong_in:
      problems.append(
          f'incoming {wrong_in} do not produce its units (discovered incoming: '
          f'{paths(g.incoming)})'
      )
    if paths(d.outgoing) != paths(g.outgoing):
      problems.append(
          f'outgoing {paths(d.outgoing)}, but its ReLU output is read by ' f'{paths(g.outgoing)}'
      )
    if problems:
      raise GroupError(
          f"group '{d.name}' (layer '{path_str(kernel[:-1])}') does not match the "
          f'model: {"; ".join(problems)}. Fix the declaration (e.g. consumer=), or '
          'use the discovered group.'
      )
  return groups
