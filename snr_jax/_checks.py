"""Argument checks shared by the constructors: clear errors before tracing."""

from __future__ import annotations

from typing import Any

import jax


def number_in(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False,
              hi_open: bool = False) -> Any:
  """Checks ``lo <(=) value <(=) hi`` and returns the value as a float.

  A traced value (a hyperparameter swept with vmap) cannot be checked before it runs:
  it is returned as is.
  """
  if isinstance(value, jax.core.Tracer):
    return value
  interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise ValueError(f'{name} must be a number in {interval}, got {value!r}.') from None
  if isinstance(value, bool) or not ((lo < v if lo_open else lo <= v)
                                     and (v < hi if hi_open else v <= hi)):
    raise ValueError(f'{name} must be a number in {interval}, got {value!r}.')
  return v
