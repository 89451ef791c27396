"""Argument checks shared by the constructors: clear errors before tracing."""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from typing import Any, Iterator, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from snr_jax._src import optional as _optional

_BOOLS = (bool, np.bool_)
# read by float() but not numbers: True is 1, '0.1' is a string
_NOT_NUMBERS = _BOOLS + (str, bytes)

# The one path for numeric arguments, used by every public constructor: Python and NumPy
# scalars (and 0-d arrays) are accepted; bools, strings and other types are refused with
# the argument's name, the range and what was given.


def _got(value: Any) -> str:
  """How a refused value is shown: its repr, and its type where the repr hides it."""
  if isinstance(value, _BOOLS):
    return f'{value!r} (a bool, which is not a number here)'
  if isinstance(value, (int, float)) and not isinstance(value, _BOOLS):
    return repr(value)
  return f'{value!r} ({type(value).__name__})'


def _interval(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
  return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def number_in(
    name: str,
    value: Any,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    error: type = ValueError,
) -> Any:
  """Checks ``lo <(=) value <(=) hi`` and returns the value as a float.

  A traced value (a hyperparameter swept with vmap) cannot be checked before it runs:
  it is returned as is.
  """
  if isinstance(value, jax.core.Tracer):
    return value
  interval = _interval(lo, hi, lo_open, hi_open)
  try:
    v = float(value)
  except (TypeError, ValueError):
    v = math.nan
  inside = (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
  if isinstance(value, _NOT_NUMBERS) or not inside:  # NaN fails the comparisons
    raise error(f'{name} must be a number in {interval}, got {_got(value)}.')
  return v


def number_at_least(name: str, value: Any, lo: float, *, error: type = ValueError) -> float:
  """Checks that ``value`` is a real number (Python or NumPy, not NaN) ``>= lo``; a float."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    v = math.nan
  if isinstance(value, _NOT_NUMBERS) or not v >= lo:  # NaN fails the comparison
    raise error(f'{name} must be a number >= {lo:g}, got {_got(value)}.')
  return v


def positive_number(name: str, value: Any, *, error: type = ValueError) -> float:
  """Checks that ``value`` is a finite or infinite real number ``> 0``; a float."""
  return number_in(name, value, 0.0, math.inf, lo_open=True, error=error)


def integer_in(
    name: str,
    value: Any,
    lo: Optional[int] = None,
    hi: Optional[int] = None,
    *,
    what: str = '',
    error: type = ValueError,
) -> int:
  """Checks that ``value`` is an int (Python or NumPy, not a bool) in ``[lo, hi]``.

  Returns it as a Python int. ``lo=None`` (or ``hi=None``) leaves that side open.
  """
  if lo is not None and hi is not None:
    kind = f'an int in [{lo}, {hi}]'
  elif lo is not None:
    kind = 'a positive int' if lo == 1 else f'an int >= {lo}'
  else:
    kind = 'an int' if hi is None else f'an int <= {hi}'
  if (
      isinstance(value, _BOOLS)
      or not isinstance(value, (int, np.integer))
      or (lo is not None and value < lo)
      or (hi is not None and value > hi)
  ):
    raise error(f'{name} must be {kind}{what}, got {_got(value)}.')
  return int(value)


def positive_int(name: str, value: Any, *, what: str = '', error: type = ValueError) -> int:
  """Checks that ``value`` is an int ``>= 1`` (Python or NumPy, not a bool); a Python int."""
  return integer_in(name, value, 1, what=what, error=error)


def optional(check: Any, name: str, value: Any, *args, **kwargs) -> Any:
  """``None``, or ``check(name, value, *args, **kwargs)``."""
  return None if value is None else check(name, value, *args, **kwargs)


class _DefaultKey:
  """The default of a constructor's ``key``, the seed 0: a sentinel, so that ``key=`` and
  its deprecated name ``seed=`` given together are an error."""

  def __repr__(self) -> str:
    return '0'


DEFAULT_KEY: Any = _DefaultKey()


def key_or_seed(where: str, key: Any, seed: Any) -> Any:
  """A constructor's ``key``, or its deprecated ``seed=`` with a ``DeprecationWarning``.

  Raises:
    TypeError: both ``key=`` and ``seed=`` given.
  """
  if seed is None:
    return 0 if key is DEFAULT_KEY else key
  if key is not DEFAULT_KEY:
    raise TypeError(
        f'{where}() got both key= and seed=: pass key= only (seed= is its ' 'deprecated name).'
    )
  warnings.warn(
      f'{where}(seed=...) is deprecated and will be removed in the next release: '
      'pass key= (an int seed or a PRNG key, as seed= took).',
      DeprecationWarning,
      stacklevel=3,
  )
  return seed


def prng_key(name: str, value: Any) -> jax.Array:
  """An int seed (Python or NumPy) or a PRNG key, as a key. Anything else is an error."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, _BOOLS):
    return jax.random.PRNGKey(int(value))
  if isinstance(value, jax.core.Tracer):
    return value
  if isinstance(value, (jax.Array, np.ndarray)):
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key) and value.shape == ():
      return value
    if value.dtype == np.uint32 and value.shape == (2,):
      return jnp.asarray(value)
    if value.shape == () and jnp.issubdtype(value.dtype, jnp.integer):
      return jax.random.PRNGKey(int(value))
  raise ValueError(
      f'{name} must be an int seed or a PRNG key (jax.random.key(0) or '
      f'jax.random.PRNGKey(0)), got {value!r}.'
  )


def state_type(name: str, value: Any, state_type: type, made_by: str) -> None:
  """Checks that a method's state is the NamedTuple its ``init`` returns."""
  if not isinstance(value, state_type):
    hint = (
        " (plain containers come from, e.g., the inner optimizer's state or a "
        f'checkpoint restored without a target: restore with {made_by} as the target)'
        if isinstance(value, (dict, list, tuple))
        else ''
    )
    raise TypeError(
        f'{name} must be the {state_type.__name__} returned by {made_by}, got '
        f'{type(value).__name__}{hint}.'
    )


def optax_transformation(name: str, value: Any) -> Any:
  """Checks that ``value`` is an optax transformation (``init`` and ``update``)."""
  if callable(getattr(value, 'init', None)) and callable(getattr(value, 'update', None)):
    return value
  if callable(value):
    fn = getattr(value, '__qualname__', None) or repr(value)
    raise ValueError(
        f'{name} must be an optax transformation, got the function {fn} itself: '
        f'call it with its hyperparameters, e.g. optax.sgd(1e-2).'
    )
  raise ValueError(
      f'{name} must be an optax transformation such as optax.sgd(1e-2) or '
      f'optax.adam(1e-3), got {type(value).__name__} {value!r}.'
  )


def optax_transformation_or_none(name: str, value: Any) -> Any:
  """None, or an optax transformation (see `optax_transformation`)."""
  return None if value is None else optax_transformation(name, value)


def no_extra_positional(args: tuple, what: str = 'update') -> None:
  """Refuses positional arguments after ``params``: the reset arguments are keywords."""
  if args:
    kinds = ', '.join(type(a).__name__ for a in args)
    raise TypeError(
        f'{what} takes (grads, state, params) positionally, got {len(args)} more ({kinds}): '
        'pass the pre-activations by keyword, update(grads, state, params, '
        'activations=acts), and likewise end_of_task= and key=.'
    )


def rule_state(value: Any, rule: Any) -> None:
  """Checks that a reset rule's state is the kind its ``init`` makes (rules that declare
  ``state_type``): another method's state is an error naming both."""
  want = getattr(rule, 'state_type', None)
  if want is not None and not isinstance(value, want):
    raise TypeError(
        f'the optimizer state holds a {type(value).__name__}, but this optimizer resets with '
        f'{type(rule).__name__}, whose state is of type {want.__name__}: the state was made by '
        "another method's init. Initialise it with this optimizer: tx.init(params)."
    )


# Set on the update of a method that accepts the reset arguments and ignores them (none,
# L2, L2 Init, Shrink & Perturb), so apply_gradients can tell it from a plain optimizer.
IGNORES_RESET_ARGS = '_snr_jax_ignores_reset_args'


def ignores_reset_args(update_fn: Any) -> Any:
  """Marks ``update_fn`` as accepting and ignoring ``activations=`` (see above)."""
  setattr(update_fn, IGNORES_RESET_ARGS, True)
  return update_fn


def neuron_groups(value: Any, group_type: type, error: type = ValueError) -> tuple:
  """Groups as a tuple: a single group is accepted; names or other objects are errors."""
  if isinstance(value, group_type):
    return (value,)
  hint = (
      'pass NeuronGroup objects, e.g. snr_jax.discover_groups(model, params, x) or '
      'snr_jax.dense_group(...)'
  )
  if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
    raise error(f'groups must be a list of NeuronGroup; got {value!r}: {hint}.')
  wrong = [g for g in value if not isinstance(g, group_type)]
  if wrong:
    raise error(
        f'groups must be NeuronGroup objects, got {wrong!r}'
        f'{" (names)" if all(isinstance(g, str) for g in wrong) else ""}: {hint}.'
    )
  return tuple(value)


def model_variables(kind: str, args: tuple, what: str, error: type = ValueError) -> None:
  """A linen module's call takes its variables (or params) before the sample inputs: an
  array there means they were forgotten (Flax's own error does not say so)."""
  if kind != 'linen' or (args and isinstance(args[0], Mapping)):
    return
  got = (
      f'{type(args[0]).__name__} of shape {tuple(np.shape(args[0]))}'
      if args and hasattr(args[0], 'shape')
      else (type(args[0]).__name__ if args else 'nothing')
  )
  raise error(
      f"{what}(module, variables, *sample_inputs) takes the module's variables (or "
      f'its params) before the sample inputs, got {got} first: pass them, e.g. '
      f"{what}(model, params, x) with params = model.init(key, x)['params']."
  )


@contextlib.contextmanager
def tracing_model(
    what: str, args: tuple, kwargs: Mapping[str, Any], error: type = ValueError
) -> Iterator[None]:
  """Turns two errors of tracing a model's forward pass into ones that name the fix: a
  flag given as an array (a Python ``if`` on a traced value), and a collection the call
  updates but was not made mutable (BatchNorm in training mode)."""
  modify_scope_error = _optional.flax_error('ModifyScopeVariableError')
  try:
    yield
  except jax.errors.ConcretizationTypeError as e:
    scalar = lambda v: isinstance(v, (jax.Array, np.ndarray, np.generic)) and np.ndim(v) == 0
    named = [f'{k}={v!r}' for k, v in kwargs.items() if scalar(v)]
    named += [f'argument {i} ({v!r})' for i, v in enumerate(args) if scalar(v)]
    which = (
        f' ({", ".join(named)} {"is an array" if len(named) == 1 else "are arrays"})'
        if named
        else ''
    )
    raise error(
        f'{what} traces every array argument, and the forward pass needs the value of one '
        f'in Python, e.g. an `if` on a flag{which}: pass flags and other settings as Python '
        'values (a bool, int or str), e.g. train=True rather than jnp.array(True).'
    ) from e
  except modify_scope_error as e:
    col = re.search(r'collection "([^"]+)"', str(e))
    col = col.group(1) if col else 'batch_stats'
    raise error(
        f"the forward pass updates the '{col}' collection (BatchNorm in training mode, "
        f"say), which this call does not make mutable: pass mutable=['{col}'] to {what}, "
        'as to model.apply in training (or call the model in evaluation mode).'
    ) from e


def flag(name: str, value: Any) -> Any:
  """A bool, or a bool/int scalar array (possibly traced); strings and others are errors."""
  if isinstance(value, _BOOLS) or (type(value) is int and value in (0, 1)):
    return value
  if (
      isinstance(value, (jax.Array, np.ndarray))
      and value.shape == ()
      and (value.dtype == bool or jnp.issubdtype(value.dtype, jnp.integer))
  ):
    return value
  raise ValueError(
      f'{name} must be a bool (or a bool scalar array), got {value!r} ' f'({type(value).__name__}).'
  )


def activation_keys(groups: Sequence[Any], activations: Any, error: type = ValueError) -> None:
  """Unknown keys (a misspelled group name) and empty batches are errors."""
  if not isinstance(activations, Mapping):
    return  # the shape checks name this
  names = {g.name for g in groups}
  unknown = sorted(str(k) for k in activations if k not in names)
  if unknown:
    raise error(
        f'activations have keys {unknown} that match no neuron group (the groups '
        f'are {sorted(names)}): fix the names, or drop the extra keys.'
    )
  for k, a in activations.items():
    shape = getattr(a, 'shape', None)
    if shape and any(d == 0 for d in shape[:-1]):
      raise error(
          f"activation of group '{k}' has shape {tuple(shape)}: an empty batch. "
          'Call update only with at least one example.'
      )


def axis_name_or_none(name: str, value: Any) -> Any:
  """Checks that an axis name argument is None or a hashable name (a str, usually)."""
  if value is None or isinstance(value, str):
    return value
  try:
    hash(value)
  except TypeError:
    raise ValueError(f'{name} must be an axis name (a str) or None, got {value!r}.') from None
  return value


def bound_axis(name: str, axis: Any) -> None:
  """Raises a clear error when ``axis`` names no enclosing mapped axis (at trace time)."""
  if axis is None:
    return
  import jax  # pylint: disable=import-outside-toplevel

  try:
    jax.lax.axis_size(axis)
  except NameError:
    raise ValueError(
        f'{name}={axis!r} names no enclosing mapped axis: call the update inside '
        f'shard_map, pmap or vmap over an axis of that name, or leave {name} unset (jit '
        'with sharded inputs needs none).'
    ) from None
