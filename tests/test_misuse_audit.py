"""Bad or unusual inputs to the public API: each works, or is a clear error that names the
mistake and the fix."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

import snr_jax


@pytest.fixture
def setup(mlp_step):
  return mlp_step


def _step(opt, setup, params=None, grads=None, **kwargs):
  _, p0, _, _, acts, g0 = setup
  kwargs.setdefault('activations', acts)
  return opt.update(
      g0 if grads is None else grads, opt.init(p0), p0 if params is None else params, **kwargs
  )


# --- unusual inputs that work --------------------------------------------------------


@pytest.mark.slow
def test_numpy_integer_period_and_maturity_work_like_python_ints(setup):
  groups = setup[3]
  cases = [
      (snr_jax.redo, dict(period=np.int64(2))),
      (snr_jax.continual_backprop, dict(maturity=np.int64(1))),
  ]
  for make, hp in cases:
    a = _step(make(optax.sgd(0.1), groups, **hp), setup)
    b = _step(make(optax.sgd(0.1), groups, **{k: v.item() for k, v in hp.items()}), setup)
    jax.tree.map(np.testing.assert_array_equal, a, b)
  _step(snr_jax.make_method('redo', optax.sgd(0.1), groups=groups, period=np.int64(2)), setup)
  _step(snr_jax.make_method('cbp', optax.sgd(0.1), groups=groups, maturity=np.int32(1)), setup)


@pytest.mark.parametrize(
    'make, hp, match',
    [
        (snr_jax.redo, dict(period=True), 'period must be a positive int'),
        (snr_jax.redo, dict(period=np.bool_(True)), 'period must be a positive int'),
        (snr_jax.continual_backprop, dict(maturity=True), r'maturity must be an int >= 0'),
    ],
)
def test_bools_are_refused_for_step_counts(setup, make, hp, match):
  with pytest.raises(ValueError, match=match):
    make(optax.sgd(0.1), setup[3], **hp)


def test_frozen_dict_variables_work_like_dicts(setup):
  model, params, x, groups, acts, _ = setup
  forward = snr_jax.with_preactivations(model, groups)
  want_out, want_acts = forward({'params': params}, x)
  for variables in (flax.core.freeze({'params': params}), flax.core.freeze(params)):
    found = snr_jax.discover_groups(model, variables, x)
    assert [(g.name, g.size, g.incoming, g.outgoing) for g in found] == [
        (g.name, g.size, g.incoming, g.outgoing) for g in groups
    ]
    out, got = forward(variables, x)
    np.testing.assert_array_equal(out, want_out)
    jax.tree.map(np.testing.assert_array_equal, got, want_acts)


@pytest.mark.slow
def test_lbfgs_inside_snr_runs_and_resets_its_param_shaped_state(setup):
  model, params, x, groups, _, _ = setup
  tx = snr_jax.snr(optax.lbfgs(), groups, tau_init=4, tau_min=4, tau_max=4)
  loss = lambda p: jnp.sum(model.apply({'params': p}, x) ** 2)
  silent = {g.name: -jnp.ones((x.shape[0], g.size)) for g in groups}  # ages reach 4: reset
  state = tx.init(params)
  value, grad = jax.value_and_grad(loss)(params)
  step = jax.jit(
      lambda p, s: tx.update(grad, s, p, activations=silent, value=value, grad=grad, value_fn=loss)
  )
  updates, state = step(params, state)
  assert all(bool(jnp.all(m)) for m in state.resets.last_resets.values())
  lbfgs = state.inner_state[0]
  # param-shaped copies are zeroed on the reset slices (every unit here) ...
  np.testing.assert_array_equal(lbfgs.updates['Dense_0']['kernel'], 0)
  # ... the (memory, *shape) histories are not param-shaped and are left alone
  assert lbfgs.diff_params_memory['Dense_0']['kernel'].shape[1:] == (7, 6)
  assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))


# --- mistakes named where they are made, not deep inside optax or the step -----------


@pytest.mark.parametrize(
    'build, match',
    [
        (lambda: snr_jax.shrink_perturb(optax.sgd, lambda k: None), 'the function sgd itself'),
        (lambda: snr_jax.l2(0.1), r'inner must be an optax transformation .* got float 0.1'),
        (lambda: snr_jax.l2_init(optax.sgd), 'the function sgd itself'),
    ],
)
def test_baselines_check_their_optimizer(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_activations_passed_positionally_name_the_keyword(setup):
  _, params, _, groups, acts, grads = setup
  for tx in (
      snr_jax.snr(optax.sgd(0.1), groups),
      snr_jax.make_method('l2', optax.sgd(0.1)),
      snr_jax.shrink_perturb(optax.sgd(0.1), lambda k: params),
  ):
    with pytest.raises(TypeError, match=r'pass the pre-activations by keyword.*activations=acts'):
      tx.update(grads, tx.init(params), params, acts)


def test_another_methods_state_is_named(setup):
  _, params, _, groups, acts, grads = setup
  snr, redo = snr_jax.snr(optax.sgd(0.1), groups), snr_jax.redo(optax.sgd(0.1), groups)
  with pytest.raises(TypeError, match='holds a ReDoState, but this optimizer resets with SNRRule'):
    snr.update(grads, redo.init(params), params, activations=acts)
  with pytest.raises(TypeError, match='holds a SNRState, but this optimizer resets with ReDoRule'):
    redo.update(grads, snr.init(params), params, activations=acts)
  resetter = snr_jax.self_normalized_resets(groups)
  with pytest.raises(TypeError, match='holds a ReDoState'):
    snr_jax.reset_state(resetter, params, None, redo.init(params).resets, acts)


def test_reset_state_checks_its_optimizer(setup):
  _, params, _, groups, acts, _ = setup
  resetter = snr_jax.self_normalized_resets(groups)
  with pytest.raises(
      ValueError, match=r'optimizer .* must be an optax transformation .* ' 'got float 0.1'
  ):
    snr_jax.reset_state(
        resetter, params, optax.sgd(0.1).init(params), resetter.init(params), acts, optimizer=0.1
    )


class _Flagged(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = nn.relu(nn.Dense(5)(x))
    if train:  # Python control flow on the flag
      h = h * 1.0
    return nn.Dense(2)(h)


def test_discovery_names_an_array_flag():
  x = jnp.ones((3, 4))
  params = _Flagged().init(jax.random.PRNGKey(0), x)['params']
  with pytest.raises(
      snr_jax.GroupError,
      match=r'train=.* is an array.*pass flags .* as Python ' r'values.*train=True',
  ):
    snr_jax.discover_groups(_Flagged(), params, x, train=jnp.array(True))
  assert [g.name for g in snr_jax.discover_groups(_Flagged(), params, x, train=True)]


class _BN(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = nn.BatchNorm(use_running_average=not train)(nn.Dense(5)(x))
    return nn.Dense(2)(nn.relu(h))


def test_discovery_names_mutable_for_batchnorm_in_training():
  x = jnp.ones((3, 4))
  variables = _BN().init(jax.random.PRNGKey(0), x)
  with pytest.raises(
      snr_jax.GroupError,
      match=r"updates the 'batch_stats' collection.*pass " r"mutable=\['batch_stats'\]",
  ):
    snr_jax.discover_groups(_BN(), variables, x)
  assert len(snr_jax.discover_groups(_BN(), variables, x, mutable=['batch_stats'])) == 1


def test_discovery_names_forgotten_params(setup):
  model, _, x, _, _, _ = setup
  with pytest.raises(
      snr_jax.GroupError,
      match=r'takes the module\'s variables .* got ArrayImpl '
      r'of shape \(4, 7\) first.*discover_groups\(model, '
      r'params, x\)',
  ):
    snr_jax.discover_groups(model, x)


@pytest.mark.parametrize('inner', [optax.adam(1e-3), optax.sgd(0.1)])
def test_params_with_an_extra_layer_are_named(setup, inner):
  _, params, _, groups, _, _ = setup
  extra = dict(params, Extra={'kernel': jnp.ones((3, 3))})
  tx = snr_jax.snr(inner, groups)
  with pytest.raises(
      ValueError,
      match=r"extra leaves \['Extra/kernel'\], missing leaves \[\]" r'.*tx.init\(new_params\)',
  ):
    _step(tx, setup, params=extra, grads=jax.tree.map(jnp.ones_like, extra))
  _step(tx, setup)  # the state's own params still work


# --- inputs that would run and be wrong, refused --------------------------------------


@pytest.mark.slow
def test_apply_gradients_refuses_a_plain_optimizer(setup):
  model, params, _, groups, acts, grads = setup
  plain = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-3))
  with pytest.raises(
      ValueError,
      match=r'activations= given, but state.opt_state holds no '
      r'resetting method.*tx=snr_jax.snr',
  ):
    snr_jax.apply_gradients(plain, grads, activations=acts)
  assert int(snr_jax.apply_gradients(plain, grads).step) == 1  # no reset arguments: a step
  for name in ('snr', 'none', 'l2', 'shrink_perturb'):  # every method's face passes
    tx = snr_jax.make_method(name, optax.adam(1e-3), groups=groups, init_fn=lambda k: params)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    assert int(snr_jax.apply_gradients(state, grads, activations=acts).step) == 1


def test_batch_size_that_contradicts_the_activations_is_refused(setup):
  groups, acts = setup[3], setup[4]
  with pytest.raises(
      snr_jax.ActivationError,
      match=r'batch_size=16, but the activation of group ' r"'Dense_0' has 4 examples.*data_axis=",
  ):
    _step(snr_jax.snr(optax.sgd(0.1), groups, batch_size=16), setup)
  _, state = _step(snr_jax.snr(optax.sgd(0.1), groups, batch_size=4), setup)
  silent = ~np.asarray(snr_jax.fired(acts['Dense_0']))
  np.testing.assert_array_equal(state.resets.rule.ages['Dense_0'], np.where(silent, 4, 0))


@pytest.mark.parametrize('dtype', [jnp.complex64, jnp.int32, jnp.bool_])
def test_activations_must_be_real_floats(setup, dtype):
  groups, acts = setup[3], setup[4]
  bad = {k: v.astype(dtype) for k, v in acts.items()}
  with pytest.raises(
      snr_jax.ActivationError,
      match=f'dtype {jnp.dtype(dtype).name}; ' 'pre-activations must be real floating',
  ):
    _step(snr_jax.snr(optax.sgd(0.1), groups), setup, activations=bad)


class _Same(nn.Module):
  """Three Dense layers of one width: a wrong consumer has the right shape."""

  @nn.compact
  def __call__(self, x):
    for _ in range(2):
      x = nn.relu(nn.Dense(6)(x))
    return nn.Dense(6)(x)


def test_check_groups_refuses_a_consumer_of_the_right_shape_but_the_wrong_layer():
  x = jnp.ones((2, 6))
  params = _Same().init(jax.random.PRNGKey(0), x)['params']
  wrong = [snr_jax.dense_group('h0', 6, layer='Dense_0', consumer='Dense_2')]
  snr_jax.validate_groups(wrong, params)  # shapes alone cannot tell
  with pytest.raises(
      snr_jax.GroupError,
      match=r"'h0' .* outgoing \['Dense_2/kernel'\], but its "
      r"ReLU output is read by \['Dense_1/kernel'\]",
  ):
    snr_jax.check_groups(_Same(), params, x, groups=wrong)
  with pytest.raises(
      snr_jax.GroupError,
      match=r"no neuron group produced by 'Dense_2/kernel' " r'\(Dense_2: is an output',
  ):
    snr_jax.check_groups(_Same(), params, x, groups=[snr_jax.dense_group('o', 6, layer='Dense_2')])
  right = [
      snr_jax.dense_group('h0', 6, layer='Dense_0', consumer='Dense_1'),
      snr_jax.dense_group('h1', 6, layer='Dense_1', consumer='Dense_2'),
  ]
  assert snr_jax.check_groups(_Same(), {'params': params}, x, groups=right) == tuple(right)


@pytest.mark.parametrize('noise', ['fast', 'init'])
def test_shrink_perturb_refuses_another_models_init_fn(setup, noise):
  model, params, x, _, _, _ = setup
  other = type(model)(hidden=(6, 4))
  tx = snr_jax.shrink_perturb(optax.sgd(0.1), lambda k: other.init(k, x)['params'], noise=noise)
  with pytest.raises(
      ValueError,
      match=r'init_fn\(key\) must return a tree shaped like params.*'
      r"'Dense_1/bias' of shape \(4,\) \(params: \(5,\)\)",
  ):
    tx.init(params)
  ok = snr_jax.shrink_perturb(optax.sgd(0.1), lambda k: model.init(k, x)['params'], noise=noise)
  frozen = flax.core.freeze(params)  # FrozenDict params, dict draws: the trees still map
  ok.update(jax.tree.map(jnp.zeros_like, frozen), ok.init(frozen), frozen)
