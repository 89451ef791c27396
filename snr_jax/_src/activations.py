"""Pre-activations from the training forward pass, and firing masks (design §2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import jax
import jax.numpy as jnp

if TYPE_CHECKING:  # flax is optional (annotations only here)
  from flax import linen as nn

from snr_jax._src.util import psum_packed
from snr_jax._src.capture import with_preactivations
from snr_jax._src.groups import NeuronGroup, path_str

Activations = Mapping[str, jax.Array]


class ActivationError(ValueError):
  """Activations are missing or do not match the neuron groups."""


def fired(preactivation: jax.Array, predicate=None) -> jax.Array:
  """Whether each unit fired: pre-activation > 0 anywhere in the batch.

  Units are on the last axis; every other axis (examples, spatial positions, tokens)
  is reduced with ``any``.

  Args:
    preactivation: array of shape ``(..., units)``.
    predicate: optional elementwise firing test replacing ``h > 0`` (a declared group's
      ``firing``; outside the paper).

  Returns:
    bool array of shape ``(units,)``.
  """
  x = preactivation > 0 if predicate is None else predicate(preactivation)
  return jnp.any(x.reshape(-1, x.shape[-1]), axis=0)


def merge_layers(groups: Sequence[NeuronGroup], activations: Activations) -> dict:
  """Pre-activations with the units last, a scanned group's ``(layers, ..., units)``
  turned into ``(..., layers * units)`` so that unit ``l * units + i`` is (layer l,
  unit i): every rule then sees one flat unit axis per group."""
  out = dict(activations)
  for g in groups:
    if g.layers > 1:
      a = jnp.moveaxis(out[g.name], 0, -2)
      out[g.name] = a.reshape(a.shape[:-2] + (g.size,))
  return out


def fire_counts(preactivation: jax.Array, predicate=None) -> tuple[int, jax.Array]:
  """How many positions each unit fired at: pre-activation > 0, counted (design §3c).

  Units are on the last axis; every other axis (examples, tokens, spatial positions) is
  a position. ``counts > 0`` is exactly [`fired`][snr_jax.fired].

  Args:
    preactivation: array of shape ``(..., units)``.
    predicate: optional elementwise firing test replacing ``h > 0`` (see [`fired`][snr_jax.fired]).

  Returns:
    ``(positions, counts)``: ``positions`` the number of positions in the batch (a
    Python int, the product of all axes but the last), ``counts`` an int32 array of
    shape ``(units,)``.
  """
  x = preactivation > 0 if predicate is None else predicate(preactivation)
  positions = x.size // x.shape[-1]
  return positions, jnp.sum(x.reshape(-1, x.shape[-1]), axis=0, dtype=jnp.int32)


def check_activations(groups: Sequence[NeuronGroup], activations: Any) -> None:
  """Raises ActivationError unless every group has a pre-activation of its size."""
  if activations is None:
    raise ActivationError(
        'missing activations: call update(grads, state, params, activations=...) with '
        "each group's pre-activations, e.g. from snr_jax.apply_with_preactivations(...)."
    )
  if not isinstance(activations, Mapping):
    raise ActivationError(
        f'activations must be a mapping from group name to array, got '
        f'{type(activations).__name__}.'
    )
  missing = [g.name for g in groups if g.name not in activations]
  if missing:
    raise ActivationError(
        f'activations are missing groups {missing} (given {sorted(activations)}); '
        'pass one pre-activation array per neuron group.'
    )
  for g in groups:
    a = activations[g.name]
    shape = getattr(a, 'shape', None)
    if g.layers > 1:
      ok = shape is not None and len(shape) >= 3 and shape[0] == g.layers and shape[-1] == g.units
      want = f'({g.layers} layers, batch, ..., {g.units})'
    else:
      ok = shape is not None and len(shape) >= 2 and shape[-1] == g.size
      want = f'(batch, ..., {g.size})'
    if not ok:
      raise ActivationError(
          f"activation of group '{g.name}' has shape {shape}; expected {want} with the "
          'units on the last axis.'
      )
    dtype = getattr(a, 'dtype', None)
    # firing is "pre-activation > 0": a complex value has no sign, and an integer or bool
    # array is a count or a mask passed by mistake (ReLU inputs are real floats)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
      raise ActivationError(
          f"activation of group '{g.name}' has dtype {dtype}; pre-activations must be real "
          'floating point (firing is pre-activation > 0): pass the ReLU inputs themselves, '
          'e.g. from snr_jax.with_preactivations or apply_with_preactivations.'
      )


def preactivations_from_intermediates(
    intermediates: Mapping[str, Any], groups: Sequence[NeuronGroup]
) -> dict[str, jax.Array]:
  """Picks each group's pre-activation out of a Flax ``intermediates`` collection.

  Args:
    intermediates: the ``'intermediates'`` collection returned by ``model.apply``
      (from ``capture_intermediates`` or ``self.sow``).
    groups: the neuron groups; each names its ``activation`` path.

  Returns:
    ``{group.name: array}``.
  """
  out = {}
  for g in groups:
    if g.activation is None:
      raise ActivationError(f"group '{g.name}' declares no activation path.")
    node = intermediates
    for key in g.activation:
      if not isinstance(node, Mapping) or key not in node:
        raise ActivationError(
            f"no intermediate at '{path_str(g.activation)}' for group '{g.name}' "
            f'(stopped at key {key!r}). Sow the pre-activation there, or use '
            'apply_with_preactivations, which captures module outputs.'
        )
      node = node[key]
    if isinstance(node, (tuple, list)):
      if len(node) != 1:
        raise ActivationError(
            f"intermediate '{path_str(g.activation)}' holds {len(node)} values; the "
            "layer must run once per forward pass for its units' firing to be defined."
        )
      node = node[0]
    out[g.name] = node
  return out


def apply_with_preactivations(
    model: nn.Module,
    variables: Any,
    *args,
    groups: Sequence[NeuronGroup],
    mutable: Any = False,
    **kwargs,
):
  """``model.apply`` that also returns each group's pre-activation, in one pass.

  Linen sugar over [`with_preactivations`][snr_jax.with_preactivations] for discovered groups.
  Declared
  groups without a discovered site are read from module outputs with Flax's
  ``capture_intermediates`` (their ``activation`` path). Either way the loss and the
  firing come from the same forward pass; it is differentiable and jit-friendly.

  Args:
    model: the linen module.
    variables: ``{'params': ...}`` (and any other collections).
    *args: model inputs.
    groups: the neuron groups.
    mutable: extra mutable collections (as for ``apply``).
    **kwargs: forwarded to ``model.apply``.

  Returns:
    ``(output, preactivations)``, or ``(output, preactivations, updated_collections)``
    when ``mutable`` names other collections.
  """
  if not (isinstance(variables, Mapping) and 'params' in variables):
    variables = {'params': variables}
  if all(g.site is not None for g in groups):
    call_kwargs = dict(kwargs)
    if mutable is not False:
      call_kwargs['mutable'] = mutable
    result, acts = with_preactivations(model, groups)(variables, *args, **call_kwargs)
    if mutable is not False:
      out, state = result
      return out, acts, dict(state)
    return result, acts
  wanted = {g.activation[:-1] for g in groups if g.activation and g.activation[-1] == '__call__'}

  def capture(mdl, method_name):
    return method_name == '__call__' and tuple(mdl.path) in wanted

  extra = [] if mutable is False else ([mutable] if isinstance(mutable, str) else list(mutable))
  out, state = model.apply(
      variables, *args, capture_intermediates=capture, mutable=['intermediates', *extra], **kwargs
  )
  state = dict(state)
  inter = state.pop('intermediates', {})
  acts = preactivations_from_intermediates(inter, groups)
  if extra:
    return out, acts, state
  return out, acts


def mean_activation(preactivation: jax.Array, data_axis=None) -> jax.Array:
  """Mean of ``|relu(h)|`` per unit over every axis but the last (batch, space, tokens).

  The per-unit activity that ReDo scores and continual backprop's utility use. With a
  ``data_axis`` (shard_map/pmap data parallelism, equal shards) it is the global batch's
  mean: one all-reduce of a vector per group.
  """
  if data_axis is not None:
    return mean_activations({'h': preactivation}, data_axis)['h']
  h = jax.nn.relu(preactivation.astype(jnp.float32))
  return jnp.mean(h.reshape(-1, h.shape[-1]), axis=0)


def mean_activations(activations: Mapping[str, jax.Array], data_axis=None) -> dict:
  """[`mean_activation`][snr_jax.mean_activation] of every group, ``{name: (size,)}``.

  With a ``data_axis``, all groups' means travel in one buffer of one all-reduce
  (`psum_packed`)."""
  local = {k: mean_activation(h) for k, h in activations.items()}
  if data_axis is None:
    return local
  n = jax.lax.axis_size(data_axis)
  summed = psum_packed(local, {k: jnp.float32 for k in local}, data_axis)
  return {k: v / n for k, v in summed.items()}
