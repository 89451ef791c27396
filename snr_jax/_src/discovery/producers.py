"""Producers: the contractions of data with a kernel that may start a neuron group.

Each function is the ``producer`` entry of a contraction in the discovery table, called
as ``producer(op, scope, org, leaves)``. It returns None (not a layer: no kernel
parameter), a reason string (a layer that cannot be a group), or ``(kernel origin,
output unit axis, kernel unit axis, kernel contracted axis)``.
"""

from __future__ import annotations

from snr_jax._src.discovery.values import DATA, parts
from snr_jax._src.groups import Path, path_str

_SEVERAL_PARAMS = (
    'its kernel is computed from several parameters (a weight-normalised or '
    "factored kernel), so no one parameter slice is a unit's incoming weights; "
    'declare the group by hand if it is one'
)


def layer_name(path: Path) -> str:
  """A layer's name: its kernel's path without the leaf name."""
  return path_str(path[:-1]) if len(path) > 1 else path_str(path)


def _has_param(oins, leaves) -> bool:
  return any(leaves[p[0]].kind == 'param' for o in oins for p in parts(o))


def dot(op, scope, org, leaves):
  """A ``dot_general`` of data with a kernel that has one free (output) axis."""
  (lc, rc), (lb, rb) = op.params['dimension_numbers']
  oins = [org.get(i, DATA) for i in op.ins]
  pk = [k for k, o in enumerate(oins) if o.kind == 'param' and leaves[o.leaf].kind == 'param']
  if not pk and sorted(o.kind for o in oins) == ['data', 'params'] and _has_param(oins, leaves):
    return _SEVERAL_PARAMS
  if len(pk) != 1 or oins[1 - pk[0]].kind == 'const':
    return None
  k = pk[0]
  o = oins[k]
  ndim = [len(scope.shapes[i]) for i in op.ins]
  contract, batch = (lc, lb) if k == 0 else (rc, rb)
  free = [d for d in range(ndim[k]) if d not in contract and d not in batch]
  if len(free) != 1 or batch:
    return (
        'it has several output axes (a DenseGeneral, Einsum or attention projection)'
        if len(free) > 1
        else 'it is a contraction without an output feature axis'
    )
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


def conv(op, scope, org, leaves):
  """A ``conv_general_dilated`` of data with a kernel (its output channels the units)."""
  del scope
  dn = op.params['dimension_numbers']
  o = org.get(op.ins[1], DATA)
  if o.kind == 'params' and org.get(op.ins[0], DATA).kind == 'data' and _has_param([o], leaves):
    return _SEVERAL_PARAMS
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
