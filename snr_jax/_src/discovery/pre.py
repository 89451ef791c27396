"""The pre-activation side of the walk: from a kernel's output to its ReLU.

Each handler is the entry of one kind of primitive in the discovery table
(`snr_jax._src.discovery.rules`), called as ``handler(wk, op, ts, units, w)`` for an
op with at least one operand that depends on the layer: ``wk`` is the
`Walker`, ``ts`` the `Track` of each operand
(None where it does not depend on the layer), ``units`` the layer's width and ``w`` the
`Walk` being filled. A handler returns the op's outputs' track, None (nothing to
track: a ReLU was reached), or ``STOP`` after recording why the layer is no group.

Grouped handlers (``grouped(wk, op, ts, w)``) take over when an operand is the
pre-activation cut into groups of units (a GroupNorm's reshape).
"""

from __future__ import annotations

import dataclasses

from snr_jax._src.discovery import layout as _layout
from snr_jax._src.discovery.report import describe_nonlin
from snr_jax._src.discovery.values import DATA, STOP, Origin, Track, first, kinds, parts
from snr_jax._src.groups import path_str

_STATS = frozenset(('stat', 'pstat'))


def relu(wk, op, ts, units, w):
  """A ReLU: the layer's site if it reads the pre-activation itself."""
  del units
  wk.seen_relus.add(id(op))
  t = first(ts)
  if t.kind == 'main':
    w.relus.append((op, t))
    return None
  if t.kind == 'nonlin':
    w.reasons.append(describe_nonlin(t.name))
    return STOP
  return t


def same(wk, op, ts, units, w):
  """Unit-preserving ops (casts, copies, sharding constraints): the value goes on."""
  del wk, op, units, w
  return first(ts)


def other(wk, op, ts, units, w):
  """Any op the table does not describe: the layer is no group."""
  del units
  nonlin = next((t for t in ts if t is not None and t.kind == 'nonlin'), None)
  if nonlin is not None:
    w.reasons.append(describe_nonlin(nonlin.name))
    return STOP
  return _reaches(op, w)


def custom_call(wk, op, ts, units, w):
  """A custom-derivative call that is not a registered activation: a nonlinearity."""
  if not any(t is not None and t.kind == 'nonlin' for t in ts) and 'main' in kinds(ts):
    w.reasons.append(describe_nonlin(op.scope_name or 'a custom-derivative function'))
    return STOP
  return other(wk, op, ts, units, w)


def _reaches(op, w):
  w.reasons.append(
      f"its pre-activation reaches '{op.prim}'"
      + (f" (in '{op.scope_name}')" if op.scope_name else '')
  )
  return STOP


def statistics_or_other(wk, op, ts, units, w):
  """Collectives, stack, concatenate: statistics of the pre-activation moved together."""
  if kinds(ts) <= _STATS:
    return _statistics(wk, op, ts, w)
  return other(wk, op, ts, units, w)


def slice_(wk, op, ts, units, w):
  """A slice: statistics cut apart, or a window of other axes (hand-written pooling)."""
  ks = kinds(ts)
  if ks <= _STATS:
    return _statistics(wk, op, ts, w)
  t = first(ts)
  if ks <= {'main', 'nonlin'} and _layout.whole(op.params, t.axis, wk.scope.shapes[op.ins[0]]):
    return t
  return other(wk, op, ts, units, w)


def _statistics(wk, op, ts, w):
  """Statistics of the pre-activation moved around together, e.g. a synchronised
  BatchNorm's mean and mean square: stacked, summed across devices, sliced apart."""
  t = first(ts)
  if t.kind == 'stat' or wk.rule(op).kind == 'collective':
    return t
  if any(x is not None and x.axis != t.axis for x in ts):
    w.reasons.append(
        f'statistics of its pre-activation are combined across its units ' f"('{op.prim}')"
    )
    return STOP
  if op.prim == 'stack':
    return dataclasses.replace(t, axis=t.axis + (op.params['axis'] <= t.axis))
  if op.prim == 'concatenate' and op.params['dimension'] != t.axis:
    return t
  if op.prim == 'slice' and _layout.whole(op.params, t.axis, wk.scope.shapes[op.ins[0]]):
    return t
  how = 'cut' if op.prim == 'slice' else 'combined'
  w.reasons.append(f'statistics of its pre-activation are {how} across its units ' f"('{op.prim}')")
  return STOP


def select(wk, op, ts, units, w):
  """``where(mask, x, 0)`` chosen by something other than x: dropout before the ReLU;
  any other selection is a piecewise nonlinearity."""
  t = first(ts)
  if (
      ts[0] is None
      and kinds(ts) == {'main'}
      and all(
          (x is not None and x.axis == t.axis) or wk.is_zero(i) for i, x in zip(op.ins[1:], ts[1:])
      )
  ):
    return Track('main', t.axis, None, frozenset().union(*(x.params for x in ts if x is not None)))
  return nonlinear(wk, op, ts, units, w)


def nonlinear(wk, op, ts, units, w):
  """A nonlinearity (or a comparison): statistics stay statistics, the rest is 'nonlin'."""
  del units, w
  if kinds(ts) <= _STATS:
    return first(ts)
  main = next(t for t in ts if t is not None and t.kind in ('main', 'nonlin'))
  params = frozenset().union(*(t.params for t in ts if t is not None))
  return Track('nonlin', main.axis, None, params, wk.nonlin_name(main.name, op))


def layout(wk, op, ts, units, w):
  """Transpose, broadcast, squeeze, expand_dims: the unit axis moves."""
  del units
  t = first(ts)
  if t.kind == 'stat':
    return t
  return _moved(t, wk.axis_map(op, wk.scope.shapes[op.ins[0]], wk.scope.shapes[op.outs[0]]), op, w)


def reshape(wk, op, ts, units, w):
  """A reshape: the unit axis moves, or is cut into groups for a GroupNorm's statistics
  (only statistics of this value may go on: the grouped handlers)."""
  del units
  t = first(ts)
  if t.kind == 'stat':
    return t
  in_shape, out_shape = wk.scope.shapes[op.ins[0]], wk.scope.shapes[op.outs[0]]
  m = wk.axis_map(op, in_shape, out_shape)
  if (
      (m is None or t.axis not in m)
      and t.kind == 'main'
      and _layout.splits_axis(in_shape, out_shape, t.axis)
  ):
    return Track('grouped', None, params=t.params)
  return _moved(t, m, op, w)


def _moved(t: Track, m, op, w):
  if m is None or t.axis not in m:
    w.reasons.append(f"its pre-activation is reshaped across its units ('{op.prim}')")
    return STOP
  return dataclasses.replace(t, axis=m.index(t.axis))


def reduce(wk, op, ts, units, w):
  """A reduction: over the units, statistics ('stat', a LayerNorm's mean); over other
  axes, per-unit statistics ('pstat', a BatchNorm's)."""
  del wk, units, w
  t = first(ts)
  axes = tuple(op.params['axes'])
  if t.kind == 'stat':
    return t
  if t.axis in axes:
    return Track('stat', None, params=t.params)
  new_axis = t.axis - sum(1 for a in axes if a < t.axis)
  return Track('pstat', new_axis, params=t.params, name=t.name)


def pool(wk, op, ts, units, w):
  """Window pooling of other axes than the units (before the ReLU)."""
  del wk, units
  t = first(ts)
  if (
      t.kind in ('main', 'nonlin')
      and op.params['window_dimensions'][t.axis] == 1
      and op.params['window_strides'][t.axis] == 1
  ):
    return t
  return _reaches(op, w)


def contraction(wk, op, ts, units, w):
  """A contraction before any ReLU: the layer is no group."""
  if any(t is not None and t.kind == 'nonlin' for t in ts):
    return other(wk, op, ts, units, w)
  if kinds(ts) <= _STATS:
    w.reasons.append('statistics of its pre-activation flow into a contraction')
  else:
    w.reasons.append(f'it reaches {wk.describe_contraction(op, ts)} without a ReLU in between')
  return STOP


def scan(wk, op, ts, units, w):
  if any(t is not None and t.kind == 'nonlin' for t in ts):
    return other(wk, op, ts, units, w)
  w.reasons.append('its pre-activation enters a scan')
  return STOP


def binary(wk, op, ts, units, w):
  """Elementwise arithmetic: a bias, a per-unit scale and shift (a norm's scale and
  offset, a BatchNorm's running statistics), a dropout mask, or a hand-written max
  pooling keep the layer; a sum with another branch or data does not."""
  shapes = wk.scope.shapes
  tracked = [t for t in ts if t is not None]
  axis = next((t.axis for t in tracked if t.kind != 'stat'), None)
  params = frozenset().union(*(t.params for t in tracked))
  ks = {t.kind for t in tracked}
  for i, t in zip(op.ins, ts):
    if t is not None:
      continue
    o = wk.org.get(i, DATA)
    shape = shapes[i]
    if o.kind == 'const' or len(shape) == 0:
      continue
    if o.kind in ('param', 'params'):
      if axis is None:  # only statistics so far: a per-unit factor (LayerNorm's scale)
        cand = {
            j
            for leaf, axes, _, _ in parts(o)
            for j, a in enumerate(axes)
            if a is not None and wk.leaves[leaf].shape[a] == units and shape[j] == units
        }
        if len(cand) != 1:
          w.reasons.append('statistics of its pre-activation are mixed with other values')
          return STOP
        axis = cand.pop()
        ks = ks | {'pstat'}
      for leaf, axes, la, mx in parts(o):
        u = wk.param_unit(Origin('param', leaf, axes, la, mixed=mx), shape, axis, units)
        if u == 'bcast':
          continue
        if u is None or op.prim not in ('add', 'sub', 'mul', 'div', 'add_any'):
          w.reasons.append(
              f"its pre-activation is combined ('{op.prim}') with parameter "
              f"'{path_str(wk.leaves[leaf].path)}' across its units"
          )
          return STOP
        if wk.leaves[leaf].kind == 'state':
          w.state.add(u)
        elif wk.leaves[leaf].kind == 'param':
          params = params | {u}
        # 'aux': an argument that reaches no contraction (a model state passed in, as
        # haiku's BatchNorm statistics): a per-unit value, with no path to reset
      continue
    if axis is None:
      if o.kind == 'data' and all(d == 1 for d in shape):
        continue
      w.reasons.append('statistics of its pre-activation are mixed with other values')
      return STOP
    # data
    if shape[axis] == 1 and op.prim in ('mul', 'div', 'add', 'sub'):
      continue
    if op.prim == 'mul' and i in wk.masks:
      continue  # a dropout mask: firing is read after it, on the ReLU input
    if op.prim in ('add', 'sub', 'add_any'):
      w.reasons.append('it feeds a sum with another branch (a residual add)')
    else:
      w.reasons.append(f"its pre-activation is combined ('{op.prim}') with another value")
    return STOP
  return _combined(wk, op, ts, tracked, ks, axis, params)


def _combined(wk, op, ts, tracked, ks, axis, params):
  """The track of an elementwise combination that keeps the layer."""
  if (
      op.prim in ('max', 'min')
      and ks == {'main'}
      and len(tracked) == len(ts)
      and all(t.axis == axis for t in tracked)
  ):
    return Track('main', axis, None, params)  # hand-written max pooling before the ReLU
  if 'nonlin' in ks:
    main = next(t for t in tracked if t.kind == 'nonlin')
    return Track('nonlin', axis, None, params, wk.nonlin_name(main.name, op))
  if 'main' in ks:
    n_main = sum(1 for t in tracked if t.kind == 'main')
    if op.prim in ('add', 'sub', 'add_any') or (
        n_main == 1
        and op.prim in ('mul', 'div')
        and (op.prim == 'mul' or ts[0] is not None and ts[0].kind == 'main')
    ):
      return Track('main', axis, None, params)
    return Track('nonlin', axis, None, params, wk.nonlin_name('', op))
  if 'pstat' in ks:
    return Track('pstat', axis, None, params)
  return Track('stat', None, None, params)


# -- the pre-activation cut into groups of units (a GroupNorm) -------------------------


def _refuse_grouped(op, w):
  del op
  w.reasons.append("its pre-activation is reshaped across its units ('reshape')")
  return STOP


def grouped_refused(wk, op, ts, w):
  """Anything but statistics and elementwise arithmetic of a grouped value."""
  del wk, ts
  return _refuse_grouped(op, w)


def grouped_reduce(wk, op, ts, w):
  """A reduction of the grouped pre-activation: statistics that couple the units of a
  group (treated like a LayerNorm's, design §1)."""
  del wk
  if len(op.ins) == 1:
    return Track('stat', None, params=_grouped(ts).params)
  return _refuse_grouped(op, w)


def grouped_elementwise(wk, op, ts, w):
  """Elementwise arithmetic of the grouped value with constants (squares, scaling)."""
  ok = all(
      t is None
      and (wk.org.get(i, DATA).kind == 'const' or len(wk.scope.shapes[i]) == 0)
      or (t is not None and t.kind == 'grouped')
      for i, t in zip(op.ins, ts)
  )
  return _grouped(ts) if ok else _refuse_grouped(op, w)


def _grouped(ts) -> Track:
  return next(t for t in ts if t is not None and t.kind == 'grouped')
