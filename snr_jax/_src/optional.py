"""flax is optional: the core needs jax, optax and numpy only.

linen and NNX support asks here for flax's modules. An object can only be a flax
Module, Variable or box when flax has been imported by whoever made it, so the type tests
below look in ``sys.modules`` and never import flax themselves: a plain-function, haiku or
equinox user does not pay flax's import, and one without flax installed gets no error.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any, Optional

INSTALL_HINT = "pip install 'snr_jax[flax]' (or pip install flax)"


def flax_or_none(name: str = 'flax') -> Optional[ModuleType]:
  """The flax (sub)module ``name`` (e.g. ``'flax.nnx'``), imported; None without flax."""
  try:
    return importlib.import_module(name)
  except ImportError:
    return None


def require_flax(name: str = 'flax', what: str = 'this') -> ModuleType:
  """The flax (sub)module ``name``; an ImportError naming the extra without flax."""
  module = flax_or_none(name)
  if module is None:
    raise ImportError(f'{what} needs flax, which is not installed: {INSTALL_HINT}.')
  return module


def loaded(name: str) -> Optional[ModuleType]:
  """The flax (sub)module ``name`` if something has imported it already, else None."""
  return sys.modules.get(name)


def _instance(x: Any, module: str, cls: str) -> bool:
  m = loaded(module)
  return m is not None and isinstance(x, getattr(m, cls))


def is_linen_module(x: Any) -> bool:
  """``isinstance(x, flax.linen.Module)``, without importing flax."""
  return _instance(x, 'flax.linen', 'Module')


def is_nnx_module(x: Any) -> bool:
  """``isinstance(x, flax.nnx.Module)``, without importing flax."""
  return _instance(x, 'flax.nnx', 'Module')


def is_nnx_variable(x: Any) -> bool:
  """``isinstance(x, flax.nnx.Variable)``, without importing flax."""
  return _instance(x, 'flax.nnx', 'Variable')


def is_axis_metadata(x: Any) -> bool:
  """A flax partitioning box (``flax.core.meta.AxisMetadata``), without importing flax."""
  return _instance(x, 'flax.core.meta', 'AxisMetadata')


class _Never(Exception):
  """Stands for a flax exception class when flax is not loaded: nothing raises it."""


def flax_error(name: str) -> type:
  """The exception class ``flax.errors.<name>`` if flax is loaded, else one never raised
  (for ``except`` clauses around user code that can raise it only if it uses flax)."""
  errors = loaded('flax.errors')
  return getattr(errors, name, _Never) if errors is not None else _Never


class LazyModule:
  """Stands for a flax module at import time (``nn = LazyModule('flax.linen')``): it is
  imported at the first attribute read, i.e. when linen or NNX support is used. Type tests
  go through the ``is_*`` functions above instead, which never import."""

  def __init__(self, name: str):
    self._name = name

  def __getattr__(self, attr: str) -> Any:
    if attr.startswith('__'):
      raise AttributeError(attr)
    return getattr(require_flax(self._name, f'{self._name}.{attr}'), attr)

  def __repr__(self) -> str:
    return f'<lazy {self._name}>'
