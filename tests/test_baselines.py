"""design §6: each competitor method's defining behaviour, and the shared registry."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import snr_jax
from snr_jax._src.redo import redo_scores
from snr_jax._src.reset import keep_masks


def _zero_grads(params):
  return jax.tree.map(jnp.zeros_like, params)


def test_l2_init_pulls_toward_initial_params_not_zero(mlp):
  _, params0, _ = mlp
  tx = snr_jax.make_method('l2_init', optax.sgd(0.1), strength=0.5)
  state = tx.init(params0)
  moved = jax.tree.map(lambda p: p + 1.0, params0)
  u, _ = tx.update(_zero_grads(moved), state, moved)
  new = optax.apply_updates(moved, u)
  # θ - lr·2λ(θ - θ0) = θ - 0.1·(+1): halfway... exactly 0.9 of the way from θ0 + 1
  for n, p0 in zip(jax.tree.leaves(new), jax.tree.leaves(params0)):
    np.testing.assert_allclose(n - p0, 0.9, rtol=1e-5)
  # plain L2 pulls toward zero instead
  tx2 = snr_jax.make_method('l2', optax.sgd(0.1), strength=0.5)
  u2, _ = tx2.update(_zero_grads(moved), tx2.init(params0), moved)
  for n, m in zip(jax.tree.leaves(optax.apply_updates(moved, u2)), jax.tree.leaves(moved)):
    np.testing.assert_allclose(n, 0.9 * m, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('noise', ['fast', 'init'])
def test_shrink_perturb_shrinks_by_p_and_adds_initializer_noise(noise):
  import flax.linen as nn

  class Wide(nn.Module):

    @nn.compact
    def __call__(self, x):
      h = nn.Dense(2000, bias_init=nn.initializers.normal(0.5), name='hidden')(x)
      scale = self.param('scale', nn.initializers.ones, (50,))
      return nn.Dense(1, name='out')(nn.relu(h)) * scale.mean()

  m = Wide()
  x = jnp.ones((1, 400))
  init_fn = lambda k: m.init(k, x)['params']
  params = init_fn(jax.random.PRNGKey(0))
  tx = snr_jax.make_method(
      'shrink_perturb', optax.sgd(0.1), init_fn=init_fn, shrink=0.5, sigma=0.0, noise=noise
  )
  u, _ = tx.update(_zero_grads(params), tx.init(params), params)
  for n, p in zip(jax.tree.leaves(optax.apply_updates(params, u)), jax.tree.leaves(params)):
    np.testing.assert_allclose(n, 0.5 * p, rtol=1e-6)

  def draws(seed, steps=2):
    tx = snr_jax.make_method(
        'shrink_perturb',
        optax.sgd(0.1),
        init_fn=init_fn,
        shrink=1.0,
        sigma=0.01,
        noise=noise,
        key=seed,
    )
    state, out = tx.init(params), []
    for _ in range(steps):
      u, state = tx.update(_zero_grads(params), state, params)
      out.append(jax.tree.map(lambda d: d / 0.01, u))
    return out

  eps, eps2 = draws(0)
  # the noise has each initializer's scale: lecun_normal 1/sqrt(fan_in), bias normal(0.5)
  k = np.asarray(eps['hidden']['kernel'])
  assert abs(float(k.std()) - 1 / np.sqrt(400)) < 0.005 and abs(float(k.mean())) < 0.001
  assert abs(float(jnp.std(eps['hidden']['bias'])) - 0.5) < 0.05
  np.testing.assert_allclose(eps['out']['bias'], 0.0, atol=1e-6)  # zeros init
  np.testing.assert_allclose(eps['scale'], 1.0, atol=1e-4)  # ones init: its mean
  # fresh and uncorrelated: across steps, across neighbouring elements, across seeds
  k2 = np.asarray(eps2['hidden']['kernel'])
  assert abs(np.corrcoef(k.ravel(), k2.ravel())[0, 1]) < 0.01
  assert abs(np.corrcoef(k.ravel()[:-1], k.ravel()[1:])[0, 1]) < 0.01
  other = np.asarray(draws(1, 1)[0]['hidden']['kernel'])
  assert abs(np.corrcoef(k.ravel(), other.ravel())[0, 1]) < 0.01
  np.testing.assert_array_equal(np.asarray(draws(0, 1)[0]['hidden']['kernel']), k)  # seeded


def _redo_setup(threshold, period):
  groups = (snr_jax.dense_group('h', 4, layer='l1', consumer='l2'),)
  params = {
      'l1': {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones(4)},
      'l2': {'kernel': jnp.ones((4, 2)), 'bias': jnp.zeros(2)},
  }
  tx = snr_jax.make_method(
      'redo', optax.sgd(0.0), groups=groups, threshold=threshold, period=period
  )
  return groups, params, tx


@pytest.mark.slow
def test_redo_resets_exactly_units_at_or_below_the_threshold_at_period_boundaries():
  groups, params, tx = _redo_setup(threshold=0.5, period=3)
  # mean |h| per unit: [4, 2, 1.5, 0.5] / mean 2 -> scores [2, 1, 0.75, 0.25];
  # with a negative entry for unit 3 in one example (relu: counted as 0)
  h = jnp.array([[4.0, 2.0, 1.5, 1.0], [4.0, 2.0, 1.5, -3.0]])
  np.testing.assert_allclose(redo_scores(h), [2.0, 1.0, 0.75, 0.25])
  state = tx.init(params)
  update = jax.jit(lambda s: tx.update(_zero_grads(params), s, params, activations={'h': h}))
  masks = []
  for _ in range(6):
    _, state = update(state)
    masks.append(np.asarray(state.resets.last_resets['h']))
  expected_at_boundary = np.array([False, False, False, True])
  for i, m in enumerate(masks):
    np.testing.assert_array_equal(m, expected_at_boundary if (i + 1) % 3 == 0 else False)
  # the threshold is inclusive: score 0.75 resets with threshold 0.75
  _, params2, tx2 = _redo_setup(threshold=0.75, period=1)
  _, st = tx2.update(_zero_grads(params2), tx2.init(params2), params2, activations={'h': h})
  np.testing.assert_array_equal(st.resets.last_resets['h'], [False, False, True, True])


def test_cbp_replaces_lowest_utility_mature_units_at_the_accumulated_rate():
  groups = (snr_jax.dense_group('h', 4, layer='l1', consumer='l2'),)
  params = {
      'l1': {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones(4)},
      'l2': {
          'kernel': jnp.array([[1.0, 1.0], [2.0, 2.0], [0.5, 0.5], [3.0, 3.0]]),
          'bias': jnp.zeros(2),
      },
  }
  tx = snr_jax.make_method(
      'cbp', optax.sgd(0.0), groups=groups, replacement_rate=0.125, maturity=2, decay=0.5
  )
  h = jnp.array([[1.0, 1.0, 1.0, 1.0]])
  # utility contributions |h|·mean_k|w_out| = [1, 2, 0.5, 3]; unit 2 is the lowest.
  state = tx.init(params)
  update = jax.jit(lambda p, s: tx.update(_zero_grads(p), s, p, activations={'h': h}))
  log = []
  p = params
  for _ in range(8):
    u, state = update(p, state)
    p = optax.apply_updates(p, u)
    log.append(np.asarray(state.resets.last_resets['h']))
  cbp_state = state.resets.rule
  # steps 1-2: nobody is mature (age <= 2). From step 3, 4 eligible units add
  # 0.125*4 = 0.5 per step: the accumulator reaches 1 on step 4, which replaces unit 2
  # (lowest utility). Unit 2 is then immature for steps 5-6 (3 eligible: +0.375 each),
  # mature again on step 7 (+0.5): 1.25 -> one replacement on step 7.
  counts = [int(m.sum()) for m in log]
  assert counts == [0, 0, 0, 1, 0, 0, 1, 0]
  assert log[3][2]
  # with its outgoing weights zeroed (and no learning) unit 2's utility stays 0, so it
  # is the lowest again once mature
  assert log[6][2]
  np.testing.assert_array_equal(cbp_state.ages['h'], [8, 8, 1, 8])
  assert float(cbp_state.utility['h'][2]) == 0.0
  assert float(cbp_state.to_replace['h']) == pytest.approx(0.25 + 0.375)


def _stack_of_two_layers():
  """A scanned stack (plain lax.scan over stacked params): one group, 2 layers x 5 units."""
  params = {
      'w_in': jnp.ones((2, 3, 5)),
      'b_in': jnp.zeros((2, 5)),
      'w_out': jnp.ones((2, 5, 3)),
      'b_out': jnp.zeros((2, 3)),
  }

  def f(p, x):
    def layer(h, q):
      return h + jax.nn.relu(h @ q['w_in'] + q['b_in']) @ q['w_out'] + q['b_out'], None

    return jax.lax.scan(layer, x, p)[0]

  groups = snr_jax.discover_groups(f, params, jnp.ones((4, 3)))
  assert [(g.name, g.layers, g.units) for g in groups] == [('w_in', 2, 5)]
  return groups, params


@pytest.mark.slow
def test_redo_and_cbp_treat_each_layer_of_a_scanned_stack_as_a_layer():
  groups, params = _stack_of_two_layers()
  # layer 0's units are 20x as active as layer 1's; within a layer, unit 3 is the least
  # active (a fifth of the others)
  level = jnp.array([[10.0], [0.5]]) * jnp.array([1.0, 1.0, 1.0, 0.2, 1.0])
  acts = {'w_in': jnp.broadcast_to(level[:, None, :], (2, 4, 5))}
  tx = snr_jax.redo(optax.sgd(0.0), groups, threshold=0.5, period=1)
  _, st = tx.update(_zero_grads(params), tx.init(params), params, activations=acts)
  # scores within each layer: 1/0.84 for the others, 0.2/0.84 for unit 3; pooled over
  # the stack every unit of layer 1 would score 0.11 or less and be reset
  np.testing.assert_array_equal(st.resets.last_resets['w_in'].reshape(2, 5), [[0, 0, 0, 1, 0]] * 2)
  # CBP: rate 0.2 of 5 mature units per layer owes exactly one replacement in each
  # layer, its least useful unit (all outgoing weights are equal)
  tx = snr_jax.continual_backprop(optax.sgd(0.0), groups, replacement_rate=0.2, maturity=0)
  _, st = tx.update(_zero_grads(params), tx.init(params), params, activations=acts)
  np.testing.assert_array_equal(st.resets.last_resets['w_in'].reshape(2, 5), [[0, 0, 0, 1, 0]] * 2)
  assert st.resets.rule.to_replace['w_in'].shape == (2,)


def test_cbp_utility_and_mean_activation_are_running_means_with_bias_correction():
  groups = (snr_jax.dense_group('h', 3, layer='l1', consumer='l2'),)
  w_out = jnp.array([[1.0, -3.0], [2.0, 2.0], [0.5, -0.5]])  # mean_k |w| = [2, 2, 0.5]
  params = {
      'l1': {'kernel': jnp.ones((2, 3)), 'bias': jnp.zeros(3)},
      'l2': {'kernel': w_out, 'bias': jnp.zeros(2)},
  }
  rule = snr_jax.CBPRule(replacement_rate=0.0, maturity=100, decay=0.5)
  # pre-activations; relu then mean over the batch: [1, 1.5, 4]
  acts = {'h': jnp.array([[2.0, -1.0, 4.0], [0.0, 3.0, 4.0]])}
  y = np.array([2 * 1.0, 2 * 1.5, 0.5 * 4.0])  # contribution utility
  f = np.array([1.0, 1.5, 4.0])
  state = rule.init(groups, params)
  key = jax.random.PRNGKey(0)
  masks, state = rule.select(state, groups, acts, params, end_of_task=False, key=key)
  np.testing.assert_allclose(state.utility['h'], 0.5 * y, rtol=1e-6)  # (1 - d)·y
  np.testing.assert_allclose(state.mean_act['h'], 0.5 * f, rtol=1e-6)
  masks, state = rule.select(state, groups, acts, params, end_of_task=False, key=key)
  np.testing.assert_allclose(state.utility['h'], 0.75 * y, rtol=1e-6)  # d·0.5y + 0.5y
  np.testing.assert_array_equal(state.ages['h'], [2, 2, 2])
  # bias-corrected by 1 - d^a = 0.75: a constant signal is recovered exactly
  np.testing.assert_allclose(state.utility['h'] / (1 - 0.5**2), y, rtol=1e-6)
  assert not any(bool(m.any()) for m in masks.values())


def _two_layer(params, x):
  h = x @ params['l1']['kernel'] + params['l1']['bias']
  return jax.nn.relu(h) @ params['l2']['kernel'] + params['l2']['bias'], {'h': h}


@pytest.mark.slow
def test_cbp_replaces_lowest_bias_corrected_utility_and_transfers_its_mean_to_the_bias():
  groups = (snr_jax.dense_group('h', 4, layer='l1', consumer='l2'),)
  params = {
      'l1': {'kernel': jnp.array([[1.0, 2.0, 3.0, 0.5]]), 'bias': jnp.zeros(4)},
      'l2': {
          'kernel': jnp.array([[1.0, 1.0], [1.0, -1.0], [2.0, 0.0], [4.0, 4.0]]),
          'bias': jnp.array([0.5, -0.5]),
      },
  }
  x = jnp.ones((2, 1))  # constant input: every unit's activation is constant
  # activations [1, 2, 3, 0.5], mean|w_out| [1, 1, 1, 4]: utility [1, 2, 3, 2];
  # unit 0 is the lowest. Maturity 2 and rate 0.25 with 4 units: one replacement at step 3.
  tx = snr_jax.make_method(
      'cbp', optax.sgd(0.0), groups=groups, replacement_rate=0.25, maturity=2, decay=0.9, key=3
  )
  state = tx.init(params)
  p = params
  for step in range(3):
    before, acts = _two_layer(p, x)
    u, state = tx.update(_zero_grads(p), state, p, activations=acts)
    p = optax.apply_updates(p, u)
    replaced = np.asarray(state.resets.last_resets['h'])
    if step < 2:
      assert not replaced.any()
  np.testing.assert_array_equal(replaced, [True, False, False, False])
  # b_out += w_out,0 · f̂_0 with f̂_0 = 1 (bias-corrected mean of a constant 1)
  np.testing.assert_allclose(p['l2']['bias'], [0.5 + 1.0, -0.5 + 1.0], rtol=1e-6)
  np.testing.assert_array_equal(p['l2']['kernel'][0], 0.0)  # then outgoing zeroed
  assert not np.allclose(p['l1']['kernel'][:, 0], 1.0)  # incoming re-drawn
  after, _ = _two_layer(p, x)
  np.testing.assert_allclose(after, before, rtol=1e-5)  # the function is unchanged
  rule_state = state.resets.rule
  assert float(rule_state.utility['h'][0]) == 0.0 and float(rule_state.mean_act['h'][0]) == 0.0
  assert int(rule_state.ages['h'][0]) == 0


def test_cbp_ranks_by_bias_corrected_utility_not_the_raw_running_sum():
  # unit 0 is young (raw utility small because its running mean has barely started), unit 1
  # old with a smaller contribution: the bias-corrected ranking replaces unit 1.
  groups = (snr_jax.dense_group('h', 2, layer='l1', consumer='l2'),)
  params = {
      'l1': {'kernel': jnp.ones((1, 2)), 'bias': jnp.zeros(2)},
      'l2': {'kernel': jnp.ones((2, 1)), 'bias': jnp.zeros(1)},
  }
  rule = snr_jax.CBPRule(replacement_rate=0.5, maturity=1, decay=0.9)
  state = rule.init(groups, params)
  state = state._replace(
      utility={'h': jnp.array([0.0, 0.5])}, ages={'h': jnp.array([1, 1000], jnp.int32)}
  )
  acts = {'h': jnp.array([[2.0, 0.6]])}
  masks, new = rule.select(
      state, groups, acts, params, end_of_task=False, key=jax.random.PRNGKey(0)
  )
  # raw u: [0.1·2, 0.9·0.5 + 0.1·0.6] = [0.2, 0.51]; corrected: [0.2/0.19, 0.51/~1]
  # = [1.05, 0.51]: unit 1 is replaced (the raw values would pick unit 0)
  np.testing.assert_array_equal(masks['h'], [False, True])
  np.testing.assert_allclose(new.transfer['h'], [0.0, 0.1 * 0.6 / (1 - 0.9**1001)], rtol=1e-5)


def test_cbp_transfer_sums_every_entry_of_a_unit_and_pools_outgoing_slices():
  from snr_jax._src.cbp import outgoing_mean_magnitude, transfer_to_biases
  # a Conv -> flatten -> Dense consumer: 2 channels, 3 positions, rows r % 2 == c
  w = jnp.arange(18.0).reshape(6, 3) - 8.0
  group = snr_jax.NeuronGroup(
      'c',
      2,
      (snr_jax.ParamSlice(('conv', 'kernel'), -1, jax.nn.initializers.zeros),),
      (snr_jax.ParamSlice(('dense', 'kernel'), -2), snr_jax.ParamSlice(('other', 'kernel'), -2)),
  )
  params = {
      'conv': {'kernel': jnp.zeros((1, 2))},
      'dense': {'kernel': w, 'bias': jnp.zeros(3)},
      'other': {'kernel': jnp.array([[10.0], [-20.0]])},
  }  # no bias: nothing to add
  out = transfer_to_biases(params, (group,), {'c': jnp.array([2.0, 0.0])})
  np.testing.assert_allclose(out['dense']['bias'], 2.0 * (w[0] + w[2] + w[4]))
  np.testing.assert_array_equal(out['other']['kernel'], params['other']['kernel'])
  # mean |w| over channel 0's 9 dense weights and its 1 'other' weight, pooled
  expect0 = (np.abs(np.asarray(w)[0::2]).sum() + 10.0) / 10
  expect1 = (np.abs(np.asarray(w)[1::2]).sum() + 20.0) / 10
  np.testing.assert_allclose(outgoing_mean_magnitude(params, group), [expect0, expect1])


@pytest.mark.slow
def test_cbp_transfer_into_a_conv_consumer_sums_the_channel_taps():
  from snr_jax._src.cbp import outgoing_mean_magnitude, transfer_to_biases

  groups = (snr_jax.dense_group('c1', 3, layer='conv1', consumer='conv2'),)
  w = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 3, 4))  # (kh, kw, in = 3, out = 4)
  params = {
      'conv1': {'kernel': jnp.zeros((1, 1, 1, 3)), 'bias': jnp.zeros(3)},
      'conv2': {'kernel': w, 'bias': jnp.ones(4)},
  }
  f = jnp.array([0.0, 2.0, 0.5])
  out = transfer_to_biases(params, groups, {'c1': f})
  expect = 1.0 + sum(f[c] * w[:, :, c, :].sum(axis=(0, 1)) for c in range(3))
  np.testing.assert_allclose(out['conv2']['bias'], expect, rtol=1e-5)
  np.testing.assert_allclose(
      outgoing_mean_magnitude(params, groups[0]), jnp.abs(w).mean(axis=(0, 1, 3)), rtol=1e-6
  )


@pytest.mark.slow
def test_cbp_stochastic_rounding_replaces_at_the_rate_in_expectation_and_is_seeded():
  groups = (snr_jax.dense_group('h', 4, layer='l1', consumer='l2'),)
  params = {
      'l1': {'kernel': jnp.ones((1, 4)), 'bias': jnp.zeros(4)},
      'l2': {'kernel': jnp.ones((4, 1)), 'bias': jnp.zeros(1)},
  }
  acts = {'h': jnp.ones((1, 4))}

  def count(seed, steps=400):
    tx = snr_jax.make_method(
        'cbp',
        optax.sgd(0.0),
        groups=groups,
        replacement_rate=0.0625,
        maturity=0,
        rounding='stochastic',
        key=seed,
    )

    def step(s, _):
      _, s = tx.update(_zero_grads(params), s, params, activations=acts)
      return s, s.resets.last_resets['h'].sum()

    s, n = jax.lax.scan(step, tx.init(params), None, length=steps)
    return np.asarray(n), float(s.resets.rule.to_replace['h'])

  n0, owed = count(0)
  # 4 eligible units x 0.0625 = 0.25 expected per step: 100 in 400 steps (sd ~8.7)
  assert set(np.unique(n0)) <= {0, 1} and 70 <= n0.sum() <= 130
  assert owed == 0.0
  np.testing.assert_array_equal(count(0)[0], n0)  # a pure function of the seed
  assert not np.array_equal(count(1)[0], n0)
  with pytest.raises(ValueError, match='rounding must be one of'):
    snr_jax.make_method('cbp', optax.sgd(0.0), groups=groups, rounding='round')


def test_cbp_never_replaces_an_immature_unit():
  groups = (snr_jax.dense_group('h', 3, layer='l1'),)
  params = {'l1': {'kernel': jnp.ones((2, 3)), 'bias': jnp.zeros(3)}}
  tx = snr_jax.make_method(
      'cbp', optax.sgd(0.0), groups=groups, replacement_rate=1.0, maturity=1000
  )
  state = tx.init(params)
  update = jax.jit(
      lambda s: tx.update(_zero_grads(params), s, params, activations={'h': jnp.zeros((2, 3))})
  )
  for _ in range(20):
    _, state = update(state)
    assert not bool(state.resets.last_resets['h'].any())


RESETTING = {
    'snr': dict(tau_init=4, tau_min=1, tau_max=8),
    'redo': dict(threshold=0.5, period=1),
    'cbp': dict(replacement_rate=0.5, maturity=0),
}


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(RESETTING))
def test_resetting_methods_leave_other_units_untouched(name, mlp):
  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)
  inner = optax.adam(1e-2)
  tx = snr_jax.make_method(name, inner, groups=groups, **RESETTING[name])
  loss = lambda p: jnp.mean(
      snr_jax.apply_with_preactivations(model, {'params': p}, x, groups=groups)[0] ** 2
  )

  def run(tx_update, s0, steps):
    p, s = params, s0
    for _ in range(steps):
      _, acts = snr_jax.apply_with_preactivations(model, {'params': p}, x, groups=groups)
      g = jax.grad(loss)(p)
      u, s = tx_update(g, s, p, acts)
      p = optax.apply_updates(p, u)
    return p, s

  p_m, s_m = run(lambda g, s, p, a: tx.update(g, s, p, activations=a), tx.init(params), 1)
  p_i, s_i = run(lambda g, s, p, a: inner.update(g, s, p), inner.init(params), 1)
  masks = s_m.resets.last_resets
  assert sum(int(m.sum()) for m in masks.values()) > 0, 'the setup must reset something'
  keep = keep_masks(params, groups, masks)
  if name == 'cbp':  # the consumers' biases also receive the replaced units' mean output
    from snr_jax._src.cbp import transfer_to_biases

    p_i = transfer_to_biases(p_i, groups, s_m.resets.rule.transfer)
  for k, a, b in zip(jax.tree.leaves(keep), jax.tree.leaves(p_m), jax.tree.leaves(p_i)):
    full = np.broadcast_to(np.asarray(k), a.shape)
    np.testing.assert_allclose(np.asarray(a)[full], np.asarray(b)[full], rtol=1e-5, atol=1e-7)
  keep_by_path = {(layer, n): np.asarray(v) for layer in keep for n, v in keep[layer].items()}
  moments = 0
  for (kp, sm), si in zip(
      jax.tree_util.tree_flatten_with_path(s_m.inner_state)[0], jax.tree.leaves(s_i)
  ):
    sm, si = np.asarray(sm), np.asarray(si)
    if sm.ndim == 0:
      assert sm == si  # step counts untouched
      continue
    full = np.broadcast_to(keep_by_path[tuple(k.key for k in kp[-2:])], sm.shape)
    np.testing.assert_allclose(sm[full], si[full], rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(sm[~full], 0)
    moments += int((~full).any())
  assert moments > 0


OPTIMIZERS = {
    'sgd': lambda: optax.sgd(0.05),
    'momentum': lambda: optax.sgd(0.05, momentum=0.9),
    'adam': lambda: optax.adam(1e-3),
}
HPARAMS = {
    'none': {},
    'l2': {},
    'l2_init': {},
    'shrink_perturb': {},
    'redo': dict(period=3),
    'cbp': dict(replacement_rate=0.1, maturity=2),
    'snr': dict(tau_init=8, tau_min=4, tau_max=64),
    'snr_l2': dict(tau_min=4, tau_max=64),
}


@pytest.mark.parametrize('opt', sorted(OPTIMIZERS))
@pytest.mark.parametrize('name', sorted(snr_jax.METHODS))
@pytest.mark.slow
def test_every_method_with_every_optimizer_under_jit_vmap_scan(name, opt, mlp):
  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)
  init_fn = lambda k: model.init(k, x)['params']
  tx = snr_jax.make_method(name, OPTIMIZERS[opt](), groups=groups, init_fn=init_fn, **HPARAMS[name])
  ys = jnp.arange(x.shape[0]) % 3

  def run(key):
    def step(carry, k):
      p, s = carry

      def loss(p):
        out, acts = snr_jax.apply_with_preactivations(model, {'params': p}, x, groups=groups)
        return optax.softmax_cross_entropy_with_integer_labels(out, ys).mean(), acts

      (value, acts), g = jax.value_and_grad(loss, has_aux=True)(p)
      u, s = tx.update(g, s, p, activations=acts, end_of_task=False, key=k)
      return (optax.apply_updates(p, u), s), value

    (p, _), losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, 12))
    return losses

  losses = jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(0), 2))
  assert losses.shape == (2, 12) and bool(jnp.all(jnp.isfinite(losses)))
  assert float(losses[0, -1]) < float(losses[0, 0])  # it trains


def test_registry_errors_list_valid_choices(mlp):
  with pytest.raises(ValueError, match=r"unknown method 'sn'.*'snr'"):
    snr_jax.make_method('sn', optax.sgd(0.1))
  with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['rate'\].*replacement_rate"):
    snr_jax.make_method('cbp', optax.sgd(0.1), groups=(), rate=0.1)
  with pytest.raises(ValueError, match='needs groups='):
    snr_jax.make_method('redo', optax.sgd(0.1))
  with pytest.raises(ValueError, match='needs init_fn='):
    snr_jax.make_method('shrink_perturb', optax.sgd(0.1))
  with pytest.raises(ValueError, match='shrink must be a number in'):
    snr_jax.make_method('shrink_perturb', optax.sgd(0.1), init_fn=lambda k: k, shrink=0.0)
  with pytest.raises(ValueError, match='noise must be one of'):
    snr_jax.make_method('shrink_perturb', optax.sgd(0.1), init_fn=lambda k: k, noise='gauss')
  with pytest.raises(ValueError, match='strength must be a number in'):
    snr_jax.make_method('l2', optax.sgd(0.1), strength=-1.0)


def test_cbp_warns_when_an_outgoing_slice_has_no_consumer_bias_to_transfer_into():
  def f(p, x):
    return jax.nn.relu(x @ p['fc1']['w'] + p['fc1']['b']) @ p['fc2']['w'] + p['fc2']['b']

  x = jnp.ones((2, 3))
  params = {
      'fc1': {'w': jnp.ones((3, 4)), 'b': jnp.zeros(4)},
      'fc2': {'w': jnp.ones((4, 2)), 'b': jnp.zeros(2)},
  }
  groups = snr_jax.discover_groups(f, params, x)
  with pytest.warns(UserWarning, match=r"\['fc2/w'\].*'bias' next to a 'kernel'"):
    snr_jax.continual_backprop(optax.sgd(0.0), groups).init(params)
  named = {k: {'kernel': v['w'], 'bias': v['b']} for k, v in params.items()}
  g = lambda p, x: f({k: {'w': v['kernel'], 'b': v['bias']} for k, v in p.items()}, x)
  groups = snr_jax.discover_groups(g, named, x)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    snr_jax.continual_backprop(optax.sgd(0.0), groups).init(named)
