"""The forward pass as a flat graph of operations, for discovery and capture.

A model's forward pass is traced once with ``jax.make_jaxpr``. `build_scopes` turns
the jaxpr into *scopes*: flat lists of `Op` in execution order, in which nested
``jit`` and ``checkpoint`` calls are inlined and every value has an integer id. The body
of a ``scan`` is a scope of its own (its units are indexed by layer), linked to the
outer scope by the ``scan`` op. A ReLU (``jax.nn.relu``/``relu6``, ``max(x, 0)``, or a
function or primitive registered as ReLU-like) becomes one op named ``'relu'``; every
other custom-derivative call stays one opaque op,
so that e.g. ``softplus``'s internal ``max`` is never mistaken for a ReLU.

Every op keeps its *location*: the eqn indices from the top-level jaxpr down to it, so
the same value can be found again in a later trace of the same function
(`snr_jax.capture`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np

from snr_jax._src import jax_compat as _compat

Location = tuple[int, ...]

# Calls whose body is inlined into the calling scope.
INLINED = _compat.INLINED
# Type-only eqns that tracing inserts in some contexts and not in others (shard_map marks
# replicated values as varying with pvary): locations do not count them, so a site found
# outside shard_map is found again inside it.
UNCOUNTED = _compat.UNCOUNTED


def counted_eqns(jaxpr):
  """``(location index, eqn)`` for the eqns that locations count (see ``UNCOUNTED``)."""
  k = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in UNCOUNTED:
      yield None, eqn
      continue
    yield k, eqn
    k += 1


@dataclasses.dataclass
class Op:
  """One operation of a scope.

  Attributes:
    prim: the primitive's name (``'relu'`` for a ReLU site).
    params: the eqn's parameters.
    ins: value ids of the operands.
    outs: value ids of the results.
    loc: eqn indices from the top-level jaxpr to this eqn.
    scope_name: the innermost named ``jit`` around it (e.g. ``'gelu'``, ``'silu'``),
      for reports.
    eqn: the eqn itself.
    body: for ``scan``: the body's `Scope`.
  """

  prim: str
  params: dict
  ins: list[int]
  outs: list[int]
  loc: Location
  scope_name: str
  eqn: Any
  body: Optional['Scope'] = None


@dataclasses.dataclass
class Scope:
  """A flat graph: ops in execution order over integer value ids.

  Attributes:
    ops: the operations.
    shapes: value id -> shape.
    consts: value id -> numpy value, for literals and captured constants.
    inputs: the ids of the scope's inputs, in order.
    outputs: the ids the scope returns.
    layers: 1 for the top level; a scan body's length for a scan body.
    loc: location of the scan eqn owning this scope (empty for the top level).
  """

  ops: list[Op]
  shapes: dict[int, tuple[int, ...]]
  consts: dict[int, Any]
  inputs: list[int]
  outputs: list[int]
  layers: int = 1
  loc: Location = ()


# ops whose output is all zeros when their (first) operand is
_ZERO_PRESERVING = (
    'broadcast_in_dim',
    'reshape',
    'copy',
    _compat.CONVERT_ELEMENT_TYPE,
    _compat.SHARDING_CONSTRAINT,
)


def is_zero(x: Any) -> bool:
  """Whether ``x`` is a constant that is zero everywhere."""
  try:
    return bool(np.all(np.asarray(x) == 0))
  except Exception:  # pylint: disable=broad-except
    return False


def inner_ops(closed) -> list[str]:
  """The primitive names of a jaxpr's eqns, nested calls included."""
  jaxpr = getattr(closed, 'jaxpr', closed)
  names = []
  for eqn in jaxpr.eqns:
    names.append(eqn.primitive.name)
    for key in _compat.CALL_JAXPR_KEYS:
      if key in eqn.params:
        names.extend(inner_ops(eqn.params[key]))
  return names


def call_name(eqn) -> str:
  """The name of the function behind a call eqn (``'relu'``, ``'logaddexp'``, ...)."""
  if 'name' in eqn.params:
    return str(eqn.params['name'])
  sub = _compat.sub_jaxpr(eqn)
  info = getattr(getattr(sub, 'jaxpr', sub), 'debug_info', None)
  src = getattr(info, 'func_src_info', None) or ''
  return src.split(' ')[0]


class _Builder:
  """Flattens one jaxpr (with nested calls) into scopes."""

  def __init__(self, is_relu: Callable[[Any], bool]):
    self.next_id = 0
    self.is_relu = is_relu

  def new_id(self, scope: Scope, shape) -> int:
    self.next_id += 1
    scope.shapes[self.next_id] = tuple(shape)
    return self.next_id

  def read(self, scope: Scope, env: dict, atom) -> int:
    if isinstance(atom, _compat.Literal):
      i = self.new_id(scope, np.shape(atom.val))
      scope.consts[i] = atom.val
      return i
    return env[atom]

  def flatten(
      self, scope: Scope, jaxpr, in_ids: list[int], loc: Location, scope_name: str, consts=()
  ) -> list[int]:
    """Appends ``jaxpr``'s ops to ``scope``; returns the ids of its outputs."""
    env = {}
    for var, val in zip(jaxpr.constvars, consts):
      i = self.new_id(scope, np.shape(val))
      scope.consts[i] = val
      env[var] = i
    for var, i in zip(jaxpr.invars, in_ids):
      env[var] = i
    for k, eqn in counted_eqns(jaxpr):
      here = loc + (-1 if k is None else k,)
      name = eqn.primitive.name
      ins = [self.read(scope, env, a) for a in eqn.invars]
      relu = self.is_relu(eqn)
      if name in INLINED and _compat.has_sub_jaxpr(eqn) and not relu:
        sub = _compat.sub_jaxpr(eqn)
        inner, inner_consts = (sub.jaxpr, sub.consts) if hasattr(sub, 'consts') else (sub, ())
        sub_name = call_name(eqn) if name in _compat.JIT else scope_name
        outs = self.flatten(scope, inner, ins, here, sub_name, inner_consts)
        for var, i in zip(eqn.outvars, outs):
          env[var] = i
        continue
      outs = [self.new_id(scope, v.aval.shape) for v in eqn.outvars]
      for var, i in zip(eqn.outvars, outs):
        env[var] = i
      if (
          name in _ZERO_PRESERVING
          and ins
          and ins[0] in scope.consts
          and is_zero(scope.consts[ins[0]])
      ):
        # jnp.zeros_like and friends: a broadcast (or cast) literal 0 is still a known
        # zero, e.g. the dropped entries of a dropout's select
        scope.consts[outs[0]] = np.zeros((), eqn.outvars[0].aval.dtype)
      prim, params = name, dict(eqn.params)
      if relu:
        prim, params['relu_operand'] = 'relu', 0
      elif (
          name == 'max'
          and len(ins) == 2
          and any(i in scope.consts and is_zero(scope.consts[i]) for i in ins)
      ):
        # relu ops read ins[0]; the eqn's own operand index is kept for capture
        zero_first = ins[0] in scope.consts and is_zero(scope.consts[ins[0]])
        prim, params['relu_operand'] = 'relu', int(zero_first)
        ins = ins[::-1] if zero_first else ins
      op = Op(
          prim,
          params,
          ins,
          outs,
          here,
          scope_name or call_name(eqn) if _compat.is_custom_call(name) else scope_name,
          eqn,
      )
      if name == _compat.SCAN:
        op.body = self.scan_body(eqn, here)
      scope.ops.append(op)
    return [self.read(scope, env, a) for a in jaxpr.outvars]

  def scan_body(self, eqn, loc: Location) -> Scope:
    closed = eqn.params['jaxpr']
    body = Scope([], {}, {}, [], [], layers=int(eqn.params['length']), loc=loc)
    body.inputs = [self.new_id(body, v.aval.shape) for v in closed.jaxpr.invars]
    body.outputs = self.flatten(body, closed.jaxpr, body.inputs, loc, '', closed.consts)
    return body


def build_scopes(closed_jaxpr, is_relu: Callable[[Any], bool]) -> Scope:
  """The top-level scope of a traced function (scan bodies hang off their ops).

  Args:
    closed_jaxpr: the traced forward pass.
    is_relu: whether an eqn is a ReLU call (``jax.nn.relu``, or an activation registered
      as ReLU-like: `is_relu_site`); such a call
      becomes one ``'relu'`` op, as does ``max(x, 0)``.
  """
  builder = _Builder(is_relu)
  top = Scope([], {}, {}, [], [])
  top.inputs = [builder.new_id(top, v.aval.shape) for v in closed_jaxpr.jaxpr.invars]
  top.outputs = builder.flatten(top, closed_jaxpr.jaxpr, top.inputs, (), '', closed_jaxpr.consts)
  return top


def iter_scopes(scope: Scope):
  """The scope and every scan body inside it, depth first."""
  yield scope
  for op in scope.ops:
    if op.body is not None:
      yield from iter_scopes(op.body)
