"""design §4: which slices a reset touches, for Dense, Conv, Conv->Dense and FFN groups,
and the optimizer state it zeroes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import snr_jax
from snr_jax._src.reset import keep_masks


def _mask(groups, name, units):
  masks = {g.name: jnp.zeros((g.size,), bool) for g in groups}
  masks[name] = masks[name].at[jnp.asarray(units)].set(True)
  return masks


def _np(tree):
  return jax.tree.map(np.asarray, tree)


def _nonzero_params(params):
  # Flax zero-initialises biases; give them values so a reset to zero is visible.
  return jax.tree.map(lambda p: p + 0.5, params)


def test_dense_slices(mlp):
  model, params, x = mlp
  params = _nonzero_params(params)
  groups = snr_jax.discover_groups(model, params, x)
  new = _np(
      snr_jax.reset_params(params, groups, _mask(groups, 'Dense_0', [1, 4]), jax.random.PRNGKey(3))
  )
  params = _np(params)
  k0, k0n = params['Dense_0']['kernel'], new['Dense_0']['kernel']
  # incoming columns 1 and 4 re-drawn, with lecun_normal's scale; others untouched
  assert not np.allclose(k0n[:, 1], k0[:, 1]) and not np.allclose(k0n[:, 4], k0[:, 4])
  np.testing.assert_array_equal(np.delete(k0n, [1, 4], 1), np.delete(k0, [1, 4], 1))
  assert abs(float(jnp.mean(k0n[:, [1, 4]]))) < 0.4  # fresh, zero-mean (old ones had +0.5)
  b = new['Dense_0']['bias']
  np.testing.assert_array_equal(b[[1, 4]], [0, 0])
  np.testing.assert_array_equal(np.delete(b, [1, 4]), np.delete(params['Dense_0']['bias'], [1, 4]))
  # outgoing rows of the consumer zeroed, other rows untouched
  k1, k1n = params['Dense_1']['kernel'], new['Dense_1']['kernel']
  np.testing.assert_array_equal(k1n[[1, 4]], 0)
  np.testing.assert_array_equal(np.delete(k1n, [1, 4], 0), np.delete(k1, [1, 4], 0))
  # the other layers are untouched
  for layer in ('Dense_2',):
    for name in params[layer]:
      np.testing.assert_array_equal(new[layer][name], params[layer][name])
  np.testing.assert_array_equal(new['Dense_1']['bias'], params['Dense_1']['bias'])


@pytest.mark.slow
def test_fresh_incoming_weights_follow_the_layer_initializer():
  import flax.linen as nn

  class M(nn.Module):

    @nn.compact
    def __call__(self, x):
      h = nn.Dense(
          400, kernel_init=nn.initializers.constant(7.0), bias_init=nn.initializers.constant(-2.0)
      )(x)
      return nn.Dense(1)(nn.relu(h))

  m = M()
  x = jnp.ones((2, 3))
  params = m.init(jax.random.PRNGKey(0), x)['params']
  params = jax.tree.map(lambda p: p * 0 + 1.0, params)
  (g,) = snr_jax.discover_groups(m, params, x)
  new = snr_jax.reset_params(params, (g,), {g.name: jnp.arange(400) < 3}, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(new['Dense_0']['kernel'][:, :3], 7.0)
  np.testing.assert_array_equal(new['Dense_0']['bias'][:3], -2.0)


def test_nnx_layers_take_their_initializers_from_the_override():
  from flax import nnx

  class M(nnx.Module):

    def __init__(self, rngs):
      self.layers = nnx.List(
          [nnx.Linear(3, 400, rngs=rngs, kernel_init=nnx.initializers.constant(7.0))]
      )
      self.head = nnx.Linear(400, 1, rngs=rngs)

    def __call__(self, x):
      return self.head(nnx.relu(self.layers[0](x)))

  m, x = M(nnx.Rngs(0)), jnp.ones((2, 3))
  params = jax.tree.map(lambda p: p * 0 + 1.0, nnx.state(m, nnx.Param))
  reset = jnp.arange(400) < 3

  def redrawn(groups):
    new = snr_jax.reset_params(params, groups, {groups[0].name: reset}, jax.random.PRNGKey(0))
    return np.asarray(new['layers'][0]['kernel'][...])[:, :3]

  # NNX forgets kernel_init once the kernel is drawn: without an override the reset
  # draws from Flax's default (LeCun normal), with one from the given initializer.
  assert not np.allclose(redrawn(snr_jax.discover_groups(m, x)), 7.0)
  groups = snr_jax.discover_groups(
      m, x, initializers={'layers/0/kernel': nnx.initializers.constant(7.0)}
  )
  np.testing.assert_array_equal(redrawn(groups), 7.0)


def test_initializer_overrides_are_checked():
  from flax import nnx

  m = nnx.Sequential(
      nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(4, 1, rngs=nnx.Rngs(1))
  )
  x = jnp.ones((2, 3))
  with pytest.raises(snr_jax.GroupError, match=r'not parameters of the model.*layers/0/kernel'):
    snr_jax.discover_groups(m, x, initializers={'layer/0/kernel': nnx.initializers.ones})
  with pytest.raises(snr_jax.GroupError, match='not an initializer'):
    snr_jax.discover_groups(m, x, initializers={'layers/0/kernel': 7.0})
  # the head's kernel is only zeroed on a reset, never re-drawn
  with pytest.warns(UserWarning, match=r"\['layers/2/kernel'\] have no effect"):
    snr_jax.discover_groups(m, x, initializers={'layers/2/kernel': nnx.initializers.ones})


@pytest.mark.slow
def test_conv_and_conv_to_dense_slices(cnn):
  model, params, x = cnn
  params = _nonzero_params(params)
  groups = snr_jax.discover_groups(model, params, x)
  assert [g.name for g in groups] == ['Conv_0', 'Conv_1', 'Dense_0']
  # Conv -> Conv: output channel 2 of Conv_0 and input channel 2 of Conv_1.
  new = snr_jax.reset_params(params, groups, _mask(groups, 'Conv_0', [2]), jax.random.PRNGKey(1))
  c0, c0n = params['Conv_0']['kernel'], new['Conv_0']['kernel']
  assert not np.allclose(c0n[..., 2], c0[..., 2])
  np.testing.assert_array_equal(np.delete(c0n, 2, -1), np.delete(c0, 2, -1))
  assert float(new['Conv_0']['bias'][2]) == 0.0
  c1n = new['Conv_1']['kernel']
  np.testing.assert_array_equal(c1n[:, :, 2, :], 0)
  np.testing.assert_array_equal(np.delete(c1n, 2, 2), np.delete(params['Conv_1']['kernel'], 2, 2))
  # Conv -> flatten -> Dense: channel 1 of Conv_1 owns rows r with r % 3 == 1.
  new = snr_jax.reset_params(params, groups, _mask(groups, 'Conv_1', [1]), jax.random.PRNGKey(1))
  d, dn = params['Dense_0']['kernel'], new['Dense_0']['kernel']
  rows = np.arange(d.shape[0])
  np.testing.assert_array_equal(dn[rows % 3 == 1], 0)
  np.testing.assert_array_equal(dn[rows % 3 != 1], d[rows % 3 != 1])
  # the flatten order is channel-last: zeroing those rows equals zeroing the channel
  feat = jax.random.normal(jax.random.PRNGKey(2), (1, 2, 2, 3))
  a = feat.at[..., 1].set(0).reshape(1, -1) @ d
  b = feat.reshape(1, -1) @ dn
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_ffn_slices(gpt):
  model, params, x = gpt
  params = _nonzero_params(params)
  groups = snr_jax.discover_groups(model, params, x)
  assert [g.name for g in groups] == ['Block_0/fc1']
  new = _np(
      snr_jax.reset_params(
          params, groups, _mask(groups, 'Block_0/fc1', [0, 5]), jax.random.PRNGKey(1)
      )
  )
  params = _np(params)
  b0 = params['Block_0']
  n0 = new['Block_0']
  assert not np.allclose(n0['fc1']['kernel'][:, 0], b0['fc1']['kernel'][:, 0])
  np.testing.assert_array_equal(n0['fc1']['bias'][[0, 5]], 0)
  np.testing.assert_array_equal(n0['Dense_0']['kernel'][[0, 5]], 0)
  np.testing.assert_array_equal(
      np.delete(n0['Dense_0']['kernel'], [0, 5], 0), np.delete(b0['Dense_0']['kernel'], [0, 5], 0)
  )
  # attention, embeddings, norms and the output layer are untouched
  for a, b in zip(
      jax.tree.leaves(new['Block_0']['MultiHeadDotProductAttention_0']),
      jax.tree.leaves(b0['MultiHeadDotProductAttention_0']),
  ):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(new['Embed_0']['embedding'], params['Embed_0']['embedding'])
  np.testing.assert_array_equal(new['Dense_0']['kernel'], params['Dense_0']['kernel'])


def test_reset_draws_nothing_when_no_unit_is_reset(mlp):
  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)
  masks = {g.name: jnp.zeros((g.size,), bool) for g in groups}
  new, _ = snr_jax.reset_neurons(params, None, groups, masks, jax.random.PRNGKey(0))
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  # and the draw is under lax.cond: the jaxpr holds a cond whose false branch is empty
  jaxpr = jax.make_jaxpr(
      lambda p: snr_jax.reset_neurons(p, None, groups, masks, jax.random.PRNGKey(0))
  )(params)
  assert 'cond' in str(jaxpr)


OPTIMIZERS = {
    'sgd': lambda: optax.sgd(0.1),
    'sgd_momentum': lambda: optax.sgd(0.1, momentum=0.9),
    'adam': lambda: optax.adam(1e-2),
    'adamw': lambda: optax.adamw(1e-2, weight_decay=1e-2),
}


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_optimizer_state_zeroed_on_exactly_the_reset_slices(name, mlp):
  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)
  opt = OPTIMIZERS[name]()
  state = opt.init(params)
  grads = jax.tree.map(lambda p: jnp.ones_like(p), params)
  for _ in range(2):
    _, state = opt.update(grads, state, params)
  masks = _mask(groups, 'Dense_1', [2])
  _, new_state = snr_jax.reset_neurons(
      params, state, groups, masks, jax.random.PRNGKey(0), optimizer=opt
  )
  keep = keep_masks(params, groups, masks)
  keep = {(layer, name): np.asarray(v) for layer in keep for name, v in keep[layer].items()}
  touched = {('Dense_1', 'kernel'), ('Dense_1', 'bias'), ('Dense_2', 'kernel')}
  old_leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  new_leaves = jax.tree.leaves(new_state)
  checked = set()
  for (kp, old), new in zip(old_leaves, new_leaves):
    old, new = np.asarray(old), np.asarray(new)
    if old.ndim == 0:  # step counts untouched
      assert old == new
      continue
    path = tuple(getattr(k, 'key', None) for k in kp[-2:])
    k = keep[path]
    if path not in touched:
      assert k is True or np.all(k)
      np.testing.assert_array_equal(new, old)
      continue
    full = np.broadcast_to(k, old.shape)
    assert not full.all()
    np.testing.assert_array_equal(new[~full], 0)
    np.testing.assert_array_equal(new[full], old[full])
    assert np.any(old[~full] != 0)  # there was something to zero
    checked.add((str(kp[:-2]), path))
  moments = {'sgd': 0, 'sgd_momentum': 1, 'adam': 2, 'adamw': 2}[name]
  assert len(checked) == 3 * moments


@pytest.mark.slow
def test_factored_optimizer_state_keeps_its_shapes(mlp):
  # Adafactor factors a kernel's second moment into row and column vectors and keeps
  # (1,) placeholders beside a vector's full one: only param-shaped leaves are zeroed
  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)
  opt = optax.adafactor(1e-2, min_dim_size_to_factor=8)
  grads = jax.tree.map(jnp.ones_like, params)
  state = opt.update(grads, opt.init(params), params)[1]
  masks = _mask(groups, 'Dense_1', [2])
  _, new_state = snr_jax.reset_neurons(
      params, state, groups, masks, jax.random.PRNGKey(0), optimizer=opt
  )
  assert jax.tree.map(jnp.shape, new_state) == jax.tree.map(jnp.shape, state)
  factored = state[0]
  v_bias = np.asarray(new_state[0].v['Dense_1']['bias'])
  assert np.asarray(factored.v['Dense_1']['bias'])[2] != 0
  assert v_bias[2] == 0
  np.testing.assert_array_equal(
      np.delete(v_bias, 2), np.delete(np.asarray(factored.v['Dense_1']['bias']), 2)
  )
  # the same leaves, placeholders included, through a scanned SNR step
  tx = snr_jax.snr(opt, groups, tau_init=100, tau_min=100, tau_max=100)
  silent = {g.name: -jnp.ones((x.shape[0], g.size)) for g in groups}

  def step(carry, _):
    p, s = carry
    u, s = tx.update(grads, s, p, activations=silent)
    return (optax.apply_updates(p, u), s), snr_jax.reset_metrics(s)['resets/Dense_1']

  _, resets = jax.lax.scan(step, (params, tx.init(params)), None, length=30)
  assert int(resets.sum()) > 0


def test_forced_dead_neuron_is_reset_after_expected_examples_and_fires_again(mlp):
  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)
  params = jax.tree.map(lambda p: p, params)
  params['Dense_0']['bias'] = params['Dense_0']['bias'].at[3].set(-100.0)  # unit 3 dead
  batch = 4
  opt = snr_jax.snr(optax.sgd(0.0), groups, tau_init=40, tau_min=8, tau_max=100)
  state = opt.init(params)
  xb = jnp.abs(jax.random.normal(jax.random.PRNGKey(5), (batch, 7)))

  @jax.jit
  def step(params, state):
    _, acts = snr_jax.apply_with_preactivations(model, {'params': params}, xb, groups=groups)
    grads = jax.tree.map(jnp.zeros_like, params)
    u, state = opt.update(grads, state, params, activations=acts)
    return optax.apply_updates(params, u), state, acts

  reset_at = None
  for t in range(15):
    params, state, acts = step(params, state)
    if bool(state.resets.last_resets['Dense_0'][3]):
      reset_at = t
      break
  assert reset_at == 40 // batch - 1  # ages 4, 8, ..., 40 = tau -> reset on step 9
  assert float(params['Dense_0']['bias'][3]) == 0.0
  _, _, acts = step(params, state)
  assert bool(snr_jax.fired(acts['Dense_0'])[3])  # fires again after the reset


def test_network_whose_neurons_all_fire_is_never_reset():
  groups = (snr_jax.dense_group('h', 5, layer='l1', consumer='l2'),)
  params = {
      'l1': {'kernel': jnp.ones((3, 5)), 'bias': jnp.zeros(5)},
      'l2': {'kernel': jnp.ones((5, 2)), 'bias': jnp.zeros(2)},
  }
  r = snr_jax.self_normalized_resets(
      groups, tau_init=100, tau_min=100, tau_max=100, schedule=snr_jax.every_n_steps(7)
  )
  state = r.init(params)
  x = jnp.ones((4, 3))
  apply = jax.jit(lambda s, a: r.apply(params, None, s, a))
  total = 0
  for _ in range(60):
    acts = {'h': x @ params['l1']['kernel']}
    _, _, state = apply(state, acts)
    total += int(state.last_resets['h'].sum())
  assert total == 0
  np.testing.assert_array_equal(state.rule.ages['h'], 0)
