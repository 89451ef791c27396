"""design §2-§3 on tiny hand-checked cases: firing, ages, gap records, both estimators."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snr_jax
from snr_jax import GeometricEstimator, HistogramEstimator, NeuronGroup, ParamSlice
from snr_jax._src.ages import saturating_add
from snr_jax._src.thresholds import BatchFiring


def _groups(*sizes):
  return tuple(
      NeuronGroup(f'g{i}', n, (ParamSlice(('w',), -1, jax.nn.initializers.zeros),))
      for i, n in enumerate(sizes)
  )


def _acts(fired_rows, batch=4):
  """Pre-activations (batch, n): +1 in the first example where fired, -1 elsewhere."""
  f = np.asarray(fired_rows, bool)
  a = -np.ones((batch, f.shape[0]), np.float32)
  a[0, f] = 1.0
  return jnp.asarray(a)


def _run(resets, state, acts_seq, end_of_task=None):
  out = []
  for i, a in enumerate(acts_seq):
    params = {'w': jnp.zeros((1, a.shape[-1]))}
    eot = False if end_of_task is None else end_of_task[i]
    _, _, state = resets.apply(params, None, state, {'g0': a}, end_of_task=eot)
    out.append(state)
  return out


# --- firing -----------------------------------------------------------------------


def test_fires_if_positive_anywhere_in_batch():
  a = jnp.array([[-1.0, 0.0, 0.5], [-2.0, 0.0, -1.0]])
  np.testing.assert_array_equal(snr_jax.fired(a), [False, False, True])


def test_fires_over_spatial_axes():
  a = -jnp.ones((2, 5, 5, 3))
  a = a.at[1, 4, 0, 2].set(0.1)  # one spatial position of one example
  np.testing.assert_array_equal(snr_jax.fired(a), [False, False, True])


def test_fires_over_tokens():
  a = -jnp.ones((2, 7, 4))
  a = a.at[0, 6, 1].set(3.0)
  np.testing.assert_array_equal(snr_jax.fired(a), [False, True, False, False])


# --- ages -------------------------------------------------------------------------


@pytest.mark.slow
def test_ages_grow_by_batch_size_in_examples():
  r = snr_jax.self_normalized_resets(_groups(3), tau_max=1000, tau_min=10)
  s = r.init({'w': jnp.zeros((1, 3))})
  states = _run(
      r, s, [_acts([1, 0, 0], batch=8), _acts([1, 0, 1], batch=8), _acts([0, 0, 0], batch=8)]
  )
  np.testing.assert_array_equal(states[0].rule.ages['g0'], [0, 8, 8])
  np.testing.assert_array_equal(states[1].rule.ages['g0'], [0, 16, 0])
  np.testing.assert_array_equal(states[2].rule.ages['g0'], [8, 24, 8])


def test_ages_in_steps_unit():
  r = snr_jax.self_normalized_resets(_groups(3), tau_max=1000, tau_min=10, age_unit='steps')
  s = r.init({'w': jnp.zeros((1, 3))})
  states = _run(r, s, [_acts([1, 0, 0], batch=8)] * 3)
  np.testing.assert_array_equal(states[-1].rule.ages['g0'], [0, 3, 3])


def test_batch_size_must_match_the_activations_without_a_data_axis():
  # Without data_axis the activations hold the whole batch: another batch_size would age
  # units by examples they never saw (with data_axis it is the global batch, see
  # test_data_parallel).
  r = snr_jax.self_normalized_resets(_groups(3), tau_max=1000, tau_min=10, batch_size=5)
  s = r.init({'w': jnp.zeros((1, 3))})
  with pytest.raises(snr_jax.ActivationError, match='batch_size=5, but .* has 8 examples'):
    _run(r, s, [_acts([1, 0, 0], batch=8)])
  r = snr_jax.self_normalized_resets(_groups(3), tau_max=1000, tau_min=10, batch_size=8)
  states = _run(r, r.init({'w': jnp.zeros((1, 3))}), [_acts([1, 0, 0], batch=8)])
  np.testing.assert_array_equal(states[-1].rule.ages['g0'], [0, 8, 8])


def test_ages_saturate_at_dtype_max():
  top = np.iinfo(np.int32).max
  ages = jnp.array([top - 3, top, 5], jnp.int32)
  np.testing.assert_array_equal(saturating_add(ages, 8), [top, top, 13])
  ages16 = jnp.array([32760], jnp.int16)
  assert int(saturating_add(ages16, 100)[0]) == 32767


def test_ages_saturate_inside_the_rule():
  top = np.iinfo(np.int32).max
  r = snr_jax.self_normalized_resets(_groups(2), tau_max=1000, tau_min=10)
  s = r.init({'w': jnp.zeros((1, 2))})
  # A huge age must saturate at the maximum (and so reach a maximal threshold), not
  # wrap to a negative age that would never be reset.
  rule = s.rule._replace(
      ages={'g0': jnp.array([top - 2, 0], jnp.int32)},
      thresholds={'g0': jnp.array([top, top], jnp.int32)},
  )
  s = s._replace(rule=rule)
  (s,) = _run(r, s, [_acts([0, 0], batch=16)])
  np.testing.assert_array_equal(s.last_resets['g0'], [True, False])
  np.testing.assert_array_equal(s.rule.ages['g0'], [0, 16])


# --- gap records ------------------------------------------------------------------


def test_histogram_records_completed_and_censored_gaps():
  r = snr_jax.self_normalized_resets(_groups(2), tau_init=12, tau_min=1, tau_max=20)
  s = r.init({'w': jnp.zeros((1, 2))})
  # unit 0 never fires: ages 4, 8, 12 -> reset at step 2 with a censored gap of 12.
  # unit 1 fires on steps 0 and 2: gaps 0 (first firing, age 0) and 4.
  states = _run(r, s, [_acts([0, 1]), _acts([0, 0]), _acts([0, 1])])
  np.testing.assert_array_equal(states[1].last_resets['g0'], [False, False])
  np.testing.assert_array_equal(states[2].last_resets['g0'], [True, False])
  counts = np.asarray(states[2].rule.estimator['g0'].counts)
  assert counts[0, 12] == 1 and counts[0].sum() == 1
  assert counts[1, 0] == 1 and counts[1, 4] == 1 and counts[1].sum() == 2
  np.testing.assert_array_equal(states[2].rule.ages['g0'], [0, 0])
  (s4,) = _run(r, states[-1], [_acts([0, 0])])
  np.testing.assert_array_equal(s4.rule.ages['g0'], [4, 4])
  assert int(s4.rule.estimator['g0'].counts.sum()) == 3  # nothing new recorded


def test_gap_above_tau_max_goes_to_last_bin():
  est = HistogramEstimator(eta=0.1, tau_min=1, tau_max=10)
  st = est.init(2)
  st = est.record(
      st,
      BatchFiring(jnp.array([True, True]), 1),
      age_before=jnp.array([50, 3]),
      reset=jnp.array([False, False]),
      age_at_reset=jnp.array([0, 0]),
  )
  assert int(st.counts[0, 10]) == 1 and int(st.counts[1, 3]) == 1


# --- histogram quantile and refresh -------------------------------------------------


def _hist(rows, tau_max=10):
  counts = np.zeros((len(rows), tau_max + 1), np.int32)
  for i, row in enumerate(rows):
    for gap, c in row.items():
      counts[i, gap] = c
  return snr_jax.HistogramState(jnp.asarray(counts))


def test_quantile_leaves_bin_zero_out():
  est = HistogramEstimator(eta=0.25, tau_min=1, tau_max=10)
  # Gaps >= 1: {2: 3, 7: 1} -> CDF(2) = 0.75 reaches 1 - eta = 0.75 -> q = 2. The 100
  # zero gaps would otherwise move the quantile to 0.
  st = _hist([{0: 100, 2: 3, 7: 1}])
  assert int(est.quantile(st)[0]) == 2
  est_strict = HistogramEstimator(eta=0.2, tau_min=1, tau_max=10)  # needs 0.8 -> 7
  assert int(est_strict.quantile(st)[0]) == 7


def test_quantile_without_gaps_is_one():
  est = HistogramEstimator(eta=0.1, tau_min=1, tau_max=10)
  st = _hist([{0: 5}, {}])
  np.testing.assert_array_equal(est.quantile(st), [1, 1])


def _quantile_by_definition(counts, eta):
  """The smallest gap g >= 1 with float32(count of gaps 1..g) / float32(total) >= 1 - eta."""
  out = []
  level = np.float32(1.0 - eta)
  for row in np.asarray(counts, np.int64):
    running = np.cumsum(row[1:])
    if running[-1] == 0:
      out.append(1)
      continue
    cdf = running.astype(np.float32) / np.float32(running[-1])
    out.append(int(np.argmax(cdf >= level)) + 1)
  return out


@pytest.mark.parametrize('tau_max', [9, 511, 600, 4099, 20_000])
def test_blocked_quantile_equals_the_definition(tau_max):
  # the quantile is counted block by block above 512 bins: every kind of histogram gives
  # the gap the definition gives (sparse, dense, all in one bin, all in the last bin,
  # nothing recorded, a crossing at a block's edge), for every eta
  rng = np.random.default_rng(tau_max)
  n = tau_max + 1
  rows = [
      rng.integers(0, 3, n),
      (rng.random(n) < 0.002) * rng.integers(1, 1000, n),
      np.bincount(np.minimum(rng.geometric(0.01, 3000), tau_max), minlength=n),
      np.zeros(n, int),
      np.eye(n, dtype=int)[n - 1] * 7,
      np.eye(n, dtype=int)[min(128, n - 1)] * 10**6 + np.eye(n, dtype=int)[0] * 5,
      np.eye(n, dtype=int)[1] + np.eye(n, dtype=int)[n - 1],
  ]
  counts = jnp.asarray(np.stack(rows), jnp.int32)
  for eta in (1e-4, 0.01, 0.08, 0.2, 0.5, 0.999):
    est = HistogramEstimator(eta=eta, tau_min=1, tau_max=tau_max)
    got = np.asarray(jax.jit(est.quantile)(snr_jax.HistogramState(counts)))
    assert got.tolist() == _quantile_by_definition(counts, eta), eta


def test_refresh_contracts_expands_and_clamps():
  est = HistogramEstimator(eta=0.1, tau_min=3, tau_max=10, expansion=2)
  st = _hist([{4: 5}, {9: 5}, {}, {6: 1}])
  thr = jnp.array([8, 6, 8, 7], jnp.int32)
  new, st2 = est.refresh(st, thr, jnp.ones(4, bool), 1)
  # q=4 < 8 contract; q=9 >= 6 expand to 12 -> clamp 10; no gap q=1 -> clamp 3;
  # q=6 < 7 contract.
  np.testing.assert_array_equal(new, [4, 10, 3, 6])
  assert int(st2.counts.sum()) == 0


def test_refresh_only_touches_masked_neurons():
  est = HistogramEstimator(eta=0.1, tau_min=1, tau_max=10)
  st = _hist([{4: 5}, {4: 5}])
  new, st2 = est.refresh(st, jnp.array([8, 8], jnp.int32), jnp.array([True, False]), 1)
  np.testing.assert_array_equal(new, [4, 8])
  np.testing.assert_array_equal(st2.counts.sum(axis=1), [0, 5])


@pytest.mark.slow
def test_refresh_happens_every_k_task_boundaries():
  r = snr_jax.self_normalized_resets(
      _groups(1), tau_init=50, tau_min=1, tau_max=100, schedule=snr_jax.every_n_tasks(2), eta=0.5
  )
  s = r.init({'w': jnp.zeros((1, 1))})
  seq = [_acts([1]), _acts([0]), _acts([1])] * 2  # gaps 4 recorded
  eot = [False, False, True, False, False, True]
  states = _run(r, s, seq, eot)
  assert int(states[2].rule.thresholds['g0'][0]) == 50  # first boundary: K=2, no refresh
  assert int(states[5].rule.thresholds['g0'][0]) == 4  # second boundary: contract to q


def test_refresh_every_n_steps():
  r = snr_jax.self_normalized_resets(
      _groups(1), tau_init=50, tau_min=1, tau_max=100, schedule=snr_jax.every_n_steps(3), eta=0.5
  )
  s = r.init({'w': jnp.zeros((1, 1))})
  states = _run(r, s, [_acts([1]), _acts([0]), _acts([1])])
  assert int(states[1].rule.thresholds['g0'][0]) == 50
  assert int(states[2].rule.thresholds['g0'][0]) == 4


def test_random_refresh_rate():
  sched = snr_jax.at_random(0.25)
  st = sched.init()
  hits = 0
  key = jax.random.PRNGKey(0)
  for i in range(40):
    due, st = sched.due(st, jnp.array(False), jax.random.fold_in(key, i), {'a': 100})
    hits += int(due['a'].sum())
  assert 0.2 < hits / 4000 < 0.3


# --- geometric estimator ----------------------------------------------------------


def test_geometric_records_gaps_including_the_firing_batch():
  est = GeometricEstimator(eta=0.05, tau_min=1, tau_max=10_000)
  st = est.init(3)
  st = est.record(
      st,
      BatchFiring(jnp.array([True, False, False]), 4),
      age_before=jnp.array([8, 0, 0]),
      reset=jnp.array([False, True, False]),
      age_at_reset=jnp.array([0, 40, 4]),
  )
  np.testing.assert_allclose(st.gap_sum, [12, 40, 0])
  np.testing.assert_allclose(st.gap_count, [1, 1, 0])


def test_geometric_refresh():
  est = GeometricEstimator(eta=0.05, tau_min=2, tau_max=1000, expansion=2)
  st = snr_jax.GeometricState(jnp.array([3 * 4.0, 100 * 4.0, 0.0]), jnp.array([3.0, 4.0, 0.0]))
  # means with the pseudo-count of one batch (4): (12+4)/4=4, (400+4)/5=80.8, 4/1=4.
  tau_p = [math.ceil(-math.log(0.05) * m) for m in (4.0, 80.8, 4.0)]
  assert list(np.asarray(est.quantile(st, 4))) == tau_p
  thr = jnp.array([100, 50, 12], jnp.int32)
  new, st2 = est.refresh(st, thr, jnp.ones(3, bool), 4)
  # 100 > 12 -> contract to 12; 50 <= 243 -> expand to 100; 12 <= 12 -> expand 24.
  np.testing.assert_array_equal(new, [tau_p[0], 100, 24])
  np.testing.assert_array_equal(st2.gap_count, [0, 0, 0])
  np.testing.assert_array_equal(st2.gap_sum, [0, 0, 0])


@pytest.mark.slow
def test_neuron_firing_every_batch_has_one_batch_mean_gap():
  r = snr_jax.self_normalized_resets(
      _groups(1),
      estimator='geometric',
      eta=0.05,
      tau_init=500,
      tau_min=1,
      tau_max=1000,
      schedule=snr_jax.every_n_steps(10),
  )
  s = r.init({'w': jnp.zeros((1, 1))})
  states = _run(r, s, [_acts([1])] * 10)
  # mean gap = 4 examples -> tau_p = ceil(3.0 * 4) = 12 < 500 -> contract.
  assert int(states[-1].rule.thresholds['g0'][0]) == math.ceil(-math.log(0.05) * 4)


def test_one_threshold_rule_for_both_estimators():
  # design §3a (contract if q < τ) and §3b (expand if τ ≤ τ_p) are one comparison: at a tie
  # both expand, below τ both contract; both go through update_thresholds.
  from snr_jax._src.thresholds import update_thresholds

  thr = jnp.array([8, 8, 8], jnp.int32)
  est = jnp.array([5, 8, 11], jnp.int32)
  new = update_thresholds(thr, est, jnp.ones(3, bool), tau_min=1, tau_max=100, expansion=2.0)
  np.testing.assert_array_equal(new, [5, 16, 16])
  hist = HistogramEstimator(eta=0.1, tau_min=1, tau_max=20)
  geo = GeometricEstimator(eta=0.1, tau_min=1, tau_max=20)
  for e, st in (
      (hist, _hist([{5: 1}, {8: 1}, {11: 1}], tau_max=20)),
      (geo, snr_jax.GeometricState(jnp.zeros(3), jnp.zeros(3))),
  ):
    q = e.quantile(st, 1)
    got, _ = e.refresh(st, thr, jnp.ones(3, bool), 1)
    np.testing.assert_array_equal(got, jnp.where(q < thr, q, 16))
  np.testing.assert_array_equal(hist.quantile(_hist([{5: 1}, {8: 1}, {11: 1}], 20)), est)
  # expansion=None: the estimate itself, clamped; unmasked neurons keep their τ
  new = update_thresholds(
      thr, est, jnp.array([True, True, False]), tau_min=6, tau_max=100, expansion=None
  )
  np.testing.assert_array_equal(new, [6, 8, 8])
