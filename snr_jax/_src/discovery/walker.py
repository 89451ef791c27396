"""The walk: from a kernel's output forward to its ReLU, and from the ReLU to its consumers.

The `Walker` visits, in execution order, every op that reads a value depending on
the walked source and asks the discovery table (`.rules`) what the op does to it;
the handlers (`.pre`, `.post`) call back into the walker for what they need to
know of the scope (origins, masks, shapes, parameter axes).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from snr_jax._src import jaxpr as _jaxpr
from snr_jax._src.discovery import layout as _layout, rules as _rules
from snr_jax._src.discovery.origins import masks
from snr_jax._src.discovery.report import describe_nonlin
from snr_jax._src.discovery.values import DATA, STOP, Origin, Track, Walk
from snr_jax._src.groups import path_str
from snr_jax._src.jaxpr import Op, Scope
from snr_jax._src.trace import Leaf


class Walker:
  """Walks forward from values of one scope (see the package docstring)."""

  def __init__(
      self,
      scope: Scope,
      org: dict[int, Origin],
      leaves: list[Leaf],
      layer_names: Callable[[tuple], str],
  ):
    self.scope, self.org, self.leaves = scope, org, leaves
    self.layer_names = layer_names
    self.outputs = set(scope.outputs)
    self.where_out = (
        'leaves the scan body (carry or output)'
        if scope.layers > 1
        else 'is an output of the model (an output layer)'
    )
    self.seen_relus: set[int] = set()
    self.producer = {i: op for op in scope.ops for i in op.outs}
    self.masks = masks(scope)

  def walk(self, start: int, tr: dict, step: Callable) -> dict:
    """Runs ``step(op, rule, ts)`` on every op from ``start`` that reads a tracked value."""
    for op in self.scope.ops[start:]:
      ts = [tr.get(i) for i in op.ins]
      if not any(t is not None for t in ts):
        continue
      rule = _rules.rule_for(op.prim)
      if rule.kind == _rules.PER_OPERAND:
        tr.update((i, t) for i, t in zip(op.outs, ts) if t is not None)
        continue
      res = step(op, rule, ts)
      if res is STOP:
        break
      if res is not None:
        for i in op.outs:
          tr[i] = res
    return tr

  def pre(self, start: int, src: int, axis: int, units: int, kernel) -> Walk:
    """From a kernel's output ``src`` (units along ``axis``) to its ReLU."""
    w = Walk()

    def step(op, rule, ts):
      if any(t is not None and t.kind == 'grouped' for t in ts):
        return rule.grouped(self, op, ts, w)
      return rule.pre(self, op, ts, units, w)

    tr = self.walk(start, {src: Track('main', axis, params=frozenset([kernel]))}, step)
    for i in self.outputs:
      if i in tr and tr[i].kind == 'nonlin':
        w.reasons.append(describe_nonlin(tr[i].name))
      elif i in tr and tr[i].kind == 'main':
        w.reasons.append(self.where_out)
      elif i in tr and tr[i].kind == 'grouped':
        w.reasons.append("its pre-activation is reshaped across its units ('reshape')")
    return w

  def post(self, start: int, src: int, axis: int, units: int) -> Walk:
    """From a ReLU's output ``src`` to every consumer of its units."""
    w = Walk()
    tr = self.walk(
        start,
        {src: Track('main', axis, tuple(range(units)))},
        lambda op, rule, ts: rule.post(self, op, ts, w),
    )
    for i in self.outputs:
      if i in tr:
        w.reasons.append(f'its ReLU output {self.where_out}')
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
      if _rules.rule_for(op.prim).kind in (_rules.RELU, _rules.CONTRACTION) or op.body is not None:
        return False
      reach.update(op.outs)
    return any(i in reach for i in self.outputs)

  # -- what handlers ask -------------------------------------------------------------
  def rule(self, op: Op) -> _rules.Rule:
    return _rules.rule_for(op.prim)

  def is_zero(self, i: int) -> bool:
    """A known all-zeros constant (``zeros_like``, a literal 0)."""
    return self.org.get(i, DATA).kind == 'const' and _jaxpr.is_zero(self.scope.consts.get(i, 1))

  def axis_map(self, op: Op, in_shape, out_shape):
    """Output axis -> input axis of a layout op (None where not followed)."""
    m = _rules.rule_for(op.prim).axis_map
    return None if m is None else m(op.params, in_shape, out_shape)

  def nonlin_name(self, old: str, op: Op) -> str:
    return _rules.better_name(old, op.prim, op.scope_name)

  def param_unit(self, o: Origin, operand_shape, axis: int, units: int):
    """(leaf, leaf axis, layer axis) when a param operand runs along the units, 'bcast' when
    it is broadcast along them, or None when it does not line up."""
    if operand_shape[axis] == 1:
      return 'bcast'
    a = o.axes[axis]
    shape = self.leaves[o.leaf].shape
    if a is None or shape[a] != units or a in o.mixed:
      return None
    if self.leaves[o.leaf].kind == 'aux' and any(
        d != 1 for j, d in enumerate(operand_shape) if j != axis
    ):
      return None  # an argument with more than one value per unit is data, not a state
    return (o.leaf, a, o.layer_axis)

  def describe_contraction(self, op: Op, ts) -> str:
    other = [self.org.get(i, DATA) for i, t in zip(op.ins, ts) if t is None]
    if other and other[0].kind == 'param':
      return f"'{self.layer_names(self.leaves[other[0].leaf].path)}'"
    return 'a contraction with data (attention or a custom product)'

  def consumer(self, op: Op, other: int, kernel_axis_in_value: int, t: Track, w: Walk):
    """Records a contraction of the units with kernel value ``other`` as a consumer."""
    o = self.org.get(other, DATA)
    if o.kind != 'param' or self.leaves[o.leaf].kind != 'param':
      w.reasons.append(
          'its ReLU output reaches a contraction with data (attention or a custom '
          'product), not a linear layer'
      )
      return STOP
    a, vec = self.kernel_rows(other, kernel_axis_in_value, t.vec)
    t = dataclasses.replace(t, vec=vec)
    path = path_str(self.leaves[o.leaf].path)
    if a is not None and a in self.org[other].mixed:
      w.reasons.append(
          f"its consumer '{path}' is normalised across the units it reads (a "
          'weight-standardised kernel), so zeroing its rows would not cut the '
          'unit off'
      )
      return STOP
    if a is None or self.leaves[o.leaf].shape[a] != len(t.vec):
      w.reasons.append(
          f"its consumer '{path}' reads the units through a layout the engine " 'does not follow'
      )
      return STOP
    w.consumers.append((o.leaf, a, t.vec, o.layer_axis, op))
    return None

  def kernel_rows(self, value: int, axis: int, vec: tuple):
    """(leaf axis, unit of each index along it) for a kernel value read along ``axis``
    with units ``vec``, back through the layout ops that made it from its leaf (an im2col
    conv's ``kernel.reshape(kh * kw * c_in, c_out)`` reads unit u at rows (i, j, u))."""
    while True:
      a = self.org[value].axes[axis]
      if a is not None:
        return a, vec
      op = self.producer.get(value)
      rule = None if op is None else _rules.rule_for(op.prim)
      if rule is None or rule.axis_map is None or self.org.get(op.ins[0], DATA).kind != 'param':
        return None, vec
      in_shape, out_shape = self.scope.shapes[op.ins[0]], self.scope.shapes[value]
      if rule.regroups:
        found = _layout.reshape_units(out_shape, axis, vec, in_shape)
        if found is None:
          return None, vec
        axis, vec = found
      else:
        m = rule.axis_map(op.params, in_shape, out_shape)
        if m is None or m[axis] is None:
          return None, vec
        axis = m[axis]
      value = op.ins[0]
