"""One calling convention for the three kinds of model: linen, NNX and plain functions.

Discovery and capture both trace the model's forward pass as a function of its array
inputs. `as_traceable` turns ``(f, args, kwargs)`` into such a function, the list
of its array inputs, the path of each input in the params tree (``None`` for data), and
a way to finish the call (NNX modules take back their updated state).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np

from snr_jax._src import jax_compat as _compat, optional as _optional
from snr_jax._src.util import key_path_to_path

nn = _optional.LazyModule('flax.linen')  # flax is optional: imported for linen/NNX models
nnx = _optional.LazyModule('flax.nnx')

Path = tuple[str, ...]


def is_array(x: Any) -> bool:
  return isinstance(x, (jax.Array, np.ndarray, np.generic)) or isinstance(x, _compat.Tracer)


@dataclasses.dataclass
class Leaf:
  """One array input of the traced function.

  Attributes:
    path: its path in the params tree (params), in the model state (state: BatchNorm
      statistics and other collections), or None (data).
    kind: ``'param'``, ``'state'`` or ``'data'``.
  """

  path: Optional[Path]
  kind: str
  shape: tuple = ()


@dataclasses.dataclass
class Traceable:
  fn: Callable[..., Any]  # array inputs -> flat outputs
  inputs: list[Any]  # the array inputs
  leaves: list[Leaf]  # what each input is
  finish: Callable[[Any], Any]  # model output (unflattened) -> what the caller gets
  modules: dict[Path, Any]  # module path -> module object (linen), for initializers


def model_kind(f: Any) -> str:
  if _optional.is_linen_module(f):
    return 'linen'
  if _optional.is_nnx_module(f):
    return 'nnx'
  if callable(f):
    return 'function'
  raise TypeError(
      f'expected a flax linen Module, an nnx.Module or a function f(params, *args), '
      f'got {type(f).__name__}.'
  )


def _split(tree: Any, kinds: list[Leaf]):
  """Array leaves of ``tree`` (dynamic) and a rebuild function taking new arrays."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  dyn_idx = [i for i, x in enumerate(leaves) if is_array(x)]

  def rebuild(dyn):
    out = list(leaves)
    for i, x in zip(dyn_idx, dyn):
      out[i] = x
    return jax.tree_util.tree_unflatten(treedef, out)

  return [leaves[i] for i in dyn_idx], [kinds[i] for i in dyn_idx], rebuild


def _leaf_kinds(tree: Any, classify: Callable[[Path, Any], Leaf]) -> list[Leaf]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [classify(key_path_to_path(kp), x) for kp, x in flat]


def as_traceable(
    f: Any, model: Any, args: tuple, kwargs: dict, record_modules: bool = False
) -> Traceable:
  """Builds the traced form of ``f``'s forward pass.

  Args:
    f: a linen Module, an nnx.Module or a function ``f(params, *args, **kwargs)``.
    model: what the call reads its weights from: the variables (or params) for linen,
      the module itself for NNX, the params tree for a function.
    args, kwargs: the call's other arguments; array leaves are traced, the rest static.
    record_modules: for linen, remember each module called (to find initializers).
  """
  kind = model_kind(f)
  modules: dict[Path, Any] = {}

  def finish(out):  # NNX replaces it: the module takes back its updated state
    return out

  if kind == 'linen':
    # FrozenDict variables are a Mapping but not a dict: wrapping them again would hand
    # apply {'params': {'params': ...}}
    variables = model if isinstance(model, Mapping) and 'params' in model else {'params': model}

    def classify(path, _):
      if path[0] == 'params':
        return Leaf(path[1:], 'param')
      return Leaf(path, 'state')

    def call(variables, args, kwargs):
      if not record_modules:
        return f.apply(variables, *args, **kwargs)

      def interceptor(next_fun, fargs, fkwargs, context):
        modules.setdefault(tuple(context.module.path), context.module)
        return next_fun(*fargs, **fkwargs)

      with nn.intercept_methods(interceptor):
        return f.apply(variables, *args, **kwargs)

    tree = (variables, args, kwargs)
  elif kind == 'nnx':
    graphdef, state = nnx.split(model)
    params_state = nnx.state(model, nnx.Param)
    param_paths = {
        key_path_to_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params_state)[0]
    }

    def classify(path, _):
      return Leaf(path, 'param' if path in param_paths else 'state')

    def call(state, args, kwargs):
      m = nnx.merge(graphdef, state)
      out = m(*args, **kwargs)
      return out, nnx.state(m)

    def finish(result):  # noqa: F811
      out, new_state = result
      nnx.update(model, new_state)
      return out

    tree = (state, args, kwargs)
  else:

    def classify(path, _):
      return Leaf(path, 'param')

    def call(params, args, kwargs):
      return f(params, *args, **kwargs)

    tree = (model, args, kwargs)

  data = [Leaf(None, 'data')] * len(jax.tree_util.tree_leaves((tree[1], tree[2])))
  inputs, leaves, rebuild = _split(tree, _leaf_kinds(tree[0], classify) + data)

  def fn(*dyn):
    return call(*rebuild(list(dyn)))

  return Traceable(fn, inputs, leaves, finish, modules)
