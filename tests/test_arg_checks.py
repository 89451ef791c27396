"""Every public constructor's integer and float arguments go through one check path
(snr_jax/_src/checks.py): Python and NumPy scalars are accepted; bools, strings and other
types are refused with an error naming the argument; out-of-range values are refused.

The table below lists, for each public callable, a builder that runs its check path and
its numeric arguments. ``test_every_public_numeric_argument_is_in_the_table`` reads the
signatures of ``snr_jax.__all__``, so a new constructor or argument cannot be forgotten.
"""

import inspect
import re
import typing

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import snr_jax

# A plain-function MLP (no flax): what the builders need.
_PARAMS = {
    'l1': {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros((4,))},
    'l2': {'kernel': jnp.ones((4, 2)), 'bias': jnp.zeros((2,))},
}
_GROUP = snr_jax.dense_group('h', 4, layer='l1', consumer='l2')
_GROUPS = [_GROUP]
_INIT = lambda key: jax.tree.map(jnp.zeros_like, _PARAMS)
_SGD = optax.sgd(0.1)


def _snr_state():
  return snr_jax.snr(_SGD, _GROUPS).init(_PARAMS)


def _group(**kw):
  """A NeuronGroup is a record: its numbers are checked by validate_groups."""
  s = kw.pop('slice', {})
  inc = (
      snr_jax.ParamSlice(
          ('l1', 'kernel'),
          s.get('axis', -1),
          jax.nn.initializers.zeros,
          layer_axis=s.get('layer_axis'),
      ),
  )
  return snr_jax.validate_groups(
      [snr_jax.NeuronGroup('h', kw.get('size', 4), inc, layers=kw.get('layers', 1))], _PARAMS
  )


# kind: 'int' (an integer), 'number' (a real number); ok: a valid value; bad: out of range
# (None where every value of the type is valid).
INT, NUM = 'int', 'number'
_SNR = {
    'eta': (NUM, 0.1, 1.5),
    'tau_init': (INT, 200, 0),
    'tau_min': (INT, 10, 0),
    'tau_max': (INT, 100, 0),
    'expansion': (NUM, 3.0, 0.5),
    'batch_size': (INT, 4, 0),
    'state_budget': (INT, 2**20, 0),
}  # SNR's hyperparameters
TABLE = {
    'snr': (lambda **kw: snr_jax.snr(_SGD, _GROUPS, **kw), {**_SNR}),
    'self_normalized_resets': (
        lambda **kw: snr_jax.self_normalized_resets(_GROUPS, **kw),
        {**_SNR, 'eta': (NUM, 0.1, 0.0), 'tau_min': (INT, 10, -1)},
    ),
    'snr_l2': (
        lambda **kw: snr_jax.snr_l2(_SGD, _GROUPS, **kw),
        {**_SNR, 'strength': (NUM, 1e-3, -1.0)},
    ),
    'redo': (
        lambda **kw: snr_jax.redo(_SGD, _GROUPS, **kw),
        {'threshold': (NUM, 0.1, -0.1), 'period': (INT, 10, 0)},
    ),
    'ReDoRule': (snr_jax.ReDoRule, {'threshold': (NUM, 0.1, -0.1), 'period': (INT, 10, 0)}),
    'continual_backprop': (
        lambda **kw: snr_jax.continual_backprop(_SGD, _GROUPS, **kw),
        {'replacement_rate': (NUM, 1e-3, 1.5), 'maturity': (INT, 10, -1), 'decay': (NUM, 0.9, 1.0)},
    ),
    'CBPRule': (
        snr_jax.CBPRule,
        {
            'replacement_rate': (NUM, 1e-3, -0.1),
            'maturity': (INT, 10, -1),
            'decay': (NUM, 0.9, 1.0),
        },
    ),
    'shrink_perturb': (
        lambda **kw: snr_jax.shrink_perturb(_SGD, _INIT, **kw),
        {'shrink': (NUM, 0.9, 0.0), 'sigma': (NUM, 0.01, -1.0)},
    ),
    'l2': (lambda **kw: snr_jax.l2(_SGD, **kw), {'strength': (NUM, 1e-3, -1.0)}),
    'l2_init': (lambda **kw: snr_jax.l2_init(_SGD, **kw), {'strength': (NUM, 1e-3, -1.0)}),
    'add_l2': (snr_jax.add_l2, {'strength': (NUM, 1e-3, -1.0)}),
    'add_l2_init': (snr_jax.add_l2_init, {'strength': (NUM, 1e-3, -1.0)}),
    'every_n_steps': (snr_jax.every_n_steps, {'n': (INT, 5, 0, 'period')}),
    'every_n_tasks': (snr_jax.every_n_tasks, {'k': (INT, 5, 0, 'period')}),
    'at_random': (snr_jax.at_random, {'prob': (NUM, 0.01, 1.5)}),
    'RefreshSchedule': (
        lambda **kw: snr_jax.RefreshSchedule('steps', **kw),
        {'every': (INT, 5, 0, 'period')},
    ),
    'RefreshSchedule.prob': (
        lambda **kw: snr_jax.RefreshSchedule('random', **kw),
        {'prob': (NUM, 0.5, 0.0)},
    ),
    'HistogramEstimator': (
        lambda **kw: snr_jax.HistogramEstimator(**{'eta': 0.1, 'tau_min': 1, 'tau_max': 10, **kw}),
        {
            'eta': (NUM, 0.2, 1.0),
            'tau_min': (INT, 2, 0),
            'tau_max': (INT, 20, 0),
            'expansion': (NUM, 3.0, 0.5),
        },
    ),
    'GeometricEstimator': (
        lambda **kw: snr_jax.GeometricEstimator(**{'eta': 0.1, 'tau_min': 1, 'tau_max': 10, **kw}),
        {
            'eta': (NUM, 0.2, 0.0),
            'tau_min': (INT, 2, 0),
            'tau_max': (INT, 20, 0),
            'expansion': (NUM, 3.0, 0.5),
        },
    ),
    'PerTokenEstimator': (
        lambda **kw: snr_jax.PerTokenEstimator(**{'eta': 0.1, 'tau_min': 1, 'tau_max': 10, **kw}),
        {'eta': (NUM, 0.2, 1.0), 'tau_min': (INT, 2, 0), 'tau_max': (INT, 20, 0)},
    ),
    'dense_group': (lambda **kw: snr_jax.dense_group('h', layer='l1', **kw), {'size': (INT, 4, 0)}),
    'NeuronGroup': (_group, {'size': (INT, 4, 0), 'layers': (INT, 1, 0)}),
    'ParamSlice': (
        lambda **kw: _group(slice=kw),
        {'axis': (INT, 1, None), 'layer_axis': (INT, 0, None)},
    ),
    'dead_fraction': (
        lambda **kw: snr_jax.dead_fraction(jnp.zeros(3, jnp.int32), **kw),
        {'dead_after': (NUM, 10, 0)},
    ),
    'reset_metrics': (
        lambda **kw: snr_jax.reset_metrics(_snr_state(), **kw),
        {'dead_after': (NUM, 10, 0)},
    ),
}

# Public callables with numeric-looking arguments that are not checked here, and why.
EXEMPT = {
    'SNRRule': 'built by self_normalized_resets, which checks tau_init and batch_size',
    'Site': 'a record discover_groups writes (where a ReLU is in the traced forward pass)',
}


def _cases():
  for name, (build, args) in TABLE.items():
    for arg, (kind, ok, bad, *word) in args.items():
      yield pytest.param(
          name, build, arg, kind, ok, bad, word[0] if word else arg, id=f'{name}-{arg}'
      )


@pytest.mark.parametrize('name, build, arg, kind, ok, bad, word', list(_cases()))
def test_numeric_argument(name, build, arg, kind, ok, bad, word):
  if name.split('.')[0] not in snr_jax.__all__:
    pytest.skip(f'{name} is no longer public')

  def _refused(build, arg, value):
    with pytest.raises(ValueError) as info:
      build(**{arg: value})
    assert word.split('_')[0] in str(info.value), str(info.value)  # names the argument
    return str(info.value)

  build(**{arg: ok})  # a Python scalar
  if kind == INT:
    build(**{arg: np.int64(ok)})  # NumPy integers are integers
    build(**{arg: np.int32(ok)})
    _refused(build, arg, float(ok) + 0.5)  # a float is not an int
  else:
    build(**{arg: np.float32(ok)})  # NumPy floats are numbers
    build(**{arg: np.float64(ok)})
    _refused(build, arg, float('nan'))
  for flag in (True, np.bool_(True), False):  # True is 1, but not a number here
    assert 'bool' in _refused(build, arg, flag)
  for wrong in (str(ok), [ok], object()):  # '0.1' reads as a number, but is a str
    _refused(build, arg, wrong)
  if bad is not None:
    _refused(build, arg, bad)
    _refused(build, arg, np.int64(bad) if kind == INT else np.float32(bad))


def _numeric(annotation: str) -> bool:
  """int or float, alone or Optional/Union with None (not inside a container)."""
  a = re.sub(r'\s', '', annotation)
  a = re.sub(r'^Optional\[(.*)\]$', r'\1', a)
  return any(p in ('int', 'float') for p in re.split(r'[|,]', re.sub(r'^Union\[(.*)\]$', r'\1', a)))


def _numeric_args(obj) -> set[str]:
  try:
    sig = inspect.signature(obj)
  except (TypeError, ValueError):
    return set()
  out = set()
  for p in sig.parameters.values():
    if p.name in ('seed', 'key'):  # an int or a PRNG key: test_seeds_... below
      continue
    a = p.annotation
    a = a if isinstance(a, str) else getattr(a, '__name__', None) or str(a)
    default_is_number = type(p.default) in (int, float)
    if _numeric(a) or default_is_number:
      out.add(p.name)
  return out


def test_every_public_numeric_argument_is_in_the_table():
  covered = {}
  for name, (_, args) in TABLE.items():
    covered.setdefault(name.split('.')[0], set()).update(args)
  missing = {}
  for name in snr_jax.__all__:
    obj = getattr(snr_jax, name)
    if not callable(obj) or name in EXEMPT:
      continue
    if isinstance(obj, type) and issubclass(obj, tuple):  # NamedTuple states hold arrays
      continue
    left = _numeric_args(obj) - covered.get(name, set())
    if left:
      missing[name] = sorted(left)
  assert not missing, (
      f'public numeric arguments with no row in TABLE (add them, or to '
      f'EXEMPT with a reason): {missing}'
  )


def _seed_name(fn) -> str:
  params = inspect.signature(fn).parameters
  return 'key' if 'key' in params else 'seed'


@pytest.mark.parametrize(
    'fn, args',
    [
        (snr_jax.snr, (_SGD, _GROUPS)),
        (snr_jax.redo, (_SGD, _GROUPS)),
        (snr_jax.continual_backprop, (_SGD, _GROUPS)),
        (snr_jax.shrink_perturb, (_SGD, _INIT)),
        (snr_jax.snr_l2, (_SGD, _GROUPS)),
    ],
)
def test_seeds_take_numpy_ints_and_keys_and_refuse_bools(fn, args):
  name = _seed_name(fn)
  for good in (3, np.int64(3), np.uint32(3), jax.random.key(3), jax.random.PRNGKey(3)):
    fn(*args, **{name: good})
  for wrong in (True, np.bool_(False), 1.5, '3', None):
    with pytest.raises(ValueError, match='seed|key'):
      fn(*args, **{name: wrong})


def test_make_method_goes_through_the_same_checks():
  tx = snr_jax.make_method('redo', _SGD, groups=_GROUPS, period=np.int64(3))
  assert tx is not None
  with pytest.raises(ValueError, match='period must be a positive int.*bool'):
    snr_jax.make_method('redo', _SGD, groups=_GROUPS, period=True)


def test_annotations_are_read():
  assert _numeric('Optional[int]') and _numeric('float') and _numeric('int | None')
  assert not _numeric('tuple[int, ...]') and not _numeric('Sequence[tuple[str, int]]')
  assert typing.get_origin(typing.Optional[int]) is typing.Union
