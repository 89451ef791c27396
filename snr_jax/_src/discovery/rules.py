"""The discovery table: everything discovery knows about each primitive, in one place.

`RULES` maps a primitive's name to a `Rule`: its family (``kind``) and its
handlers for each question the walk asks (what the op does to a layer's pre-activation,
to its ReLU output, to a GroupNorm's grouped units; how it moves axes; whether it
passes a dropout mask or a parameter through). A primitive that is not in the table
stops the walk with the reason "reaches '<name>'". `ACTIVATIONS` maps function
(or primitive) names to what kind of activation they are: ``'relu_like'`` calls become
ReLU sites, ``'nonlinear'`` names are how reports name a nonlinearity.

Users extend both with [`register_activation`][snr_jax.register_activation] and
[`register_unit_preserving`][snr_jax.register_unit_preserving],
undone by [`unregister_op`][snr_jax.unregister_op] or on leaving
[`registration_scope`][snr_jax.registration_scope].
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Optional

import jax

from snr_jax._src import jax_compat as _compat, jaxpr as _jaxpr
from snr_jax._src.discovery import layout as _layout, post as _post, pre as _pre
from snr_jax._src.discovery import producers as _producers

# families of primitives
UNIT_PRESERVING = 'unit_preserving'  # casts, copies, layout no-ops: value passes through
PER_OPERAND = 'per_operand'  # result k is operand k (optimization_barrier)
LAYOUT = 'layout'  # moves axes: reshape, transpose, broadcast, ...
ELEMENTWISE = 'elementwise'  # arithmetic of values: bias adds, scales, masks
NONLINEAR = 'nonlinear'  # elementwise nonlinearities (exp, tanh, ...)
COMPARE = 'compare'
SELECT = 'select'
REDUCE = 'reduce'
POOL = 'pool'
CONTRACTION = 'contraction'  # producers and consumers of units
COLLECTIVE = 'collective'
MOVE = 'move'  # slice, concatenate, stack, rev, pad
RELU = 'relu'  # the ReLU sites the graph builder makes
SCAN = 'scan'
RANDOM = 'random'
CUSTOM_CALL = 'custom_call'
OTHER = 'other'

RELU_LIKE = 'relu_like'
ACTIVATION_KINDS = (RELU_LIKE, NONLINEAR)


@dataclasses.dataclass(frozen=True)
class Rule:
  """What discovery knows about one primitive.

  Attributes:
    kind: the primitive's family (the constants above).
    pre: handler on the pre-activation side (`.pre`), ``(wk, op, ts, units, w)``.
    post: handler on the ReLU-output side (`.post`), ``(wk, op, ts, w)``.
    grouped: handler when an operand is the pre-activation cut into groups (GroupNorm).
    axis_map: for ops that move axes, ``(params, in_shape, out_shape)`` -> the input
      axis of each output axis (None: new or merged), `.layout`.
    regroups: the op may merge or split axes (reshape): units are followed by index.
    elementwise: entrywise in its operands, so a parameter combined with constants is
      still that parameter (its axes broadcast), e.g. ``w * 2`` or ``w - mean(w)``.
    param_stat: a reduction, so that of a parameter it is the parameter's statistics
      (a weight standardisation's mean).
    mask: how a dropout mask (a value >= 0 made from booleans) passes: ``'first'``
      (from operand 0), ``'all'`` (a product of masks), ``'div'`` (by a positive
      constant), ``'select'`` (a choice between masks), or None.
    producer: for a contraction, finds its kernel and unit axes (`.producers`).
  """

  kind: str
  pre: Callable = _pre.other
  post: Callable = _post.other
  grouped: Callable = _pre.grouped_refused
  axis_map: Optional[Callable] = None
  regroups: bool = False
  elementwise: bool = False
  param_stat: bool = False
  mask: Optional[str] = None
  producer: Optional[Callable] = None


def _unit_preserving(mask: Optional[str] = 'first') -> Rule:
  return Rule(
      UNIT_PRESERVING,
      _pre.same,
      _post.same,
      _pre.grouped_elementwise,
      _layout.identity_axes,
      mask=mask,
  )


def _layout_rule(axis_map, pre=_pre.layout, post=_post.layout, regroups=False) -> Rule:
  return Rule(LAYOUT, pre, post, axis_map=axis_map, regroups=regroups, mask='first')


_NONLINEAR = Rule(NONLINEAR, _pre.nonlinear, grouped=_pre.grouped_elementwise, elementwise=True)
_ARITHMETIC = Rule(ELEMENTWISE, _pre.binary, grouped=_pre.grouped_elementwise, elementwise=True)
_SUM = dataclasses.replace(_ARITHMETIC, post=_post.combine)
_REDUCE = Rule(REDUCE, _pre.reduce, _post.reduce, _pre.grouped_reduce, param_stat=True)
_POOL = Rule(POOL, _pre.pool, _post.pool)
_COLLECTIVE = Rule(COLLECTIVE, _pre.statistics_or_other)

RULES: dict[str, Rule] = {
    # values pass through: casts, copies, sharding constraints, varying-type marks
    **{name: _unit_preserving() for name in _compat.CASTS + _compat.LAYOUT_NO_OPS},
    'stop_gradient': _unit_preserving(),
    'neg': _unit_preserving(mask=None),  # a negated mask is no mask
    **{name: Rule(PER_OPERAND) for name in _compat.PER_OPERAND},
    # layout
    'reshape': _layout_rule(_layout.reshape_axes, _pre.reshape, _post.reshape, regroups=True),
    'broadcast_in_dim': _layout_rule(_layout.broadcast_axes),
    'transpose': _layout_rule(_layout.transpose_axes),
    'squeeze': _layout_rule(_layout.squeeze_axes),
    'expand_dims': _layout_rule(_layout.expand_axes),
    'slice': Rule(MOVE, _pre.slice_, _post.slice_, mask='first'),
    'concatenate': Rule(MOVE, _pre.statistics_or_other, _post.concatenate),
    'stack': Rule(MOVE, _pre.statistics_or_other),
    'rev': Rule(MOVE, post=_post.rev),
    'pad': Rule(MOVE, post=_post.pad),
    # arithmetic: bias adds, per-unit scales and shifts, dropout masks, pooling maxima
    **{name: _SUM for name in ('add', 'sub', 'add_any', 'max', 'min')},
    'mul': dataclasses.replace(_ARITHMETIC, post=_post.product, mask='all'),
    'div': dataclasses.replace(_ARITHMETIC, post=_post.product, mask='div'),
    **{name: _ARITHMETIC for name in ('pow', 'atan2', 'rem', 'nextafter')},
    'select_n': Rule(SELECT, _pre.select, _post.select, elementwise=True, mask='select'),
    # nonlinearities: no silent state
    **{
        name: _NONLINEAR
        for name in (
            'exp',
            'exp2',
            'log',
            'log1p',
            'expm1',
            'tanh',
            'logistic',
            'sqrt',
            'rsqrt',
            'cbrt',
            'abs',
            'sign',
            'sin',
            'cos',
            'tan',
            'atan',
            'asin',
            'acos',
            'sinh',
            'cosh',
            'asinh',
            'acosh',
            'atanh',
            'erf',
            'erfc',
            'erf_inv',
            'integer_pow',
            'square',
            'floor',
            'ceil',
            'round',
            'is_finite',
            'lgamma',
            'digamma',
        )
    },
    **{name: Rule(COMPARE, _pre.nonlinear) for name in ('ge', 'gt', 'le', 'lt', 'eq', 'ne')},
    # reductions: statistics (norms) before the ReLU, global pooling after it
    **{name: _REDUCE for name in ('reduce_sum', 'reduce_max', 'reduce_min', 'reduce_prod')},
    **{
        name: dataclasses.replace(_REDUCE, param_stat=False) for name in ('reduce_and', 'reduce_or')
    },
    **{name: Rule(REDUCE, _pre.reduce, _post.reduce) for name in ('argmax', 'argmin')},
    **{
        name: _POOL
        for name in ('reduce_window_max', 'reduce_window_sum', 'reduce_window_min', 'reduce_window')
    },
    # collectives over a mapped axis: elementwise across devices, so per-unit statistics
    # (a synchronised BatchNorm's batch mean) stay per-unit
    **{name: _COLLECTIVE for name in _compat.COLLECTIVES},
    # layers: their kernels' producers and consumers
    'dot_general': Rule(CONTRACTION, _pre.contraction, _post.dot, producer=_producers.dot),
    'conv_general_dilated': Rule(
        CONTRACTION, _pre.contraction, _post.conv, producer=_producers.conv
    ),
    'relu': Rule(RELU, _pre.relu, _post.same),
    _compat.SCAN: Rule(SCAN, _pre.scan),
    **{name: Rule(RANDOM) for name in _compat.RANDOM},
}
_CUSTOM = Rule(CUSTOM_CALL, _pre.custom_call)
_OTHER = Rule(OTHER)

# function names (of jax.nn activations, or named jax.jit / custom_jvp functions) and
# registered primitive names: 'relu_like' ones are ReLU sites, 'nonlinear' ones name the
# nonlinearity in reasons
ACTIVATIONS: dict[str, str] = {
    'relu': RELU_LIKE,
    'relu6': RELU_LIKE,
    **{
        name: NONLINEAR
        for name in (
            'gelu',
            'silu',
            'swish',
            'softplus',
            'elu',
            'celu',
            'selu',
            'leaky_relu',
            'sigmoid',
            'hard_tanh',
            'hard_sigmoid',
            'hard_silu',
            'log_sigmoid',
            'mish',
            'glu',
            'sparse_plus',
            'squareplus',
            'tanh',
        )
    },
}
# the informative nonlinearities, best first, for reports
NONLIN_RANK = ('tanh', 'erf', 'logistic', 'exp', 'expm1', 'log1p', 'select_n')

_BUILTIN_RULES = frozenset(RULES)
_BUILTIN_ACTIVATIONS = frozenset(ACTIVATIONS)
_STRUCTURAL = frozenset(_compat.INLINED + (_compat.SCAN, 'relu'))
_USER: set[str] = set()  # names registered by the user


def rule_for(prim: str) -> Rule:
  """The table's rule for a primitive (custom-derivative calls and unknown ops have a
  rule of their own)."""
  r = RULES.get(prim)
  if r is not None:
    return r
  return _CUSTOM if _compat.is_custom_call(prim) else _OTHER


def is_relu_site(eqn) -> bool:
  """Whether an eqn is a ReLU call: ``jax.nn.relu``/``relu6`` (a custom-JVP call of that
  name whose body is a max), or a primitive or call registered as ReLU-like."""
  name = eqn.primitive.name
  if name in _USER and ACTIVATIONS.get(name) == RELU_LIKE:
    return True
  if not (_compat.is_custom_call(name) or name in _compat.JIT):
    return False
  fn = _jaxpr.call_name(eqn)
  if ACTIVATIONS.get(fn) != RELU_LIKE:
    return False
  if fn in _USER:
    return True
  return name == _compat.CUSTOM_JVP_CALL and 'max' in _jaxpr.inner_ops(_compat.sub_jaxpr(eqn))


def better_name(old: str, prim: str, scope_name: str) -> str:
  """The more informative name of a nonlinearity, for reports."""
  if ACTIVATIONS.get(scope_name) == NONLINEAR:
    return scope_name
  if not old:
    return prim
  rank = lambda n: NONLIN_RANK.index(n) if n in NONLIN_RANK else len(NONLIN_RANK)
  return prim if rank(prim) < rank(old) else old


def _primitive_name(primitive: Any, what: str) -> str:
  if isinstance(primitive, _compat.Primitive):
    return primitive.name
  if not isinstance(primitive, str):
    raise TypeError(
        f'{what} takes a primitive (jax.extend.core.Primitive) or its name, got '
        f'{type(primitive).__name__} {primitive!r}.'
    )
  if not primitive or any(c.isspace() for c in primitive):
    raise ValueError(
        f'{what}: {primitive!r} is not a primitive name (a non-empty name '
        "without spaces, as jax.make_jaxpr prints it, e.g. 'my_op')."
    )
  return primitive


def _activation_name(op: Any) -> str:
  if isinstance(op, (str, _compat.Primitive)):
    return _primitive_name(op, 'register_activation')
  if isinstance(op, (jax.custom_jvp, jax.custom_vjp)) or hasattr(op, 'lower'):
    return _primitive_name(getattr(op, '__name__', ''), 'register_activation')
  if callable(op):
    raise TypeError(
        f'register_activation: {getattr(op, "__name__", op)!r} is a plain Python function, '
        'which tracing replaces by the primitives it calls, so it leaves no trace in the '
        'jaxpr to recognise. Wrap it in jax.custom_jvp (as jax.nn.relu is) or jax.jit, or '
        'register its primitive.'
    )
  return _primitive_name(op, 'register_activation')


def _check_free(name: str, what: str) -> None:
  if name in _STRUCTURAL or (
      name not in _USER and (name in _BUILTIN_RULES or name in _BUILTIN_ACTIVATIONS)
  ):
    known = RULES[name].kind if name in RULES else ACTIVATIONS.get(name, 'structural')
    raise ValueError(
        f"{what}: '{name}' is built into discovery (as '{known}') and cannot be " 're-registered.'
    )


def register_activation(op: Any, kind: str = RELU_LIKE) -> None:
  """Registers a custom activation with discovery.

  A ``'relu_like'`` activation is zero exactly where its input is <= 0 and is read like
  ``jax.nn.relu``: a kernel layer whose pre-activation reaches it is a neuron group, its
  firing read on the activation's input. A ``'nonlinear'`` one has no silent state: its
  layer is left out, with a reason that names it.

  Args:
    op: a ``jax.custom_jvp`` / ``jax.custom_vjp`` or ``jax.jit`` function (recognised by
      its name, as it appears in the jaxpr), a ``jax.extend.core.Primitive``, or the
      name of either.
    kind: ``'relu_like'`` (default) or ``'nonlinear'``.

  Raises:
    ValueError: for an unknown ``kind``, a name that is no primitive name, or a name
      built into discovery (``'tanh'``, ``'relu'``, ``'dot_general'``, ...).
    TypeError: for a plain Python function (tracing leaves no call of it to recognise)
      or something that is neither a function, a primitive nor a name.

  Examples:
    >>> import jax, jax.numpy as jnp, snr_jax
    >>> @jax.custom_jvp
    ... def clipped_relu(x):
    ...   return jnp.clip(x, 0.0, 6.0)
    >>> clipped_relu.defjvp(lambda p, t: (clipped_relu(p[0]), t[0] * (p[0] > 0)))
    <function ...>
    >>> with snr_jax.registration_scope():
    ...   snr_jax.register_activation(clipped_relu)
    ...   f = lambda p, x: clipped_relu(x @ p['w1']) @ p['w2']
    ...   p = {'w1': jnp.ones((3, 4)), 'w2': jnp.ones((4, 2))}
    ...   [g.name for g in snr_jax.discover_groups(f, p, jnp.ones((1, 3)))]
    ['w1']
  """
  if kind not in ACTIVATION_KINDS:
    raise ValueError(
        f'register_activation: unknown kind {kind!r}; expected one of ' f'{list(ACTIVATION_KINDS)}.'
    )
  name = _activation_name(op)
  _check_free(name, 'register_activation')
  _remove(name)
  _USER.add(name)
  ACTIVATIONS[name] = kind
  if kind == NONLINEAR:
    RULES[name] = _NONLINEAR


def register_unit_preserving(primitive: Any) -> None:
  """Registers a primitive that passes its operand through, entry by entry, to discovery.

  Discovery then walks through it as through a cast or a sharding constraint: between
  a kernel and its ReLU, and between the ReLU and its consumers, the layer stays a
  neuron group. Use it for a custom primitive with one operand whose result has the
  operand's shape and is, entry by entry, a function of the same entry that keeps
  zeros zero (an identity with a custom gradient, a layout or bookkeeping op).

  Args:
    primitive: a ``jax.extend.core.Primitive`` or its name.

  Raises:
    ValueError: for a name that is no primitive name, or one built into discovery.
    TypeError: for something that is neither a primitive nor a name.

  Examples:
    >>> import jax.numpy as jnp, snr_jax
    >>> from jax.extend import core
    >>> tag = core.Primitive('tag')
    >>> tag.def_impl(lambda x: x)
    <function ...>
    >>> tag.def_abstract_eval(lambda x: x)
    <function ...>
    >>> f = lambda p, x: jnp.maximum(tag.bind(x @ p['w1']), 0) @ p['w2']
    >>> p = {'w1': jnp.ones((3, 4)), 'w2': jnp.ones((4, 2))}
    >>> with snr_jax.registration_scope():
    ...   snr_jax.register_unit_preserving(tag)
    ...   [g.name for g in snr_jax.discover_groups(f, p, jnp.ones((1, 3)))]
    ['w1']
  """
  name = _primitive_name(primitive, 'register_unit_preserving')
  _check_free(name, 'register_unit_preserving')
  _remove(name)
  _USER.add(name)
  RULES[name] = _unit_preserving()


def _remove(name: str) -> None:
  if name in _USER:
    _USER.discard(name)
    RULES.pop(name, None)
    ACTIVATIONS.pop(name, None)


def unregister_op(op: Any) -> None:
  """Undoes [`register_activation`][snr_jax.register_activation] or
  [`register_unit_preserving`][snr_jax.register_unit_preserving] for ``op``.

  Args:
    op: what was registered (the function, the primitive or the name).

  Raises:
    ValueError: when ``op`` was not registered (built-in rules cannot be removed).
  """
  name = op if isinstance(op, str) else _activation_name(op)
  if name not in _USER:
    raise ValueError(
        f"unregister_op: '{name}' was not registered"
        + (' (it is built into discovery).' if name in RULES or name in ACTIVATIONS else '.')
    )
  _remove(name)


@contextlib.contextmanager
def registration_scope() -> Iterator[None]:
  """A context in which registrations are temporary: on leaving it, the discovery
  table is as it was on entering (registrations made inside are undone, and ones
  removed inside are restored).

  Examples:
    >>> import snr_jax
    >>> with snr_jax.registration_scope():
    ...   snr_jax.register_unit_preserving('my_tag')
  """
  rules, activations, user = dict(RULES), dict(ACTIVATIONS), set(_USER)
  try:
    yield
  finally:
    RULES.clear()
    RULES.update(rules)
    ACTIVATIONS.clear()
    ACTIVATIONS.update(activations)
    _USER.clear()
    _USER.update(user)
