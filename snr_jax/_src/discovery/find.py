"""Groups from walks: every producer of a scope walked to its ReLU and on to its
consumers, made a [`NeuronGroup`][snr_jax.NeuronGroup] or a [`LeftOut`][snr_jax.LeftOut] with its
reason."""

from __future__ import annotations

from snr_jax._src import jax_compat as _compat
from snr_jax._src.discovery import rules as _rules
from snr_jax._src.discovery.initializers import initializer
from snr_jax._src.discovery.origins import body_origins, origins
from snr_jax._src.discovery.producers import layer_name
from snr_jax._src.discovery.report import LeftOut
from snr_jax._src.discovery.values import DATA
from snr_jax._src.discovery.walker import Walker
from snr_jax._src.groups import NeuronGroup, ParamSlice, Site
from snr_jax._src.jaxpr import Op, Scope
from snr_jax._src.trace import Leaf


def _where(op: Op) -> str:
  frames = getattr(op.eqn.source_info, 'traceback', None)
  try:
    return _compat.summarize_source(op.eqn)
  except Exception:  # pylint: disable=broad-except
    return f'eqn {op.loc}' if frames is None else str(frames)


def _analyse_scope(
    scope: Scope,
    org,
    leaves: list[Leaf],
    modules,
    overrides,
    kernel_uses,
    groups: list,
    left_out: list,
    refused: list,
):
  walker = Walker(scope, org, leaves, layer_name)
  _find_groups(
      scope, walker, org, leaves, modules, overrides, kernel_uses, groups, left_out, refused
  )
  for op in scope.ops:
    # jax.nn.relu / relu6 calls only: a bare max(x, 0) is also how libraries clip
    # statistics (a LayerNorm's variance), which is no layer
    if op.prim == 'relu' and op.eqn.primitive.name != 'max' and id(op) not in walker.seen_relus:
      left_out.append(
          LeftOut(
              f'ReLU at {_where(op)}',
              'its input is not the output of one kernel layer (a residual sum, '
              "the model's input, ...); declare a group by hand if it is one",
          )
      )


def _find_groups(
    scope: Scope,
    walker,
    org,
    leaves: list[Leaf],
    modules,
    overrides,
    kernel_uses,
    groups: list,
    left_out: list,
    refused: list,
):
  for n, op in enumerate(scope.ops):
    producer = _rules.rule_for(op.prim).producer
    if producer is None:
      continue
    found = producer(op, scope, org, leaves)
    if found is None:
      continue
    if isinstance(found, str):
      kernel = next(org[i] for i in op.ins if org.get(i, DATA).kind in ('param', 'params'))
      leaf = (
          kernel.leaf
          if kernel.kind == 'param'
          else next(
              (p[0] for p in kernel.parts if leaves[p[0]].kind == 'param'), kernel.parts[0][0]
          )
      )
      left_out.append(LeftOut(layer_name(leaves[leaf].path), found))
      continue
    o, out_axis, kaxis, in_axis = found
    kleaf = leaves[o.leaf]
    name = layer_name(kleaf.path)
    units = kleaf.shape[kaxis]
    pre = walker.pre(n + 1, op.outs[0], out_axis, units, (o.leaf, kaxis, o.layer_axis))
    reasons = list(pre.reasons)
    if reasons and reasons[0] != walker.where_out and walker.is_output_layer(n + 1, op.outs[0]):
      reasons = [
          "it is an output layer: its output reaches the model's output with no ReLU " 'after it'
      ]
    if not reasons and not pre.relus:
      reasons.append('it reaches no ReLU')
    if not reasons and len(pre.relus) > 1:
      reasons.append(f'its pre-activation feeds {len(pre.relus)} ReLUs')
    if reasons:
      left_out.append(LeftOut(name, reasons[0]))
      continue
    relu_op, relu_t = pre.relus[0]
    if kernel_uses[kleaf.path] > 1:
      refused.append(name)
      continue
    start = scope.ops.index(relu_op) + 1
    post = walker.post(start, relu_op.outs[0], relu_t.axis, units)
    reasons = list(post.reasons)
    if not reasons and not post.consumers:
      reasons.append('its ReLU output reaches no consumer')
    for leaf, _, _, _, _ in post.consumers:
      if kernel_uses[leaves[leaf].path] > 1:
        reasons.append(
            f"its consumer '{layer_name(leaves[leaf].path)}' is applied more than "
            'once (shared weights)'
        )
    layer_axes = {p[2] for p in relu_t.params} | {c[3] for c in post.consumers}
    if len(layer_axes) > 1 or (scope.layers > 1) != (None not in layer_axes):
      reasons.append('some of its parameters are shared across the layers of a scan')
    if reasons:
      left_out.append(LeftOut(name, reasons[0]))
      continue
    incoming, state = [], []
    for leaf_i, axis, layer_axis in sorted(
        relu_t.params | pre.state, key=lambda p: leaves[p[0]].path
    ):
      leaf = leaves[leaf_i]
      is_kernel = leaf_i == o.leaf
      init = initializer(
          leaf,
          'kernel' if is_kernel else 'unit',
          modules,
          overrides,
          in_axis if is_kernel else None,
          axis,
          layer_axis,
      )
      sl = ParamSlice(leaf.path, axis, init, layer_axis=layer_axis)
      (incoming if leaf.kind == 'param' else state).append(sl)
    incoming.sort(key=lambda s: (s.path != kleaf.path, s.path))
    outgoing = []
    for leaf_i, axis, vec, layer_axis, _ in post.consumers:
      plain = tuple(vec) == tuple(range(units))
      outgoing.append(
          ParamSlice(
              leaves[leaf_i].path,
              axis,
              None,
              unit_of=None if plain else tuple(vec),
              layer_axis=layer_axis,
          )
      )
    relu_loc = relu_op.loc
    site = Site(relu_loc, int(relu_op.params.get('relu_operand', 0)), relu_t.axis, scope.layers)
    groups.append(
        NeuronGroup(
            name,
            units * scope.layers,
            tuple(incoming),
            tuple(outgoing),
            layers=scope.layers,
            site=site,
            state=tuple(state),
        )
    )


def analyse(
    scope: Scope, org, leaves, modules, overrides, kernel_uses, groups, left_out, refused, depth=0
):
  """Appends the groups of ``scope`` and of the scan bodies in it to ``groups``, the layers
  left out to ``left_out``, and the names of shared-weight layers to ``refused``."""
  _analyse_scope(scope, org, leaves, modules, overrides, kernel_uses, groups, left_out, refused)
  for op in scope.ops:
    if op.body is None:
      continue
    if depth >= 1:
      left_out.append(
          LeftOut(
              f'scan at {op.loc}', 'nested scans are not supported; declare ' 'these groups by hand'
          )
      )
      continue
    body_org = origins(op.body, body_origins(op, org))
    analyse(
        op.body,
        body_org,
        leaves,
        modules,
        overrides,
        kernel_uses,
        groups,
        left_out,
        refused,
        depth + 1,
    )
