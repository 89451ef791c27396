"""How layout ops move axes and indices: the axis maps of the discovery table.

Each ``*_axes(params, in_shape, out_shape)`` gives, for one layout primitive, the input
axis each output axis runs along (None: a new or merged axis). `reshape_units`
follows a unit index vector through a reshape that merges or splits axes.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

AxisMap = Optional[list[Optional[int]]]


def identity_axes(params, in_shape, out_shape) -> AxisMap:
  """Elementwise ops (casts, copies, sharding constraints): every axis stays."""
  del params, out_shape
  return list(range(len(in_shape)))


def transpose_axes(params, in_shape, out_shape) -> AxisMap:
  del in_shape, out_shape
  return list(params['permutation'])


def broadcast_axes(params, in_shape, out_shape) -> AxisMap:
  out = [None] * len(out_shape)
  for k, j in enumerate(params['broadcast_dimensions']):
    if in_shape[k] == out_shape[j]:
      out[j] = k
  return out


def squeeze_axes(params, in_shape, out_shape) -> AxisMap:
  del out_shape
  gone = {d % len(in_shape) for d in params['dimensions']}
  return [i for i in range(len(in_shape)) if i not in gone]


def expand_axes(params, in_shape, out_shape) -> AxisMap:
  new = {d % len(out_shape) for d in params['dimensions']}
  it = iter(range(len(in_shape)))
  return [None if j in new else next(it) for j in range(len(out_shape))]


def reshape_axes(params, in_shape, out_shape) -> AxisMap:
  del params
  same = _same_axes(in_shape, out_shape)
  return [same.get(j) for j in range(len(out_shape))]


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


def splits_axis(in_shape, out_shape, axis: int) -> bool:
  """Whether a reshape cuts ``axis`` into several consecutive axes, leaving the others."""
  in_shape, out_shape = tuple(in_shape), tuple(out_shape)
  rest = len(in_shape) - axis - 1
  k = len(out_shape) - len(in_shape) + 1
  return (
      k > 1
      and in_shape[:axis] == out_shape[:axis]
      and in_shape[axis + 1 :] == out_shape[axis + k :]
      and int(np.prod(out_shape[axis : axis + k])) == in_shape[axis]
      and rest >= 0
  )


def whole(params, axis: int, in_shape) -> bool:
  """Whether a slice keeps all of ``axis``."""
  return (
      params['start_indices'][axis] == 0
      and params['limit_indices'][axis] == in_shape[axis]
      and (params.get('strides') or [1] * len(in_shape))[axis] == 1
  )


def reshape_units(in_shape, axis, vec, out_shape):
  """Follows units through a reshape that merges or splits axes: (new axis, new vec)."""
  in_shape, out_shape = list(in_shape), list(out_shape)
  # drop the leading and trailing axes the reshape leaves alone (the batch, say)
  lead = 0
  while (
      lead < min(len(in_shape), len(out_shape)) - 1
      and lead < axis
      and in_shape[lead] == out_shape[lead]
  ):
    lead += 1
  ins, outs, ax = in_shape[lead:], out_shape[lead:], axis - lead
  idx = np.broadcast_to(
      np.asarray(vec).reshape([-1 if j == ax else 1 for j in range(len(ins))]), ins
  ).reshape(outs)
  varying = [j for j in range(len(outs)) if outs[j] > 1 and np.any(np.diff(idx, axis=j) != 0)]
  if len(varying) != 1:
    return None
  j = varying[0]
  vec = tuple(int(v) for v in np.moveaxis(idx, j, 0).reshape(outs[j], -1)[:, 0])
  return j + lead, vec
