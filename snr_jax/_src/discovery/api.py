"""The entry point: [`discover_groups`][snr_jax.discover_groups]."""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional, Sequence

import jax

from snr_jax._src import checks as _checks
from snr_jax._src.discovery.find import analyse
from snr_jax._src.discovery.graph import graph, kernel_uses
from snr_jax._src.discovery.initializers import Modules, checked_overrides, concrete_modules
from snr_jax._src.discovery.report import DiscoveredGroups, LeftOut
from snr_jax._src.groups import GroupError, NeuronGroup, path_str
from snr_jax._src.trace import as_traceable, model_kind


def discover_groups(
    f: Any,
    *args,
    initializers: Optional[Mapping[str, Any]] = None,
    axis_env: Sequence[tuple[str, int]] = (),
    **kwargs,
) -> DiscoveredGroups:
  """Finds the neuron groups of a model from its traced forward pass.

  Call it as ``discover_groups(module, variables, *sample_args, **kwargs)`` for a linen
  Module (``variables`` may be the params alone), ``discover_groups(nnx_module,
  *sample_args, **kwargs)`` for an ``nnx.Module`` (it holds its parameters), or
  ``discover_groups(f, params, *sample_args, **kwargs)`` for a plain function
  ``f(params, *args, **kwargs)``. The sample arguments only give shapes and dtypes:
  the decision never depends on their values.

  A layer is a group when its kernel contraction reaches exactly one ReLU through
  bias, per-unit scale/shift and normalisation, and the ReLU's output reaches the rest
  of the network only through linear consumers (module docstring). The incoming slices
  are the kernel's unit axis and every per-unit parameter between kernel and ReLU
  (bias, LayerNorm/BatchNorm scale and offset); BatchNorm running statistics met there
  are kept in ``group.state``; the outgoing slices are every consumer's rows, with the
  exact row -> unit map. Initializers: a linen module's own (``kernel_init``,
  ``bias_init``, ``scale_init``); otherwise Flax's defaults (LeCun normal for kernels,
  ones for scales, zeros for the rest), or ``initializers={'path/to/leaf': init}``.
  NNX layers do not keep their initializers (``nnx.Linear(..., kernel_init=...)``
  forgets it once the kernel is drawn), so an NNX model with custom ones needs
  ``initializers``.

  Args:
    f: the model (see above).
    *args: the variables or params (linen, function), then sample inputs.
    initializers: optional ``{param path: initializer}`` overrides (paths joined by
      '/', as ``describe_groups`` prints them, e.g. ``'layers/0/kernel'``).
    axis_env: ``[(axis name, size), ...]`` for a model that uses collectives over a
      mapped axis, e.g. ``BatchNorm(axis_name='data')`` synchronised over
      ``shard_map``/``pmap``: it is traced as if inside that axis (``jax.make_jaxpr``'s
      ``axis_env``). Not needed when called inside the mapped function itself.
    **kwargs: keyword arguments of the forward call (e.g. ``train=True``,
      ``rngs={'dropout': key}``, ``mutable=['batch_stats']``).

  Returns:
    A [`DiscoveredGroups`][snr_jax.DiscoveredGroups]: a tuple of
    [`NeuronGroup`][snr_jax.NeuronGroup] with ``left_out``, the
    layers looked at and not made groups, each with its reason. Its repr lists both.

  Raises:
    GroupError: when a linen module's variables are missing (``discover_groups(model,
      x)``), when ``initializers`` names a path that is not a parameter or gives
      something that is not callable (before tracing); when tracing needs a flag given
      as an array (pass a Python bool) or updates a collection that is not ``mutable``
      (BatchNorm in training: pass ``mutable=['batch_stats']``); when a layer that reaches a
      ReLU has its kernel applied more than once (shared weights: its units have
      several pre-activations), or when no group is found.

  Warns:
    UserWarning: when ``initializers`` names a parameter that no group re-draws; when a
      linen module's initializer was built inside ``__call__`` from a value that depends
      on the traced inputs and cannot be recovered (Flax's default is used; the warning
      names the parameter and the ``initializers=`` override). One built there from
      constants (dopamine's ``variance_scaling(1 / jnp.sqrt(3.0), ...)``) is recovered
      from a second trace that computes constants concretely; one wrapped by
      ``nn.with_partitioning`` / ``nn.with_logical_partitioning`` is unwrapped.

  Examples:
    >>> import jax, jax.numpy as jnp, snr_jax
    >>> def mlp(params, x):
    ...   return jax.nn.relu(x @ params['l1']['kernel']) @ params['l2']['kernel']
    >>> params = {'l1': {'kernel': jnp.ones((3, 4))}, 'l2': {'kernel': jnp.ones((4, 2))}}
    >>> groups = snr_jax.discover_groups(mlp, params, jnp.ones((8, 3)))
    >>> [(g.name, g.size) for g in groups], [o.layer for o in groups.left_out]
    ([('l1', 4)], ['l2'])
  """
  kind = model_kind(f)
  if kind == 'nnx':
    model, sample = f, args
  else:
    if not args:
      raise GroupError(
          'discover_groups needs the parameters and a sample input: '
          'discover_groups(model, params, x).'
      )
    _checks.model_variables(kind, args, 'discover_groups', GroupError)
    model, sample = args[0], args[1:]
  tr = as_traceable(f, model, tuple(sample), kwargs, record_modules=True)
  overrides = checked_overrides(initializers, tr.leaves)
  with _checks.tracing_model('discover_groups', tuple(sample), kwargs, GroupError):
    closed = jax.make_jaxpr(tr.fn, axis_env=list(axis_env))(*tr.inputs)
  top, org, leaves = graph(closed, tr.leaves, tr.inputs)
  groups: list[NeuronGroup] = []
  left_out: list[LeftOut] = []
  refused: list[str] = []
  modules = Modules(tr.modules, lambda: concrete_modules(f, model, sample, kwargs, axis_env))
  analyse(
      top, org, leaves, modules, overrides, kernel_uses(top, org, leaves), groups, left_out, refused
  )
  if refused:
    raise GroupError(
        f'layer(s) {sorted(set(refused))} reach a ReLU but their kernel is applied more than '
        'once (shared weights), so each unit has several pre-activations and its firing is '
        'not defined. Declare the groups you want by hand (snr_jax.NeuronGroup) or give the '
        'layers separate weights.'
    )
  redrawn = {path_str(s.path) for g in groups for s in g.incoming}
  unused = sorted(set(overrides) - redrawn)
  if unused:
    warnings.warn(
        f'initializers for {unused} have no effect: no neuron group re-draws them (only a '
        "group's incoming parameters are re-drawn on a reset; outgoing ones are zeroed). "
        f'Re-drawn parameters: {sorted(redrawn)}.',
        stacklevel=2,
    )
  names = [g.name for g in groups]
  for g in groups:
    if names.count(g.name) > 1:
      raise GroupError(f"two groups would be named '{g.name}'; declare them by hand.")
  if not groups:
    raise GroupError(
        f'discover_groups found no neuron group in {type(f).__name__}. Layers looked at: '
        + (
            '; '.join(f'{x.layer}: {x.reason}' for x in left_out)
            or 'none (no kernel ' 'contraction with a parameter)'
        )
        + '. Declare the groups with '
        'snr_jax.dense_group(...) or snr_jax.NeuronGroup(...).'
    )
  return DiscoveredGroups(groups, left_out)
