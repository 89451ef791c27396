"""The initializers that re-draw a group's incoming parameters on a reset.

A linen module's own (``kernel_init``, ``bias_init``, ``scale_init``), recovered from the
discovery trace even when it is wrapped by ``nn.with_partitioning`` or built inside
``__call__``; an ``initializers=`` override; or Flax's default for the leaf.
"""

from __future__ import annotations

import functools
import types
import warnings
from typing import Any, Callable, Mapping, Optional, Sequence

import jax

from snr_jax._src import jax_compat as _compat, optional as _optional
from snr_jax._src.groups import GroupError, Path, leaf_value, path_str
from snr_jax._src.trace import Leaf, as_traceable

_ONES_NAMES = ('scale', 'gamma', 'weight', 'g', 'w')


def _holds_tracer(obj: Any, depth: int = 0, seen: Optional[set] = None) -> bool:
  """Whether an initializer holds a tracer: one built inside the module's ``__call__``
  from a traced value (dopamine's ``variance_scaling(scale=1 / jnp.sqrt(3.0), ...)``)
  closes over a tracer of discovery's trace, which would leak into the training step.
  Looks through closures, default arguments, ``functools.partial`` and containers."""
  if isinstance(obj, _compat.Tracer):
    return True
  seen = set() if seen is None else seen
  if (
      depth > 8
      or id(obj) in seen
      or _optional.is_linen_module(obj)
      or isinstance(obj, (type, str, bytes))
  ):
    return False
  seen.add(id(obj))
  if isinstance(obj, functools.partial):
    kids = [obj.func, *obj.args, *obj.keywords.values()]
  elif isinstance(obj, types.FunctionType):
    kids = [c.cell_contents for c in obj.__closure__ or () if _cell_full(c)]
    kids += list(obj.__defaults__ or ()) + list((obj.__kwdefaults__ or {}).values())
  elif isinstance(obj, types.MethodType):
    kids = [obj.__func__]
  elif isinstance(obj, (list, tuple, set, frozenset)):
    kids = list(obj)
  elif isinstance(obj, Mapping):
    kids = list(obj.values())
  elif callable(obj) and hasattr(obj, '__dict__'):  # an initializer object
    kids = list(vars(obj).values())
  else:
    return False
  return any(_holds_tracer(k, depth + 1, seen) for k in kids)


def _cell_full(cell) -> bool:
  try:
    cell.cell_contents  # pylint: disable=pointless-statement
    return True
  except ValueError:
    return False


def _unboxed(init: Callable, leaf: Leaf) -> Callable:
  """``init``, or for one wrapped by ``nn.with_partitioning`` /
  ``nn.with_logical_partitioning`` (it returns a box), the same initializer returning the
  box's array."""
  try:
    out = jax.eval_shape(
        lambda k: init(k, tuple(leaf.shape), jax.numpy.float32), jax.random.PRNGKey(0)
    )
  except Exception:  # pylint: disable=broad-except; the reset unwraps a box anyway
    return init
  if not _optional.is_axis_metadata(out):
    return init

  @functools.wraps(init)
  def unboxed(*args, **kwargs):
    return leaf_value(init(*args, **kwargs))

  return unboxed


class Modules(dict):
  """``{module path: module}`` of the discovery trace, plus, on demand, the same modules
  recorded again by a trace in which values that do not depend on the model's inputs are
  computed concretely (``jax.ensure_compile_time_eval``): an initializer built in
  ``__call__`` from such values holds arrays there instead of tracers."""

  def __init__(self, modules: Mapping[Path, Any], rerun: Callable[[], Mapping[Path, Any]]):
    super().__init__(modules)
    self._rerun = rerun
    self._concrete: Optional[Mapping[Path, Any]] = None

  def concrete(self) -> Mapping[Path, Any]:
    if self._concrete is None:
      try:
        self._concrete = dict(self._rerun())
      except Exception:  # pylint: disable=broad-except; recovery is best effort
        self._concrete = {}
    return self._concrete


def _own_initializer(leaf: Leaf, module: Any, attr: str, modules: Mapping[Path, Any]):
  """The module's own ``<name>_init`` if it can be called outside discovery's trace;
  one recovered from a concrete re-trace when it holds a tracer; else None, with a
  warning (the caller falls back to Flax's default)."""
  init = getattr(module, attr)
  if not _holds_tracer(init):
    return _unboxed(init, leaf)
  again = modules.concrete() if isinstance(modules, Modules) else {}
  init = getattr(again.get(tuple(leaf.path[:-1])), attr, None)
  if callable(init) and not _holds_tracer(init):
    return _unboxed(init, leaf)
  key = path_str(leaf.path)
  warnings.warn(
      f"the initializer of '{key}' ({type(module).__name__}.{attr}) is built inside the "
      "model's __call__ from a value that depends on the traced inputs, so it cannot be "
      "called outside the model's trace; a reset re-draws this parameter from Flax's "
      f"default for it instead. To choose: discover_groups(..., initializers={{'{key}': "
      'init}).',
      stacklevel=5,
  )
  return None


def initializer(
    leaf: Leaf,
    role: str,
    modules: Mapping[Path, Any],
    overrides: Mapping[str, Any],
    in_axis: Optional[int],
    out_axis: int,
    layer_axis: Optional[int],
):
  """The initializer that re-draws ``leaf``, in the layer's own convention."""
  key = path_str(leaf.path)
  if key in overrides:
    return overrides[key]
  module = modules.get(tuple(leaf.path[:-1]))
  name = leaf.path[-1]
  attr = f'{name}_init'
  if module is not None and callable(getattr(module, attr, None)):
    own = _own_initializer(leaf, module, attr, modules)
    if own is not None:
      return own
  if role == 'kernel':

    def per_layer(axis):
      return (
          None
          if axis is None
          else axis - (1 if layer_axis is not None and axis > layer_axis else 0)
      )

    out_a, in_a = per_layer(out_axis), per_layer(in_axis)
    return jax.nn.initializers.lecun_normal(in_axis=-2 if in_a is None else in_a, out_axis=out_a)
  if name.lower() in _ONES_NAMES or 'scale' in name.lower() or name == 'var':
    return jax.nn.initializers.ones
  return jax.nn.initializers.zeros


def checked_overrides(
    initializers: Optional[Mapping[str, Any]], leaves: Sequence[Leaf]
) -> dict[str, Any]:
  """``initializers`` as a dict, refused when a path names no parameter or a value
  is not an initializer."""
  overrides = dict(initializers or {})
  params = sorted(path_str(leaf.path) for leaf in leaves if leaf.kind == 'param')
  unknown = sorted(k for k in overrides if k not in params)
  if unknown:
    raise GroupError(
        f'initializers names {unknown}, which are not parameters of the model. Parameter '
        f"paths are joined by '/': {params}."
    )
  for k, init in overrides.items():
    if not callable(init):
      raise GroupError(
          f"initializers['{k}'] is {init!r}, not an initializer: give a "
          'function (key, shape, dtype) -> array, e.g. '
          'flax.nnx.initializers.orthogonal().'
      )
  return overrides


def concrete_modules(f, model, sample, kwargs, axis_env) -> Mapping[Path, Any]:
  """The linen modules of the forward pass, recorded by a trace in which what does not
  depend on the inputs is computed concretely (see `Modules`)."""
  tr = as_traceable(f, model, tuple(sample), kwargs, record_modules=True)
  with jax.ensure_compile_time_eval():
    jax.make_jaxpr(tr.fn, axis_env=list(axis_env))(*tr.inputs)
  return tr.modules
