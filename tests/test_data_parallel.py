"""Data parallelism has one global semantics (design §8): jit with a sharded batch, shard_map
and pmap (with ``data_axis``) make the single-device resets at every step, for every
resetting method, and pmap replicas never diverge."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import snr_jax
from snr_jax._src.util import psum_packed

HERE = pathlib.Path(__file__).resolve().parent


@pytest.mark.slow
def test_every_parallel_form_matches_one_device():
  env = dict(os.environ, PYTHONPATH=str(HERE.parent))
  proc = subprocess.run(
      [sys.executable, str(HERE / 'data_parallel_run.py'), '200'],
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  assert sorted(results) == ['cbp', 'redo', 'snr', 'snr_per_token']
  for method, r in results.items():
    assert r['resets'] > 0, f'{method}: the setup must reset something'
    for form in ('jit_sharded', 'shard_map', 'pmap'):
      assert r[f'{form}_mask_mismatches'] == 0, (method, form, r)
      assert r[f'{form}_param_diff'] <= 1e-6, (method, form, r)
    assert r['pmap_spread'] == 0.0, (method, r)


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


COLLECTIVES = """
import os, re
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
import jax, numpy as np, optax
from jax.sharding import Mesh, PartitionSpec as P
import snr_jax
from parallel_setup import setup

params, groups, loss_sum, xs, ys = setup(1)
mesh = Mesh(np.array(jax.devices()), ('d',))

def all_reduces(tx):
  def step(p, s, x, y):
    (_, acts), g = jax.value_and_grad(loss_sum, has_aux=True)(p, x, y)
    u, s = tx.update(g, s, p, activations=acts)
    return optax.apply_updates(p, u), s
  run = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(), P('d'), P('d')),
                              out_specs=(P(), P())))
  hlo = run.lower(params, tx.init(params), xs[0], ys[0]).compile().as_text()
  ops = re.findall(r' all-reduce\\(([^)]*)\\)', hlo)
  return len(ops), sum(len(o.split(',')) for o in ops)

sgd = optax.sgd(0.05)
assert len(groups) == 2, groups
print(*all_reduces(sgd), *all_reduces(snr_jax.snr(sgd, groups, data_axis='d')),
      *all_reduces(snr_jax.snr(sgd, groups, estimator='per_token', data_axis='d')),
      *all_reduces(snr_jax.redo(sgd, groups, data_axis='d')),
      *all_reduces(snr_jax.continual_backprop(sgd, groups, data_axis='d')))
"""


@pytest.mark.slow
def test_data_parallel_resets_add_no_collective_and_one_buffer_to_the_step():
  """The global firing (SNR) and mean activity (ReDo, CBP) are summed in float32, so XLA
  merges their all-reduce with the gradients': a data-parallel step has as many
  all-reduces as the plain one, and every group's statistics travel in one buffer of it
  (XLA's CPU runtime runs one rendezvous of all devices per buffer)."""
  env = dict(os.environ, PYTHONPATH=f'{HERE}{os.pathsep}{HERE.parent}')
  proc = subprocess.run(
      [sys.executable, '-c', COLLECTIVES],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  (plain, plain_buffers), *methods = (
      tuple(map(int, p)) for p in zip(*[iter(proc.stdout.split())] * 2)
  )
  assert plain >= 1 and len(methods) == 4, proc.stdout
  for ops, buffers in methods:  # snr histogram, snr per-token, redo, cbp
    assert ops == plain and buffers == plain_buffers + 1, (plain, plain_buffers, methods)


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
