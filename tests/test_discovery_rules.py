"""Registering ops with discovery: custom activations and unit-preserving primitives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jex_core

import snr_jax
from snr_jax._src.discovery import rules


@jax.custom_jvp
def clipped_relu(x):
  return jnp.clip(x, 0.0, 6.0)


@clipped_relu.defjvp
def _clipped_relu_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  return clipped_relu(x), t * ((x > 0) & (x < 6))


@jax.custom_vjp
def vjp_relu(x):
  return jnp.maximum(x, 0.0)


vjp_relu.defvjp(lambda x: (vjp_relu(x), x), lambda x, g: (g * (x > 0),))


@jax.jit
def jitted_relu(x):
  return jnp.where(x > 0, x, 0.0)


def _primitive(name):
  p = jex_core.Primitive(name)
  p.def_impl(lambda x: x)
  p.def_abstract_eval(lambda x: x)
  return p


tag_p = _primitive('snr_test_tag')
relu_p = jex_core.Primitive('snr_test_relu')
relu_p.def_impl(lambda x: jnp.maximum(x, 0))
relu_p.def_abstract_eval(lambda x: x)
smooth_p = _primitive('snr_test_smooth')


def _params():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  return {
      'hidden': {'kernel': jax.random.normal(k1, (5, 8)), 'bias': jnp.zeros(8)},
      'out': {'kernel': jax.random.normal(k2, (8, 3))},
  }


def _model(activation):
  def f(p, x):
    h = activation(x @ p['hidden']['kernel'] + p['hidden']['bias'])
    return h @ p['out']['kernel']

  return f


X = jnp.ones((4, 5))


def _left_out_reason(f):
  """The reason 'hidden' is left out (discovery then finds no group at all)."""
  with pytest.raises(snr_jax.GroupError) as err:
    snr_jax.discover_groups(f, _params(), X)
  assert 'hidden:' in str(err.value)
  return str(err.value)


def _assert_hidden_group(f):
  groups = snr_jax.discover_groups(f, _params(), X)
  assert [g.name for g in groups] == ['hidden']
  (g,) = groups
  assert {s.path for s in g.incoming} == {('hidden', 'kernel'), ('hidden', 'bias')}
  assert [s.path for s in g.outgoing] == [('out', 'kernel')]
  return groups


def test_custom_jvp_activation_is_left_out_until_registered_relu_like():
  f = _model(clipped_relu)
  assert 'clipped_relu' in _left_out_reason(f)
  with snr_jax.registration_scope():
    snr_jax.register_activation(clipped_relu)
    groups = _assert_hidden_group(f)
    out, acts = snr_jax.with_preactivations(f, groups)(_params(), X)
    p = _params()
    np.testing.assert_allclose(
        acts['hidden'], X @ p['hidden']['kernel'] + p['hidden']['bias'], rtol=1e-6
    )
    np.testing.assert_allclose(out, f(p, X), rtol=1e-6)
  assert 'clipped_relu' in _left_out_reason(f)  # the scope undid the registration


def test_activation_registered_by_name_and_jitted_function():
  with snr_jax.registration_scope():
    snr_jax.register_activation('clipped_relu')
    _assert_hidden_group(_model(clipped_relu))
  f = _model(jitted_relu)
  _left_out_reason(f)  # a select: a piecewise function, not a ReLU
  with snr_jax.registration_scope():
    snr_jax.register_activation(jitted_relu)
    groups = _assert_hidden_group(f)
    _, acts = snr_jax.with_preactivations(f, groups)(_params(), X)
    assert acts['hidden'].shape == (4, 8)


def test_custom_vjp_activation_registered_relu_like():
  f = _model(vjp_relu)
  assert 'vjp_relu' in _left_out_reason(f)
  with snr_jax.registration_scope():
    snr_jax.register_activation(vjp_relu)
    groups = _assert_hidden_group(f)
    out, acts = snr_jax.with_preactivations(f, groups)(_params(), X)
    np.testing.assert_allclose(out, f(_params(), X), rtol=1e-6)
    assert acts['hidden'].shape == (4, 8)


def test_custom_primitive_registered_relu_like():
  f = _model(relu_p.bind)
  assert "reaches 'snr_test_relu'" in _left_out_reason(f)
  with snr_jax.registration_scope():
    snr_jax.register_activation(relu_p)
    groups = _assert_hidden_group(f)
    _, acts = snr_jax.with_preactivations(f, groups)(_params(), X)
    assert acts['hidden'].shape == (4, 8)


def test_custom_primitive_is_left_out_until_registered_unit_preserving():
  f = _model(lambda z: jax.nn.relu(tag_p.bind(z)))
  assert "reaches 'snr_test_tag'" in _left_out_reason(f)
  after = _model(lambda z: tag_p.bind(jax.nn.relu(z)))  # on the ReLU-output side
  assert "reaches 'snr_test_tag'" in _left_out_reason(after)
  with snr_jax.registration_scope():
    snr_jax.register_unit_preserving(tag_p)
    _assert_hidden_group(f)
    groups = _assert_hidden_group(after)
    _, acts = snr_jax.with_preactivations(after, groups)(_params(), X)
    assert acts['hidden'].shape == (4, 8)
  assert "reaches 'snr_test_tag'" in _left_out_reason(f)


def test_nonlinear_registration_names_the_activation_in_the_reason():
  f = _model(lambda z: jax.nn.relu(smooth_p.bind(z)))
  with snr_jax.registration_scope():
    snr_jax.register_activation(smooth_p, kind='nonlinear')
    reason = _left_out_reason(f)
  assert "passes through 'snr_test_smooth', which has no silent state" in reason


def test_unregister_op_and_reregistration():
  f = _model(lambda z: jax.nn.relu(tag_p.bind(z)))
  with snr_jax.registration_scope():
    snr_jax.register_unit_preserving('snr_test_tag')
    snr_jax.register_unit_preserving('snr_test_tag')  # again: no error
    _assert_hidden_group(f)
    snr_jax.unregister_op(tag_p)
    _left_out_reason(f)
    with pytest.raises(ValueError, match='was not registered'):
      snr_jax.unregister_op('snr_test_tag')
    with pytest.raises(ValueError, match='built into discovery'):
      snr_jax.unregister_op('tanh')
    # one name, one role: an activation registration replaces a unit-preserving one
    snr_jax.register_unit_preserving(relu_p)
    snr_jax.register_activation(relu_p)
    _assert_hidden_group(_model(relu_p.bind))


def test_registrations_do_not_leak_out_of_a_scope():
  before = (dict(rules.RULES), dict(rules.ACTIVATIONS))
  with snr_jax.registration_scope():
    snr_jax.register_unit_preserving(tag_p)
    snr_jax.register_activation(clipped_relu)
    snr_jax.register_activation(smooth_p, kind='nonlinear')
  assert (dict(rules.RULES), dict(rules.ACTIVATIONS)) == before
  with pytest.raises(RuntimeError):
    with snr_jax.registration_scope():
      snr_jax.register_unit_preserving(tag_p)
      raise RuntimeError('inside')
  assert (dict(rules.RULES), dict(rules.ACTIVATIONS)) == before


@pytest.mark.parametrize('kind', ['relu', 'ReLU_like', 'smooth', None])
def test_unknown_activation_kind_is_refused(kind):
  with snr_jax.registration_scope():
    with pytest.raises(ValueError, match="unknown kind .*'relu_like', 'nonlinear'"):
      snr_jax.register_activation(clipped_relu, kind=kind)


@pytest.mark.parametrize('bad', ['', 'two words', ' tag'])
def test_a_string_that_is_no_primitive_name_is_refused(bad):
  with snr_jax.registration_scope():
    with pytest.raises(ValueError, match='is not a primitive name'):
      snr_jax.register_unit_preserving(bad)
    with pytest.raises(ValueError, match='is not a primitive name'):
      snr_jax.register_activation(bad)


@pytest.mark.parametrize('bad', [3, None, jnp.ones(2), clipped_relu])
def test_unit_preserving_needs_a_primitive_or_its_name(bad):
  with snr_jax.registration_scope():
    with pytest.raises(TypeError, match=r'takes a primitive \(jax.extend.core.Primitive\)'):
      snr_jax.register_unit_preserving(bad)


def test_a_plain_python_function_is_refused_with_the_way_out():
  def my_relu(x):
    return jnp.maximum(x, 0)

  with snr_jax.registration_scope():
    with pytest.raises(TypeError, match='plain Python function.*jax.custom_jvp'):
      snr_jax.register_activation(my_relu)


@pytest.mark.parametrize(
    'name', ['dot_general', 'tanh', 'add', 'relu', 'gelu', 'pjit', 'jit', 'scan']
)
def test_built_in_names_cannot_be_registered(name):
  with snr_jax.registration_scope():
    with pytest.raises(ValueError, match=f"'{name}' is built into discovery"):
      snr_jax.register_unit_preserving(name)
    with pytest.raises(ValueError, match=f"'{name}' is built into discovery"):
      snr_jax.register_activation(name)
