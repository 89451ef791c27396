"""Discovery through ops that keep units apart (design §1): hand-written pooling, the im2col
convolution of the benchmark CNN, sharding constraints and casts, dropout before or after
the ReLU. The groups found equal the true neurons written by hand; captured
pre-activations are the ReLU inputs; after a reset, the unit's incoming weights no longer
affect the output."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import snr_jax
from snr_jax._src.groups import get_path
from snr_jax._src.reset import _unit_mask
from test_discovery import _flatten_rows, _replace, as_truth, truth

from experiments.models import CNN, GPT

KEY = jax.random.PRNGKey(0)


def dense(name, units, consumer):
  return truth(name, units, {f'{name}/kernel': 1, f'{name}/bias': 0}, {f'{consumer}/kernel': 0})


def conv(name, units, consumer, unit_of=None):
  """A conv group read by a conv (input-channel slice) or, through a flatten, a Dense."""
  axis = 0 if unit_of is not None else 2
  return truth(
      name,
      units,
      {f'{name}/kernel': 3, f'{name}/bias': 0},
      {f'{consumer}/kernel': axis},
      unit_of=None if unit_of is None else {f'{consumer}/kernel': unit_of},
  )


def assert_reset_unit_is_cut_off(apply, params, groups, name, unit):
  """After a reset of ``unit`` of group ``name``, noise on its incoming slices changes the
  output by exactly 0; before the reset the same noise changes it."""
  group = next(g for g in groups if g.name == name)
  masks = {g.name: jnp.zeros((g.size,), bool) for g in groups}
  masks[name] = masks[name].at[unit].set(True)

  def noisy(p):
    for k, s in enumerate(group.incoming):
      leaf = get_path(p, s.path)
      m = _unit_mask(masks[name], group, s, leaf.shape)
      noise = jax.random.normal(jax.random.PRNGKey(10 + k), leaf.shape)
      p = _replace(p, s.path, jnp.where(m, leaf + noise, leaf))
    return p

  assert not np.array_equal(apply(params), apply(noisy(params)))
  fresh = snr_jax.reset_params(params, groups, masks, jax.random.PRNGKey(5))
  np.testing.assert_array_equal(apply(fresh), apply(noisy(fresh)))


# --- the benchmark CNN: im2col or XLA conv, hand-written or XLA pooling ---------------------


@pytest.mark.parametrize('pool_impl', ['reshape', 'xla'])
@pytest.mark.parametrize('conv_impl', ['im2col', 'xla'])
def test_benchmark_cnn_has_all_four_groups(conv_impl, pool_impl):
  model = CNN(conv_impl=conv_impl, pool_impl=pool_impl)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  variables = model.init(KEY, x)
  groups = snr_jax.discover_groups(model, variables, x)
  assert sorted(as_truth(g) for g in groups) == sorted(
      [
          conv('Conv_0', 16, 'Conv_1'),
          conv('Conv_1', 16, 'Dense_0', unit_of=_flatten_rows(5, 5, 16, False)),
          dense('Dense_0', 100, 'Dense_1'),
          dense('Dense_1', 100, 'Dense_2'),
      ]
  )
  assert sorted((g.name, g.outgoing[0].path[0]) for g in groups) == sorted(
      (a[0], b[0]) for a, b in model.neuron_group_paths()
  )
  # the captured pre-activations are the layers' outputs
  out, acts = jax.jit(snr_jax.with_preactivations(model, groups))(variables, x)
  np.testing.assert_array_equal(out, jax.jit(model.apply)(variables, x))
  _, inter = model.apply(variables, x, capture_intermediates=True)
  for name in ('Conv_0', 'Conv_1', 'Dense_0'):
    np.testing.assert_allclose(
        acts[name], inter['intermediates'][name]['__call__'][0], rtol=1e-5, atol=1e-5
    )
  apply = jax.jit(lambda p: model.apply({'params': p}, x))
  assert_reset_unit_is_cut_off(apply, variables['params'], groups, 'Conv_0', 3)
  assert_reset_unit_is_cut_off(apply, variables['params'], groups, 'Conv_1', 5)


class HandPooledCNN(nn.Module):
  """Max pooling by strided slices after a ReLU, a 2x1 max pool before one, and a sum pool
  (an unscaled average) before the flatten."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), name='Conv_0')(x))
    x = jnp.maximum(x[..., ::2, :, :], x[..., 1::2, :, :])
    x = jnp.maximum(x[..., ::2, :], x[..., 1::2, :])
    x = nn.Conv(5, (3, 3), padding='VALID', name='Conv_1')(x)
    x = nn.relu(jnp.maximum(x[:, ::2], x[:, 1::2]))
    x = x[:, :, ::2] + x[:, :, 1::2]
    x = nn.relu(nn.Dense(6, name='Dense_0')(x.reshape(x.shape[0], -1)))
    return nn.Dense(3, name='Dense_1')(x)


class ChannelMaxCNN(nn.Module):
  """A maximum across channels (maxout) mixes units: no group."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), name='Conv_0')(x))
    x = jnp.maximum(x[..., :2], x[..., 2:])
    return nn.Dense(3, name='Dense_0')(x.reshape(x.shape[0], -1))


@pytest.mark.slow
def test_hand_pooled_conv_keeps_its_groups():
  model = HandPooledCNN()
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 12, 12, 2))
  variables = model.init(KEY, x)
  groups = snr_jax.discover_groups(model, variables, x)
  # 12x12 -> pool 6x6 -> conv 4x4 -> pool rows 2x4 -> sum columns 2x2
  assert sorted(as_truth(g) for g in groups) == sorted(
      [
          conv('Conv_0', 4, 'Conv_1'),
          conv('Conv_1', 5, 'Dense_0', unit_of=_flatten_rows(2, 2, 5, False)),
          dense('Dense_0', 6, 'Dense_1'),
      ]
  )
  # Conv_1's firing is read on the pooled value, the ReLU's input
  _, acts = snr_jax.with_preactivations(model, groups)(variables, x)
  _, inter = model.apply(variables, x, capture_intermediates=True)
  c1 = inter['intermediates']['Conv_1']['__call__'][0]
  np.testing.assert_allclose(acts['Conv_1'], jnp.maximum(c1[:, ::2], c1[:, 1::2]), rtol=1e-6)
  apply = jax.jit(lambda p: model.apply({'params': p}, x))
  assert_reset_unit_is_cut_off(apply, variables['params'], groups, 'Conv_0', 1)
  assert_reset_unit_is_cut_off(apply, variables['params'], groups, 'Conv_1', 2)

  model = ChannelMaxCNN()
  x = x[..., :2]
  with pytest.raises(snr_jax.GroupError, match="Conv_0: its ReLU output goes through 'max'"):
    snr_jax.discover_groups(model, model.init(KEY, x), x)


# --- sharding constraints, casts and barriers ------------------------------------------------

MESH = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('d',))
P = jax.sharding.PartitionSpec


class ConstrainedBlock(nn.Module):
  """Dense -> constraint -> ReLU -> constraint -> cast -> barrier -> Dense, residual."""

  @nn.compact
  def __call__(self, x, _=None):
    h = nn.Dense(8, name='fc1')(x)
    h = jax.lax.with_sharding_constraint(h, jax.sharding.NamedSharding(MESH, P(None, 'd')))
    h = nn.with_logical_constraint(nn.relu(h), ('batch', 'mlp'))
    h, _ = jax.lax.optimization_barrier((h.astype(jnp.bfloat16).astype(jnp.float32), x))
    return x + nn.Dense(4, name='fc2')(h), None


class ConstrainedLoop(nn.Module):

  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x, _ = ConstrainedBlock(name=f'block_{i}')(x)
    return nn.Dense(2, name='head')(x)


class ConstrainedScan(nn.Module):

  @nn.compact
  def __call__(self, x):
    stack = nn.scan(
        ConstrainedBlock, variable_axes={'params': 0}, split_rngs={'params': True}, length=3
    )
    x, _ = stack(name='stack')(x, None)
    return nn.Dense(2, name='head')(x)


@pytest.mark.slow
@pytest.mark.parametrize('scanned', [False, True])
def test_sharding_constraints_and_casts_are_transparent(scanned):
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 4))
  with jax.set_mesh(MESH), nn.logical_axis_rules([('batch', None), ('mlp', 'd')]):
    model = ConstrainedScan() if scanned else ConstrainedLoop()
    variables = model.init(KEY, x)
    groups = snr_jax.discover_groups(model, variables, x)
    if scanned:
      want = [
          truth(
              'stack/fc1',
              8,
              {'stack/fc1/kernel': 2, 'stack/fc1/bias': 1},
              {'stack/fc2/kernel': 1},
              layers=3,
          )
      ]
    else:
      want = [dense(f'block_{i}/fc1', 8, f'block_{i}/fc2') for i in range(2)]
    assert sorted(as_truth(g) for g in groups) == sorted(want)
    out, acts = jax.jit(snr_jax.with_preactivations(model, groups))(variables, x)
    np.testing.assert_allclose(out, model.apply(variables, x), rtol=1e-6)
    p = variables['params']
    if scanned:
      fc1 = jax.tree.map(lambda a: a[0], p['stack']['fc1'])
      np.testing.assert_allclose(acts['stack/fc1'][0], x @ fc1['kernel'] + fc1['bias'], rtol=1e-5)
    else:
      fc1 = p['block_0']['fc1']
      np.testing.assert_allclose(acts['block_0/fc1'], x @ fc1['kernel'] + fc1['bias'], rtol=1e-5)
    # a unit that fires most, (layer, unit) flattened for the stack
    name = groups[-1].name
    fires = (acts[name] > 0).sum(-2)
    apply = jax.jit(lambda q: model.apply({'params': q}, x))
    assert_reset_unit_is_cut_off(apply, p, groups, name, int(np.argmax(fires)))


# --- dropout ----------------------------------------------------------------------------------


class DropoutMLP(nn.Module):
  """nn.Dropout before the first ReLU and after the second."""

  @nn.compact
  def __call__(self, x, train=False):
    drop = nn.Dropout(0.5, deterministic=not train)
    h = nn.relu(drop(nn.Dense(6, name='Dense_0')(x)))
    h = drop(nn.relu(nn.Dense(5, name='Dense_1')(h)))
    return nn.Dense(2, name='Dense_2')(h)


@pytest.mark.slow
def test_dropout_before_and_after_the_relu_gives_the_same_groups_in_train_and_eval():
  model = DropoutMLP()
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
  variables = model.init(KEY, x)
  rngs = {'dropout': jax.random.PRNGKey(2)}
  want = sorted([dense('Dense_0', 6, 'Dense_1'), dense('Dense_1', 5, 'Dense_2')])
  train = snr_jax.discover_groups(model, variables, x, train=True, rngs=rngs)
  assert sorted(as_truth(g) for g in train) == want
  assert sorted(as_truth(g) for g in snr_jax.discover_groups(model, variables, x)) == want
  # firing is read on the ReLU input, after the mask: 0 where dropped, pre / keep elsewhere
  out, acts = snr_jax.with_preactivations(model, train)(variables, x, train=True, rngs=rngs)
  np.testing.assert_array_equal(out, model.apply(variables, x, train=True, rngs=rngs))
  p = variables['params']['Dense_0']
  pre = (x @ p['kernel'] + p['bias']) / 0.5
  got = np.asarray(acts['Dense_0'])
  kept = got != 0
  assert 0 < kept.mean() < 1
  np.testing.assert_allclose(got[kept], pre[kept], rtol=1e-5)
  apply = jax.jit(lambda q: model.apply({'params': q}, x, train=True, rngs=rngs))
  assert_reset_unit_is_cut_off(apply, variables['params'], train, 'Dense_0', 2)


def _hk_dropout(key, x, rate=0.5):
  """haiku's hk.dropout: a product with keep / keep_rate."""
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return keep * x / (1.0 - rate)


def test_dropout_as_a_product_with_a_mask_keeps_the_groups():
  def f(params, x, key):
    k1, k2 = jax.random.split(key)
    h = jax.nn.relu(_hk_dropout(k1, x @ params['w1']['w'] + params['w1']['b']))
    h = _hk_dropout(k2, jax.nn.relu(h @ params['w2']['w']))
    return h @ params['w3']['w']

  params = {
      'w1': {'w': jnp.ones((5, 6)), 'b': jnp.zeros(6)},
      'w2': {'w': jnp.ones((6, 4))},
      'w3': {'w': jnp.ones((4, 2))},
  }
  x, key = jnp.ones((3, 5)), jax.random.PRNGKey(3)
  groups = snr_jax.discover_groups(f, params, x, key)
  assert sorted(as_truth(g) for g in groups) == sorted(
      [
          truth('w1', 6, {'w1/w': 1, 'w1/b': 0}, {'w2/w': 0}),
          truth('w2', 4, {'w2/w': 1}, {'w3/w': 0}),
      ]
  )

  # a product with data that is not a mask (a gate) still mixes in another value
  def gated(params, x, key):
    h = x @ params['w1']['w']
    h = jax.nn.relu(h * jax.nn.sigmoid(x @ params['w2']['w']))
    return h @ params['w3']['w']

  params = {
      'w1': {'w': jnp.ones((5, 4))},
      'w2': {'w': jnp.ones((5, 4))},
      'w3': {'w': jnp.ones((4, 2))},
  }
  with pytest.raises(snr_jax.GroupError, match='w1: its pre-activation is combined'):
    snr_jax.discover_groups(gated, params, x, key)


class NNXDropoutCNN(nnx.Module):
  """Conv -> dropout -> ReLU -> max pool -> conv -> ReLU -> dropout -> flatten -> Dense."""

  def __init__(self, rngs):
    self.conv0 = nnx.Conv(2, 4, (3, 3), rngs=rngs)
    self.conv1 = nnx.Conv(4, 3, (3, 3), padding='VALID', rngs=rngs)
    self.fc = nnx.Linear(3 * 2 * 2, 5, rngs=rngs)
    self.out = nnx.Linear(5, 2, rngs=rngs)
    self.drop = nnx.Dropout(0.3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.drop(self.conv0(x)))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = self.drop(nnx.relu(self.conv1(x)))
    x = nnx.relu(self.drop(self.fc(x.reshape(x.shape[0], -1))))
    return self.out(x)


@pytest.mark.slow
def test_nnx_dropout_cnn_has_the_same_groups_in_train_and_eval_mode():
  model = NNXDropoutCNN(nnx.Rngs(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 2))
  want = sorted(
      [
          truth('conv0', 4, {'conv0/kernel': 3, 'conv0/bias': 0}, {'conv1/kernel': 2}),
          truth(
              'conv1',
              3,
              {'conv1/kernel': 3, 'conv1/bias': 0},
              {'fc/kernel': 0},
              unit_of={'fc/kernel': _flatten_rows(2, 2, 3, False)},
          ),
          dense('fc', 5, 'out'),
      ]
  )
  model.train()
  train = snr_jax.discover_groups(model, x)
  assert sorted(as_truth(g) for g in train) == want
  out, acts = snr_jax.with_preactivations(model, train)(model, x)
  assert acts['conv0'].shape == (3, 8, 8, 4) and 0 < np.mean(np.asarray(acts['conv0']) == 0)
  model.eval()
  evaluated = snr_jax.discover_groups(model, x)
  assert sorted(as_truth(g) for g in evaluated) == want
  out, acts = snr_jax.with_preactivations(model, evaluated)(model, x)
  np.testing.assert_allclose(acts['conv0'], model.conv0(x), rtol=1e-6)
  np.testing.assert_array_equal(out, model(x))


# --- a deep stack --------------------------------------------------------------------------
# (its discovery time is measured by experiments/bench_capture.py, not asserted here)


@pytest.mark.slow
def test_discovery_of_a_12_block_gpt_finds_every_ffn():
  model = GPT(vocab_size=40, context_length=32, width=64, num_heads=2, ffn_width=256, num_layers=12)
  x = jnp.zeros((2, 32), jnp.int32)
  groups = snr_jax.discover_groups(model, model.init(KEY, x), x)
  assert len(groups) == 12 and {g.size for g in groups} == {256}
