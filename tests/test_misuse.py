"""Misuses of the public API: each is accepted (NumPy scalars) or a clear error up front."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import snr_jax


@pytest.fixture
def setup(mlp_step):
  _, params, _, groups, acts, grads = mlp_step
  return groups, params, acts, grads


def _step(opt, setup, **kwargs):
  groups, params, acts, grads = setup
  state = opt.init(params)
  kwargs.setdefault('activations', acts)
  return opt.update(grads, state, params, **kwargs)


@pytest.mark.slow
def test_numpy_scalar_hyperparameters_work_like_python_ones(setup):
  groups = setup[0]
  kw = dict(
      tau_min=np.int32(4),
      tau_max=np.int64(400),
      expansion=np.float32(2),
      eta=np.float64(0.08),
      batch_size=np.int64(4),
  )
  with_numpy = snr_jax.snr(optax.sgd(0.1), groups, tau_init=np.int64(400), key=np.int64(3), **kw)
  with_python = snr_jax.snr(
      optax.sgd(0.1), groups, tau_init=400, key=3, **{k: v.item() for k, v in kw.items()}
  )
  a, b = _step(with_numpy, setup), _step(with_python, setup)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_nan_expansion_is_rejected(setup):
  with pytest.raises(ValueError, match='expansion must be a number >= 1, got nan'):
    snr_jax.snr(optax.sgd(0.1), setup[0], expansion=float('nan'))


@pytest.mark.parametrize('key', [None, 1.5, 'zero'])
def test_bad_key_is_rejected_at_construction(setup, key):
  for make in (snr_jax.snr, snr_jax.redo):
    with pytest.raises(ValueError, match='key must be an int seed or a PRNG key'):
      make(optax.sgd(0.1), setup[0], key=key)


def test_a_prng_key_is_accepted_as_key(setup):
  for key in (jax.random.key(3), jax.random.PRNGKey(3)):
    _step(snr_jax.snr(optax.sgd(0.1), setup[0], key=key), setup)


@pytest.mark.parametrize(
    'inner, match',
    [
        (0.01, r'inner must be an optax transformation such as optax.sgd\(1e-2\).* got float'),
        (optax.sgd, r'got the function sgd itself: call it with its hyperparameters'),
    ],
)
def test_non_optax_inner_names_the_fix(setup, inner, match):
  with pytest.raises(ValueError, match=match):
    snr_jax.snr(inner, setup[0])
  with pytest.raises(ValueError, match=match):
    snr_jax.make_method('l2', inner)


def test_a_single_group_is_accepted(setup):
  groups = setup[0]
  opt = snr_jax.snr(optax.sgd(0.1), groups[0])
  _, state = _step(opt, setup, activations={groups[0].name: setup[2][groups[0].name]})
  assert list(state.resets.rule.ages) == [groups[0].name]


@pytest.mark.parametrize('bad', [['Dense_0'], 'Dense_0', None])
def test_group_names_instead_of_groups_name_the_fix(bad):
  with pytest.raises(
      snr_jax.GroupError, match='pass NeuronGroup objects, e.g. ' r'snr_jax.discover_groups'
  ):
    snr_jax.snr(optax.sgd(0.1), bad)


@pytest.mark.parametrize('flag', ['False', 'True', None, 0.5])
def test_end_of_task_must_be_a_bool(setup, flag):
  with pytest.raises(ValueError, match='end_of_task must be a bool'):
    _step(snr_jax.snr(optax.sgd(0.1), setup[0]), setup, end_of_task=flag)


@pytest.mark.slow
def test_end_of_task_accepts_bools_and_traced_bools(setup):
  opt = snr_jax.snr(optax.sgd(0.1), setup[0])
  _step(opt, setup, end_of_task=np.bool_(True))
  groups, params, acts, grads = setup
  state = opt.init(params)
  jax.jit(lambda e: opt.update(grads, state, params, activations=acts, end_of_task=e))(True)


def test_activation_keys_that_match_no_group_are_named(setup):
  groups, _, acts, _ = setup
  extra = dict(acts, Dense_O=acts[groups[0].name])  # a misspelled name
  with pytest.raises(snr_jax.ActivationError, match=r"keys \['Dense_O'\] that match no neuron"):
    _step(snr_jax.snr(optax.sgd(0.1), groups), setup, activations=extra)


def test_empty_batch_is_rejected(setup):
  groups, _, acts, _ = setup
  empty = {k: v[:0] for k, v in acts.items()}
  with pytest.raises(snr_jax.ActivationError, match='an empty batch'):
    _step(snr_jax.snr(optax.sgd(0.1), groups), setup, activations=empty)


@pytest.mark.slow
def test_update_with_params_of_another_model_is_a_clear_error():
  import flax.linen as nn

  class Net(nn.Module):
    width: int = 8

    @nn.compact
    def __call__(self, x):
      return nn.Dense(2)(nn.relu(nn.Dense(self.width, name='hidden')(x)))

  x = jnp.ones((3, 4))
  params = Net().init(jax.random.PRNGKey(0), x)['params']
  other = Net(width=6).init(jax.random.PRNGKey(0), x)['params']
  groups = snr_jax.discover_groups(Net(), params, x)
  tx = snr_jax.snr(optax.sgd(0.1), groups)
  state = tx.init(params)
  with pytest.raises(snr_jax.GroupError, match="'hidden'.*6 entries.*8 units"):
    tx.update(
        jax.tree.map(jnp.zeros_like, other), state, other, activations={'hidden': -jnp.ones((3, 8))}
    )


@pytest.mark.slow
def test_nan_activations_count_as_silent_and_an_opt_in_check_names_the_group():
  from jax.experimental import checkify

  group = snr_jax.dense_group('h', 3, layer='Dense_0', consumer='Dense_1')
  params = {
      'Dense_0': {'kernel': jnp.ones((2, 3)), 'bias': jnp.zeros(3)},
      'Dense_1': {'kernel': jnp.ones((3, 1)), 'bias': jnp.zeros(1)},
  }
  acts = {'h': jnp.array([[jnp.nan, 1.0, -1.0]] * 4)}
  grads = jax.tree.map(jnp.zeros_like, params)
  tx = snr_jax.snr(optax.sgd(0.1), [group], tau_init=100, tau_min=100, tau_max=100)
  _, state = tx.update(grads, tx.init(params), params, activations=acts)
  np.testing.assert_array_equal(state.resets.rule.ages['h'], [4, 0, 4])  # NaN: silent
  checked = snr_jax.snr(optax.sgd(0.1), [group], check_finite=True)
  step = jax.jit(
      checkify.checkify(
          lambda a: checked.update(grads, checked.init(params), params, activations=a)
      )
  )
  err, _ = step(acts)
  with pytest.raises(Exception, match="group 'h': non-finite pre-activations"):
    err.throw()
  err, _ = step({'h': jnp.ones((4, 3))})
  assert err.get() is None


def test_state_size_is_checked_before_anything_is_allocated():
  from snr_jax._src.snr import state_bytes_per_unit

  group = snr_jax.dense_group('h', 100, layer='a')
  hist = snr_jax.self_normalized_resets([group], tau_max=20_000)
  assert state_bytes_per_unit(hist.rule.estimator) == 4 * 20_001 + 8
  geo = snr_jax.self_normalized_resets([group], estimator='geometric')
  assert state_bytes_per_unit(geo.rule.estimator) == 16
  with pytest.raises(ValueError, match=r"'h': 100 units.*estimator='geometric'"):
    snr_jax.self_normalized_resets([group], tau_max=10**9)  # 400 GB of histograms
  with pytest.raises(ValueError, match='over state_budget=1,000,000'):
    snr_jax.snr(optax.sgd(0.1), [group], state_budget=10**6)  # 8 MB > 1 MB
  snr_jax.snr(optax.sgd(0.1), [group], estimator='geometric', state_budget=10**6)


def test_reset_masks_must_match_the_groups(setup):
  groups, params, _, _ = setup
  ok = {g.name: jnp.zeros((g.size,), bool) for g in groups}
  name, size = groups[0].name, groups[0].size
  key = jax.random.PRNGKey(0)
  cases = [
      (dict(ok, Dense_O=ok[name]), r"no group is named \['Dense_O'\]"),  # misspelled
      ({k: v for k, v in ok.items() if k != name}, rf"missing \['{name}'\]"),  # one group left out
      (dict(ok, **{name: jnp.zeros((size + 1,), bool)}), rf'expected bool \({size},\)'),
      (dict(ok, **{name: jnp.ones((size,), jnp.float32)}), 'dtype float32'),  # a score
  ]
  for masks, match in cases:
    with pytest.raises(ValueError, match=match):
      snr_jax.reset_params(params, groups, masks, key)
    with pytest.raises(ValueError, match=match):
      snr_jax.reset_neurons(params, None, groups, masks, key)
    with pytest.raises(ValueError, match=match):
      snr_jax.reset_model_state({}, groups, masks)
  same = snr_jax.reset_params(params, groups, ok, key)
  jax.tree.map(np.testing.assert_array_equal, same, params)


@pytest.mark.parametrize('dead_after', [0, -5, float('nan'), '1000'])
def test_dead_after_must_be_positive(setup, dead_after):
  groups, params, acts, grads = setup
  state = snr_jax.snr(optax.sgd(0.1), groups).init(params)
  with pytest.raises(ValueError, match=r'dead_after must be a number in \(0, inf\]'):
    snr_jax.reset_metrics(state, dead_after=dead_after, nested=True)


@pytest.mark.parametrize('hp', [dict(eta='0.1'), dict(expansion='2'), dict(eta=np.bool_(True))])
def test_numbers_given_as_strings_or_bools_are_refused(setup, hp):
  with pytest.raises(ValueError, match=f'{next(iter(hp))}.* must be a number'):
    snr_jax.snr(optax.sgd(0.1), setup[0], **hp)


def test_a_state_that_is_not_the_methods_is_named(setup):
  groups, params, acts, grads = setup
  opt = snr_jax.snr(optax.sgd(0.1), groups)
  state = opt.init(params)
  # the inner optimizer's state, or a checkpoint restored without a target (dicts)
  for wrong in (optax.sgd(0.1).init(params), state._asdict()):
    with pytest.raises(TypeError, match='must be the WithResetsState returned by tx.init'):
      opt.update(grads, wrong, params, activations=acts)
  for name, cls, hp in [
      ('l2_init', 'L2InitState', {}),
      (
          'shrink_perturb',
          'ShrinkPerturbState',
          dict(init_fn=lambda k: jax.tree.map(jnp.zeros_like, params)),
      ),
  ]:
    tx = snr_jax.make_method(name, optax.sgd(0.1), groups=groups, **hp)
    with pytest.raises(TypeError, match=f'must be the {cls} returned by tx.init'):
      tx.update(grads, optax.sgd(0.1).init(params), params)
  resetter = snr_jax.self_normalized_resets(groups)
  with pytest.raises(TypeError, match=r'must be the NeuronResetsState returned by resets.init'):
    snr_jax.reset_state(resetter, params, None, state, acts)  # the wrapper's state


def test_a_step_key_must_be_a_key(setup):
  groups, params, acts, grads = setup
  opt = snr_jax.snr(optax.sgd(0.1), groups)
  with pytest.raises(ValueError, match='key must be an int seed or a PRNG key'):
    opt.update(grads, opt.init(params), params, activations=acts, key='0')
