"""The ReLU-output side of the walk: from a ReLU to every consumer of its units.

Each handler is the entry of one kind of primitive in the discovery table
(`snr_jax._src.discovery.rules`), called as ``handler(wk, op, ts, w)`` for an op with
at least one operand that carries the ReLU's units: ``ts`` holds each operand's
`Track` (its unit axis, and ``vec``: the unit at each index along it). A handler
returns the outputs' track, None (a consumer was recorded: the walk does not go past
it), or ``STOP`` after recording why the layer is no group.
"""

from __future__ import annotations

import dataclasses

from snr_jax._src.discovery import layout as _layout
from snr_jax._src.discovery.values import DATA, STOP, Track


def _tracked(ts) -> tuple[int, Track]:
  return next((k, t) for k, t in enumerate(ts) if t is not None)


def same(wk, op, ts, w):
  """Unit-preserving ops and further ReLUs: the units go on."""
  del wk, op, w
  return _tracked(ts)[1]


def other(wk, op, ts, w):
  del wk, ts
  w.reasons.append(
      f"its ReLU output reaches '{op.prim}'" + (f" (in '{op.scope_name}')" if op.scope_name else '')
  )
  return STOP


def layout(wk, op, ts, w):
  """Transpose, broadcast, squeeze, expand_dims: the unit axis moves."""
  k, t = _tracked(ts)
  m = wk.axis_map(op, wk.scope.shapes[op.ins[k]], wk.scope.shapes[op.outs[0]])
  if m is not None and t.axis in m:
    return dataclasses.replace(t, axis=m.index(t.axis))
  w.reasons.append(f"its ReLU output's units are moved by '{op.prim}' in a way not followed")
  return STOP


def reshape(wk, op, ts, w):
  """A reshape: the unit axis moves, or units are merged with other axes (a flatten)."""
  k, t = _tracked(ts)
  in_shape, out_shape = wk.scope.shapes[op.ins[k]], wk.scope.shapes[op.outs[0]]
  m = wk.axis_map(op, in_shape, out_shape)
  if m is not None and t.axis in m:
    return dataclasses.replace(t, axis=m.index(t.axis))
  found = _layout.reshape_units(in_shape, t.axis, t.vec, out_shape)
  if found is None:
    w.reasons.append('its ReLU output is reshaped so that its units span several axes')
    return STOP
  axis, vec = found
  return dataclasses.replace(t, axis=axis, vec=vec)


def slice_(wk, op, ts, w):
  del w
  k, t = _tracked(ts)
  in_shape = wk.scope.shapes[op.ins[k]]
  start, limit = op.params['start_indices'], op.params['limit_indices']
  stride = (op.params.get('strides') or [1] * len(in_shape))[t.axis]
  return dataclasses.replace(t, vec=t.vec[start[t.axis] : limit[t.axis] : stride])


def rev(wk, op, ts, w):
  del wk, w
  t = _tracked(ts)[1]
  return dataclasses.replace(t, vec=t.vec[::-1] if t.axis in op.params['dimensions'] else t.vec)


def concatenate(wk, op, ts, w):
  t = _tracked(ts)[1]
  d = op.params['dimension']
  if d != t.axis:
    if all(x is not None for x in ts):
      return t
    w.reasons.append('its ReLU output is concatenated with other values')
    return STOP
  vec = []
  for i, x in zip(op.ins, ts):
    vec.extend(x.vec if x is not None else (-1,) * wk.scope.shapes[i][d])
  return dataclasses.replace(t, vec=tuple(vec))


def pad(wk, op, ts, w):
  del wk
  t = _tracked(ts)[1]
  lo, hi, interior = op.params['padding_config'][t.axis]
  if (lo, hi, interior) == (0, 0, 0):
    return t
  if interior:
    w.reasons.append('its ReLU output is padded with interior padding along its units')
    return STOP
  return dataclasses.replace(t, vec=(-1,) * lo + t.vec + (-1,) * hi)


def reduce(wk, op, ts, w):
  """A reduction over other axes (global pooling) keeps the units."""
  del wk
  t = _tracked(ts)[1]
  axes = tuple(op.params['axes'])
  if t.axis in axes:
    w.reasons.append(f"its ReLU output is reduced over its units ('{op.prim}')")
    return STOP
  return dataclasses.replace(t, axis=t.axis - sum(1 for a in axes if a < t.axis))


def pool(wk, op, ts, w):
  """Window pooling of other axes keeps the units."""
  del wk
  t = _tracked(ts)[1]
  p = op.params
  if (
      p['window_dimensions'][t.axis] == 1
      and p['window_strides'][t.axis] == 1
      and tuple(p['padding'][t.axis]) == (0, 0)
  ):
    return t
  w.reasons.append('its ReLU output is pooled across its units')
  return STOP


def product(wk, op, ts, w):
  """A product or quotient with other values (a dropout mask, a scale) keeps the units
  apart, and a silent unit silent."""
  del wk
  k, t = _tracked(ts)
  if sum(1 for x in ts if x is not None) > 1:
    w.reasons.append(f"its ReLU output is multiplied by itself ('{op.prim}')")
    return STOP
  if op.prim == 'div' and k != 0:
    w.reasons.append('its ReLU output is a divisor')
    return STOP
  return t


def combine(wk, op, ts, w):
  """A sum, difference, max or min: with zeros, or of the same units at the same
  positions (hand-written pooling); with anything else the layer is no group."""
  t = _tracked(ts)[1]
  others = [i for i, x in zip(op.ins, ts) if x is None]
  if others and all(wk.is_zero(i) for i in others):
    return t
  if not others and op.prim != 'sub' and all(x.axis == t.axis and x.vec == t.vec for x in ts):
    # hand-written pooling: the same unit at each position on both sides
    return t
  if op.prim in ('add', 'sub', 'add_any') and all(
      wk.org.get(i, DATA).kind != 'data' for i in others
  ):
    w.reasons.append(
        'its ReLU output is shifted by a parameter or model state (a '
        'normalisation after the ReLU?), so a silent unit does not output 0'
    )
  elif op.prim in ('add', 'sub', 'add_any'):
    w.reasons.append('its ReLU output feeds a sum with another branch (a residual add)')
  else:
    w.reasons.append(f"its ReLU output goes through '{op.prim}' with another value")
  return STOP


def select(wk, op, ts, w):
  """``where(mask, x, 0)`` (dropout after the ReLU) keeps the units."""
  t = _tracked(ts)[1]
  if ts[0] is None and all(
      (x.axis, x.vec) == (t.axis, t.vec) if x is not None else wk.is_zero(i)
      for i, x in zip(op.ins[1:], ts[1:])
  ):
    return t
  w.reasons.append('its ReLU output is selected against other values')
  return STOP


def dot(wk, op, ts, w):
  """A ``dot_general`` of the units with a kernel: a consumer, if it sums over them."""
  if all(x is not None for x in ts):
    w.reasons.append('its ReLU output is multiplied by itself (a contraction)')
    return STOP
  k, t = _tracked(ts)
  (lc, rc), _ = op.params['dimension_numbers']
  mine, theirs = (lc, rc) if k == 0 else (rc, lc)
  if t.axis not in mine:
    w.reasons.append('its ReLU output reaches a contraction that does not sum over its units')
    return STOP
  return wk.consumer(op, op.ins[1 - k], theirs[list(mine).index(t.axis)], t, w)


def conv(wk, op, ts, w):
  """A convolution of the units with a kernel: a consumer, if it sums over them."""
  k, t = _tracked(ts)
  dn = op.params['dimension_numbers']
  if (
      k != 0
      or t.axis != dn.lhs_spec[1]
      or op.params['feature_group_count'] != 1
      or op.params['batch_group_count'] != 1
  ):
    w.reasons.append(
        'its ReLU output reaches a convolution that does not sum over its '
        'units (grouped or depthwise, or units on a spatial axis)'
    )
    return STOP
  return wk.consumer(op, op.ins[1], dn.rhs_spec[1], t, w)
