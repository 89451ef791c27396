"""What discovery knows about a value: where it comes from, and how it depends on a layer.

An `Origin` says what a value is made of, whatever layer is being walked
(a constant, one parameter leaf seen through layout ops, several leaves, or data). A
`Track` says how a value depends on the layer output being walked from, and a
`Walk` collects what one walk found.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

# handler result: the walk stops here (a reason was recorded)
STOP = 'stop'


@dataclasses.dataclass(frozen=True)
class Origin:
  """Where a value comes from, ignoring the source being walked.

  kind: 'const' (literals, captured constants), 'param' (one params/state leaf through
  layout and elementwise ops with constants), 'params' (several leaves) or 'data'
  (anything else). For 'param', ``axes[j]`` is the leaf axis that axis ``j`` of the value
  runs along (None where it is broadcast), and ``layer_axis`` the leaf's stacked-layer
  axis inside a scan body.
  """

  kind: str
  leaf: int = -1
  axes: tuple = ()
  layer_axis: Optional[int] = None
  parts: tuple = ()  # for kind 'params': ((leaf, axes, layer_axis, mixed), ...)
  # leaf axes along which entries are combined (reduced over, as a weight standardisation's
  # mean over a kernel's input axes): entry i along one of them depends on all the others
  mixed: frozenset = frozenset()


CONST = Origin('const')
DATA = Origin('data')


def parts(o: Origin) -> tuple:
  """The leaves an origin is made of, as ``(leaf, axes, layer_axis, mixed)``."""
  if o.kind == 'param':
    return ((o.leaf, o.axes, o.layer_axis, o.mixed),)
  return o.parts if o.kind == 'params' else ()


def _merge_same_leaf(ps):
  """Parts of one leaf that line up (a kernel and its own statistics, as in ``w -
  mean(w)``): one part whose reduced axes are marked mixed, or None."""
  leaf, _, la, _ = ps[0]
  if any(p[2] != la for p in ps):
    return None
  n = len(ps[0][1])
  axes, mixed = [None] * n, frozenset().union(*(p[3] for p in ps))
  for j in range(n):
    vals = {p[1][j] for p in ps} - {None}
    if len(vals) > 1:
      return None
    axes[j] = vals.pop() if vals else None
  real = [a for a in axes if a is not None]
  if len(real) != len(set(real)):
    return None  # an outer product of the leaf with itself
  for p in ps:  # a part broadcast along a leaf axis it does not reduce: not one leaf's map
    if any(b is None and a is not None and a not in p[3] for a, b in zip(axes, p[1])):
      return None
  return (leaf, tuple(axes), la, mixed)


def from_parts(ps) -> Origin:
  """The origin of a value made of the leaves ``ps`` (see `parts`)."""
  ps = tuple(dict.fromkeys(ps))
  if len({p[0] for p in ps}) == 1 and len(ps) > 1 and len({len(p[1]) for p in ps}) == 1:
    merged = _merge_same_leaf(ps)
    if merged is not None:
      ps = (merged,)
  if len(ps) == 1:
    return Origin('param', *ps[0][:3], mixed=ps[0][3])
  return Origin('params', parts=ps)


@dataclasses.dataclass(frozen=True)
class Track:
  """How a value depends on the walked source.

  kind: 'main' (unit-separable function of the source, units along ``axis``),
  'nonlin' (the same after a non-ReLU nonlinearity), 'pstat' (per-unit statistics:
  reduced over other axes), 'stat' (reduced over the units: a LayerNorm's mean),
  'grouped' (the units cut into groups, for a GroupNorm's statistics).
  ``vec[r]`` is the unit at index r along ``axis`` (-1: none), ``params`` the per-unit
  leaves met: (leaf, leaf axis, layer axis).
  """

  kind: str
  axis: Optional[int]
  vec: Optional[tuple] = None
  params: frozenset = frozenset()
  name: str = ''


@dataclasses.dataclass
class Walk:
  """What one walk from a layer found."""

  relus: list = dataclasses.field(default_factory=list)  # (op, track) at ReLU sites
  consumers: list = dataclasses.field(default_factory=list)  # (leaf, axis, vec, layer_axis, op)
  reasons: list = dataclasses.field(default_factory=list)
  state: set = dataclasses.field(default_factory=set)  # per-unit model-state leaves


def first(ts) -> Track:
  """The first tracked operand."""
  return next(t for t in ts if t is not None)


def kinds(ts) -> set:
  """The kinds of the tracked operands."""
  return {t.kind for t in ts if t is not None}
