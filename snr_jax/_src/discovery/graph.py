"""The traced forward pass as discovery reads it: scopes, the origin of every value, and
what each input is (a parameter, a model state, data, or an 'aux' argument)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from snr_jax._src import jaxpr as _jaxpr
from snr_jax._src.discovery import rules as _rules
from snr_jax._src.discovery.origins import body_origins, origins
from snr_jax._src.discovery.values import DATA, Origin
from snr_jax._src.groups import Path
from snr_jax._src.jaxpr import Scope
from snr_jax._src.trace import Leaf


def kernel_uses(scope: Scope, org, leaves) -> dict[Path, int]:
  """How many contractions each parameter leaf takes part in (shared weights: more than
  one), scan bodies included."""
  uses: dict[Path, int] = {}

  def visit(sc, og):
    for op in sc.ops:
      if _rules.rule_for(op.prim).kind == _rules.CONTRACTION:
        for i in op.ins:
          o = og.get(i, DATA)
          if o.kind == 'param':
            uses[leaves[o.leaf].path] = uses.get(leaves[o.leaf].path, 0) + 1
      if op.body is not None:
        visit(op.body, origins(op.body, body_origins(op, og)))

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
        hasattr(v, 'eqns') or hasattr(v, 'jaxpr') for v in op.params.values()
    )
    if _rules.rule_for(op.prim).kind == _rules.CONTRACTION or nested:
      direct.update(k for x in ins if x for k in x)
      out = None
    else:
      out = None if any(x is None for x in ins) else frozenset().union(*ins)
      if out is not None and len(out) > 1:
        out = None  # two data inputs meet: neither is a state beside the data any more
    for i in op.outs:
      src[i] = out
  return direct


def graph(closed, leaves: Sequence[Leaf], inputs) -> tuple[Scope, dict, list[Leaf]]:
  """The traced forward pass as scopes, the origin of every top-level value, and what
  each input is. Array arguments besides the parameters that reach no contraction (a
  model state passed in, such as haiku's BatchNorm statistics, or an RNG key) are
  'aux' inputs: per-unit values like a model state, whose arithmetic with the
  pre-activation is no sum with another branch."""
  top = _jaxpr.build_scopes(closed, _rules.is_relu_site)
  data = [k for k, leaf in enumerate(leaves) if leaf.kind == 'data']
  direct = {data[j] for j in _direct_inputs(top, [top.inputs[k] for k in data])}
  out = []
  for k, (leaf, x) in enumerate(zip(leaves, inputs)):
    kind = leaf.kind
    if kind == 'data' and k not in direct:
      kind = 'aux'
    path = leaf.path if leaf.path is not None else (f'<argument {k}>',)
    out.append(Leaf(path, kind, tuple(np.shape(x))))
  org = origins(
      top,
      [
          Origin('param', k, tuple(range(len(leaf.shape)))) if leaf.kind != 'data' else DATA
          for k, leaf in enumerate(out)
      ],
  )
  return top, org, out
