"""What every value of a scope is made of (`Origin`), and which values are
dropout masks, whatever layer is walked. Both are read from the discovery table."""

from __future__ import annotations

import numpy as np

from snr_jax._src.discovery import rules as _rules
from snr_jax._src.discovery.values import CONST, DATA, Origin, from_parts, parts
from snr_jax._src.jaxpr import Op, Scope

_PARAM_KINDS = frozenset(('const', 'param', 'params'))


def origins(scope: Scope, inputs: list[Origin]) -> dict[int, Origin]:
  """The origin of every value of ``scope``, given those of its inputs."""
  org: dict[int, Origin] = {i: CONST for i in scope.consts}
  org.update(zip(scope.inputs, inputs))
  for op in scope.ops:
    rule = _rules.rule_for(op.prim)
    ins = [org.get(i, DATA) for i in op.ins]
    if rule.kind == _rules.PER_OPERAND:
      org.update(zip(op.outs, ins))
      continue
    kinds = {o.kind for o in ins}
    out = DATA
    if not ins or kinds == {'const'}:
      out = DATA if rule.kind == _rules.RANDOM else CONST
    elif kinds <= _PARAM_KINDS:
      out = _param_origin(op, rule, scope, ins) or DATA
    for i in op.outs:
      org[i] = out
  return org


def _param_origin(op: Op, rule: _rules.Rule, scope: Scope, ins: list[Origin]):
  """The origin of an op's output computed from parameters and constants, or None
  (data: the op mixes parameter entries in a way not followed)."""
  out_shape = scope.shapes[op.outs[0]] if op.outs else ()
  srcs = [k for k, o in enumerate(ins) if o.kind != 'const']
  if rule.axis_map is not None:
    m = rule.axis_map(op.params, scope.shapes[op.ins[srcs[0]]], out_shape)
    if m is not None and len(srcs) == 1:
      return from_parts(
          tuple(
              (leaf, tuple(None if a is None else axes[a] for a in m), la, mx)
              for leaf, axes, la, mx in parts(ins[srcs[0]])
          )
      )
    return None
  if rule.elementwise:
    ps = []
    for k in srcs:
      in_shape = scope.shapes[op.ins[k]]
      if len(in_shape) != len(out_shape):
        return None
      ps.extend(
          (
              leaf,
              tuple(a if in_shape[j] == out_shape[j] else None for j, a in enumerate(axes)),
              la,
              mx,
          )
          for leaf, axes, la, mx in parts(ins[k])
      )
    return from_parts(tuple(ps)) if ps else None
  if rule.param_stat and len(srcs) == 1:
    # statistics of a parameter (a weight standardisation's mean and variance): the
    # same leaf, its reduced axes gone and marked mixed
    red = set(op.params['axes'])
    return from_parts(
        tuple(
            (
                leaf,
                tuple(a for j, a in enumerate(axes) if j not in red),
                la,
                mx | {a for j, a in enumerate(axes) if j in red and a is not None},
            )
            for leaf, axes, la, mx in parts(ins[srcs[0]])
        )
    )
  return None


def masks(scope: Scope) -> set[int]:
  """Values >= 0 everywhere made from booleans: dropout masks (Flax's bernoulli draw,
  haiku's ``keep / keep_rate`` factor). A product with one zeroes or scales each entry on
  its own, so it keeps units apart and a silent unit stays silent."""

  def const_sign(i, positive):
    try:
      v = np.asarray(scope.consts[i])
      return bool(np.all(v > 0) if positive else np.all(v >= 0))
    except Exception:  # pylint: disable=broad-except
      return False

  out = {i for i in scope.consts if const_sign(i, False)}
  for op in scope.ops:
    ins = op.ins
    rule = _rules.rule_for(op.prim)
    how = rule.mask
    if rule.kind == _rules.PER_OPERAND:
      out.update(o for i, o in zip(ins, op.outs) if i in out)
    elif rule.kind != _rules.RELU and all(
        str(getattr(v.aval, 'dtype', '')) == 'bool' for v in op.eqn.outvars
    ):
      out.update(op.outs)
    elif (
        (how == 'first' and ins and ins[0] in out)
        or (how == 'all' and all(i in out for i in ins))
        or (how == 'div' and ins[0] in out and ins[1] in scope.consts and const_sign(ins[1], True))
        or (how == 'select' and all(i in out for i in ins[1:]))
    ):
      out.update(op.outs)
  return out


def body_origins(op: Op, outer: dict[int, Origin]) -> list[Origin]:
  """The origins of a scan body's inputs: parameters stacked along their first axis
  (``nn.scan``'s layers) are a parameter with a layer axis; the carry is data."""
  nc, ncar = op.params['num_consts'], op.params['num_carry']
  out = []
  for k, i in enumerate(op.ins):
    o = outer.get(i, DATA)
    if k < nc:
      out.append(o if o.layer_axis is None else DATA)
    elif k < nc + ncar:
      out.append(CONST if o.kind == 'const' else DATA)
    elif o.kind == 'param' and o.axes and o.axes[0] is not None and o.layer_axis is None:
      out.append(Origin('param', o.leaf, o.axes[1:], o.axes[0]))
    else:
      out.append(CONST if o.kind == 'const' else DATA)
  return out
