"""Data parallelism has one global semantics (design §8): jit with a sharded batch, shard_map
and pmap (with ``data_axis``) make the single-device resets at every step, for every
resetting method, and pmap replicas never diverge. They run in this process, on the
virtual CPU devices that the repository's conftest.py gives it."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import snr_jax
from parallel_setup import setup
from snr_jax._src.util import psum_packed


def devices(n: int) -> list:
  """The default backend's first ``n`` devices; skips the test where it has fewer (on an
  accelerator: ``jax_num_cpu_devices`` adds CPU devices only)."""
  if jax.device_count() < n:
    pytest.skip(f'needs {n} devices; the {jax.default_backend()} backend has {jax.device_count()}')
  return jax.devices()[:n]


STEPS, N = 200, 8
METHODS = {
    'snr': lambda groups, ax: snr_jax.snr(
        optax.sgd(0.05),
        groups,
        eta=0.08,
        tau_min=64,
        tau_max=640,
        schedule=snr_jax.every_n_steps(20),
        key=3,
        data_axis=ax,
    ),
    'snr_per_token': lambda groups, ax: snr_jax.snr(
        optax.sgd(0.05),
        groups,
        estimator='per_token',
        eta=0.3,
        tau_init=200,
        schedule=snr_jax.every_n_steps(20),
        key=3,
        data_axis=ax,
    ),
    'redo': lambda groups, ax: snr_jax.redo(
        optax.sgd(0.05), groups, threshold=0.0, period=10, key=3, data_axis=ax
    ),
    'cbp': lambda groups, ax: snr_jax.continual_backprop(
        optax.sgd(0.05), groups, replacement_rate=0.02, maturity=5, key=3, data_axis=ax
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize('method', sorted(METHODS))
def test_every_parallel_form_matches_one_device(method):
  """A small MLP trained for 200 steps on a global batch of 64 four ways: on one device;
  with ``jit`` and the batch sharded over 8 devices (no argument); inside ``shard_map``
  (default ``check_vma``) and inside ``pmap``, both with ``data_axis``. Every form makes
  the one-device reset masks at every step and ends within 1e-6 of its params, and the
  pmap replicas never differ."""
  mesh = Mesh(np.array(devices(N)), ('d',))
  params, groups, loss_sum, xs, ys = setup(STEPS)
  tx, tx_dp = METHODS[method](groups, None), METHODS[method](groups, 'd')

  def step_global(carry, xy):
    p, s = carry
    (_, acts), g = jax.value_and_grad(loss_sum, has_aux=True)(p, *xy)
    u, s = tx.update(g, s, p, activations=acts)
    return (optax.apply_updates(p, u), s), s.resets.last_resets

  def make_step(sum_grads):
    def step_shard(p, s, x, y):
      (_, acts), g = jax.value_and_grad(loss_sum, has_aux=True)(p, x, y)
      if sum_grads:  # pmap; under shard_map (check_vma) the gradients of replicated params
        g = jax.lax.psum(g, 'd')  # come out summed over the axis already (design §9)
      u, s = tx_dp.update(g, s, p, activations=acts)
      return optax.apply_updates(p, u), s, s.resets.last_resets

    return step_shard

  def run_global(xs, ys):
    return jax.lax.scan(step_global, (params, tx.init(params)), (xs, ys))

  ref = jax.jit(run_global)(xs, ys)
  # jit with a sharded batch: no argument needed
  sh = NamedSharding(mesh, P(None, 'd'))
  jit_sh = jax.jit(run_global)(jax.device_put(xs, sh), jax.device_put(ys, sh))
  # shard_map under the default check_vma
  sm = jax.jit(
      jax.shard_map(
          make_step(False),
          mesh=mesh,
          in_specs=(P(), P(), P('d'), P('d')),
          out_specs=(P(), P(), P()),
      )
  )
  # pmap over 8 replicas
  pm = jax.pmap(make_step(True), axis_name='d', devices=mesh.devices.tolist())
  rep = lambda t: jax.tree.map(lambda a: jnp.stack([a] * N), t)
  p_sm, s_sm = params, tx_dp.init(params)
  p_pm, s_pm = rep(params), rep(tx_dp.init(params))
  masks = {'shard_map': [], 'pmap': []}
  pmap_spread = 0.0
  for t in range(STEPS):
    p_sm, s_sm, m = sm(p_sm, s_sm, xs[t], ys[t])
    masks['shard_map'].append(m)
    p_pm, s_pm, m = pm(p_pm, s_pm, xs[t].reshape(N, -1, 8), ys[t].reshape(N, -1))
    masks['pmap'].append(jax.tree.map(lambda a: a[0], m))
    spread = max(float(jnp.max(jnp.abs(a - a[0]))) for a in jax.tree.leaves(p_pm))
    pmap_spread = max(pmap_spread, spread)

  ref_masks = ref[1]
  resets = int(sum(np.asarray(v).sum() for v in ref_masks.values()))
  assert resets > 0, f'{method}: the setup must reset something'
  for form, (p, ms) in {
      'jit_sharded': (jit_sh[0][0], jit_sh[1]),
      'shard_map': (p_sm, masks['shard_map']),
      'pmap': (jax.tree.map(lambda a: a[0], p_pm), masks['pmap']),
  }.items():
    if isinstance(ms, list):
      ms = {k: np.stack([np.asarray(m[k]) for m in ms]) for k in ref_masks}
    mismatches = int(sum((np.asarray(ms[k]) != np.asarray(ref_masks[k])).sum() for k in ref_masks))
    param_diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(ref[0][0]))
    )
    assert mismatches == 0, (method, form, mismatches, resets)
    assert param_diff <= 1e-6, (method, form, param_diff)
  assert pmap_spread == 0.0, (method, pmap_spread)


def test_axis_names_without_an_enclosing_axis_are_clear_errors():
  group = snr_jax.dense_group('h', 3, layer='a', consumer='b')
  params = {
      'a': {'kernel': jax.numpy.ones((2, 3)), 'bias': jax.numpy.zeros(3)},
      'b': {'kernel': jax.numpy.ones((3, 1)), 'bias': jax.numpy.zeros(1)},
  }
  for kw in (dict(data_axis='data'), dict(axis_name='seeds')):
    tx = snr_jax.snr(optax.sgd(0.1), [group], **kw)
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"{name}='{kw[name]}' names no enclosing mapped axis"):
      tx.update(
          jax.tree.map(jax.numpy.zeros_like, params),
          tx.init(params),
          params,
          activations={'h': jax.numpy.ones((4, 3))},
      )


def _all_reduces(tx, mesh, params, loss_sum, x, y):
  """The all-reduces of a compiled data-parallel step: how many, and their buffers."""

  def step(p, s, x, y):
    (_, acts), g = jax.value_and_grad(loss_sum, has_aux=True)(p, x, y)
    u, s = tx.update(g, s, p, activations=acts)
    return optax.apply_updates(p, u), s

  run = jax.jit(
      jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P('d'), P('d')), out_specs=(P(), P()))
  )
  hlo = run.lower(params, tx.init(params), x, y).compile().as_text()
  ops = re.findall(r' all-reduce\(([^)]*)\)', hlo)
  return len(ops), sum(len(o.split(',')) for o in ops)


@pytest.mark.slow
def test_data_parallel_resets_add_no_collective_and_one_buffer_to_the_step():
  """The global firing (SNR) and mean activity (ReDo, CBP) are summed in float32, so XLA
  merges their all-reduce with the gradients': a data-parallel step has as many
  all-reduces as the plain one, and every group's statistics travel in one buffer of it
  (XLA's CPU runtime runs one rendezvous of all devices per buffer)."""
  mesh = Mesh(np.array(devices(2)), ('d',))
  params, groups, loss_sum, xs, ys = setup(1)
  assert len(groups) == 2, groups
  sgd = optax.sgd(0.05)
  plain, plain_buffers = _all_reduces(sgd, mesh, params, loss_sum, xs[0], ys[0])
  assert plain >= 1
  for tx in (  # snr histogram, snr per-token, redo, cbp
      snr_jax.snr(sgd, groups, data_axis='d'),
      snr_jax.snr(sgd, groups, estimator='per_token', data_axis='d'),
      snr_jax.redo(sgd, groups, data_axis='d'),
      snr_jax.continual_backprop(sgd, groups, data_axis='d'),
  ):
    ops, buffers = _all_reduces(tx, mesh, params, loss_sum, xs[0], ys[0])
    assert ops == plain and buffers == plain_buffers + 1, (plain, plain_buffers, ops, buffers)


def test_psum_packed_sums_each_vector_in_its_dtype():
  """Vectors of several sizes and dtypes come back summed over the axis, each whole, in
  its own name and dtype (one buffer per dtype, split back in order)."""
  members = 3
  vectors = {
      'a': np.arange(members * 2).reshape(members, 2).astype(np.float32),
      'b': np.arange(members * 5).reshape(members, 5).astype(np.int32),
      'c': np.ones((members, 1), bool),
      'd': np.arange(members * 4).reshape(members, 4).astype(np.float32) * 10,
  }
  dtypes = {
      'a': jax.numpy.float32,
      'b': jax.numpy.int32,
      'c': jax.numpy.float32,
      'd': jax.numpy.float32,
  }
  out = jax.vmap(lambda v: psum_packed(v, dtypes, 'd'), axis_name='d')(vectors)
  assert sorted(out) == ['a', 'b', 'c', 'd']
  for k, v in vectors.items():
    assert out[k].dtype == dtypes[k] and out[k].shape == v.shape, k
    np.testing.assert_array_equal(out[k][0], v.astype(dtypes[k]).sum(0), err_msg=k)


@pytest.mark.parametrize('batch_size', [None, 16])
@pytest.mark.slow
def test_ages_grow_by_the_global_batch_however_it_is_given(batch_size):
  """With ``data_axis``, a measured batch is a shard's (times the shards) and a given
  ``batch_size`` is the global batch's: both age a silent unit by the 16 examples of
  the global batch, as on one device."""
  group = snr_jax.dense_group('h', 4, layer='a', consumer='b')
  params = {
      'a': {'kernel': jax.numpy.ones((5, 4)), 'bias': jax.numpy.zeros(4)},
      'b': {'kernel': jax.numpy.ones((4, 2)), 'bias': jax.numpy.zeros(2)},
  }
  silent = -jax.numpy.ones((16, 4))
  grads = jax.tree.map(jax.numpy.zeros_like, params)

  def ages(tx, acts):
    _, s = tx.update(grads, tx.init(params), params, activations={'h': acts})
    return s.resets.rule.ages['h']

  one_device = ages(snr_jax.snr(optax.sgd(0.0), [group], batch_size=batch_size), silent)
  sharded = snr_jax.snr(optax.sgd(0.0), [group], batch_size=batch_size, data_axis='d')
  per_shard = jax.vmap(lambda a: ages(sharded, a), axis_name='d')(silent.reshape(2, 8, 4))
  np.testing.assert_array_equal(one_device, [16] * 4)
  np.testing.assert_array_equal(per_shard, [[16] * 4] * 2)
