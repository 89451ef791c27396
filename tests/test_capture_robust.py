"""Capture finds each group's pre-activation by structure, not by eqn index (design §1):
groups discovered once capture under weak or strong dtypes, train or eval mode, another
batch size, bf16 params, under vmap, jit and shard_map. Haiku models (dropout with hk.transform,
Conv→BatchNorm→ReLU with its state passed into the step), weight-standardised convs and
GroupNorm are discovered; output heads are left out for the true reason."""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import snr_jax
from test_discovery import as_truth, truth
from test_discovery_patterns import assert_reset_unit_is_cut_off

KEY = jax.random.PRNGKey(0)


def _mlp(p, x):
  h = jax.nn.relu(x @ p['l1']['kernel'] + p['l1']['bias'])
  return h @ p['l2']['kernel']


def _weak_params():
  k1, k2 = jax.random.split(KEY)
  return {
      'l1': {'kernel': jax.random.normal(k1, (3, 4)), 'bias': jnp.full((4,), 0.5)},
      'l2': {'kernel': jax.random.normal(k2, (4, 2))},
  }


def _hand(p, x):
  return x @ p['l1']['kernel'] + p['l1']['bias']


# --- incidental details of the trace --------------------------------------------------


def test_weak_and_strong_typed_params_capture_the_same_site():
  weak = _weak_params()
  assert weak['l1']['bias'].weak_type
  strong = optax.apply_updates(weak, jax.tree.map(jnp.zeros_like, weak))
  assert not strong['l1']['bias'].weak_type
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
  for found_on, used_on in ((weak, strong), (strong, weak)):
    groups = snr_jax.discover_groups(_mlp, found_on, x)
    out, acts = snr_jax.with_preactivations(_mlp, groups)(used_on, x)
    np.testing.assert_allclose(acts['l1'], _hand(used_on, x), rtol=1e-6)
    np.testing.assert_allclose(out, _mlp(used_on, x), rtol=1e-6)


class DropMLP(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(6, name='d0')(x)
    x = nn.Dropout(0.5, deterministic=not train)(x)  # before the ReLU: train mode only
    x = nn.relu(x)
    return nn.Dense(2, name='out')(x)


@pytest.mark.slow
def test_train_and_eval_mode_capture_with_groups_discovered_in_the_other():
  model = DropMLP()
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 5))
  variables = model.init(KEY, x)
  rngs = {'dropout': jax.random.PRNGKey(3)}
  eval_groups = snr_jax.discover_groups(model, variables, x)
  train_groups = snr_jax.discover_groups(model, variables, x, train=True, rngs=rngs)
  assert [as_truth(g) for g in eval_groups] == [as_truth(g) for g in train_groups]
  dense = x @ variables['params']['d0']['kernel'] + variables['params']['d0']['bias']
  # eval-mode capture with train-mode groups: the Dense output itself
  _, acts = snr_jax.with_preactivations(model, train_groups)(variables, x)
  np.testing.assert_allclose(acts['d0'], dense, rtol=1e-6)
  # train-mode capture with eval-mode groups: the dropped-out Dense output
  out, acts = snr_jax.with_preactivations(model, eval_groups)(variables, x, train=True, rngs=rngs)
  a = np.asarray(acts['d0'])
  kept = a != 0
  assert 0 < kept.mean() < 1
  np.testing.assert_allclose(a[kept], 2 * np.asarray(dense)[kept], rtol=1e-5)
  np.testing.assert_allclose(out, model.apply(variables, x, train=True, rngs=rngs), rtol=1e-6)


def test_another_batch_size_and_a_single_example():
  p = _weak_params()
  groups = snr_jax.discover_groups(_mlp, p, jnp.ones((8, 3)))
  capture = snr_jax.with_preactivations(_mlp, groups)
  for x in (jax.random.normal(KEY, (3, 3)), jax.random.normal(KEY, (3,))):
    _, acts = capture(p, x)
    np.testing.assert_allclose(acts['l1'], _hand(p, x), rtol=1e-6)


def test_bf16_params_capture_with_groups_found_on_f32():
  model = DropMLP()
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 5))
  variables = model.init(KEY, x)
  groups = snr_jax.discover_groups(model, variables, x)
  half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), variables)
  _, acts = snr_jax.with_preactivations(model, groups)(half, x)
  _, inter = model.apply(half, x, capture_intermediates=True)
  np.testing.assert_array_equal(acts['d0'], inter['intermediates']['d0']['__call__'][0])


def test_capture_under_vmap_and_jit_with_groups_found_on_a_batch():
  p = _weak_params()
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
  groups = snr_jax.discover_groups(_mlp, p, x)
  capture = snr_jax.with_preactivations(_mlp, groups)
  out, acts = jax.jit(jax.vmap(capture, in_axes=(None, 0)))(p, x)
  np.testing.assert_allclose(acts['l1'], _hand(p, x), rtol=1e-6)
  np.testing.assert_allclose(out, _mlp(p, x), rtol=1e-6)
  # discovered on one example, captured on a batch inside jit
  groups1 = snr_jax.discover_groups(_mlp, p, x[0])
  _, acts = jax.jit(snr_jax.with_preactivations(_mlp, groups1))(p, x)
  np.testing.assert_allclose(acts['l1'], _hand(p, x), rtol=1e-6)


def test_capture_inside_shard_map_with_groups_found_outside():
  # The mesh is this process's devices (8 virtual CPU devices, conftest.py: a row each; one
  # on an accelerator); the trace inside shard_map is what the site must survive. A shard's
  # matmul rounds apart from the whole batch's (1 ulp), hence atol.
  p = _weak_params()
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
  groups = snr_jax.discover_groups(_mlp, p, x)
  capture = snr_jax.with_preactivations(_mlp, groups)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('d',))
  P = jax.sharding.PartitionSpec
  sharded = jax.jit(
      jax.shard_map(capture, mesh=mesh, in_specs=(P(), P('d')), out_specs=(P('d'), P('d')))
  )
  out, acts = sharded(p, x)
  np.testing.assert_allclose(acts['l1'], _hand(p, x), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out, _mlp(p, x), rtol=1e-6, atol=1e-6)


def test_a_layer_really_gone_is_a_capture_error_naming_it():
  p = _weak_params()
  x = jnp.ones((4, 3))
  groups = snr_jax.discover_groups(_mlp, p, x)
  other = lambda p, x: jnp.tanh(x @ p['l1']['kernel'] + p['l1']['bias']) @ p['l2']['kernel']
  with pytest.raises(snr_jax.CaptureError, match="lost the layer of group\(s\) 'l1'.*tanh"):
    snr_jax.with_preactivations(other, groups)(p, x)


# --- the same clear errors as discover_groups -----------------------------------------


class Flagged(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(4, name='d0')(x)
    x = nn.BatchNorm(use_running_average=not train, name='bn')(x)
    return nn.Dense(2, name='out')(nn.relu(x))


def test_array_flag_and_batchnorm_without_mutable_are_clear_capture_errors():
  model = Flagged()
  x = jnp.ones((4, 3))
  variables = model.init(KEY, x)
  groups = snr_jax.discover_groups(model, variables, x)
  capture = snr_jax.with_preactivations(model, groups)
  with pytest.raises(snr_jax.CaptureError, match=r'train=True rather than jnp.array\(True\)'):
    capture(variables, x, train=jnp.array(True))
  with pytest.raises(snr_jax.CaptureError, match=r"mutable=\['batch_stats'\]"):
    capture(variables, x, train=True)
  (out, state), acts = capture(variables, x, train=True, mutable=['batch_stats'])
  assert acts['d0'].shape == (4, 4) and 'batch_stats' in state


# --- haiku ---------------------------------------------------------------------------


def _snr_steps(loss_of, params, groups, capture_args, steps=12):
  """``steps`` jitted SNR steps (plain SGD, a forced-dead unit in every group, short
  thresholds): returns the params and the number of resets per group."""
  opt = snr_jax.snr(optax.sgd(1e-2), groups, tau_init=8, tau_min=4, tau_max=64)
  state = opt.init(params)

  @jax.jit
  def step(params, state, args):
    (loss, acts), grads = jax.value_and_grad(loss_of, has_aux=True)(params, *args)
    u, state = opt.update(grads, state, params, activations=acts)
    return (
        optax.apply_updates(params, u),
        state,
        snr_jax.reset_metrics(state, nested=True)['resets'],
    )

  total = {g.name: 0 for g in groups}
  for t in range(steps):
    params, state, resets = step(params, state, capture_args(t))
    for k, v in resets.items():
      total[k] += int(np.sum(v))
  return params, total


def _kill(params, layer, unit, bias_leaf):
  """Makes ``unit`` silent: a large negative bias (or norm offset) on it."""
  params = jax.tree.map(lambda a: a, params)
  params[layer][bias_leaf] = params[layer][bias_leaf].at[..., unit].set(-100.0)
  return params


def _hk_mlp(x, train):
  mlp = hk.nets.MLP([16, 12, 3])
  return mlp(x, dropout_rate=0.5 if train else None, rng=hk.next_rng_key() if train else None)


HK_MLP_TRUTH = [
    truth(
        'mlp/~/linear_0',
        16,
        {'mlp/~/linear_0/w': 1, 'mlp/~/linear_0/b': 0},
        {'mlp/~/linear_1/w': 0},
    ),
    truth(
        'mlp/~/linear_1',
        12,
        {'mlp/~/linear_1/w': 1, 'mlp/~/linear_1/b': 0},
        {'mlp/~/linear_2/w': 0},
    ),
]


@pytest.mark.slow
def test_haiku_mlp_with_dropout():
  t = hk.transform(_hk_mlp)
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 5))
  params = t.init(KEY, x, True)
  train = lambda p, rng, x: t.apply(p, rng, x, True)
  groups = snr_jax.discover_groups(train, params, KEY, x)
  assert sorted(as_truth(g) for g in groups) == HK_MLP_TRUTH
  evaluated = snr_jax.discover_groups(lambda p, x: t.apply(p, None, x, False), params, x)
  assert sorted(as_truth(g) for g in evaluated) == HK_MLP_TRUTH
  # eval-mode capture with the train-mode groups equals the hand computation
  _, acts = snr_jax.with_preactivations(lambda p, x: t.apply(p, None, x, False), groups)(params, x)
  h0 = x @ params['mlp/~/linear_0']['w'] + params['mlp/~/linear_0']['b']
  np.testing.assert_allclose(acts['mlp/~/linear_0'], h0, rtol=1e-5)

  capture = snr_jax.with_preactivations(train, groups)
  y = jax.random.normal(jax.random.PRNGKey(2), (8, 3))

  def loss_of(p, rng, xb):
    out, acts = capture(p, rng, xb)
    return jnp.mean((out - y) ** 2), acts

  params = _kill(params, 'mlp/~/linear_0', 2, 'b')
  params = _kill(params, 'mlp/~/linear_1', 1, 'b')
  params, resets = _snr_steps(loss_of, params, groups, lambda t: (jax.random.PRNGKey(100 + t), x))
  assert all(n > 0 for n in resets.values()), resets
  apply = lambda p: t.apply(p, None, x, False)
  for g in groups:
    assert_reset_unit_is_cut_off(apply, params, groups, g.name, 3)


def _hk_resnetish(x, train):
  for i, c in enumerate((4, 6)):
    x = hk.Conv2D(c, 3, name=f'conv{i}')(x)
    x = hk.BatchNorm(True, True, 0.9, name=f'bn{i}')(x, train)
    x = jax.nn.relu(x)
  return hk.Linear(3, name='head')(jnp.mean(x, (1, 2)))


HK_CNN_TRUTH = [
    truth(
        'conv0', 4, {'conv0/w': 3, 'conv0/b': 0, 'bn0/scale': 3, 'bn0/offset': 3}, {'conv1/w': 2}
    ),
    truth('conv1', 6, {'conv1/w': 3, 'conv1/b': 0, 'bn1/scale': 3, 'bn1/offset': 3}, {'head/w': 0}),
]


@pytest.mark.slow
@pytest.mark.parametrize('train', [True, False])
def test_haiku_conv_batchnorm_with_its_state_passed_in(train):
  t = hk.transform_with_state(_hk_resnetish)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 6, 3))
  params, state = t.init(KEY, x, True)
  fwd = lambda p, s, x: t.apply(p, s, None, x, train)
  groups = snr_jax.discover_groups(fwd, params, state, x)
  assert sorted(as_truth(g) for g in groups) == HK_CNN_TRUTH
  closed = snr_jax.discover_groups(lambda p, x: t.apply(p, state, None, x, train), params, x)
  assert sorted(as_truth(g) for g in closed) == HK_CNN_TRUTH
  if not train:
    return
  capture = snr_jax.with_preactivations(fwd, groups)
  y = jax.random.normal(jax.random.PRNGKey(2), (4, 3))
  states = [state]

  def loss_of(p, s, xb):
    (out, new_state), acts = capture(p, s, xb)
    return jnp.mean((out - y) ** 2), (acts, new_state)

  opt = snr_jax.snr(optax.sgd(1e-2), groups, tau_init=8, tau_min=4, tau_max=64)
  opt_state = opt.init(params)
  params = _kill(params, 'bn0', 1, 'offset')  # BN in train mode undoes a bias

  @jax.jit
  def step(params, state, opt_state):
    (_, (acts, state)), grads = jax.value_and_grad(loss_of, has_aux=True)(params, state, x)
    u, opt_state = opt.update(grads, opt_state, params, activations=acts)
    return (
        optax.apply_updates(params, u),
        state,
        opt_state,
        snr_jax.reset_metrics(opt_state, nested=True)['resets'],
    )

  total = 0
  for _ in range(12):
    params, state, opt_state, resets = step(params, state, opt_state)
    total += int(np.sum(resets['conv0']))
    states.append(state)
  assert total > 0
  assert not np.array_equal(
      states[0]['bn0/~/mean_ema']['average'], states[-1]['bn0/~/mean_ema']['average']
  )
  apply = lambda p: t.apply(p, state, None, x, False)[0]
  assert_reset_unit_is_cut_off(apply, params, groups, 'conv0', 2)


@pytest.mark.slow
def test_haiku_resnet18_with_its_state_passed_in_discovers_as_with_it_closed_over():
  def fwd(x, train):
    return hk.nets.ResNet18(10, resnet_v2=False)(x, is_training=train)

  t = hk.transform_with_state(fwd)
  x = jnp.ones((2, 32, 32, 3))
  params, state = t.init(KEY, x, True)
  passed = snr_jax.discover_groups(lambda p, s, x: t.apply(p, s, None, x, True), params, state, x)
  closed = snr_jax.discover_groups(lambda p, x: t.apply(p, state, None, x, True), params, x)
  assert sorted(as_truth(g) for g in passed) == sorted(as_truth(g) for g in closed)
  assert len(passed) >= 8


# --- weight-standardised convs and GroupNorm ------------------------------------------


class StdConv(nn.Conv):
  """big_transfer's StdConv: the kernel standardised per output channel."""

  def param(self, name, *args, **kwargs):
    w = super().param(name, *args, **kwargs)
    if name == 'kernel':
      w = (w - jnp.mean(w, (0, 1, 2), keepdims=True)) / jnp.sqrt(
          jnp.var(w, (0, 1, 2), keepdims=True) + 1e-5
      )
    return w


class BiTish(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.GroupNorm(2, name='gn0')(StdConv(8, (3, 3), name='c0')(x)))
    x = nn.relu(nn.GroupNorm(4, name='gn1')(nn.Conv(8, (3, 3), name='c1')(x)))
    x = nn.relu(StdConv(6, (3, 3), name='c2')(x))
    x = nn.relu(StdConv(6, (3, 3), name='c3')(x))
    return nn.Dense(3, name='out')(x.mean((1, 2)))


@pytest.mark.slow
def test_weight_standardised_convs_and_groupnorm():
  model = BiTish()
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 3))
  variables = model.init(KEY, x)
  groups = snr_jax.discover_groups(model, variables, x)
  assert sorted(as_truth(g) for g in groups) == [
      truth(
          'c0', 8, {'c0/kernel': 3, 'c0/bias': 0, 'gn0/scale': 0, 'gn0/bias': 0}, {'c1/kernel': 2}
      ),
      truth('c3', 6, {'c3/kernel': 3, 'c3/bias': 0}, {'out/kernel': 0}),
  ]
  reasons = {x.layer: x.reason for x in groups.left_out}
  # c1 and c2 feed a standardised kernel: zeroing its raw rows would not cut them off
  assert "consumer 'c2/kernel' is normalised across the units it reads" in reasons['c1']
  assert "consumer 'c3/kernel' is normalised across the units it reads" in reasons['c2']
  assert set(reasons) == {'c1', 'c2', 'out'}
  _, acts = snr_jax.with_preactivations(model, groups)(variables, x)
  _, inter = model.apply(variables, x, capture_intermediates=True)
  np.testing.assert_allclose(
      acts['c0'], inter['intermediates']['gn0']['__call__'][0], rtol=1e-5, atol=1e-6
  )
  # c3 (a StdConv): noise on a reset unit's raw kernel slice changes nothing downstream.
  # (c0's GroupNorm couples the units of a group, as a LayerNorm does, so its kernel
  # noise moves the other units' statistics: that check does not apply there.)
  apply = lambda p: model.apply({'params': p}, x)
  assert_reset_unit_is_cut_off(apply, variables['params'], groups, 'c3', 1)


def test_a_kernel_made_of_several_parameters_is_left_out_with_a_reason():
  def f(p, x):
    w = p['l1']['v'] * (p['l1']['g'] / jnp.linalg.norm(p['l1']['v'], axis=0))
    return jax.nn.relu(x @ w) @ p['l2']['kernel']

  p = {'l1': {'v': jnp.ones((3, 4)), 'g': jnp.ones((4,))}, 'l2': {'kernel': jnp.ones((4, 2))}}
  with pytest.raises(snr_jax.GroupError, match='l1: its kernel is computed from several'):
    snr_jax.discover_groups(f, p, jnp.ones((2, 3)))


# --- output heads left out for the true reason -----------------------------------------


class Heads(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(8, name='torso')(x))
    adv, value = nn.Dense(4, name='advantage')(x), nn.Dense(1, name='value')(x)
    q = value + (adv - jnp.mean(adv, axis=-1, keepdims=True))  # dopamine's dueling head
    return q, nn.Dense(1, name='critic')(x).squeeze(-1)  # purejaxrl's critic


def test_dueling_and_squeezed_critic_heads_are_output_layers():
  model = Heads()
  x = jnp.ones((4, 5))
  groups = snr_jax.discover_groups(model, model.init(KEY, x), x)
  assert [g.name for g in groups] == ['torso']
  reasons = {x.layer: x.reason for x in groups.left_out}
  for head in ('value', 'critic'):
    assert 'output layer' in reasons[head] and 'no ReLU after it' in reasons[head], reasons
  assert 'output layer' in reasons['advantage']
  assert not any('residual' in r or 'reshaped' in r for r in reasons.values()), reasons
