"""The optax face and the pure function agree; jit, vmap and lax.scan behave."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import snr_jax

HP = dict(tau_init=24, tau_min=8, tau_max=64, eta=0.1, schedule=snr_jax.every_n_steps(5))


def _setup(mlp, inner=None):
  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)
  # make some units die, so resets happen within a few steps
  params = dict(params)
  params['Dense_0'] = dict(params['Dense_0'], bias=params['Dense_0']['bias'].at[:3].set(-50.0))
  inner = inner or optax.sgd(0.05, momentum=0.9)
  return model, params, groups, inner


def _data(n, batch=4):
  xs = jax.random.normal(jax.random.PRNGKey(7), (n, batch, 7))
  ys = jax.random.randint(jax.random.PRNGKey(8), (n, batch), 0, 3)
  return xs, ys


def _loss_fn(model, groups):
  def loss(p, x, y):
    out, acts = snr_jax.apply_with_preactivations(model, {'params': p}, x, groups=groups)
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), acts

  return loss


def _transform_run(model, params, groups, inner, xs, ys, seed=0, jit=True):
  opt = snr_jax.snr(inner, groups, key=seed, **HP)
  loss = _loss_fn(model, groups)

  def step(carry, batch):
    p, s = carry
    (_, acts), g = jax.value_and_grad(loss, has_aux=True)(p, *batch)
    u, s = opt.update(g, s, p, activations=acts)
    p = optax.apply_updates(p, u)
    return (p, s), s.resets.last_resets

  step = jax.jit(step) if jit else step
  carry = (params, opt.init(params))
  resets = []
  for i in range(xs.shape[0]):
    carry, r = step(carry, (xs[i], ys[i]))
    resets.append(r)
  return carry, resets


@pytest.mark.slow
def test_transform_and_pure_function_agree(mlp):
  model, params, groups, inner = _setup(mlp)
  xs, ys = _data(12)
  (p_t, s_t), resets_t = _transform_run(model, params, groups, inner, xs, ys)
  resetter = snr_jax.self_normalized_resets(groups, **HP)
  loss = _loss_fn(model, groups)

  @jax.jit
  def step(p, o, s, x, y):
    (_, acts), g = jax.value_and_grad(loss, has_aux=True)(p, x, y)
    u, o = inner.update(g, o, p)
    p = optax.apply_updates(p, u)
    return snr_jax.reset_state(resetter, p, o, s, acts, optimizer=inner)

  p, o, s = params, inner.init(params), resetter.init(params, 0)
  total = 0
  for i in range(12):
    p, o, s = step(p, o, s, xs[i], ys[i])
    for name in s.last_resets:
      np.testing.assert_array_equal(s.last_resets[name], resets_t[i][name])
      total += int(s.last_resets[name].sum())
  assert total > 0
  for a, b in zip(jax.tree.leaves(s.rule), jax.tree.leaves(s_t.resets.rule)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p_t)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(o), jax.tree.leaves(s_t.inner_state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_jit_and_no_jit_identical(mlp):
  model, params, groups, inner = _setup(mlp)
  xs, ys = _data(6)
  (p1, s1), r1 = _transform_run(model, params, groups, inner, xs, ys, jit=True)
  (p2, s2), r2 = _transform_run(model, params, groups, inner, xs, ys, jit=False)
  assert sum(int(v.sum()) for r in r1 for v in r.values()) > 0
  for a, b in zip(jax.tree.leaves((p1, s1, r1)), jax.tree.leaves((p2, s2, r2))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _scan_run(model, params, groups, inner, xs, ys, key):
  opt = snr_jax.snr(inner, groups, **HP)
  loss = _loss_fn(model, groups)

  def step(carry, batch):
    p, s, k = carry
    k, sub = jax.random.split(k)
    (_, acts), g = jax.value_and_grad(loss, has_aux=True)(p, *batch)
    u, s = opt.update(g, s, p, activations=acts, key=sub)
    return (optax.apply_updates(p, u), s, k), jax.tree.map(jnp.sum, s.resets.last_resets)

  (p, s, _), resets = jax.lax.scan(step, (params, opt.init(params), key), (xs, ys))
  return p, resets


@pytest.mark.slow
def test_vmap_over_seeds_equals_separate_runs(mlp):
  model, params, groups, inner = _setup(mlp)
  xs, ys = _data(10)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  run = jax.jit(lambda k: _scan_run(model, params, groups, inner, xs, ys, k))
  p_v, r_v = jax.vmap(run)(keys)
  assert int(sum(v.sum() for v in r_v.values())) > 0
  for i in range(3):
    p_i, r_i = run(keys[i])
    for a, b in zip(jax.tree.leaves(p_i), jax.tree.leaves(p_v)):
      np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-6)
    for k in r_i:
      np.testing.assert_array_equal(r_i[k], r_v[k][i])
  # different seeds draw different fresh weights
  assert not np.allclose(p_v['Dense_0']['kernel'][0], p_v['Dense_0']['kernel'][1])


@pytest.mark.slow
def test_scan_equals_python_loop(mlp):
  model, params, groups, inner = _setup(mlp)
  xs, ys = _data(8)
  key = jax.random.PRNGKey(4)
  p_scan, r_scan = jax.jit(lambda k: _scan_run(model, params, groups, inner, xs, ys, k))(key)
  opt = snr_jax.snr(inner, groups, **HP)
  loss = _loss_fn(model, groups)
  p, s, k = params, opt.init(params), key

  @jax.jit
  def step(p, s, k, x, y):
    k, sub = jax.random.split(k)
    (_, acts), g = jax.value_and_grad(loss, has_aux=True)(p, x, y)
    u, s = opt.update(g, s, p, activations=acts, key=sub)
    return optax.apply_updates(p, u), s, k

  for i in range(8):
    p, s, k = step(p, s, k, xs[i], ys[i])
  for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(p_scan)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_end_of_task_signal_inside_jit_refreshes_thresholds():
  groups = (snr_jax.dense_group('h', 2, layer='l1'),)
  params = {'l1': {'kernel': jnp.ones((1, 2)), 'bias': jnp.zeros(2)}}
  opt = snr_jax.snr(
      optax.sgd(0.0),
      groups,
      tau_init=64,
      tau_min=1,
      tau_max=64,
      eta=0.5,
      schedule=snr_jax.every_n_tasks(1),
  )
  acts_on = {'h': jnp.ones((4, 2))}
  acts_off = {'h': -jnp.ones((4, 2))}

  @jax.jit
  def step(s, acts, eot):
    _, s = opt.update(
        jax.tree.map(jnp.zeros_like, params), s, params, activations=acts, end_of_task=eot
    )
    return s

  s = opt.init(params)
  for acts, eot in (
      (acts_on, False),
      (acts_off, False),
      (acts_on, False),
      (acts_off, False),
      (acts_on, jnp.array(False)),
  ):
    s = step(s, acts, eot)
  np.testing.assert_array_equal(s.resets.rule.thresholds['h'], [64, 64])
  s = step(s, acts_on, jnp.array(True))
  # gaps recorded: 0, 4, 4, 0 -> among gaps >= 1 the median is 4
  np.testing.assert_array_equal(s.resets.rule.thresholds['h'], [4, 4])


@pytest.mark.slow
def test_reset_metrics_reports_resets_dead_fraction_and_thresholds(mlp):
  model, params, groups, inner = _setup(mlp)
  xs, ys = _data(1)
  (p, s), _ = _transform_run(model, params, groups, inner, xs, ys)
  info = jax.jit(lambda st: snr_jax.reset_metrics(st, dead_after=4, nested=True))(s)
  assert set(info) == {'resets', 'dead_fraction', 'mean_threshold'}
  # the 3 units with bias -50 have not fired: age 4 -> dead under dead_after=4
  assert float(info['dead_fraction']['Dense_0']) >= 3 / 6
  assert float(info['mean_threshold']['Dense_0']) == 24.0
  # reset_metrics finds the state inside an optax chain too
  chained = optax.chain(optax.identity(), snr_jax.snr(inner, groups, **HP))
  st = chained.init(params)
  assert set(snr_jax.reset_metrics(st, nested=True)['resets']) == {'Dense_0', 'Dense_1'}


@pytest.mark.slow
def test_named_vmap_axis_gives_the_same_results(mlp):
  model, params, groups, inner = _setup(mlp)
  xs, ys = _data(10)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  loss = _loss_fn(model, groups)

  def run(key, axis_name):
    opt = snr_jax.snr(inner, groups, key=key, axis_name=axis_name, **HP)

    def step(carry, batch):
      p, s = carry
      (_, acts), g = jax.value_and_grad(loss, has_aux=True)(p, *batch)
      u, s = opt.update(g, s, p, activations=acts)
      return (optax.apply_updates(p, u), s), jax.tree.map(jnp.sum, s.resets.last_resets)

    (p, s), r = jax.lax.scan(step, (params, opt.init(params)), (xs, ys))
    return p, r, s.resets.key

  named = jax.jit(jax.vmap(lambda k: run(k, 'seeds'), axis_name='seeds'))(keys)
  plain = jax.jit(jax.vmap(lambda k: run(k, None)))(keys)
  assert int(sum(v.sum() for v in named[1].values())) > 0
  for a, b in zip(jax.tree.leaves(named), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # with the shared predicate the reset stays a real branch; without, vmap turns it into
  # a select that computes both branches on every step
  count = lambda name: str(
      jax.make_jaxpr(jax.vmap(lambda k: run(k, name), axis_name='seeds'))(keys)
  ).count('cond[')
  assert count('seeds') > count(None)
