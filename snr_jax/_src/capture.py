"""Pre-activations from the training forward pass itself, for any JAX model.

[`with_preactivations`][snr_jax.with_preactivations] wraps a model's forward pass so that it also
returns every
discovered group's pre-activation, from the same pass: the function is traced to a
jaxpr (as discovery did) and evaluated eqn by eqn, reading the ReLU inputs at the sites
discovery recorded. Inside ``jit`` this happens once, at trace time; the compiled step
is the model's own computation with a few more outputs, so it costs what a hand-written
``sow`` costs. It is differentiable, jittable and vmappable. A pre-activation inside a
scanned stack is returned by the scan as an extra stacked output (a leading layer axis).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from snr_jax._src import checks as _checks, jax_compat as _compat
from snr_jax._src.discovery import locate_sites
from snr_jax._src.discovery.rules import is_relu_site
from snr_jax._src.jaxpr import counted_eqns
from snr_jax._src.trace import as_traceable, model_kind
from snr_jax._src.groups import GroupError, NeuronGroup

Targets = dict[str, tuple[tuple[int, ...], int]]


class CaptureError(ValueError):
  """A group's layer is not in the forward pass (its kernel or its ReLU is gone), or the
  forward pass cannot be traced (a flag given as an array, a collection not mutable)."""


def _bind(eqn, invals):
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = ()
  if isinstance(params, tuple):  # jax < 0.9.2 returns (subfuns, params)
    subfuns, params = params
  with eqn.ctx.manager:
    out = eqn.primitive.bind(*subfuns, *invals, **params)
  return out if eqn.primitive.multiple_results else [out]


def _check_site(eqn, operand: int, name: str):
  ok = is_relu_site(eqn) or eqn.primitive.name == 'max'
  if not ok or operand >= len(eqn.invars):
    raise CaptureError(
        f"group '{name}': the forward pass differs from the one discover_groups traced (no "
        f"ReLU where it found one, found '{eqn.primitive.name}'). Discover the groups again "
        'for this model and call signature.'
    )


def _eval(jaxpr, consts, args, targets: Targets):
  """Evaluates ``jaxpr``, returning (outputs, {group name: captured value})."""
  env = {}
  captured = {}

  def read(v):
    return v.val if isinstance(v, _compat.Literal) else env[v]

  for v, x in zip(jaxpr.constvars, consts):
    env[v] = x
  for v, x in zip(jaxpr.invars, args):
    env[v] = x
  by_eqn: dict[int, Targets] = {}
  for name, (loc, operand) in targets.items():
    by_eqn.setdefault(loc[0], {})[name] = (loc[1:], operand)
  for k, eqn in counted_eqns(jaxpr):
    invals = [read(v) for v in eqn.invars]
    here = by_eqn.get(k)
    if not here:
      outs = _bind(eqn, invals)
    else:
      deeper = {n: t for n, t in here.items() if t[0]}
      for n, (_, operand) in here.items():
        if not _:
          _check_site(eqn, operand, n)
          captured[n] = invals[operand]
      if not deeper:
        outs = _bind(eqn, invals)
      else:
        outs, cap = _descend(eqn, invals, deeper)
        captured.update(cap)
    for v, x in zip(eqn.outvars, outs):
      env[v] = x
  return [read(v) for v in jaxpr.outvars], captured


def _descend(eqn, invals, targets: Targets):
  name = eqn.primitive.name
  if name in _compat.INLINED:
    sub = _compat.sub_jaxpr(eqn)
    inner, consts = (sub.jaxpr, sub.consts) if hasattr(sub, 'consts') else (sub, ())
    fn = lambda *a: _eval(inner, consts, a, targets)
    if name in _compat.CHECKPOINT:
      fn = jax.checkpoint(
          fn, prevent_cse=eqn.params.get('prevent_cse', True), policy=eqn.params.get('policy')
      )
    outs, cap = fn(*invals)
    return list(outs), cap
  if name == _compat.SCAN:
    p = eqn.params
    closed, nc, ncar = p['jaxpr'], p['num_consts'], p['num_carry']
    consts, carry, xs = invals[:nc], invals[nc : nc + ncar], invals[nc + ncar :]

    def body(c, x):
      outs, cap = _eval(closed.jaxpr, closed.consts, [*consts, *c, *x], targets)
      return outs[:ncar], (outs[ncar:], cap)

    carry, (ys, cap) = jax.lax.scan(
        body,
        list(carry),
        list(xs),
        length=p['length'],
        reverse=p['reverse'],
        unroll=p.get('unroll', 1),
    )
    return [*carry, *ys], cap
  raise CaptureError(
      f"cannot read a pre-activation inside '{name}'; discover the groups " 'again for this model.'
  )


def _check_discovered(groups: Sequence[NeuronGroup]) -> None:
  bad = [g.name for g in groups if g.site is None]
  if bad:
    raise GroupError(
        f'groups {bad} have no discovered site (declared groups): capture their '
        "pre-activations with apply_with_preactivations / a Flax 'intermediates' sow, or "
        'discover the groups with snr_jax.discover_groups.'
    )


def _sites(closed, tr, groups: Sequence[NeuronGroup]) -> tuple[Targets, dict[str, int]]:
  """Each group's ReLU in this trace, found by structure (discovery's locate_sites)."""
  found = locate_sites(closed, tr.leaves, tr.inputs, groups)
  gone = {n: r for n, r in found.items() if isinstance(r, str)}
  if gone:
    raise CaptureError(
        'the forward pass has lost the layer of group(s) '
        + '; '.join(f"'{n}' ({r})" for n, r in gone.items())
        + '. Discover the groups again for this model and call signature.'
    )
  return (
      {n: (loc, operand) for n, (loc, operand, _) in found.items()},
      {n: axis for n, (_, _, axis) in found.items()},
  )


def with_preactivations(f: Any, groups: Sequence[NeuronGroup]) -> Callable[..., Any]:
  """Wraps a forward pass to also return every group's pre-activation (one pass).

  Args:
    f: what the groups were discovered on: a linen Module, an ``nnx.Module`` or a plain
      function ``f(params, *args, **kwargs)``.
    groups: groups from [`discover_groups`][snr_jax.discover_groups] on ``f``.

  Returns:
    ``g`` with ``g(params, *args, **kwargs) == (f(params, *args, **kwargs), acts)`` for a
    function; ``g(variables, *args, **kwargs) == (module.apply(variables, *args,
    **kwargs), acts)`` for a linen module (``variables`` may be the params alone); and
    ``g(model, *args, **kwargs) == (model(*args, **kwargs), acts)`` for NNX, where
    ``model`` is the module (or the copy an ``nnx`` transform passes in); its state
    updates (BatchNorm statistics, RNG counters) are applied as by a direct call.
    ``acts`` maps each group name to its pre-activation ``(..., units)`` with the units
    last, and a leading layer axis for groups of a scanned stack.
  """
  model_kind(f)  # a clear error now for something that is not a model
  groups = tuple(groups)
  _check_discovered(groups)

  def g(model, *args, **kwargs):
    tr = as_traceable(f, model, args, kwargs)
    with _checks.tracing_model('with_preactivations', args, kwargs, CaptureError):
      closed, shape = jax.make_jaxpr(tr.fn, return_shape=True)(*tr.inputs)
    # the sites are found again in this trace, by structure: a weak-typed leaf's cast,
    # dropout in train mode, vmap or another dtype move eqns around, not layers
    targets, unit_axes = _sites(closed, tr, groups)
    outs, cap = _eval(closed.jaxpr, closed.consts, tr.inputs, targets)
    out = tr.finish(jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), outs))
    acts = {name: jnp.moveaxis(x, unit_axes[name], -1) for name, x in cap.items()}
    return out, acts

  return g
