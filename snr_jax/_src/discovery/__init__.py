"""Neuron discovery from the computation itself (SPEC §1).

:func:`discover_groups` traces the model's forward pass to a jaxpr, whatever built it
(Flax linen, Flax NNX or a plain function of a params tree), and reads the neurons off
the graph, in the manner of kfac-jax's automatic layer registration:

1. every contraction (``dot_general``, ``conv_general_dilated``) of data with a
   parameter whose output has one unit axis is a candidate *producer*;
2. from its output the engine walks forward through ops that keep units apart and
   treat them alike: bias adds, per-unit scale and shift, normalisation (a LayerNorm's
   statistics over the units, a GroupNorm's over groups of them, a BatchNorm's over the
   batch, its running statistics a model state or an argument that reaches no
   contraction directly, as haiku's state passed into the step), layout ops, casts and
   sharding constraints, dropout (a product with a mask made from booleans, or a select
   against zero), windows and elementwise maxima of the same units (pooling). The walk must
   reach exactly one ReLU (``jax.nn.relu``, ``relu6`` or ``max(x, 0)``) and nothing
   else: a residual add, a second consumer of the pre-activation, a non-ReLU
   nonlinearity (GELU, SiLU, tanh, sigmoid, softplus, ELU, leaky ReLU), a contraction
   without a ReLU in between, or the model's output disqualify the layer, and the
   reason is recorded. The per-unit parameters met on the way (bias, a norm's scale and
   offset) are the unit's *incoming* slices besides the kernel's;
3. from the ReLU's output the engine walks forward through ops that keep units apart
   (pooling, also hand-written as a max, min or sum of slices that hold the same unit at
   each position; reshape, transpose, concatenation, casts, sharding constraints,
   dropout, global pooling) to **every** consumer. Each must be a contraction of the
   units with a parameter; the engine keeps, for each row of each consumer's kernel,
   which unit it reads (channel-last and channel-first flattens alike, and back through
   a reshaped kernel such as an im2col conv's). A sum with another branch, a reduction
   over units, an attention product or the model's output disqualify the layer.

A kernel may be computed from its parameter by statistics of that parameter along other
axes (a weight-standardised StdConv): the unit is its output channel, the incoming slice
the raw parameter's; a consumer standardised across the units it reads cannot be cut off
by zeroing rows, and its producer is left out. A kernel made from several parameters is
left out with that reason. A layer whose output reaches the model's output with no ReLU
and no other layer after it is reported as an output layer.

The body of a ``scan`` over stacked parameters (``nn.scan``, ``nnx.scan``, ``lax.scan``)
is read the same way; its groups have units indexed (layer, unit). Layers whose kernel is
used by several contractions (shared weights) are refused with an error.

What was decided is visible: the result is a tuple of groups with a ``left_out`` list,
and :func:`describe_groups` prints both.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np
from flax import linen as nn

from snr_jax._src import checks as _checks, jaxpr as _jaxpr
from snr_jax._src.jaxpr import Op, Scope
from snr_jax._src.trace import Leaf, as_traceable, model_kind
from snr_jax._src.groups import (GroupError, NeuronGroup, ParamSlice, Path, Site, leaf_value,
                                 path_str)

# ops that pass each value through, up to sign or dtype: casts, copies and layout no-ops
# (sharding constraints, varying-type marks). _PER_OPERAND ones take several values at
# once and return result k from operand k.
_LINEAR_UNARY = {'convert_element_type', 'neg', 'copy', 'copy_p', 'reduce_precision',
                 'stop_gradient', 'pvary', 'pcast', 'sharding_constraint', 'mesh_cast',
                 'reshard'}
_PER_OPERAND = {'optimization_barrier', 'device_put'}
# collectives over a mapped axis: elementwise across devices, so per-unit statistics
# (a synchronised BatchNorm's batch mean) stay per-unit
_CROSS_DEVICE = {'psum', 'psum_invariant', 'pmax', 'pmin'}
_NONLINEAR_UNARY = {'exp', 'exp2', 'log', 'log1p', 'expm1', 'tanh', 'logistic', 'sqrt', 'rsqrt',
                    'cbrt', 'abs', 'sign', 'sin', 'cos', 'tan', 'atan', 'asin', 'acos', 'sinh',
                    'cosh', 'asinh', 'acosh', 'atanh', 'erf', 'erfc', 'erf_inv', 'integer_pow',
                    'square', 'floor', 'ceil', 'round', 'is_finite', 'lgamma', 'digamma'}
_COMPARE = {'ge', 'gt', 'le', 'lt', 'eq', 'ne'}
_BINARY = {'add', 'sub', 'mul', 'div', 'max', 'min', 'pow', 'atan2', 'rem', 'add_any',
           'nextafter'}
_LAYOUT = {'reshape', 'broadcast_in_dim', 'transpose', 'squeeze', 'expand_dims'}
_REDUCE = {'reduce_sum', 'reduce_max', 'reduce_min', 'reduce_prod', 'argmax', 'argmin',
           'reduce_and', 'reduce_or'}
_POOL = {'reduce_window_max', 'reduce_window_sum', 'reduce_window_min', 'reduce_window'}
_CONTRACTIONS = {'dot_general', 'conv_general_dilated'}
_PARAM_REDUCE = {'reduce_sum', 'reduce_max', 'reduce_min', 'reduce_prod'}
# names of the informative nonlinearities, best first, for reports
_NONLIN_RANK = ('tanh', 'erf', 'logistic', 'exp', 'expm1', 'log1p', 'select_n')
_ACTIVATION_NAMES = {'gelu', 'silu', 'swish', 'softplus', 'elu', 'celu', 'selu', 'leaky_relu',
                     'sigmoid', 'hard_tanh', 'hard_sigmoid', 'hard_silu', 'log_sigmoid',
                     'mish', 'glu', 'sparse_plus', 'squareplus', 'tanh'}


# --- what a value is made of ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Origin:
  """Where a value comes from, ignoring the source being walked.

  kind: 'const' (literals, captured constants), 'param' (one params/state leaf through
  layout and elementwise ops with constants), or 'data' (anything else). For 'param',
  ``axes[j]`` is the leaf axis that axis ``j`` of the value runs along (None where it
  is broadcast), and ``layer_axis`` the leaf's stacked-layer axis inside a scan body.
  """
  kind: str
  leaf: int = -1
  axes: tuple = ()
  layer_axis: Optional[int] = None
  parts: tuple = ()  # for kind 'params': ((leaf, axes, layer_axis, mixed), ...)
  # leaf axes along which entries are combined (reduced over, as a weight standardisation's
  # mean over a kernel's input axes): entry i along one of them depends on all the others
  mixed: frozenset = frozenset()


def _parts(o: _Origin) -> tuple:
  if o.kind == 'param':
    return ((o.leaf, o.axes, o.layer_axis, o.mixed),)
  return o.parts if o.kind == 'params' else ()


def _merge_same_leaf(parts):
  """Parts of one leaf that line up (a kernel and its own statistics, as in ``w -
  mean(w)``): one part whose reduced axes are marked mixed, or None."""
  leaf, _, la, _ = parts[0]
  if any(p[2] != la for p in parts):
    return None
  n = len(parts[0][1])
  axes, mixed = [None] * n, frozenset().union(*(p[3] for p in parts))
  for j in range(n):
    vals = {p[1][j] for p in parts} - {None}
    if len(vals) > 1:
      return None
    axes[j] = vals.pop() if vals else None
  real = [a for a in axes if a is not None]
  if len(real) != len(set(real)):
    return None  # an outer product of the leaf with itself
  for p in parts:  # a part broadcast along a leaf axis it does not reduce: not one leaf's map
    if any(b is None and a is not None and a not in p[3] for a, b in zip(axes, p[1])):
      return None
  return (leaf, tuple(axes), la, mixed)


def _from_parts(parts) -> _Origin:
  parts = tuple(dict.fromkeys(parts))
  if len({p[0] for p in parts}) == 1 and len(parts) > 1 and \
      len({len(p[1]) for p in parts}) == 1:
    merged = _merge_same_leaf(parts)
    if merged is not None:
      parts = (merged,)
  if len(parts) == 1:
    return _Origin('param', *parts[0][:3], mixed=parts[0][3])
  return _Origin('params', parts=parts)


_CONST = _Origin('const')
_DATA = _Origin('data')


def _same_axes(in_shape, out_shape) -> dict[int, int]:
  """Output axis -> input axis for the axes a reshape leaves intact (same size, stride)."""
  def strides(shape):
    out, acc = [], 1
    for d in reversed(shape):
      out.append(acc)
      acc *= d
    return out[::-1]

  si, so = strides(in_shape), strides(out_shape)
  found = {}
  for j, (d, s) in enumerate(zip(out_shape, so)):
    if d == 1:
      continue
    for i, (e, t) in enumerate(zip(in_shape, si)):
      if e == d and t == s:
        found[j] = i
  return found


def _layout_map(op: Op, in_shape, out_shape) -> Optional[list[Optional[int]]]:
  """For a layout op: output axis -> input axis (None: new or merged axis)."""
  p = op.params
  if op.prim == 'transpose':
    return list(p['permutation'])
  if op.prim == 'broadcast_in_dim':
    out = [None] * len(out_shape)
    for k, j in enumerate(p['broadcast_dimensions']):
      if in_shape[k] == out_shape[j]:
        out[j] = k
    return out
  if op.prim == 'squeeze':
    gone = {d % len(in_shape) for d in p['dimensions']}
    return [i for i in range(len(in_shape)) if i not in gone]
  if op.prim == 'expand_dims':
    new = {d % len(out_shape) for d in p['dimensions']}
    it = iter(range(len(in_shape)))
    return [None if j in new else next(it) for j in range(len(out_shape))]
  if op.prim == 'reshape':
    same = _same_axes(in_shape, out_shape)
    return [same.get(j) for j in range(len(out_shape))]
  if op.prim in _LINEAR_UNARY:
    return list(range(len(in_shape)))
  return None


def _origins(scope: Scope, inputs: list[_Origin]) -> dict[int, _Origin]:
  """The origin of every value of ``scope``."""
  org: dict[int, _Origin] = {i: _CONST for i in scope.consts}
  org.update(zip(scope.inputs, inputs))
  for op in scope.ops:
    ins = [org.get(i, _DATA) for i in op.ins]
    if op.prim in _PER_OPERAND:
      org.update(zip(op.outs, ins))
      continue
    kinds = {o.kind for o in ins}
    out = _DATA
    if not ins or kinds == {'const'}:
      out = _CONST if op.prim not in ('random_bits', 'random_wrap', 'rng_uniform') else _DATA
    elif kinds <= {'const', 'param', 'params'}:
      out_shape = scope.shapes[op.outs[0]] if op.outs else ()
      srcs = [k for k, o in enumerate(ins) if o.kind != 'const']
      if op.prim in _LAYOUT or op.prim in _LINEAR_UNARY:
        m = _layout_map(op, scope.shapes[op.ins[srcs[0]]], out_shape)
        if m is not None and len(srcs) == 1:
          out = _from_parts(tuple((leaf, tuple(None if a is None else axes[a] for a in m), la,
                                   mx) for leaf, axes, la, mx in _parts(ins[srcs[0]])))
      elif op.prim in _BINARY or op.prim in _NONLINEAR_UNARY or op.prim == 'select_n':
        parts = []
        for k in srcs:
          in_shape = scope.shapes[op.ins[k]]
          if len(in_shape) != len(out_shape):
            parts = None
            break
          parts.extend((leaf, tuple(a if in_shape[j] == out_shape[j] else None
                                    for j, a in enumerate(axes)), la, mx)
                       for leaf, axes, la, mx in _parts(ins[k]))
        if parts:
          out = _from_parts(tuple(parts))
      elif op.prim in _PARAM_REDUCE and len(srcs) == 1:
        # statistics of a parameter (a weight standardisation's mean and variance): the
        # same leaf, its reduced axes gone and marked mixed
        red = set(op.params['axes'])
        out = _from_parts(tuple(
            (leaf, tuple(a for j, a in enumerate(axes) if j not in red), la,
             mx | {a for j, a in enumerate(axes) if j in red and a is not None})
            for leaf, axes, la, mx in _parts(ins[srcs[0]])))
    for i in op.outs:
      org[i] = out
  return org


def _masks(scope: Scope) -> set[int]:
  """Values >= 0 everywhere made from booleans: dropout masks (Flax's bernoulli draw,
  haiku's ``keep / keep_rate`` factor). A product with one zeroes or scales each entry on
  its own, so it keeps units apart and a silent unit stays silent."""
  def const_sign(i, positive):
    try:
      v = np.asarray(scope.consts[i])
      return bool(np.all(v > 0) if positive else np.all(v >= 0))
    except Exception:  # pylint: disable=broad-except
      return False

  masks = {i for i in scope.consts if const_sign(i, False)}
  passing = (_LAYOUT | _LINEAR_UNARY | {'slice'}) - {'neg'}
  for op in scope.ops:
    ins = op.ins
    if op.prim in _PER_OPERAND:
      masks.update(o for i, o in zip(ins, op.outs) if i in masks)
    elif op.prim != 'relu' and all(str(getattr(v.aval, 'dtype', '')) == 'bool'
                                   for v in op.eqn.outvars):
      masks.update(op.outs)
    elif (op.prim in passing and ins and ins[0] in masks) or \
        (op.prim == 'mul' and all(i in masks for i in ins)) or \
        (op.prim == 'div' and ins[0] in masks and ins[1] in scope.consts
         and const_sign(ins[1], True)) or \
        (op.prim == 'select_n' and all(i in masks for i in ins[1:])):
      masks.update(op.outs)
  return masks


# --- walking from a source ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _T:
  """How a value depends on the walked source.

  kind: 'main' (unit-separable function of the source, units along ``axis``),
  'nonlin' (the same after a non-ReLU nonlinearity), 'pstat' (per-unit statistics:
  reduced over other axes), 'stat' (reduced over the units: a LayerNorm's mean).
  ``vec[r]`` is the unit at index r along ``axis`` (-1: none), ``params`` the per-unit
  leaves met: (leaf, leaf axis, layer axis).
  """
  kind: str
  axis: Optional[int]
  vec: Optional[tuple] = None
  params: frozenset = frozenset()
  name: str = ''


def _better_name(old: str, prim: str, scope_name: str) -> str:
  if scope_name in _ACTIVATION_NAMES:
    return scope_name
  if not old:
    return prim
  rank = lambda n: _NONLIN_RANK.index(n) if n in _NONLIN_RANK else len(_NONLIN_RANK)
  return prim if rank(prim) < rank(old) else old


def _describe_nonlin(name: str) -> str:
  known = {'tanh': 'tanh (or a tanh-approximated GELU)', 'erf': 'an erf (exact GELU)',
           'logistic': 'a sigmoid (or SiLU)', 'select_n': 'a piecewise function (leaky ReLU, '
           'ELU, ...)', 'exp': 'an exponential', 'expm1': 'an exponential (ELU?)',
           'log1p': 'log1p (softplus?)', 'logaddexp': 'softplus (logaddexp)'}
  what = known.get(name, f"'{name}'")
  return f'its output passes through {what}, which has no silent state (not a ReLU)'


@dataclasses.dataclass
class _Walk:
  relus: list = dataclasses.field(default_factory=list)       # (op, state) at ReLU sites
  consumers: list = dataclasses.field(default_factory=list)   # (leaf, axis, vec, layer_axis, op)
  reasons: list = dataclasses.field(default_factory=list)
  state: set = dataclasses.field(default_factory=set)         # per-unit model-state leaves


class _Walker:
  """Walks forward from one value of a scope (see the module docstring)."""

  def __init__(self, scope: Scope, org: dict[int, _Origin], leaves: list[Leaf],
               layer_names: Callable[[Op], str]):
    self.scope, self.org, self.leaves = scope, org, leaves
    self.layer_names = layer_names
    self.outputs = set(scope.outputs)
    self.where_out = ('leaves the scan body (carry or output)' if scope.layers > 1
                      else 'is an output of the model (an output layer)')
    self.seen_relus: set[int] = set()
    self.producer = {i: op for op in scope.ops for i in op.outs}
    self.masks = _masks(scope)

  def is_zero(self, i: int) -> bool:
    """A known all-zeros constant (``zeros_like``, a literal 0)."""
    return self.org.get(i, _DATA).kind == 'const' and _jaxpr._is_zero(
        self.scope.consts.get(i, 1))

  def leaf_size(self, o: _Origin, axis_in_value: int) -> Optional[int]:
    a = o.axes[axis_in_value] if axis_in_value < len(o.axes) else None
    if a is None:
      return None
    return a

  def _param_unit(self, o: _Origin, operand_shape, axis: int, units: int):
    """(leaf, leaf axis, layer axis) when a param operand runs along the units, 'bcast' when
    it is broadcast along them, or None when it does not line up."""
    if operand_shape[axis] == 1:
      return 'bcast'
    a = o.axes[axis]
    shape = self.leaves[o.leaf].shape
    if a is None or shape[a] != units or a in o.mixed:
      return None
    if self.leaves[o.leaf].kind == 'aux' and any(
        d != 1 for j, d in enumerate(operand_shape) if j != axis):
      return None  # an argument with more than one value per unit is data, not a state
    return (o.leaf, a, o.layer_axis)

  # pre-activation side ------------------------------------------------------------
  def pre(self, start: int, src: int, axis: int, units: int, kernel) -> _Walk:
    w = _Walk()
    tr = {src: _T('main', axis, params=frozenset([kernel]))}
    shapes = self.scope.shapes
    for op in self.scope.ops[start:]:
      ts = [tr.get(i) for i in op.ins]
      if not any(t is not None for t in ts):
        continue
      if op.prim in _PER_OPERAND:
        tr.update((i, t) for i, t in zip(op.outs, ts) if t is not None)
        continue
      res = self._pre_op(op, ts, units, w)
      if res is None:
        continue
      if res == 'stop':
        break
      for i in op.outs:
        tr[i] = res
    for i in self.outputs:
      if i in tr and tr[i].kind == 'nonlin':
        w.reasons.append(_describe_nonlin(tr[i].name))
      elif i in tr and tr[i].kind == 'main':
        w.reasons.append(self.where_out)
      elif i in tr and tr[i].kind == 'grouped':
        w.reasons.append("its pre-activation is reshaped across its units ('reshape')")
    del shapes
    return w

  def is_output_layer(self, start: int, src: int) -> bool:
    """Whether ``src`` reaches the model's output with no ReLU and no other layer after
    it: an output head (a dueling head's value + advantage - mean(advantage), a critic's
    ``Dense(1)(x).squeeze(-1)``), whatever arithmetic or layout it goes through."""
    if self.scope.layers > 1:
      return False
    reach = {src}
    for op in self.scope.ops[start:]:
      if not any(i in reach for i in op.ins):
        continue
      if op.prim == 'relu' or op.prim in _CONTRACTIONS or op.body is not None:
        return False
      reach.update(op.outs)
    return any(i in reach for i in self.outputs)

  def _pre_op(self, op: Op, ts, units, w: _Walk):
    kinds = {t.kind for t in ts if t is not None}
    first = next(t for t in ts if t is not None)
    shapes = self.scope.shapes
    if 'grouped' in kinds:
      return self._pre_grouped(op, ts, w)
    if op.prim == 'relu':
      self.seen_relus.add(id(op))
      if first.kind == 'main':
        w.relus.append((op, first))
        return None
      if first.kind == 'nonlin':
        w.reasons.append(_describe_nonlin(first.name))
        return 'stop'
      return first
    if op.prim in _LINEAR_UNARY:
      return first
    if kinds <= {'stat', 'pstat'} and op.prim in _CROSS_DEVICE | {'stack', 'concatenate',
                                                                  'slice'}:
      return self._pre_statistics(op, ts, first, w)
    if op.prim == 'select_n' and ts[0] is None and kinds == {'main'} and all(
        (t is not None and t.axis == first.axis) or self.is_zero(i)
        for i, t in zip(op.ins[1:], ts[1:])):
      # where(mask, x, 0) chosen by something other than x: dropout before the ReLU
      return _T('main', first.axis, None,
                frozenset().union(*(t.params for t in ts if t is not None)))
    if op.prim == 'slice' and kinds <= {'main', 'nonlin'} and _whole(op, first.axis,
                                                                    shapes[op.ins[0]]):
      return first  # a window of other axes (hand-written pooling before the ReLU)
    if op.prim in _NONLINEAR_UNARY or op.prim in _COMPARE or op.prim == 'select_n':
      if kinds <= {'stat', 'pstat'}:
        return first
      main = next(t for t in ts if t is not None and t.kind in ('main', 'nonlin'))
      params = frozenset().union(*(t.params for t in ts if t is not None))
      return _T('nonlin', main.axis, None, params,
                _better_name(main.name, op.prim, op.scope_name))
    if op.prim in _BINARY:
      return self._pre_binary(op, ts, units, w)
    if op.prim in _LAYOUT:
      if first.kind == 'stat':
        return first
      m = _layout_map(op, shapes[op.ins[0]], shapes[op.outs[0]])
      if (m is None or first.axis not in m) and first.kind == 'main' and \
          _splits_axis(op, shapes[op.ins[0]], shapes[op.outs[0]], first.axis):
        # the units cut into groups, for a GroupNorm's statistics: only statistics of
        # this value may go on (_pre_grouped)
        return _T('grouped', None, params=first.params)
      if m is None or first.axis not in m:
        w.reasons.append(f"its pre-activation is reshaped across its units ('{op.prim}')")
        return 'stop'
      return dataclasses.replace(first, axis=m.index(first.axis))
    if op.prim in _REDUCE:
      axes = tuple(op.params['axes'])
      if first.kind == 'stat':
        return first
      if first.axis in axes:
        return _T('stat', None, params=first.params)
      new_axis = first.axis - sum(1 for a in axes if a < first.axis)
      return _T('pstat', new_axis, params=first.params, name=first.name)
    if op.prim in _POOL and first.kind in ('main', 'nonlin'):
      if op.params['window_dimensions'][first.axis] == 1 and \
          op.params['window_strides'][first.axis] == 1:
        return first
    nonlin = next((t for t in ts if t is not None and t.kind == 'nonlin'), None)
    if nonlin is not None and (op.prim in _CONTRACTIONS or op.prim == 'scan'
                               or op.prim not in _POOL):
      w.reasons.append(_describe_nonlin(nonlin.name))
      return 'stop'
    if op.prim in _CONTRACTIONS:
      if kinds <= {'stat', 'pstat'}:
        w.reasons.append('statistics of its pre-activation flow into a contraction')
      else:
        w.reasons.append(f'it reaches {self.describe_contraction(op, ts)} without a ReLU in '
                         'between')
      return 'stop'
    if op.prim == 'scan':
      w.reasons.append('its pre-activation enters a scan')
      return 'stop'
    if op.prim.startswith('custom_') and kinds & {'main'}:
      w.reasons.append(_describe_nonlin(op.scope_name or 'a custom-derivative function'))
      return 'stop'
    if kinds <= {'stat', 'pstat'} and op.prim in ('stop_gradient',):
      return first
    w.reasons.append(f"its pre-activation reaches '{op.prim}'"
                     + (f" (in '{op.scope_name}')" if op.scope_name else ''))
    return 'stop'

  def _pre_grouped(self, op: Op, ts, w: _Walk):
    """The pre-activation with its units cut into (groups, units per group), as a
    GroupNorm computes its statistics: reductions of it are statistics that couple the
    units of a group (treated like a LayerNorm's, SPEC §1); elementwise arithmetic with
    constants (squares, scaling) stays such a value; anything else is refused."""
    g = next(t for t in ts if t is not None and t.kind == 'grouped')
    others_ok = all(t is None and (self.org.get(i, _DATA).kind == 'const'
                                   or len(self.scope.shapes[i]) == 0) or
                    (t is not None and t.kind == 'grouped') for i, t in zip(op.ins, ts))
    if op.prim in _REDUCE and op.prim.startswith('reduce_') and len(op.ins) == 1:
      return _T('stat', None, params=g.params)
    if others_ok and (op.prim in _LINEAR_UNARY or op.prim in _NONLINEAR_UNARY
                      or op.prim in _BINARY):
      return g
    w.reasons.append("its pre-activation is reshaped across its units ('reshape')")
    return 'stop'

  def _pre_statistics(self, op: Op, ts, first: _T, w: _Walk):
    """Statistics of the pre-activation moved around together, e.g. a synchronised
    BatchNorm's mean and mean square: stacked, summed across devices, sliced apart."""
    if first.kind == 'stat' or op.prim in _CROSS_DEVICE:
      return first
    if any(t is not None and t.axis != first.axis for t in ts):
      w.reasons.append(f"statistics of its pre-activation are combined across its units "
                       f"('{op.prim}')")
      return 'stop'
    if op.prim == 'stack':
      return dataclasses.replace(first, axis=first.axis + (op.params['axis'] <= first.axis))
    if op.prim == 'concatenate' and op.params['dimension'] != first.axis:
      return first
    if op.prim == 'slice' and _whole(op, first.axis, self.scope.shapes[op.ins[0]]):
      return first
    how = 'cut' if op.prim == 'slice' else 'combined'
    w.reasons.append(f"statistics of its pre-activation are {how} across its units "
                     f"('{op.prim}')")
    return 'stop'

  def describe_contraction(self, op: Op, ts) -> str:
    other = [self.org.get(i, _DATA) for i, t in zip(op.ins, ts) if t is None]
    if other and other[0].kind == 'param':
      return f"'{self.layer_names(self.leaves[other[0].leaf].path)}'"
    return 'a contraction with data (attention or a custom product)'

  def _pre_binary(self, op: Op, ts, units, w: _Walk):
    shapes = self.scope.shapes
    tracked = [t for t in ts if t is not None]
    axis = next((t.axis for t in tracked if t.kind != 'stat'), None)
    params = frozenset().union(*(t.params for t in tracked))
    kinds = {t.kind for t in tracked}
    for i, t in zip(op.ins, ts):
      if t is not None:
        continue
      o = self.org.get(i, _DATA)
      shape = shapes[i]
      if o.kind == 'const' or len(shape) == 0:
        continue
      if o.kind in ('param', 'params'):
        if axis is None:  # only statistics so far: a per-unit factor (LayerNorm's scale)
          cand = {j for leaf, axes, _, _ in _parts(o) for j, a in enumerate(axes)
                  if a is not None and self.leaves[leaf].shape[a] == units and shape[j] == units}
          if len(cand) != 1:
            w.reasons.append('statistics of its pre-activation are mixed with other values')
            return 'stop'
          axis = cand.pop()
          kinds = kinds | {'pstat'}
        for leaf, axes, la, mx in _parts(o):
          u = self._param_unit(_Origin('param', leaf, axes, la, mixed=mx), shape, axis, units)
          if u == 'bcast':
            continue
          if u is None or op.prim not in ('add', 'sub', 'mul', 'div', 'add_any'):
            w.reasons.append(f"its pre-activation is combined ('{op.prim}') with parameter "
                             f"'{path_str(self.leaves[leaf].path)}' across its units")
            return 'stop'
          if self.leaves[leaf].kind == 'state':
            w.state.add(u)
          elif self.leaves[leaf].kind == 'param':
            params = params | {u}
          # 'aux': an argument that reaches no contraction (a model state passed in, as
          # haiku's BatchNorm statistics): a per-unit value, with no path to reset
        continue
      if axis is None:
        if o.kind == 'data' and all(d == 1 for d in shape):
          continue
        w.reasons.append('statistics of its pre-activation are mixed with other values')
        return 'stop'
      # data
      if shape[axis] == 1 and op.prim in ('mul', 'div', 'add', 'sub'):
        continue
      if op.prim == 'mul' and i in self.masks:
        continue  # a dropout mask: firing is read after it, on the ReLU input
      if op.prim in ('add', 'sub', 'add_any'):
        w.reasons.append('it feeds a sum with another branch (a residual add)')
      else:
        w.reasons.append(f"its pre-activation is combined ('{op.prim}') with another value")
      return 'stop'
    if op.prim in ('max', 'min') and kinds == {'main'} and len(tracked) == len(ts) and \
        all(t.axis == axis for t in tracked):
      return _T('main', axis, None, params)  # hand-written max pooling before the ReLU
    if 'nonlin' in kinds:
      main = next(t for t in tracked if t.kind == 'nonlin')
      return _T('nonlin', axis, None, params, _better_name(main.name, op.prim, op.scope_name))
    if 'main' in kinds:
      n_main = sum(1 for t in tracked if t.kind == 'main')
      if op.prim in ('add', 'sub', 'add_any') or (n_main == 1 and op.prim in ('mul', 'div')
                                                  and (op.prim == 'mul' or ts[0] is not None
                                                       and ts[0].kind == 'main')):
        return _T('main', axis, None, params)
      return _T('nonlin', axis, None, params, _better_name('', op.prim, op.scope_name))
    if 'pstat' in kinds:
      return _T('pstat', axis, None, params)
    return _T('stat', None, None, params)

  # ReLU-output side ------------------------------------------------------------------
  def post(self, start: int, src: int, axis: int, units: int) -> _Walk:
    w = _Walk()
    tr = {src: _T('main', axis, tuple(range(units)))}
    for op in self.scope.ops[start:]:
      ts = [tr.get(i) for i in op.ins]
      if not any(t is not None for t in ts):
        continue
      if op.prim in _PER_OPERAND:
        tr.update((i, t) for i, t in zip(op.outs, ts) if t is not None)
        continue
      res = self._post_op(op, ts, w)
      if res == 'stop':
        break
      if res is not None:
        for i in op.outs:
          tr[i] = res
    for i in self.outputs:
      if i in tr:
        w.reasons.append(f'its ReLU output {self.where_out}')
    return w

  def _post_op(self, op: Op, ts, w: _Walk):
    shapes = self.scope.shapes
    k, t = next((k, t) for k, t in enumerate(ts) if t is not None)
    n_tracked = sum(1 for x in ts if x is not None)
    in_shape = shapes[op.ins[k]]
    if op.prim in _LINEAR_UNARY or op.prim == 'relu':
      return t
    if op.prim in _LAYOUT:
      return self._post_layout(op, t, in_shape, shapes[op.outs[0]], w)
    if op.prim == 'slice':
      start, limit = op.params['start_indices'], op.params['limit_indices']
      stride = (op.params.get('strides') or [1] * len(in_shape))[t.axis]
      return dataclasses.replace(t, vec=t.vec[start[t.axis]:limit[t.axis]:stride])
    if op.prim == 'rev':
      return dataclasses.replace(t, vec=t.vec[::-1] if t.axis in op.params['dimensions']
                                 else t.vec)
    if op.prim == 'concatenate':
      d = op.params['dimension']
      if d != t.axis:
        if n_tracked == len(ts):
          return t
        w.reasons.append('its ReLU output is concatenated with other values')
        return 'stop'
      vec = []
      for i, x in zip(op.ins, ts):
        vec.extend(x.vec if x is not None else (-1,) * shapes[i][d])
      return dataclasses.replace(t, vec=tuple(vec))
    if op.prim == 'pad':
      lo, hi, interior = op.params['padding_config'][t.axis]
      if (lo, hi, interior) == (0, 0, 0):
        return t
      if interior:
        w.reasons.append('its ReLU output is padded with interior padding along its units')
        return 'stop'
      return dataclasses.replace(t, vec=(-1,) * lo + t.vec + (-1,) * hi)
    if op.prim in _REDUCE:
      axes = tuple(op.params['axes'])
      if t.axis in axes:
        w.reasons.append(f"its ReLU output is reduced over its units ('{op.prim}')")
        return 'stop'
      return dataclasses.replace(t, axis=t.axis - sum(1 for a in axes if a < t.axis))
    if op.prim in _POOL:
      p = op.params
      if p['window_dimensions'][t.axis] == 1 and p['window_strides'][t.axis] == 1 and \
          tuple(p['padding'][t.axis]) == (0, 0):
        return t
      w.reasons.append('its ReLU output is pooled across its units')
      return 'stop'
    if op.prim in ('mul', 'div'):
      if n_tracked > 1:
        w.reasons.append(f"its ReLU output is multiplied by itself ('{op.prim}')")
        return 'stop'
      if op.prim == 'div' and k != 0:
        w.reasons.append('its ReLU output is a divisor')
        return 'stop'
      return t
    if op.prim in ('add', 'sub', 'add_any', 'max', 'min'):
      others = [i for i, x in zip(op.ins, ts) if x is None]
      if others and all(self.is_zero(i) for i in others):
        return t
      if not others and op.prim != 'sub' and all(x.axis == t.axis and x.vec == t.vec
                                                 for x in ts):
        # hand-written pooling: the same unit at each position on both sides
        return t
      if op.prim in ('add', 'sub', 'add_any') and all(
          self.org.get(i, _DATA).kind != 'data' for i in others):
        w.reasons.append('its ReLU output is shifted by a parameter or model state (a '
                         'normalisation after the ReLU?), so a silent unit does not output 0')
      elif op.prim in ('add', 'sub', 'add_any'):
        w.reasons.append('its ReLU output feeds a sum with another branch (a residual add)')
      else:
        w.reasons.append(f"its ReLU output goes through '{op.prim}' with another value")
      return 'stop'
    if op.prim == 'select_n':
      if ts[0] is None and all((x.axis, x.vec) == (t.axis, t.vec) if x is not None
                               else self.is_zero(i) for i, x in zip(op.ins[1:], ts[1:])):
        return t
      w.reasons.append('its ReLU output is selected against other values')
      return 'stop'
    if op.prim == 'convert_element_type':
      return t
    if op.prim == 'dot_general':
      return self._post_dot(op, ts, k, t, w)
    if op.prim == 'conv_general_dilated':
      return self._post_conv(op, ts, k, t, w)
    w.reasons.append(f"its ReLU output reaches '{op.prim}'"
                     + (f" (in '{op.scope_name}')" if op.scope_name else ''))
    return 'stop'

  def _post_layout(self, op, t: _T, in_shape, out_shape, w):
    m = _layout_map(op, in_shape, out_shape)
    if m is not None and t.axis in m:
      return dataclasses.replace(t, axis=m.index(t.axis))
    if op.prim != 'reshape':
      w.reasons.append(f"its ReLU output's units are moved by '{op.prim}' in a way not followed")
      return 'stop'
    found = _reshape_units(in_shape, t.axis, t.vec, out_shape)
    if found is None:
      w.reasons.append('its ReLU output is reshaped so that its units span several axes')
      return 'stop'
    axis, vec = found
    return dataclasses.replace(t, axis=axis, vec=vec)

  def _kernel_rows(self, value: int, axis: int, vec: tuple):
    """(leaf axis, unit of each index along it) for a kernel value read along ``axis``
    with units ``vec``, back through the layout ops that made it from its leaf (an im2col
    conv's ``kernel.reshape(kh * kw * c_in, c_out)`` reads unit u at rows (i, j, u))."""
    while True:
      a = self.org[value].axes[axis]
      if a is not None:
        return a, vec
      op = self.producer.get(value)
      if op is None or op.prim not in _LAYOUT | _LINEAR_UNARY or \
          self.org.get(op.ins[0], _DATA).kind != 'param':
        return None, vec
      in_shape, out_shape = self.scope.shapes[op.ins[0]], self.scope.shapes[value]
      if op.prim == 'reshape':
        found = _reshape_units(out_shape, axis, vec, in_shape)
        if found is None:
          return None, vec
        axis, vec = found
      else:
        m = _layout_map(op, in_shape, out_shape)
        if m is None or m[axis] is None:
          return None, vec
        axis = m[axis]
      value = op.ins[0]

  def _consumer(self, op, other: int, kernel_axis_in_value: int, t: _T, w: _Walk):
    o = self.org.get(other, _DATA)
    if o.kind != 'param' or self.leaves[o.leaf].kind != 'param':
      w.reasons.append('its ReLU output reaches a contraction with data (attention or a custom '
                       'product), not a linear layer')
      return 'stop'
    a, vec = self._kernel_rows(other, kernel_axis_in_value, t.vec)
    t = dataclasses.replace(t, vec=vec)
    if a is not None and a in self.org[other].mixed:
      w.reasons.append(f"its consumer '{path_str(self.leaves[o.leaf].path)}' is normalised "
                       'across the units it reads (a weight-standardised kernel), so zeroing '
                       'its rows would not cut the unit off')
      return 'stop'
    shape = self.leaves[o.leaf].shape
    if a is None or shape[a] != len(t.vec):
      w.reasons.append(f"its consumer '{path_str(self.leaves[o.leaf].path)}' reads the units "
                       'through a layout the engine does not follow')
      return 'stop'
    w.consumers.append((o.leaf, a, t.vec, o.layer_axis, op))
    return None

  def _post_dot(self, op, ts, k, t, w):
    if all(x is not None for x in ts):
      w.reasons.append('its ReLU output is multiplied by itself (a contraction)')
      return 'stop'
    (lc, rc), _ = op.params['dimension_numbers']
    mine, theirs = (lc, rc) if k == 0 else (rc, lc)
    if t.axis not in mine:
      w.reasons.append('its ReLU output reaches a contraction that does not sum over its units')
      return 'stop'
    return self._consumer(op, op.ins[1 - k], theirs[list(mine).index(t.axis)], t, w)

  def _post_conv(self, op, ts, k, t, w):
    dn = op.params['dimension_numbers']
    if k != 0 or t.axis != dn.lhs_spec[1] or op.params['feature_group_count'] != 1 \
        or op.params['batch_group_count'] != 1:
      w.reasons.append('its ReLU output reaches a convolution that does not sum over its '
                       'units (grouped or depthwise, or units on a spatial axis)')
      return 'stop'
    return self._consumer(op, op.ins[1], dn.rhs_spec[1], t, w)


def _splits_axis(op: Op, in_shape, out_shape, axis: int) -> bool:
  """A reshape that cuts ``axis`` into several consecutive axes, leaving the others."""
  if op.prim != 'reshape':
    return False
  in_shape, out_shape = tuple(in_shape), tuple(out_shape)
  rest = len(in_shape) - axis - 1
  k = len(out_shape) - len(in_shape) + 1
  return k > 1 and in_shape[:axis] == out_shape[:axis] and \
      in_shape[axis + 1:] == out_shape[axis + k:] and \
      int(np.prod(out_shape[axis:axis + k])) == in_shape[axis] and rest >= 0


def _whole(op: Op, axis: int, in_shape) -> bool:
  """A slice that keeps all of ``axis``."""
  p = op.params
  return p['start_indices'][axis] == 0 and p['limit_indices'][axis] == in_shape[axis] and \
      (p.get('strides') or [1] * len(in_shape))[axis] == 1


def _reshape_units(in_shape, axis, vec, out_shape):
  """Follows units through a reshape that merges or splits axes: (new axis, new vec)."""
  in_shape, out_shape = list(in_shape), list(out_shape)
  # drop the leading and trailing axes the reshape leaves alone (the batch, say)
  lead = 0
  while lead < min(len(in_shape), len(out_shape)) - 1 and lead < axis and \
      in_shape[lead] == out_shape[lead]:
    lead += 1
  ins, outs, ax = in_shape[lead:], out_shape[lead:], axis - lead
  idx = np.broadcast_to(np.asarray(vec).reshape([-1 if j == ax else 1 for j in range(len(ins))]),
                        ins).reshape(outs)
  varying = [j for j in range(len(outs)) if outs[j] > 1
             and np.any(np.diff(idx, axis=j) != 0)]
  if len(varying) != 1:
    return None
  j = varying[0]
  vec = tuple(int(v) for v in np.moveaxis(idx, j, 0).reshape(outs[j], -1)[:, 0])
  return j + lead, vec


# --- groups from walks ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LeftOut:
  """A layer discovery looked at and did not make a neuron group.

  Attributes:
    layer: the layer's name (its kernel's path without the leaf name).
    reason: why it is not a group.
  """
  layer: str
  reason: str


class DiscoveredGroups(tuple):
  """The groups found by :func:`discover_groups` (a tuple) plus what was left out."""

  left_out: tuple[LeftOut, ...]

  def __new__(cls, groups, left_out=()):
    obj = super().__new__(cls, groups)
    obj.left_out = tuple(left_out)
    return obj

  def __repr__(self):
    return describe_groups(self)


def _layer_name(path: Path) -> str:
  return path_str(path[:-1]) if len(path) > 1 else path_str(path)


_ONES_NAMES = ('scale', 'gamma', 'weight', 'g', 'w')


def _holds_tracer(obj: Any, depth: int = 0, seen: Optional[set] = None) -> bool:
  """Whether an initializer holds a tracer: one built inside the module's ``__call__``
  from a traced value (dopamine's ``variance_scaling(scale=1 / jnp.sqrt(3.0), ...)``)
  closes over a tracer of discovery's trace, which would leak into the training step.
  Looks through closures, default arguments, ``functools.partial`` and containers."""
  if isinstance(obj, jax.core.Tracer):
    return True
  seen = set() if seen is None else seen
  if depth > 8 or id(obj) in seen or isinstance(obj, (nn.Module, type, str, bytes)):
    return False
  seen.add(id(obj))
  if isinstance(obj, functools.partial):
    kids = [obj.func, *obj.args, *obj.keywords.values()]
  elif isinstance(obj, types.FunctionType):
    kids = [c.cell_contents for c in obj.__closure__ or () if _cell_full(c)]
    kids += list(obj.__defaults__ or ()) + list((obj.__kwdefaults__ or {}).values())
  elif isinstance(obj, types.MethodType):
    kids = [obj.__func__]
  elif isinstance(obj, (list, tuple, set, frozenset)):
    kids = list(obj)
  elif isinstance(obj, Mapping):
    kids = list(obj.values())
  elif callable(obj) and hasattr(obj, '__dict__'):  # an initializer object
    kids = list(vars(obj).values())
  else:
    return False
  return any(_holds_tracer(k, depth + 1, seen) for k in kids)


def _cell_full(cell) -> bool:
  try:
    cell.cell_contents  # pylint: disable=pointless-statement
    return True
  except ValueError:
    return False


def _unboxed(init: Callable, leaf: Leaf) -> Callable:
  """``init``, or for one wrapped by ``nn.with_partitioning`` /
  ``nn.with_logical_partitioning`` (it returns a box), the same initializer returning the
  box's array."""
  try:
    out = jax.eval_shape(lambda k: init(k, tuple(leaf.shape), jax.numpy.float32),
                         jax.random.PRNGKey(0))
  except Exception:  # pylint: disable=broad-except; the reset unwraps a box anyway
    return init
  if not isinstance(out, nn.meta.AxisMetadata):
    return init

  @functools.wraps(init)
  def unboxed(*args, **kwargs):
    return leaf_value(init(*args, **kwargs))

  return unboxed


class _Modules(dict):
  """``{module path: module}`` of the discovery trace, plus, on demand, the same modules
  recorded again by a trace in which values that do not depend on the model's inputs are
  computed concretely (``jax.ensure_compile_time_eval``): an initializer built in
  ``__call__`` from such values holds arrays there instead of tracers."""

  def __init__(self, modules: Mapping[Path, Any], rerun: Callable[[], Mapping[Path, Any]]):
    super().__init__(modules)
    self._rerun = rerun
    self._concrete: Optional[Mapping[Path, Any]] = None

  def concrete(self) -> Mapping[Path, Any]:
    if self._concrete is None:
      try:
        self._concrete = dict(self._rerun())
      except Exception:  # pylint: disable=broad-except; recovery is best effort
        self._concrete = {}
    return self._concrete


def _own_initializer(leaf: Leaf, module: Any, attr: str, modules: Mapping[Path, Any]):
  """The module's own ``<name>_init`` if it can be called outside discovery's trace;
  one recovered from a concrete re-trace when it holds a tracer; else None, with a
  warning (the caller falls back to Flax's default)."""
  init = getattr(module, attr)
  if not _holds_tracer(init):
    return _unboxed(init, leaf)
  again = modules.concrete() if isinstance(modules, _Modules) else {}
  init = getattr(again.get(tuple(leaf.path[:-1])), attr, None)
  if callable(init) and not _holds_tracer(init):
    return _unboxed(init, leaf)
  key = path_str(leaf.path)
  warnings.warn(
      f"the initializer of '{key}' ({type(module).__name__}.{attr}) is built inside the "
      "model's __call__ from a value that depends on the traced inputs, so it cannot be "
      "called outside the model's trace; a reset re-draws this parameter from Flax's "
      f"default for it instead. To choose: discover_groups(..., initializers={{'{key}': "
      'init}).', stacklevel=5)
  return None


def _initializer(leaf: Leaf, role: str, modules: Mapping[Path, Any],
                 overrides: Mapping[str, Any], in_axis: Optional[int], out_axis: int,
                 layer_axis: Optional[int]):
  """The initializer that re-draws ``leaf``, in the layer's own convention."""
  key = path_str(leaf.path)
  if key in overrides:
    return overrides[key]
  module = modules.get(tuple(leaf.path[:-1]))
  name = leaf.path[-1]
  attr = f'{name}_init'
  if module is not None and callable(getattr(module, attr, None)):
    own = _own_initializer(leaf, module, attr, modules)
    if own is not None:
      return own
  if role == 'kernel':
    def per_layer(axis):
      return None if axis is None else axis - (1 if layer_axis is not None and axis > layer_axis
                                               else 0)
    out_a, in_a = per_layer(out_axis), per_layer(in_axis)
    return nn.initializers.lecun_normal(in_axis=-2 if in_a is None else in_a, out_axis=out_a)
  if name.lower() in _ONES_NAMES or 'scale' in name.lower() or name == 'var':
    return nn.initializers.ones
  return nn.initializers.zeros


def _kernel_unit_axis(op: Op, scope: Scope, org, leaves):
  """For a producer candidate: (kernel origin, output unit axis, kernel unit axis,
  kernel contracted axis) or a reason string."""
  if op.prim == 'dot_general':
    (lc, rc), (lb, rb) = op.params['dimension_numbers']
    oins = [org.get(i, _DATA) for i in op.ins]
    pk = [k for k, o in enumerate(oins) if o.kind == 'param' and leaves[o.leaf].kind == 'param']
    if not pk and sorted(o.kind for o in oins) == ['data', 'params'] and \
        _has_param(oins, leaves):
      return _several_params(oins)
    if len(pk) != 1 or oins[1 - pk[0]].kind == 'const':
      return None
    k = pk[0]
    o = oins[k]
    ndim = [len(scope.shapes[i]) for i in op.ins]
    contract, batch = (lc, lb) if k == 0 else (rc, rb)
    free = [d for d in range(ndim[k]) if d not in contract and d not in batch]
    if len(free) != 1 or batch:
      return ('it has several output axes (a DenseGeneral, Einsum or attention projection)'
              if len(free) > 1 else 'it is a contraction without an output feature axis')
    # output axes: batch, lhs free, rhs free
    lhs_free = ndim[0] - len(lc) - len(lb)
    out_axis = len(lb) + (0 if k == 0 else lhs_free)
    kaxis = o.axes[free[0]]
    in_axis = o.axes[contract[0]] if len(contract) == 1 else None
    if kaxis is None:
      return 'its kernel is reshaped in a way not followed'
    if kaxis in o.mixed:
      return 'its kernel is normalised across its output units'
    return o, out_axis, kaxis, in_axis
  dn = op.params['dimension_numbers']
  o = org.get(op.ins[1], _DATA)
  if o.kind == 'params' and org.get(op.ins[0], _DATA).kind == 'data' and \
      _has_param([o], leaves):
    return _several_params([o])
  if o.kind != 'param' or leaves[o.leaf].kind != 'param':
    return None
  if op.params['feature_group_count'] != 1 or op.params['batch_group_count'] != 1:
    return 'it is a grouped (or depthwise) convolution'
  kaxis, in_axis = o.axes[dn.rhs_spec[0]], o.axes[dn.rhs_spec[1]]
  if kaxis is None:
    return 'its kernel is reshaped in a way not followed'
  if kaxis in o.mixed:
    return 'its kernel is normalised across its output channels'
  return o, dn.out_spec[1], kaxis, in_axis


def _has_param(oins, leaves) -> bool:
  return any(leaves[p[0]].kind == 'param' for o in oins for p in _parts(o))


def _several_params(oins):
  """The reason for a contraction of data with a kernel computed from several parameters
  (a weight-normalised kernel's direction and gain, a low-rank product, ...)."""
  del oins
  return ('its kernel is computed from several parameters (a weight-normalised or '
          'factored kernel), so no one parameter slice is a unit\'s incoming weights; declare '
          'the group by hand if it is one')


def _where(op: Op) -> str:
  frames = getattr(op.eqn.source_info, 'traceback', None)
  try:
    from jax._src import source_info_util  # pylint: disable=import-outside-toplevel
    return source_info_util.summarize(op.eqn.source_info)
  except Exception:  # pylint: disable=broad-except
    return f'eqn {op.loc}' if frames is None else str(frames)


def _analyse_scope(scope: Scope, org, leaves: list[Leaf], modules, overrides, kernel_uses,
                   groups: list, left_out: list, refused: list):
  walker = _Walker(scope, org, leaves, _layer_name)
  _find_groups(scope, walker, org, leaves, modules, overrides, kernel_uses, groups, left_out,
               refused)
  for op in scope.ops:
    # jax.nn.relu / relu6 calls only: a bare max(x, 0) is also how libraries clip
    # statistics (a LayerNorm's variance), which is no layer
    if op.prim == 'relu' and op.eqn.primitive.name != 'max' and id(op) not in walker.seen_relus:
      left_out.append(LeftOut(f'ReLU at {_where(op)}',
                              'its input is not the output of one kernel layer (a residual sum, '
                              "the model's input, ...); declare a group by hand if it is one"))


def _find_groups(scope: Scope, walker, org, leaves: list[Leaf], modules, overrides,
                 kernel_uses, groups: list, left_out: list, refused: list):
  for n, op in enumerate(scope.ops):
    if op.prim not in _CONTRACTIONS:
      continue
    found = _kernel_unit_axis(op, scope, org, leaves)
    if found is None:
      continue
    if isinstance(found, str):
      kernel = next(org[i] for i in op.ins if org.get(i, _DATA).kind in ('param', 'params'))
      leaf = kernel.leaf if kernel.kind == 'param' else next(
          (p[0] for p in kernel.parts if leaves[p[0]].kind == 'param'), kernel.parts[0][0])
      left_out.append(LeftOut(_layer_name(leaves[leaf].path), found))
      continue
    o, out_axis, kaxis, in_axis = found
    kleaf = leaves[o.leaf]
    name = _layer_name(kleaf.path)
    units = kleaf.shape[kaxis]
    pre = walker.pre(n + 1, op.outs[0], out_axis, units, (o.leaf, kaxis, o.layer_axis))
    reasons = list(pre.reasons)
    if reasons and reasons[0] != walker.where_out and walker.is_output_layer(n + 1, op.outs[0]):
      reasons = ["it is an output layer: its output reaches the model's output with no ReLU "
                 'after it']
    if not reasons and not pre.relus:
      reasons.append('it reaches no ReLU')
    if not reasons and len(pre.relus) > 1:
      reasons.append(f'its pre-activation feeds {len(pre.relus)} ReLUs')
    if reasons:
      left_out.append(LeftOut(name, reasons[0]))
      continue
    relu_op, relu_t = pre.relus[0]
    if kernel_uses[kleaf.path] > 1:
      refused.append(name)
      continue
    start = scope.ops.index(relu_op) + 1
    post = walker.post(start, relu_op.outs[0], relu_t.axis, units)
    reasons = list(post.reasons)
    if not reasons and not post.consumers:
      reasons.append('its ReLU output reaches no consumer')
    for leaf, _, _, _, _ in post.consumers:
      if kernel_uses[leaves[leaf].path] > 1:
        reasons.append(f"its consumer '{_layer_name(leaves[leaf].path)}' is applied more than "
                       'once (shared weights)')
    layer_axes = {p[2] for p in relu_t.params} | {c[3] for c in post.consumers}
    if len(layer_axes) > 1 or (scope.layers > 1) != (None not in layer_axes):
      reasons.append('some of its parameters are shared across the layers of a scan')
    if reasons:
      left_out.append(LeftOut(name, reasons[0]))
      continue
    incoming, state = [], []
    for leaf_i, axis, layer_axis in sorted(relu_t.params | pre.state,
                                           key=lambda p: leaves[p[0]].path):
      leaf = leaves[leaf_i]
      is_kernel = leaf_i == o.leaf
      init = _initializer(leaf, 'kernel' if is_kernel else 'unit', modules, overrides,
                          in_axis if is_kernel else None, axis, layer_axis)
      sl = ParamSlice(leaf.path, axis, init, layer_axis=layer_axis)
      (incoming if leaf.kind == 'param' else state).append(sl)
    incoming.sort(key=lambda s: (s.path != kleaf.path, s.path))
    outgoing = []
    for leaf_i, axis, vec, layer_axis, _ in post.consumers:
      plain = tuple(vec) == tuple(range(units))
      outgoing.append(ParamSlice(leaves[leaf_i].path, axis, None,
                                 unit_of=None if plain else tuple(vec), layer_axis=layer_axis))
    relu_loc = relu_op.loc
    site = Site(relu_loc, int(relu_op.params.get('relu_operand', 0)), relu_t.axis,
                scope.layers)
    groups.append(NeuronGroup(name, units * scope.layers, tuple(incoming), tuple(outgoing),
                              layers=scope.layers, site=site, state=tuple(state)))


def locate_sites(closed, leaves: Sequence[Leaf], inputs,
                 groups: Sequence[NeuronGroup]) -> dict[str, Any]:
  """Where each discovered group's pre-activation is in this trace of the forward pass.

  Found by structure, as discovery found it: the contraction of data with the group's
  kernel, walked forward to its ReLU (through bias, norms, casts, dropout, ...), so that
  the incidental details of one trace (a weak-typed leaf's extra cast, dropout in train
  mode only, another batch size or dtype, vmap, jit) do not matter.

  Returns:
    ``{name: (location, operand, unit axis of the captured value)}``, or ``{name:
    reason}`` for a group whose layer is not found here.
  """
  top, org, leaves = _graph(closed, leaves, inputs)
  wanted: dict[Path, list[str]] = {}
  for g in groups:
    wanted.setdefault(tuple(g.incoming[0].path), []).append(g.name)
  found: dict[str, list] = {}

  def visit(scope: Scope, org, depth: int):
    walker = None
    for n, op in enumerate(scope.ops):
      if op.prim in _CONTRACTIONS:
        k = _kernel_unit_axis(op, scope, org, leaves)
        names = None if k is None or isinstance(k, str) else \
            wanted.get(tuple(leaves[k[0].leaf].path))
        if names:
          o, out_axis, kaxis, _ = k
          walker = walker or _Walker(scope, org, leaves, _layer_name)
          pre = walker.pre(n + 1, op.outs[0], out_axis, leaves[o.leaf].shape[kaxis],
                           (o.leaf, kaxis, o.layer_axis))
          for name in names:
            found.setdefault(name, []).append((pre, scope))
      if op.body is not None and depth < 1:
        visit(op.body, _origins(op.body, _body_origins(op, org)), depth + 1)

  visit(top, org, 0)
  sites: dict[str, Any] = {}
  for g in groups:
    hits = found.get(g.name, [])
    kernel = path_str(g.incoming[0].path)
    if not hits:
      sites[g.name] = f"no contraction of the data with its kernel '{kernel}'"
    elif len(hits) > 1:
      sites[g.name] = f"its kernel '{kernel}' is applied {len(hits)} times"
    elif len(hits[0][0].relus) != 1:
      pre = hits[0][0]
      why = pre.reasons[0] if pre.reasons else 'nothing after it is a ReLU'
      sites[g.name] = (f'its layer reaches {len(pre.relus)} ReLUs' if pre.relus else
                       f'its layer reaches no ReLU: {why}')
    else:
      (pre, scope), = hits
      op, t = pre.relus[0]
      sites[g.name] = (op.loc, int(op.params.get('relu_operand', 0)),
                       t.axis + (1 if scope.layers > 1 else 0))
  return sites


def _body_origins(op: Op, outer: dict[int, _Origin]) -> list[_Origin]:
  nc, ncar = op.params['num_consts'], op.params['num_carry']
  out = []
  for k, i in enumerate(op.ins):
    o = outer.get(i, _DATA)
    if k < nc:
      out.append(o if o.layer_axis is None else _DATA)
    elif k < nc + ncar:
      out.append(_CONST if o.kind == 'const' else _DATA)
    elif o.kind == 'param' and o.axes and o.axes[0] is not None and o.layer_axis is None:
      out.append(_Origin('param', o.leaf, o.axes[1:], o.axes[0]))
    else:
      out.append(_CONST if o.kind == 'const' else _DATA)
  return out


def _analyse(scope: Scope, org, leaves, modules, overrides, kernel_uses, groups, left_out,
             refused, depth=0):
  _analyse_scope(scope, org, leaves, modules, overrides, kernel_uses, groups, left_out, refused)
  for op in scope.ops:
    if op.body is None:
      continue
    if depth >= 1:
      left_out.append(LeftOut(f'scan at {op.loc}', 'nested scans are not supported; declare '
                              'these groups by hand'))
      continue
    body_org = _origins(op.body, _body_origins(op, org))
    _analyse(op.body, body_org, leaves, modules, overrides, kernel_uses, groups, left_out,
             refused, depth + 1)


def _kernel_uses(scope: Scope, org, leaves) -> dict[Path, int]:
  uses: dict[Path, int] = {}

  def visit(sc, og):
    for op in sc.ops:
      if op.prim in _CONTRACTIONS:
        for i in op.ins:
          o = og.get(i, _DATA)
          if o.kind == 'param':
            uses[leaves[o.leaf].path] = uses.get(leaves[o.leaf].path, 0) + 1
      if op.body is not None:
        visit(op.body, _origins(op.body, _body_origins(op, og)))

  visit(scope, org)
  return uses


def _direct_inputs(scope: Scope, data: Sequence[int]) -> set[int]:
  """The data inputs (indices into ``data``, the ids of the data inputs) that reach a
  contraction, a call or a scan through ops that mix in no other data and no contraction
  output: the model's input does, while a model state passed in (haiku's BatchNorm
  statistics) or an RNG key meets the data only where it is combined with a layer's
  output."""
  src: dict[int, Optional[frozenset]] = {i: frozenset([k]) for k, i in enumerate(data)}
  direct: set[int] = set()
  empty = frozenset()
  for op in scope.ops:
    ins = [src.get(i, empty) for i in op.ins]
    nested = op.body is not None or any(
        hasattr(v, 'eqns') or hasattr(v, 'jaxpr') for v in op.params.values())
    if op.prim in _CONTRACTIONS or nested:
      direct.update(k for x in ins if x for k in x)
      out = None
    else:
      out = None if any(x is None for x in ins) else frozenset().union(*ins)
      if out is not None and len(out) > 1:
        out = None  # two data inputs meet: neither is a state beside the data any more
    for i in op.outs:
      src[i] = out
  return direct


def _graph(closed, leaves: Sequence[Leaf], inputs) -> tuple[Scope, dict, list[Leaf]]:
  """The traced forward pass as scopes, the origin of every top-level value, and what
  each input is. Array arguments besides the parameters that reach no contraction (a
  model state passed in, such as haiku's BatchNorm statistics, or an RNG key) are
  'aux' inputs: per-unit values like a model state, whose arithmetic with the
  pre-activation is no sum with another branch."""
  top = _jaxpr.build_scopes(closed)
  data = [k for k, leaf in enumerate(leaves) if leaf.kind == 'data']
  direct = {data[j] for j in _direct_inputs(top, [top.inputs[k] for k in data])}
  out = []
  for k, (leaf, x) in enumerate(zip(leaves, inputs)):
    kind = leaf.kind
    if kind == 'data' and k not in direct:
      kind = 'aux'
    path = leaf.path if leaf.path is not None else (f'<argument {k}>',)
    out.append(Leaf(path, kind, tuple(np.shape(x))))
  org = _origins(top, [_Origin('param', k, tuple(range(len(leaf.shape))))
                       if leaf.kind != 'data' else _DATA for k, leaf in enumerate(out)])
  return top, org, out


def _checked_overrides(initializers: Optional[Mapping[str, Any]],
                       leaves: Sequence[Leaf]) -> dict[str, Any]:
  """``initializers`` as a dict, refused when a path names no parameter or a value
  is not an initializer."""
  overrides = dict(initializers or {})
  params = sorted(path_str(leaf.path) for leaf in leaves if leaf.kind == 'param')
  unknown = sorted(k for k in overrides if k not in params)
  if unknown:
    raise GroupError(
        f'initializers names {unknown}, which are not parameters of the model. Parameter '
        f"paths are joined by '/': {params}.")
  for k, init in overrides.items():
    if not callable(init):
      raise GroupError(f"initializers['{k}'] is {init!r}, not an initializer: give a "
                       'function (key, shape, dtype) -> array, e.g. '
                       'flax.nnx.initializers.orthogonal().')
  return overrides


def _concrete_modules(f, model, sample, kwargs, axis_env) -> Mapping[Path, Any]:
  """The linen modules of the forward pass, recorded by a trace in which what does not
  depend on the inputs is computed concretely (see :class:`_Modules`)."""
  tr = as_traceable(f, model, tuple(sample), kwargs, record_modules=True)
  with jax.ensure_compile_time_eval():
    jax.make_jaxpr(tr.fn, axis_env=list(axis_env))(*tr.inputs)
  return tr.modules


def discover_groups(f: Any, *args, initializers: Optional[Mapping[str, Any]] = None,
                    axis_env: Sequence[tuple[str, int]] = (), **kwargs) -> DiscoveredGroups:
  """Finds the neuron groups of a model from its traced forward pass.

  Call it as ``discover_groups(module, variables, *sample_args, **kwargs)`` for a linen
  Module (``variables`` may be the params alone), ``discover_groups(nnx_module,
  *sample_args, **kwargs)`` for an ``nnx.Module`` (it holds its parameters), or
  ``discover_groups(f, params, *sample_args, **kwargs)`` for a plain function
  ``f(params, *args, **kwargs)``. The sample arguments only give shapes and dtypes:
  the decision never depends on their values.

  A layer is a group when its kernel contraction reaches exactly one ReLU through
  bias, per-unit scale/shift and normalisation, and the ReLU's output reaches the rest
  of the network only through linear consumers (module docstring). The incoming slices
  are the kernel's unit axis and every per-unit parameter between kernel and ReLU
  (bias, LayerNorm/BatchNorm scale and offset); BatchNorm running statistics met there
  are kept in ``group.state``; the outgoing slices are every consumer's rows, with the
  exact row -> unit map. Initializers: a linen module's own (``kernel_init``,
  ``bias_init``, ``scale_init``); otherwise Flax's defaults (LeCun normal for kernels,
  ones for scales, zeros for the rest), or ``initializers={'path/to/leaf': init}``.
  NNX layers do not keep their initializers (``nnx.Linear(..., kernel_init=...)``
  forgets it once the kernel is drawn), so an NNX model with custom ones needs
  ``initializers``.

  Args:
    f: the model (see above).
    *args: the variables or params (linen, function), then sample inputs.
    initializers: optional ``{param path: initializer}`` overrides (paths joined by
      '/', as ``describe_groups`` prints them, e.g. ``'layers/0/kernel'``).
    axis_env: ``[(axis name, size), ...]`` for a model that uses collectives over a
      mapped axis, e.g. ``BatchNorm(axis_name='data')`` synchronised over
      ``shard_map``/``pmap``: it is traced as if inside that axis (``jax.make_jaxpr``'s
      ``axis_env``). Not needed when called inside the mapped function itself.
    **kwargs: keyword arguments of the forward call (e.g. ``train=True``,
      ``rngs={'dropout': key}``, ``mutable=['batch_stats']``).

  Returns:
    A :class:`DiscoveredGroups`: a tuple of :class:`NeuronGroup` with ``left_out``, the
    layers looked at and not made groups, each with its reason. Its repr lists both.

  Raises:
    GroupError: when a linen module's variables are missing (``discover_groups(model,
      x)``), when ``initializers`` names a path that is not a parameter or gives
      something that is not callable (before tracing); when tracing needs a flag given
      as an array (pass a Python bool) or updates a collection that is not ``mutable``
      (BatchNorm in training: pass ``mutable=['batch_stats']``); when a layer that reaches a
      ReLU has its kernel applied more than once (shared weights: its units have
      several pre-activations), or when no group is found.

  Warns:
    UserWarning: when ``initializers`` names a parameter that no group re-draws; when a
      linen module's initializer was built inside ``__call__`` from a value that depends
      on the traced inputs and cannot be recovered (Flax's default is used; the warning
      names the parameter and the ``initializers=`` override). One built there from
      constants (dopamine's ``variance_scaling(1 / jnp.sqrt(3.0), ...)``) is recovered
      from a second trace that computes constants concretely; one wrapped by
      ``nn.with_partitioning`` / ``nn.with_logical_partitioning`` is unwrapped.
  """
  kind = model_kind(f)
  if kind == 'nnx':
    model, sample = f, args
  else:
    if not args:
      raise GroupError('discover_groups needs the parameters and a sample input: '
                       'discover_groups(model, params, x).')
    _checks.model_variables(kind, args, 'discover_groups', GroupError)
    model, sample = args[0], args[1:]
  tr = as_traceable(f, model, tuple(sample), kwargs, record_modules=True)
  overrides = _checked_overrides(initializers, tr.leaves)
  with _checks.tracing_model('discover_groups', tuple(sample), kwargs, GroupError):
    closed = jax.make_jaxpr(tr.fn, axis_env=list(axis_env))(*tr.inputs)
  top, org, leaves = _graph(closed, tr.leaves, tr.inputs)
  groups: list[NeuronGroup] = []
  left_out: list[LeftOut] = []
  refused: list[str] = []
  modules = _Modules(tr.modules, lambda: _concrete_modules(f, model, sample, kwargs, axis_env))
  _analyse(top, org, leaves, modules, overrides, _kernel_uses(top, org, leaves),
           groups, left_out, refused)
  if refused:
    raise GroupError(
        f'layer(s) {sorted(set(refused))} reach a ReLU but their kernel is applied more than '
        'once (shared weights), so each unit has several pre-activations and its firing is '
        'not defined. Declare the groups you want by hand (snr_jax.NeuronGroup) or give the '
        'layers separate weights.')
  redrawn = {path_str(s.path) for g in groups for s in g.incoming}
  unused = sorted(set(overrides) - redrawn)
  if unused:
    warnings.warn(
        f'initializers for {unused} have no effect: no neuron group re-draws them (only a '
        "group's incoming parameters are re-drawn on a reset; outgoing ones are zeroed). "
        f'Re-drawn parameters: {sorted(redrawn)}.', stacklevel=2)
  names = [g.name for g in groups]
  for g in groups:
    if names.count(g.name) > 1:
      raise GroupError(f"two groups would be named '{g.name}'; declare them by hand.")
  if not groups:
    raise GroupError(
        f'discover_groups found no neuron group in {type(f).__name__}. Layers looked at: '
        + ('; '.join(f'{x.layer}: {x.reason}' for x in left_out) or 'none (no kernel '
           'contraction with a parameter)') + '. Declare the groups with '
        'snr_jax.dense_group(...) or snr_jax.NeuronGroup(...).')
  return DiscoveredGroups(groups, left_out)


def describe_groups(groups: Sequence[NeuronGroup]) -> str:
  """A readable account of neuron groups and, for discovered ones, what was left out.

  Each group: where its firing is read (the ReLU's input, with a leading layer axis for
  scanned groups), its incoming slices (re-drawn on a reset), every consumer's outgoing
  slice (zeroed), and model-state slices. Then every layer looked at and left out, with
  the reason.
  """
  lines = [f'{len(groups)} neuron group(s):']
  for g in groups:
    layers = f' x {g.layers} layers (units indexed (layer, unit))' if g.layers > 1 else ''
    lines.append(f'- {g.name}: {g.size // g.layers} units{layers}')
    if g.site is not None:
      lines.append(f'    firing read on: the ReLU input (axis {g.site.unit_axis} = units)')
    elif g.activation is not None:
      lines.append(f"    firing read on: intermediates '{path_str(g.activation)}'")
    if g.firing is not None:
      lines.append('    firing predicate: user-declared (outside the paper)')
    for s in g.incoming:
      lines.append(f'    incoming: {path_str(s.path)} [axis {s.axis}'
                   + (f', layer axis {s.layer_axis}' if s.layer_axis is not None else '') + ']')
    for s in g.outgoing:
      how = '' if s.unit_of is None else ' (rows mapped to units by the layout between)'
      lines.append(f'    outgoing: {path_str(s.path)} [axis {s.axis}'
                   + (f', layer axis {s.layer_axis}' if s.layer_axis is not None else '')
                   + f']{how}')
    for s in g.state:
      lines.append(f'    model state: {path_str(s.path)} [axis {s.axis}]')
  left_out = getattr(groups, 'left_out', ())
  if left_out:
    lines.append('left out:')
    for x in left_out:
      lines.append(f'- {x.layer}: {x.reason}')
  return '\n'.join(lines)
