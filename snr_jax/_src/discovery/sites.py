"""Where discovered groups' pre-activations are in a new trace of the same model, found
by structure, for capture (`snr_jax._src.capture`)."""

from __future__ import annotations

from typing import Any, Sequence

from snr_jax._src.discovery import rules as _rules
from snr_jax._src.discovery.graph import graph
from snr_jax._src.discovery.origins import body_origins, origins
from snr_jax._src.discovery.producers import layer_name
from snr_jax._src.discovery.walker import Walker
from snr_jax._src.groups import NeuronGroup, Path, path_str
from snr_jax._src.jaxpr import Scope
from snr_jax._src.trace import Leaf


def locate_sites(
    closed, leaves: Sequence[Leaf], inputs, groups: Sequence[NeuronGroup]
) -> dict[str, Any]:
  """Where each discovered group's pre-activation is in this trace of the forward pass.

  Found by structure, as discovery found it: the contraction of data with the group's
  kernel, walked forward to its ReLU (through bias, norms, casts, dropout, ...), so that
  the incidental details of one trace (a weak-typed leaf's extra cast, dropout in train
  mode only, another batch size or dtype, vmap, jit) do not matter.

  Returns:
    ``{name: (location, operand, unit axis of the captured value)}``, or ``{name:
    reason}`` for a group whose layer is not found here.
  """
  top, org, leaves = graph(closed, leaves, inputs)
  wanted: dict[Path, list[str]] = {}
  for g in groups:
    wanted.setdefault(tuple(g.incoming[0].path), []).append(g.name)
  found: dict[str, list] = {}

  def visit(scope: Scope, org, depth: int):
    walker = None
    for n, op in enumerate(scope.ops):
      producer = _rules.rule_for(op.prim).producer
      if producer is not None:
        k = producer(op, scope, org, leaves)
        names = (
            None if k is None or isinstance(k, str) else wanted.get(tuple(leaves[k[0].leaf].path))
        )
        if names:
          o, out_axis, kaxis, _ = k
          walker = walker or Walker(scope, org, leaves, layer_name)
          pre = walker.pre(
              n + 1,
              op.outs[0],
              out_axis,
              leaves[o.leaf].shape[kaxis],
              (o.leaf, kaxis, o.layer_axis),
          )
          for name in names:
            found.setdefault(name, []).append((pre, scope))
      if op.body is not None and depth < 1:
        visit(op.body, origins(op.body, body_origins(op, org)), depth + 1)

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
      sites[g.name] = (
          f'its layer reaches {len(pre.relus)} ReLUs'
          if pre.relus
          else f'its layer reaches no ReLU: {why}'
      )
    else:
      ((pre, scope),) = hits
      op, t = pre.relus[0]
      sites[g.name] = (
          op.loc,
          int(op.params.get('relu_operand', 0)),
          t.axis + (1 if scope.layers > 1 else 0),
      )
  return sites
