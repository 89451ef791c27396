"""Neuron groups: which parameters belong to which hidden unit (SPEC §1).

A *neuron* is one output unit of a hidden Dense/Conv layer that feeds a ReLU-type
nonlinearity. A :class:`NeuronGroup` names, for one such layer, where its
pre-activation comes from and which parameter slices belong to each of its units:

* ``incoming``: slices that produce unit ``i`` (the kernel's last axis, ``bias[i]``);
  they are re-drawn from the parameter's own initializer on a reset;
* ``outgoing``: slices of the consuming layer that read unit ``i``; they are zeroed
  on a reset.

A slice is described by :class:`ParamSlice`: a path into the params tree and the axis
that indexes units. Along that axis the parameter may be longer than the group, by a
whole multiple: element ``r`` then belongs to unit ``r % size``. That covers a Dense row
(length ``size``), a Conv input channel (length ``size``) and a Conv -> flatten -> Dense
kernel, whose rows are ``(h, w, c)`` flattened row-major so that channel ``c`` owns every
row ``r`` with ``r % channels == c``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

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
      ``init(key, shape, dtype)`` on the whole parameter's shape, so fan-in based
      scales are right). ``None`` for an outgoing slice, which is zeroed.
  """

  path: Path
  axis: int
  init: Optional[Initializer] = None


@dataclasses.dataclass(frozen=True)
class NeuronGroup:
  """One hidden layer's units and the parameter slices each of them owns.

  Attributes:
    name: the key of this group in activations, ages and logs.
    size: number of units.
    incoming: slices re-drawn on a reset (kernel columns, bias entries).
    outgoing: slices zeroed on a reset (the consumer's rows / input channels).
    activation: path of the pre-activation in a Flax ``intermediates`` collection
      (for auto-discovered groups, ``(*module_path, '__call__')``).
  """

  name: str
  size: int
  incoming: tuple[ParamSlice, ...]
  outgoing: tuple[ParamSlice, ...] = ()
  activation: Optional[Path] = None


def _as_path(path: Any) -> Path:
  if isinstance(path, str):
    return tuple(p for p in path.split('/') if p)
  return tuple(str(p) for p in path)


def path_str(path: Sequence[str]) -> str:
  return '/'.join(path)


def get_path(tree: Mapping[str, Any], path: Path) -> Any:
  """Returns ``tree[path[0]][path[1]]...``, raising GroupError on a missing key."""
  node = tree
  for i, key in enumerate(path):
    if not isinstance(node, Mapping) or key not in node:
      where = path_str(path[:i]) or '<root>'
      have = sorted(node.keys()) if isinstance(node, Mapping) else type(node).__name__
      raise GroupError(
          f"unknown parameter path '{path_str(path)}': no key '{key}' under "
          f"'{where}' (found {have}). Check the group declaration against "
          "jax.tree_util.tree_structure(params).")
    node = node[key]
  return node


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
    A NeuronGroup; validate it against params with :func:`validate_groups`.
  """
  layer = _as_path(layer)
  incoming = [ParamSlice(layer + ('kernel',), -1,
                         kernel_init or nn.initializers.lecun_normal())]
  if use_bias:
    incoming.append(ParamSlice(layer + ('bias',), -1, bias_init or nn.initializers.zeros))
  outgoing = ()
  if consumer is not None:
    outgoing = (ParamSlice(_as_path(consumer) + ('kernel',), -2),)
  act = _as_path(activation) if activation is not None else layer + ('__call__',)
  return NeuronGroup(name, int(size), tuple(incoming), outgoing, act)


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
    raise GroupError('no neuron groups given: pass groups=discover_groups(model, params, '
                     'sample_input) or declare them with dense_group(...).')
  names = [g.name for g in groups]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise GroupError(f'duplicate neuron group names {dupes}: names must be unique.')
  for g in groups:
    if not isinstance(g, NeuronGroup):
      raise GroupError(f'expected NeuronGroup objects, got {type(g).__name__}.')
    if not isinstance(g.size, (int, np.integer)) or g.size <= 0:
      raise GroupError(f"group '{g.name}': size must be a positive int, got {g.size!r}.")
    if not g.incoming:
      raise GroupError(f"group '{g.name}' has no incoming slices: a reset needs at least "
                       'the kernel that produces the units.')
    for kind, slices in (('incoming', g.incoming), ('outgoing', g.outgoing)):
      for s in slices:
        leaf = get_path(params, s.path)
        shape = np.shape(leaf)
        if not -len(shape) <= s.axis < len(shape):
          raise GroupError(
              f"group '{g.name}': {kind} parameter '{path_str(s.path)}' has shape "
              f'{shape}, which has no axis {s.axis}.')
        n = shape[s.axis]
        if kind == 'incoming' and n != g.size:
          raise GroupError(
              f"group '{g.name}': incoming parameter '{path_str(s.path)}' has "
              f'{n} entries on axis {s.axis} (shape {shape}) but the group has '
              f'{g.size} units.')
        if kind == 'outgoing' and n % g.size:
          raise GroupError(
              f"group '{g.name}': outgoing parameter '{path_str(s.path)}' has "
              f'{n} entries on axis {s.axis} (shape {shape}), not a multiple of the '
              f'group size {g.size}.')
        if kind == 'incoming' and s.init is None:
          raise GroupError(f"group '{g.name}': incoming slice '{path_str(s.path)}' needs "
                           'an initializer to re-draw it.')
  return groups


# --- automatic discovery ---------------------------------------------------------------

@dataclasses.dataclass
class _Call:
  module: nn.Module
  path: Path
  inputs: Any
  output: Any


def _plain_layer(mod: nn.Module) -> bool:
  """Dense/Conv-like layers only: not DenseGeneral/Einsum, not inside attention."""
  if isinstance(mod, (nn.DenseGeneral, nn.Einsum)):
    return False
  parent = mod.parent
  while isinstance(parent, nn.Module):
    if isinstance(parent, nn.MultiHeadDotProductAttention):
      return False
    parent = parent.parent
  return True


def _record_kernel_layers(model: nn.Module, variables: Any, args, kwargs):
  """Runs one forward pass, recording every call of a module that owns a kernel."""
  calls: list[_Call] = []

  def interceptor(next_fun, fargs, fkwargs, context):
    out = next_fun(*fargs, **fkwargs)
    mod = context.module
    if context.method_name == '__call__' and fargs:
      try:
        has_kernel = mod.has_variable('params', 'kernel')
      except Exception:  # pylint: disable=broad-except
        has_kernel = False
      if has_kernel and _plain_layer(mod):
        calls.append(_Call(mod, tuple(mod.path), fargs[0], out))
    return out

  with nn.intercept_methods(interceptor):
    model.apply(variables, *args, **kwargs)
  return calls


def discover_groups(model: nn.Module, params: Any, *sample_args, **sample_kwargs
                    ) -> tuple[NeuronGroup, ...]:
  """Derives the neuron groups of an ordinary Flax linen model.

  Runs one forward pass on a sample batch and records, in call order, every module
  that owns a ``kernel`` parameter whose last axis gives its output features (Dense,
  Conv and look-alikes). A layer ``L`` is a neuron group when the next such layer
  ``C`` reads what ``L`` produced through a ReLU-type nonlinearity, judged from the
  sample: ``C``'s input is non-negative everywhere and its feature axis matches ``L``'s
  units (equal for Dense -> Dense and Conv -> Conv; a multiple for Conv -> flatten ->
  Dense, channel-last). This finds sequential MLP/CNN stacks and transformer FFN blocks
  (an FFN's output projection feeds a residual stream, which is not non-negative, so
  it is not a group; attention and output layers are never groups). Anything else
  (GELU, residual MLPs, layers called twice) is declared with :func:`dense_group`.

  Args:
    model: a linen module.
    params: its parameters (the ``'params'`` collection, or the full variables).
    *sample_args: a sample input (a small batch is enough; it must make the ReLU
      outputs visible, so avoid an all-zero input).
    **sample_kwargs: passed to ``model.apply``.

  Returns:
    The groups, validated against ``params``.

  Raises:
    GroupError: when no group is found.
  """
  variables = params if 'params' in params else {'params': params}
  only_params = variables['params']
  calls = _record_kernel_layers(model, variables, sample_args, sample_kwargs)
  counts: dict[Path, int] = {}
  for c in calls:
    counts[c.path] = counts.get(c.path, 0) + 1
  calls = [c for c in calls if counts[c.path] == 1]  # shared layers are ambiguous

  groups = []
  for prod, cons in zip(calls, calls[1:]):
    kernel = np.shape(get_path(only_params, prod.path + ('kernel',)))
    out = prod.output
    if not hasattr(out, 'shape') or out.shape[-1] != kernel[-1]:
      continue
    if len(kernel) not in (2, np.ndim(out)):  # a Dense, or a Conv over ndim-2 axes
      continue
    units = kernel[-1]
    x = cons.inputs
    if not hasattr(x, 'shape'):
      continue
    ckernel = np.shape(get_path(only_params, cons.path + ('kernel',)))
    feat = x.shape[-1]
    if len(ckernel) < 2 or ckernel[-2] != feat:
      continue
    if len(ckernel) == 2:
      # Dense reads the units directly, or a flattened (..., h, w, units) map.
      ok = feat == units or (feat % units == 0 and np.ndim(out) > np.ndim(x))
    else:
      ok = feat == units
    if not ok or not bool(jnp.all(jnp.asarray(x) >= 0)):
      continue
    mod = prod.module
    use_bias = mod.has_variable('params', 'bias')
    groups.append(dense_group(
        path_str(prod.path), units, layer=prod.path, consumer=cons.path,
        kernel_init=getattr(mod, 'kernel_init', None),
        bias_init=getattr(mod, 'bias_init', None), use_bias=use_bias))
  if not groups:
    raise GroupError(
        f'discover_groups found no hidden layer followed by a ReLU in '
        f'{type(model).__name__} (layers seen: {[path_str(c.path) for c in calls]}). '
        'Declare the groups with snr_jax.dense_group(...).')
  return validate_groups(groups, only_params)
