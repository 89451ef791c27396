"""The per-token rate estimator (design §3c) on tiny hand-checked cases and on the GPT.

Relation to the geometric estimator (design §3b) with one position per example (2-D
pre-activations ``(batch, units)``, so ``BT`` = the batch size B):

* what coincides, for any B: a unit fires (``c > 0``) exactly when it fires anywhere in
  the batch, and a silent batch adds B to the age under both;
* with B = 1 (one position per step):
  - after a unit's first firing, its per-token age is its geometric age + 1 (a firing
    batch sets the geometric age to 0 and the per-token age to ``⌊1/1⌋ = 1``); before
    it, both are equal; so at equal thresholds per-token resets one step earlier;
  - from the start (or from a refresh on a step where the unit fired) to a refresh on a
    step where it fires, without resets in between, per-token's estimate
    ``⌈−ln η · total / count⌉`` is exactly geometric's ``τ_p = ⌈−ln η · m⌉``:
    ``total = 1 + n = gap_sum + 1`` and ``count = 1 + k = gap_count + 1``, the two
    pseudo-counts included, for n steps and k firings; so after the refresh the
    thresholds are equal wherever the geometric rule contracts;
* what differs:
  - no doubling: where the estimate is not below τ, geometric expands τ, per-token sets
    it to the estimate;
  - a reset counts as one firing for per-token, as a censored gap (the age) for
    geometric; and the silent positions after a unit's last firing count in per-token's
    total at a refresh but are not yet a recorded gap for geometric;
  - with B > 1, geometric gaps are counted in whole batches (a unit firing in every batch
    has a mean gap of B examples, at however many of its examples), per-token rates in
    examples (mean gap B/c).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import snr_jax
from snr_jax._src.ages import position_ages
from experiments.models.transformer import GPT
from snr_jax._src.thresholds import PerTokenEstimator, PositionFiring, RateState

TOP = np.iinfo(np.int32).max


def _groups(n):
  return (
      snr_jax.NeuronGroup('g0', n, (snr_jax.ParamSlice(('w',), -1, jax.nn.initializers.zeros),)),
  )


def _run(resets, acts_seq, end_of_task=None):
  """Applies ``resets`` to a sequence of pre-activations; returns the state after each."""
  n = acts_seq[0].shape[-1]
  params = {'w': jnp.zeros((1, n))}
  state = resets.init(params)
  out = []
  for i, a in enumerate(acts_seq):
    eot = False if end_of_task is None else end_of_task[i]
    _, _, state = resets.apply(params, None, state, {'g0': jnp.asarray(a)}, end_of_task=eot)
    out.append(state)
  return out


def _tokens(counts, batch=2, tokens=3):
  """Pre-activations (batch, tokens, units): unit u positive at its first counts[u]
  positions (row-major), -1 elsewhere."""
  counts = list(counts)
  a = -np.ones((batch * tokens, len(counts)), np.float32)
  for u, c in enumerate(counts):
    a[:c, u] = 1.0
  return a.reshape(batch, tokens, len(counts))


# --- counting ----------------------------------------------------------------------


def test_fire_counts_over_tokens_and_space():
  a = -jnp.ones((2, 3, 4))
  a = a.at[0, 0, 1].set(1.0).at[1, 2, 1].set(0.5).at[:, :, 3].set(2.0).at[1, 1, 2].set(0.0)
  positions, counts = snr_jax.fire_counts(a)
  assert positions == 6
  np.testing.assert_array_equal(counts, [0, 2, 0, 6])  # 0 is not firing
  np.testing.assert_array_equal(counts > 0, snr_jax.fired(a))
  img = (-jnp.ones((2, 4, 5, 3))).at[1, 3, 0, 2].set(1.0).at[0, :, :, 0].set(1.0)
  positions, counts = snr_jax.fire_counts(img)
  assert positions == 40
  np.testing.assert_array_equal(counts, [20, 0, 1])


def test_position_ages_hand_checked():
  ages = jnp.array([5, 5, 5, 5, TOP - 2], jnp.int32)
  counts = jnp.array([0, 3, 12, 5, 0], jnp.int32)
  # silent: +12; 12/3 = 4; 12/12 = 1; floor(12/5) = 2; saturates instead of wrapping
  np.testing.assert_array_equal(position_ages(ages, 12, counts), [17, 4, 1, 2, TOP])


# --- the estimator alone -----------------------------------------------------------


def test_estimator_counts_pseudo_counts_quantile_and_refresh():
  est = PerTokenEstimator(eta=0.5, tau_min=2, tau_max=100)
  st = est.init(3)
  np.testing.assert_array_equal(st.count, [1, 1, 1])  # pseudo-counts
  np.testing.assert_array_equal(st.total, [1, 1, 1])
  # at the pseudo-counts alone λ̂ = 1: τ = ⌈ln 2⌉ = 1
  np.testing.assert_array_equal(est.quantile(st), [1, 1, 1])
  st = est.record(
      st,
      PositionFiring(12, jnp.array([0, 3, 12])),
      age_before=jnp.zeros(3, jnp.int32),
      reset=jnp.array([True, False, False]),
      age_at_reset=jnp.zeros(3, jnp.int32),
  )
  np.testing.assert_array_equal(st.count, [2, 4, 13])  # +c, +1 for the reset
  np.testing.assert_array_equal(st.total, [13, 13, 13])  # +BT every step
  np.testing.assert_allclose(est.rate(st), [2 / 13, 4 / 13, 1.0], rtol=1e-6)
  # ⌈0.693·6.5⌉ = ⌈4.51⌉ = 5, ⌈0.693·3.25⌉ = ⌈2.25⌉ = 3, ⌈0.693·1⌉ = 1
  np.testing.assert_array_equal(est.quantile(st), [5, 3, 1])
  thr = jnp.array([2, 10, 10], jnp.int32)
  new, st2 = est.refresh(st, thr, jnp.array([True, True, False]), 1)
  # no doubling: 2 -> 5 (the estimate, not 4); 10 -> 3; the unmasked unit keeps 10
  np.testing.assert_array_equal(new, [5, 3, 10])
  np.testing.assert_array_equal(st2.count, [1, 1, 13])  # refreshed: back to 1
  np.testing.assert_array_equal(st2.total, [1, 1, 13])
  # clamp into [tau_min, tau_max]: the estimate 1 goes up to 2
  new, _ = est.refresh(st, thr, jnp.ones(3, bool), 1)
  np.testing.assert_array_equal(new, [5, 3, 2])


def test_counters_never_overflow():
  est = PerTokenEstimator(eta=0.1, tau_min=1, tau_max=2**30)
  cap = snr_jax._src.thresholds.RATE_CAP
  st = RateState(jnp.array([cap // 4, 1001], jnp.int32), jnp.array([cap - 5, cap - 5], jnp.int32))
  before = est.rate(st)
  st = est.record(
      st,
      PositionFiring(1000, jnp.array([250, 0])),
      age_before=jnp.zeros(2),
      reset=jnp.zeros(2, bool),
      age_at_reset=jnp.zeros(2),
  )
  assert int(st.total.max()) <= cap and int(st.total.min()) > 0
  np.testing.assert_allclose(est.rate(st), before, rtol=1e-3)


# --- the full rule on tiny arrays ----------------------------------------------------


def test_rule_hand_checked_ages_counts_resets_and_refresh():
  r = snr_jax.self_normalized_resets(
      _groups(3), estimator='per_token', eta=0.5, schedule=snr_jax.every_n_steps(3)
  )
  # BT = 2 × 3 = 6 positions; τ_0 = 10 positions, τ_min = 1
  s1, s2, s3, s4 = _run(
      r, [_tokens([0, 2, 6]), _tokens([0, 0, 3]), _tokens([1, 0, 6]), _tokens([0, 0, 6])]
  )
  np.testing.assert_array_equal(s1.rule.thresholds['g0'], [10, 10, 10])
  np.testing.assert_array_equal(s1.rule.ages['g0'], [6, 3, 1])
  np.testing.assert_array_equal(s1.last_resets['g0'], [False, False, False])
  np.testing.assert_array_equal(s1.rule.estimator['g0'].count, [1, 3, 7])
  np.testing.assert_array_equal(s1.rule.estimator['g0'].total, [7, 7, 7])
  # unit 0 silent again: 6 + 6 = 12 >= 10 -> reset (age 0, one count)
  np.testing.assert_array_equal(s2.last_resets['g0'], [True, False, False])
  np.testing.assert_array_equal(s2.rule.ages['g0'], [0, 9, 2])
  np.testing.assert_array_equal(s2.rule.estimator['g0'].count, [2, 3, 10])
  # unit 1 reaches 15 -> reset; unit 0 fires once: age 6/1 = 6
  np.testing.assert_array_equal(s3.last_resets['g0'], [False, True, False])
  np.testing.assert_array_equal(s3.rule.ages['g0'], [6, 0, 1])
  # refresh after step 3 (counts [3, 4, 16] over 19): τ = ⌈ln2·19/3⌉ = ⌈4.39⌉ = 5,
  # ⌈ln2·19/4⌉ = ⌈3.29⌉ = 4, ⌈ln2·19/16⌉ = ⌈0.82⌉ = 1; counters back to the pseudo-count
  np.testing.assert_array_equal(s3.rule.thresholds['g0'], [5, 4, 1])
  np.testing.assert_array_equal(s3.rule.estimator['g0'].count, [1, 1, 1])
  np.testing.assert_array_equal(s3.rule.estimator['g0'].total, [1, 1, 1])
  # with η = 0.5 > 1/e the unit firing at every position (age 1, τ 1) is reset too
  np.testing.assert_array_equal(s4.last_resets['g0'], [True, True, True])
  np.testing.assert_array_equal(s4.rule.estimator['g0'].count, [2, 2, 8])


@pytest.mark.slow
def test_random_refresh_draws_per_unit():
  r = snr_jax.self_normalized_resets(
      _groups(200), estimator='per_token', eta=0.1, schedule=snr_jax.at_random(0.5)
  )
  (s,) = _run(r, [_tokens([3] * 200)])
  refreshed = np.asarray(s.rule.estimator['g0'].total) == 1
  assert 60 < refreshed.sum() < 140
  thr = np.asarray(s.rule.thresholds['g0'])
  # ⌈−ln 0.1 · 7/4⌉ = ⌈4.03⌉ = 5 on the refreshed units; τ_0 = 10 elsewhere
  np.testing.assert_array_equal(thr[refreshed], 5)
  np.testing.assert_array_equal(thr[~refreshed], 10)


@pytest.mark.slow
def test_silent_unit_is_reset_after_expected_positions_then_fires():
  n, d = 4, 3
  group = snr_jax.NeuronGroup(
      'g0',
      n,
      (
          snr_jax.ParamSlice(('w',), -1, jax.nn.initializers.normal(1.0)),
          snr_jax.ParamSlice(('b',), -1, jax.nn.initializers.zeros),
      ),
  )
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 4, d))  # BT = 8 positions
  params = {'w': jax.random.normal(jax.random.PRNGKey(4), (d, n)), 'b': jnp.zeros((n,))}
  params['w'] = params['w'].at[:, 0].set(0.0)
  params['b'] = params['b'].at[0].set(-1.0)  # unit 0: silent everywhere
  tau = 20
  r = snr_jax.self_normalized_resets((group,), estimator='per_token', tau_init=tau)
  state = r.init(params)
  expected_steps = math.ceil(tau / 8)  # ages 8, 16, 24 -> reset
  for step in range(1, expected_steps + 2):
    acts = {'g0': x @ params['w'] + params['b']}
    positions, counts = snr_jax.fire_counts(acts['g0'])
    params, _, state = r.apply(params, None, state, acts)
    reset0 = bool(state.last_resets['g0'][0])
    if step < expected_steps:
      assert not reset0 and int(counts[0]) == 0
      assert int(state.rule.ages['g0'][0]) == 8 * step
    elif step == expected_steps:
      assert reset0 and int(state.rule.ages['g0'][0]) == 0
      assert int(state.rule.estimator['g0'].count[0]) == 2  # pseudo-count + reset
      assert float(params['b'][0]) == 0.0 and float(jnp.abs(params['w'][:, 0]).sum()) > 0
    else:  # re-drawn: it fires, and its age is the within-batch gap
      assert 0 < int(counts[0]) and not reset0
      assert int(state.rule.ages['g0'][0]) == positions // int(counts[0])
      assert int(state.rule.estimator['g0'].count[0]) == 2 + int(counts[0])


# --- relation to the geometric estimator (see the module docstring) -------------------


def _pair(n_units, schedule, **kw):
  common = dict(eta=0.05, tau_min=1, schedule=schedule, **kw)
  return (
      snr_jax.self_normalized_resets(_groups(n_units), estimator='per_token', **common),
      snr_jax.self_normalized_resets(_groups(n_units), estimator='geometric', **common),
  )


def _one_position(fired_rows):
  return [np.where(f, 1.0, -1.0).astype(np.float32)[None, :] for f in fired_rows]


@pytest.mark.slow
def test_one_position_per_step_matches_geometric_estimate():
  n_units, steps = 16, 12
  rng = np.random.default_rng(0)
  p = rng.uniform(0.2, 1.0, n_units)
  fired = rng.uniform(size=(steps, n_units)) < p
  fired[-1] = True  # every unit fires on the refresh step
  pt, geo = _pair(n_units, snr_jax.every_n_steps(steps), tau_init=10_000, tau_max=10_000)
  acts = _one_position(fired)
  s_pt, s_geo = _run(pt, acts), _run(geo, acts)
  ever = np.zeros(n_units, bool)
  for t in range(steps):
    ever |= fired[t]
    assert not np.asarray(s_pt[t].last_resets['g0']).any()
    assert not np.asarray(s_geo[t].last_resets['g0']).any()
    a_pt, a_geo = np.asarray(s_pt[t].rule.ages['g0']), np.asarray(s_geo[t].rule.ages['g0'])
    np.testing.assert_array_equal(a_pt, a_geo + ever)  # +1 once the unit has fired
  thr_pt = np.asarray(s_pt[-1].rule.thresholds['g0'])
  thr_geo = np.asarray(s_geo[-1].rule.thresholds['g0'])
  np.testing.assert_array_equal(thr_pt, thr_geo)
  # and it is the exponential quantile of the mean gap, (steps + 1)/(firings + 1)
  expected = [math.ceil(-math.log(0.05) * (steps + 1) / (k + 1)) for k in fired.sum(0)]
  np.testing.assert_array_equal(thr_pt, expected)
  assert len(set(expected)) > 2


@pytest.mark.slow
def test_one_position_per_step_differs_by_no_doubling():
  # period 1: fires every step (τ -> ⌈3.0⌉ = 3 under both); period 2: every other
  # step, never aged 3 (no resets), estimate ⌈3.0·10/6⌉ = 5 >= 3: geometric doubles to 6,
  # per-token takes 5.
  period = [True] * 9 + [True, False] * 4 + [True]
  pt, geo = _pair(1, snr_jax.every_n_steps(9), tau_init=100, tau_max=100)
  acts = _one_position(np.array(period)[:, None])
  s_pt, s_geo = _run(pt, acts), _run(geo, acts)
  assert int(s_pt[8].rule.thresholds['g0'][0]) == int(s_geo[8].rule.thresholds['g0'][0]) == 3
  assert not any(bool(s.last_resets['g0'][0]) for s in s_pt + s_geo)
  assert int(s_pt[-1].rule.thresholds['g0'][0]) == math.ceil(-math.log(0.05) * 10 / 6) == 5
  assert int(s_geo[-1].rule.thresholds['g0'][0]) == 6


@pytest.mark.slow
def test_several_positions_per_step_count_examples_not_batches():
  # B = 4, the unit fires in 2 of 4 examples of every batch: per-token mean gap 2
  # examples, geometric one batch (4 examples).
  steps = 6
  a = np.array([[1.0], [1.0], [-1.0], [-1.0]], np.float32)
  pt, geo = _pair(1, snr_jax.every_n_steps(steps), tau_init=1000, tau_max=1000)
  s_pt, s_geo = _run(pt, [a] * steps), _run(geo, [a] * steps)
  assert int(s_pt[-1].rule.thresholds['g0'][0]) == math.ceil(
      -math.log(0.05) * (1 + 4 * steps) / (1 + 2 * steps)
  )
  assert int(s_geo[-1].rule.thresholds['g0'][0]) == math.ceil(-math.log(0.05) * 4)
  assert int(s_pt[-1].rule.ages['g0'][0]) == 2 and int(s_geo[-1].rule.ages['g0'][0]) == 0


# --- construction errors -------------------------------------------------------------


@pytest.mark.parametrize(
    'kw, match',
    [
        (dict(expansion=2.0), 'no expansion'),
        (dict(batch_size=8), 'leave batch_size unset'),
        (dict(age_unit='examples'), "age_unit 'examples' does not apply"),
        (dict(tau_max=2**31 - 1), 'tau_max must be at most'),
    ],
)
def test_per_token_rejects_arguments_it_does_not_take(kw, match):
  with pytest.raises(ValueError, match=match):
    snr_jax.self_normalized_resets(_groups(2), estimator='per_token', **kw)


def test_positions_unit_needs_per_token():
  with pytest.raises(ValueError, match="age_unit 'positions' does not apply"):
    snr_jax.self_normalized_resets(_groups(2), age_unit='positions')


def test_per_token_defaults():
  rule = snr_jax.self_normalized_resets(_groups(2), estimator='per_token').rule
  assert (rule.tau_init, rule.estimator.tau_min, rule.age_unit) == (10, 1, 'positions')
  assert rule.estimator.expansion is None


# --- the GPT's FFN group, under jit, lax.scan and vmap over seeds ---------------------


@pytest.fixture(scope='module')
def gpt_setup():
  model = GPT(vocab_size=40, context_length=8)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (6, 2, 8), 0, 40)  # 6 steps, BT = 16
  params = model.init(jax.random.PRNGKey(1), tokens[0])['params']
  groups = snr_jax.discover_groups(model, params, tokens[0])
  return model, params, groups, tokens


def _gpt_run(model, params, groups, tokens, key, inner=None, **hp):
  inner = optax.adam(1e-2) if inner is None else inner
  opt = snr_jax.snr(inner, groups, estimator='per_token', key=key, **hp)

  def loss_fn(p, toks):
    logits, acts = snr_jax.apply_with_preactivations(
        model, {'params': p}, toks[:, :-1], groups=groups
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, toks[:, 1:]).mean()
    return loss, acts

  def step(carry, toks):
    p, s = carry
    (_, acts), g = jax.value_and_grad(loss_fn, has_aux=True)(p, toks)
    u, s = opt.update(g, s, p, activations=acts)
    name = groups[0].name
    return (optax.apply_updates(p, u), s), (
        snr_jax.fire_counts(acts[name])[1],
        s.resets.rule.ages[name],
        s.resets.last_resets[name],
    )

  (p, s), trace = jax.lax.scan(step, (params, opt.init(params)), tokens)
  return p, s, trace


@pytest.mark.slow
def test_gpt_ffn_group_counts_and_ages(gpt_setup):
  model, params, groups, tokens = gpt_setup
  assert len(groups) == 1 and groups[0].size == 256
  run = jax.jit(lambda k: _gpt_run(model, params, groups, tokens, k, tau_init=100))
  _, s, (counts, ages, resets) = run(jax.random.PRNGKey(0))
  bt = 2 * 7  # 2 sequences × 7 tokens
  counts, ages, resets = np.asarray(counts), np.asarray(ages), np.asarray(resets)
  assert counts.max() <= bt and (counts > 0).any() and (counts < bt).any()
  prev = np.zeros(256, np.int64)
  for t in range(tokens.shape[0]):
    age = np.where(counts[t] > 0, bt // np.maximum(counts[t], 1), prev + bt)
    np.testing.assert_array_equal(resets[t], age >= 100)
    prev = np.where(resets[t], 0, age)
    np.testing.assert_array_equal(ages[t], prev)
  est = s.resets.rule.estimator[groups[0].name]
  np.testing.assert_array_equal(est.count, 1 + counts.sum(0) + resets.sum(0))
  np.testing.assert_array_equal(est.total, 1 + bt * tokens.shape[0])
  # reset_metrics' dead fraction counts dead_after in positions
  info = snr_jax.reset_metrics(s, dead_after=bt, nested=True)
  name = groups[0].name
  assert float(info['dead_fraction'][name]) == pytest.approx(np.mean(ages[-1] >= bt))
  assert int(info['resets'][name]) == int(resets[-1].sum())


@pytest.mark.slow
def test_gpt_vmap_over_seeds_equals_separate_runs(gpt_setup):
  model, params, groups, tokens = gpt_setup
  # SGD: Adam turns float noise in near-zero gradients into lr-sized steps, so vmapped
  # and separate runs could not be compared weight by weight.
  hp = dict(tau_init=20, schedule=snr_jax.every_n_steps(3), inner=optax.sgd(0.1))
  run = jax.jit(lambda k: _gpt_run(model, params, groups, tokens, k, **hp))
  keys = jax.random.split(jax.random.PRNGKey(5), 2)
  p_v, s_v, (_, _, resets_v) = jax.vmap(run)(keys)
  assert int(resets_v.sum()) > 0
  for i in range(2):
    p_i, s_i, (_, _, resets_i) = run(keys[i])
    np.testing.assert_array_equal(resets_i, resets_v[i])
    for a, b in zip(jax.tree.leaves(s_i.resets.rule), jax.tree.leaves(s_v.resets.rule)):
      np.testing.assert_array_equal(a, b[i])
    for a, b in zip(jax.tree.leaves(p_i), jax.tree.leaves(p_v)):
      np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-6)
