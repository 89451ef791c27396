"""Discovery and capture on a zoo of models (design §1, §2, §4): the groups found equal the
true neurons written by hand, and SNR on them behaves as the spec says.

The behavioural check, per model: with a learning rate of 0 (so only resets move the
weights), a unit whose ReLU input is forced negative is reset after exactly the expected
number of examples and fires on the next batch; a unit forced always active is never
reset; after the reset, perturbing the unit's incoming weights changes the model's output
by exactly 0, and every other weight and optimizer moment is what it would have been
without the reset.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import snr_jax
from snr_jax._src.reset import _unit_mask

KEY = jax.random.PRNGKey(0)


# --- the zoo ----------------------------------------------------------------------------


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    for h in (6, 5):
      x = nn.relu(nn.Dense(h)(x))
    return nn.Dense(3)(x)


class CNN(nn.Module):
  channel_first: bool = False

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2, padding='SAME')(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(5, (3, 3), padding='VALID')(x))
    if self.channel_first:
      x = x.transpose(0, 3, 1, 2)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(6)(x))
    return nn.Dense(3)(x)


class LayerNormMLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.LayerNorm()(nn.Dense(6)(x)))
    return nn.Dense(3)(x)


class BatchNormCNN(nn.Module):
  train: bool = False

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not self.train)(x))
    return nn.Dense(3)(x.mean(axis=(1, 2)))


class ResidualMLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(4, name='inp')(x)
    h = nn.relu(nn.Dense(6, name='fc1')(x))
    x = nn.relu(x + nn.Dense(4, name='fc2')(h))
    return nn.Dense(3, name='head')(x)


class ResNetBlock(nn.Module):

  @nn.compact
  def __call__(self, x):
    y = nn.relu(nn.BatchNorm(True, name='bn1')(nn.Conv(3, (3, 3), name='conv1')(x)))
    y = nn.BatchNorm(True, name='bn2')(nn.Conv(3, (3, 3), name='conv2')(y))
    x = nn.relu(x + y)
    return nn.Dense(2, name='head')(x.mean((1, 2)))


class TwoHeads(nn.Module):

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(5, name='trunk')(x))
    return nn.Dense(5, name='head_a')(h), nn.Dense(5, name='head_b')(h)


class ScanBlock(nn.Module):

  @nn.compact
  def __call__(self, x, _):
    h = nn.relu(nn.Dense(5, name='fc1')(nn.LayerNorm(name='ln')(x)))
    return x + nn.Dense(3, name='fc2')(h), None


class ScannedStack(nn.Module):

  @nn.compact
  def __call__(self, x):
    stack = nn.scan(ScanBlock, variable_axes={'params': 0}, split_rngs={'params': True}, length=3)
    x, _ = stack(name='stack')(x, None)
    return nn.Dense(2, name='head')(x)


def truth(name, units, incoming, outgoing, layers=1, unit_of=None):
  """A hand-written group: incoming/outgoing as {path: axis}."""
  return (
      name,
      units * layers,
      layers,
      tuple(sorted(incoming.items())),
      tuple(
          sorted((p, a, None if unit_of is None else unit_of.get(p)) for p, a in outgoing.items())
      ),
  )


def as_truth(g: snr_jax.NeuronGroup):
  return (
      g.name,
      g.size,
      g.layers,
      tuple(sorted(('/'.join(s.path), s.axis) for s in g.incoming)),
      tuple(sorted(('/'.join(s.path), s.axis, s.unit_of) for s in g.outgoing)),
  )


def _flatten_rows(h, w, c, channel_first):
  """The unit of each row of a Dense reading a flattened (h, w, c) map."""
  idx = np.broadcast_to(np.arange(c), (h, w, c))
  if channel_first:
    idx = idx.transpose(2, 0, 1)
  return tuple(int(v) for v in idx.reshape(-1))


IMG = (8, 16, 16, 3)

ZOO = {
    'mlp': (
        MLP(),
        (8, 7),
        [
            truth('Dense_0', 6, {'Dense_0/kernel': 1, 'Dense_0/bias': 0}, {'Dense_1/kernel': 0}),
            truth('Dense_1', 5, {'Dense_1/kernel': 1, 'Dense_1/bias': 0}, {'Dense_2/kernel': 0}),
        ],
    ),
    'cnn_channel_last': (
        CNN(),
        IMG,
        [
            truth('Conv_0', 4, {'Conv_0/kernel': 3, 'Conv_0/bias': 0}, {'Conv_1/kernel': 2}),
            truth(
                'Conv_1',
                5,
                {'Conv_1/kernel': 3, 'Conv_1/bias': 0},
                {'Dense_0/kernel': 0},
                unit_of={'Dense_0/kernel': _flatten_rows(2, 2, 5, False)},
            ),
            truth('Dense_0', 6, {'Dense_0/kernel': 1, 'Dense_0/bias': 0}, {'Dense_1/kernel': 0}),
        ],
    ),
    'cnn_channel_first': (
        CNN(channel_first=True),
        IMG,
        [
            truth('Conv_0', 4, {'Conv_0/kernel': 3, 'Conv_0/bias': 0}, {'Conv_1/kernel': 2}),
            truth(
                'Conv_1',
                5,
                {'Conv_1/kernel': 3, 'Conv_1/bias': 0},
                {'Dense_0/kernel': 0},
                unit_of={'Dense_0/kernel': _flatten_rows(2, 2, 5, True)},
            ),
            truth('Dense_0', 6, {'Dense_0/kernel': 1, 'Dense_0/bias': 0}, {'Dense_1/kernel': 0}),
        ],
    ),
    'layernorm': (
        LayerNormMLP(),
        (8, 7),
        [
            truth(
                'Dense_0',
                6,
                {
                    'Dense_0/kernel': 1,
                    'Dense_0/bias': 0,
                    'LayerNorm_0/scale': 0,
                    'LayerNorm_0/bias': 0,
                },
                {'Dense_1/kernel': 0},
            ),
        ],
    ),
    'batchnorm': (
        BatchNormCNN(),
        (4, 6, 6, 2),
        [
            truth(
                'Conv_0',
                4,
                {
                    'Conv_0/kernel': 3,
                    'Conv_0/bias': 0,
                    'BatchNorm_0/scale': 0,
                    'BatchNorm_0/bias': 0,
                },
                {'Dense_0/kernel': 0},
            ),
        ],
    ),
    'residual_mlp': (
        ResidualMLP(),
        (4, 7),
        [
            truth('fc1', 6, {'fc1/kernel': 1, 'fc1/bias': 0}, {'fc2/kernel': 0}),
        ],
    ),
    'resnet_block': (
        ResNetBlock(),
        (4, 6, 6, 3),
        [
            truth(
                'conv1',
                3,
                {'conv1/kernel': 3, 'conv1/bias': 0, 'bn1/scale': 0, 'bn1/bias': 0},
                {'conv2/kernel': 2},
            ),
        ],
    ),
    'two_heads': (
        TwoHeads(),
        (4, 5),
        [
            truth(
                'trunk',
                5,
                {'trunk/kernel': 1, 'trunk/bias': 0},
                {'head_a/kernel': 0, 'head_b/kernel': 0},
            ),
        ],
    ),
    'scanned': (
        ScannedStack(),
        (4, 3),
        [
            truth(
                'stack/fc1',
                5,
                {'stack/fc1/kernel': 2, 'stack/fc1/bias': 1},
                {'stack/fc2/kernel': 1},
                layers=3,
            ),
        ],
    ),
}


def _sample(key, x):
  """A batch like ``x``: tokens for a token model, normal values otherwise."""
  if jnp.issubdtype(x.dtype, jnp.integer):
    return jax.random.randint(key, x.shape, 0, 40)
  return jax.random.normal(key, x.shape)


def _setup(name):
  if name == 'gpt':
    from experiments.models import GPT

    model = GPT(vocab_size=40, context_length=8, width=16, num_heads=2, ffn_width=12)
    x = _sample(jax.random.PRNGKey(1), jnp.zeros((4, 8), jnp.int32))
    want = [
        truth(
            'block_0/ffn/Dense_0',
            12,
            {'block_0/ffn/Dense_0/kernel': 1, 'block_0/ffn/Dense_0/bias': 0},
            {'block_0/ffn/Dense_1/kernel': 0},
        )
    ]
    return model, x, model.init(KEY, x), want
  model, shape, want = ZOO[name]
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  variables = model.init(KEY, x)
  return model, x, variables, want


@pytest.mark.parametrize('name', sorted(ZOO))
def test_discovered_groups_are_the_true_neurons(name):
  model, x, variables, want = _setup(name)
  groups = snr_jax.discover_groups(model, variables, x)
  assert sorted(as_truth(g) for g in groups) == sorted(want)


def test_residual_and_output_layers_are_left_out_with_reasons():
  model, x, variables, _ = _setup('residual_mlp')
  groups = snr_jax.discover_groups(model, variables, x)
  reasons = {lo.layer: lo.reason for lo in groups.left_out}
  assert 'residual' in reasons['fc2']
  assert 'output' in reasons['head']
  text = snr_jax.describe_groups(groups)
  assert 'fc2: it feeds a sum with another branch (a residual add)' in text
  assert 'outgoing: fc2/kernel' in text


def test_a_normalisation_after_the_relu_is_left_out_as_a_shift():
  class NormAfterRelu(nn.Module):

    @nn.compact
    def __call__(self, x):
      h = nn.BatchNorm(use_running_average=True)(nn.relu(nn.Dense(6, name='a')(x)))
      return nn.Dense(2, name='out')(nn.relu(nn.Dense(4, name='b')(h)))

  x = jnp.ones((4, 5))
  variables = NormAfterRelu().init(jax.random.PRNGKey(0), x)
  groups = snr_jax.discover_groups(NormAfterRelu(), variables, x)
  reasons = {lo.layer: lo.reason for lo in groups.left_out}
  assert [g.name for g in groups] == ['b']
  assert 'shifted by a parameter or model state' in reasons['a']


@pytest.mark.slow
def test_transformers_have_only_ffn_groups():
  from experiments.models import GPT, ViT

  for model, x in (
      (GPT(vocab_size=40, num_layers=2), jnp.zeros((2, 8), jnp.int32)),
      (ViT(num_blocks=2, width=16, mlp_width=32, num_heads=2), jnp.ones((2, 8, 8, 3))),
  ):
    params = model.init(KEY, x)['params']
    groups = snr_jax.discover_groups(model, params, x)
    assert [(g.name, [s.path for s in g.outgoing]) for g in groups] == [
        (f'block_{i}/ffn/Dense_0', [(f'block_{i}', 'ffn', 'Dense_1', 'kernel')]) for i in range(2)
    ]
    left = {lo.layer: lo.reason for lo in groups.left_out}
    assert 'residual' in left['block_0/ffn/Dense_1']
    assert 'several output axes' in left['block_0/attn/query']


@pytest.mark.parametrize(
    'act,word',
    [
        (nn.sigmoid, 'sigmoid'),
        (nn.tanh, 'tanh'),
        (nn.softplus, 'softplus'),
        (nn.gelu, 'GELU'),
        (nn.silu, 'silu'),
        (nn.elu, 'ELU'),
        (nn.leaky_relu, 'leaky ReLU'),
    ],
)
def test_non_relu_activations_are_never_groups(act, word):
  class Net(nn.Module):

    @nn.compact
    def __call__(self, x):
      x = act(nn.Dense(5, name='hidden')(x))
      x = nn.relu(nn.Dense(4, name='relu_layer')(x))
      return nn.Dense(2, name='out')(x)

  x = jnp.ones((2, 3))
  params = Net().init(KEY, x)['params']
  groups = snr_jax.discover_groups(Net(), params, x)
  assert [g.name for g in groups] == ['relu_layer']
  reason = {lo.layer: lo.reason for lo in groups.left_out}['hidden']
  assert 'no silent state' in reason and word in reason


def test_relu6_is_a_relu_and_dense_into_dense_is_not():
  class Net(nn.Module):

    @nn.compact
    def __call__(self, x):
      x = nn.Dense(4, name='linear')(x)
      x = nn.relu6(nn.Dense(4, name='r6')(x))
      return nn.Dense(2, name='out')(x)

  x = jnp.ones((2, 3))
  groups = snr_jax.discover_groups(Net(), Net().init(KEY, x)['params'], x)
  assert [g.name for g in groups] == ['r6']
  assert "reaches 'r6' without a ReLU" in {lo.layer: lo.reason for lo in groups.left_out}['linear']


def test_a_layer_applied_twice_is_refused_by_name():
  class Shared(nn.Module):

    @nn.compact
    def __call__(self, x):
      d = nn.Dense(4, name='shared')
      x = nn.relu(d(nn.relu(d(x))))
      return nn.Dense(2)(x)

  x = jnp.ones((2, 4))
  with pytest.raises(snr_jax.GroupError, match="'shared'.*applied more than once"):
    snr_jax.discover_groups(Shared(), Shared().init(KEY, x)['params'], x)


@pytest.mark.slow
def test_plain_function_and_lax_scan_over_stacked_params():
  def init(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        'w_in': jax.random.normal(k1, (3, 4, 6)) * 0.5,
        'b_in': jnp.zeros((3, 6)),
        'w_out': jax.random.normal(k2, (3, 6, 4)) * 0.5,
        'head': jax.random.normal(k3, (4, 2)),
    }

  def f(params, x):
    def layer(h, p):
      u = jax.nn.relu(h @ p['w_in'] + p['b_in'])
      return h + u @ p['w_out'], None

    stacked = {k: params[k] for k in ('w_in', 'b_in', 'w_out')}
    h, _ = jax.lax.scan(layer, x, stacked)
    return h @ params['head']

  params, x = init(KEY), jnp.ones((5, 4))
  groups = snr_jax.discover_groups(f, params, x)
  assert [as_truth(g) for g in groups] == [
      truth('w_in', 6, {'w_in': 2, 'b_in': 1}, {'w_out': 1}, layers=3)
  ]
  out, acts = snr_jax.with_preactivations(f, groups)(params, x)
  np.testing.assert_array_equal(out, f(params, x))
  assert acts['w_in'].shape == (3, 5, 6)
  # layer 0's pre-activation, computed by hand
  np.testing.assert_allclose(acts['w_in'][0], x @ params['w_in'][0] + params['b_in'][0], rtol=1e-6)


# --- capture -----------------------------------------------------------------------------


@pytest.mark.slow
def test_capture_matches_the_relu_inputs_and_is_differentiable():
  model, x, variables, _ = _setup('layernorm')
  groups = snr_jax.discover_groups(model, variables, x)
  g = snr_jax.with_preactivations(model, groups)

  def by_hand(p):
    y = nn.Dense(6).apply({'params': p['Dense_0']}, x)
    return nn.LayerNorm().apply({'params': p['LayerNorm_0']}, y)

  out, acts = jax.jit(g)(variables, x)
  np.testing.assert_array_equal(out, jax.jit(model.apply)(variables, x))
  np.testing.assert_allclose(acts['Dense_0'], by_hand(variables['params']), rtol=1e-6)
  grad = jax.grad(lambda p: jnp.sum(g({'params': p}, x)[0] ** 2))(variables['params'])
  want = jax.grad(lambda p: jnp.sum(model.apply({'params': p}, x) ** 2))(variables['params'])
  jax.tree.map(np.testing.assert_allclose, grad, want)
  # vmapped over a batch of inputs
  outs, acts = jax.vmap(lambda xb: g(variables, xb))(jnp.stack([x, 2 * x]))
  assert acts['Dense_0'].shape == (2,) + x.shape[:1] + (6,)


class DropoutMLP(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.relu(nn.Dense(6)(x))
    h = nn.Dropout(0.5, deterministic=not train)(h)
    return nn.Dense(2)(h)


@pytest.mark.slow
def test_dropout_after_the_relu_keeps_the_group_in_training():
  # dropout's select against zeros_like(h) passes silence on: a unit is still a unit
  model, x = DropoutMLP(), jax.random.normal(jax.random.PRNGKey(1), (4, 5))
  variables = model.init(jax.random.PRNGKey(0), x)
  rngs = {'dropout': jax.random.PRNGKey(2)}
  groups = snr_jax.discover_groups(model, variables, x, train=True, rngs=rngs)
  assert [g.name for g in groups] == ['Dense_0']
  assert [g.name for g in snr_jax.discover_groups(model, variables, x)] == ['Dense_0']
  out, acts = snr_jax.with_preactivations(model, groups)(variables, x, train=True, rngs=rngs)
  np.testing.assert_array_equal(out, model.apply(variables, x, train=True, rngs=rngs))
  p = variables['params']['Dense_0']
  np.testing.assert_allclose(acts['Dense_0'], x @ p['kernel'] + p['bias'], rtol=1e-6)

  class NNXDropout(nnx.Module):

    def __init__(self, rngs):
      self.l1, self.l2 = nnx.Linear(5, 6, rngs=rngs), nnx.Linear(6, 2, rngs=rngs)
      self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      return self.l2(self.drop(nnx.relu(self.l1(x))))

  assert [g.name for g in snr_jax.discover_groups(NNXDropout(nnx.Rngs(0)), x)] == ['l1']


class SyncedBatchNormMLP(nn.Module):
  axis_name: str = None

  @nn.compact
  def __call__(self, x):
    for width in (4, 5):
      x = nn.Dense(width)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=False, axis_name=self.axis_name)(x))
    return nn.Dense(2)(x)


@pytest.mark.slow
def test_batchnorm_synchronised_over_a_data_axis_keeps_its_groups():
  # its batch statistics are stacked, summed over the axis and sliced apart: per unit still
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
  variables = SyncedBatchNormMLP().init(jax.random.PRNGKey(0), x)
  local = snr_jax.discover_groups(SyncedBatchNormMLP(), variables, x, mutable=['batch_stats'])
  synced = snr_jax.discover_groups(
      SyncedBatchNormMLP('d'), variables, x[:4], mutable=['batch_stats'], axis_env=[('d', 2)]
  )
  assert [(g.name, g.incoming, g.outgoing, g.state) for g in synced] == [
      (g.name, g.incoming, g.outgoing, g.state) for g in local
  ]
  assert [g.name for g in synced] == ['Dense_0', 'Dense_1']
  # two shards of 4 see the pre-activations of the global batch of 8
  fwd = snr_jax.with_preactivations(SyncedBatchNormMLP('d'), synced)
  acts = jax.vmap(lambda xs: fwd(variables, xs, mutable=['batch_stats'])[1], axis_name='d')(
      x.reshape(2, 4, 3)
  )
  whole = snr_jax.with_preactivations(SyncedBatchNormMLP(), local)(
      variables, x, mutable=['batch_stats']
  )[1]
  for name in whole:
    np.testing.assert_allclose(acts[name].reshape(whole[name].shape), whole[name], atol=1e-5)


def test_discovery_inside_shard_map_finds_the_groups_found_outside():
  # shard_map marks replicated params as varying (pvary) before they meet the data
  model, x = DropoutMLP(), jax.random.normal(jax.random.PRNGKey(1), (4, 5))
  variables = model.init(jax.random.PRNGKey(0), x)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('d',))
  P = jax.sharding.PartitionSpec
  found = []

  def local(v, xs):
    found.append(snr_jax.discover_groups(model, v, xs))
    return xs

  jax.shard_map(local, mesh=mesh, in_specs=(P(), P('d')), out_specs=P('d'))(variables, x)
  outside = snr_jax.discover_groups(model, variables, x)
  assert [(g.name, g.incoming, g.outgoing) for g in found[0]] == [
      (g.name, g.incoming, g.outgoing) for g in outside
  ]


@pytest.mark.slow
def test_capture_inside_nn_scan_has_a_layer_axis():
  model, x, variables, _ = _setup('scanned')
  groups = snr_jax.discover_groups(model, variables, x)
  out, acts = jax.jit(snr_jax.with_preactivations(model, groups))(variables, x)
  np.testing.assert_allclose(out, model.apply(variables, x), rtol=1e-6)
  assert acts['stack/fc1'].shape == (3, 4, 5)
  p = variables['params']['stack']
  h0 = nn.LayerNorm().apply({'params': jax.tree.map(lambda a: a[0], p['ln'])}, x)
  np.testing.assert_allclose(
      acts['stack/fc1'][0], h0 @ p['fc1']['kernel'][0] + p['fc1']['bias'][0], rtol=1e-5
  )


# --- behaviour ------------------------------------------------------------------------------


def _set_unit(params, group, flat_unit, slices, value):
  mask = jnp.zeros((group.size,), bool).at[flat_unit].set(True)
  for s in slices:
    path = s.path
    leaf = snr_jax._src.groups.get_path(params, path)
    m = _unit_mask(mask, group, s, leaf.shape)
    new = jnp.where(m, value, leaf)
    params = _replace(params, path, new)
  return params


def _replace(tree, path, value):
  if not path:
    return value
  out = dict(tree)
  key = path[0] if path[0] in tree else int(path[0])  # NNX lists have int keys
  out[key] = _replace(tree[key], path[1:], value)
  return out


def _force(params, group, unit, sign):
  """Makes ``unit``'s ReLU input a constant of the given sign on every input: zero every
  incoming slice, then put ±50 on the offset nearest the ReLU: a norm's offset (its
  scale is now zero) where there is a norm, else the layer's bias."""
  params = _set_unit(params, group, unit, group.incoming, 0.0)
  layer = group.incoming[0].path[:-1]
  offsets = [s for s in group.incoming if s.path[-1] == 'bias' and s.path[:-1] != layer] or [
      s for s in group.incoming if s.path[-1] == 'bias'
  ]
  return _set_unit(params, group, unit, offsets, 50.0 * sign)


def _loss(out):
  return sum(jnp.sum(o.astype(jnp.float32) ** 2) for o in jax.tree.leaves(out))


BEHAVIOUR = [
    'mlp',
    'cnn_channel_last',
    'cnn_channel_first',
    'layernorm',
    'batchnorm',
    'residual_mlp',
    'resnet_block',
    'two_heads',
    'scanned',
    'gpt',
]


@pytest.mark.parametrize('name', BEHAVIOUR)
def test_snr_resets_a_silent_unit_on_time_and_nothing_else(name):
  model, x, variables, _ = _setup(name)
  groups = snr_jax.discover_groups(model, variables, x)
  group = groups[0]
  dead = group.size - 2  # (last layer, second-to-last unit) for stacks
  alive = group.size - 1
  params = variables['params']
  params = _force(params, group, dead, -1)
  params = _force(params, group, alive, +1)
  batch = x.shape[0]
  tau = 3 * batch
  inner = optax.sgd(0.0, momentum=0.9)
  tx = snr_jax.snr(
      inner,
      groups,
      tau_init=tau,
      tau_min=tau,
      tau_max=tau,
      schedule=snr_jax.every_n_steps(10**6),
      key=3,
  )
  capture = snr_jax.with_preactivations(model, groups)
  rest = {k: v for k, v in variables.items() if k != 'params'}

  @jax.jit
  def step(params, opt_state, xb):
    def loss_fn(p):
      out, acts = capture({'params': p, **rest}, xb)
      return _loss(out), acts

    (_, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, new_state = tx.update(grads, opt_state, params, activations=acts)
    plain_updates, plain_inner = inner.update(grads, opt_state.inner_state, params)
    return optax.apply_updates(params, updates), new_state, acts, plain_inner

  opt_state = tx.init(params)
  keys = jax.random.split(jax.random.PRNGKey(7), 6)
  fired_after = []
  for t in range(6):
    xb = _sample(keys[t], x)
    before = params
    params, opt_state, acts, plain_inner = step(params, opt_state, xb)
    resets = np.asarray(snr_jax.reset_metrics(opt_state, nested=True)['resets'][group.name])
    mask = np.asarray(opt_state.resets.last_resets[group.name])
    merged = snr_jax._src.activations.merge_layers(groups, acts)
    fired = np.asarray(snr_jax.fired(merged[group.name]))
    assert not mask[alive] and fired[alive]
    if t < 2:
      assert not fired[dead] and not mask[dead]
    if t == 2:  # age 3 batches = tau: reset now
      assert mask[dead] and resets >= 1
      # every weight and optimizer moment outside the reset slices is as without a reset
      keep = snr_jax._src.reset.keep_masks(
          before,
          groups,
          {g.name: jnp.asarray(opt_state.resets.last_resets[g.name]) for g in groups},
      )
      for k, b, a in zip(jax.tree.leaves(keep), jax.tree.leaves(before), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.where(k, a, 0), np.where(k, b, 0))
      for k, want, got in zip(
          jax.tree.leaves(keep),
          jax.tree.leaves(plain_inner[0].trace),
          jax.tree.leaves(opt_state.inner_state[0].trace),
      ):
        np.testing.assert_array_equal(np.where(k, got, 0), np.where(k, want, 0))
        np.testing.assert_array_equal(np.where(k, 0, got), 0)
      # the reset unit's incoming weights no longer affect the output
      local = [
          s
          for s in group.incoming
          if not (name in ('layernorm', 'scanned') and s.path[-2] in ('Dense_0', 'fc1'))
      ]
      noisy = params
      for s in local:
        leaf = snr_jax._src.groups.get_path(noisy, s.path)
        m = _unit_mask(jnp.zeros((group.size,), bool).at[dead].set(True), group, s, leaf.shape)
        noise = jax.random.normal(jax.random.PRNGKey(11), leaf.shape)
        noisy = _replace(noisy, s.path, jnp.where(m, leaf + noise, leaf))
      out = model.apply({'params': params, **rest}, xb)
      out_noisy = model.apply({'params': noisy, **rest}, xb)
      for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(out_noisy)):
        np.testing.assert_array_equal(a, b)
    if t >= 3:
      fired_after.append(fired[dead])
      assert not mask[dead]
  assert any(fired_after)  # the fresh unit fires again


# --- NNX ---------------------------------------------------------------------------------


class NNXNet(nnx.Module):

  def __init__(self, rngs):
    self.layers = nnx.List([nnx.Linear(4, 6, rngs=rngs), nnx.Linear(6, 5, rngs=rngs)])
    self.norm = nnx.LayerNorm(5, rngs=rngs)
    self.head = nnx.Sequential(nnx.Linear(5, 3, rngs=rngs))

  def __call__(self, x):
    x = nnx.relu(self.layers[0](x))
    x = nnx.relu(self.norm(self.layers[1](x)))
    return self.head(x)


class NNXConvNet(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(4, rngs=rngs)
    self.out = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.bn(self.conv(x))).mean((1, 2)))


def test_nnx_discovery():
  model = NNXNet(nnx.Rngs(0))
  groups = snr_jax.discover_groups(model, jnp.ones((2, 4)))
  assert sorted(as_truth(g) for g in groups) == sorted(
      [
          truth('layers/0', 6, {'layers/0/kernel': 1, 'layers/0/bias': 0}, {'layers/1/kernel': 0}),
          truth(
              'layers/1',
              5,
              {'layers/1/kernel': 1, 'layers/1/bias': 0, 'norm/scale': 0, 'norm/bias': 0},
              {'head/layers/0/kernel': 0},
          ),
      ]
  )
  conv = NNXConvNet(nnx.Rngs(0))
  groups = snr_jax.discover_groups(conv, jnp.ones((2, 5, 5, 2)))
  assert [as_truth(g) for g in groups] == [
      truth(
          'conv',
          4,
          {'conv/kernel': 3, 'conv/bias': 0, 'bn/scale': 0, 'bn/bias': 0},
          {'out/kernel': 0},
      )
  ]
  assert sorted('/'.join(s.path) for s in groups[0].state) == ['bn/mean', 'bn/var']


class NNXBlock(nnx.Module):

  def __init__(self, rngs):
    self.fc1 = nnx.Linear(3, 5, rngs=rngs)
    self.fc2 = nnx.Linear(5, 3, rngs=rngs)

  def __call__(self, x):
    return x + self.fc2(nnx.relu(self.fc1(x)))


class NNXStack(nnx.Module):

  def __init__(self, rngs):
    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
      return NNXBlock(rngs)

    self.blocks = create(rngs)
    self.head = nnx.Linear(3, 2, rngs=rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def run(x, block):
      return block(x)

    return self.head(run(x, self.blocks))


@pytest.mark.slow
def test_nnx_scan_stack_has_units_per_layer():
  model = NNXStack(nnx.Rngs(0))
  x = jax.random.normal(KEY, (4, 3))
  groups = snr_jax.discover_groups(model, x)
  assert [as_truth(g) for g in groups] == [
      truth(
          'blocks/fc1',
          5,
          {'blocks/fc1/kernel': 2, 'blocks/fc1/bias': 1},
          {'blocks/fc2/kernel': 1},
          layers=3,
      )
  ]
  out, acts = snr_jax.with_preactivations(model, groups)(model, x)
  np.testing.assert_allclose(out, model(x), rtol=1e-6)
  k, b = model.blocks.fc1.kernel[...], model.blocks.fc1.bias[...]
  np.testing.assert_allclose(acts['blocks/fc1'][0], x @ k[0] + b[0], rtol=1e-5)


def test_nnx_training_with_nnx_optimizer_resets_a_silent_unit():
  model = NNXNet(nnx.Rngs(0))
  x = jax.random.normal(KEY, (4, 4))
  groups = snr_jax.discover_groups(model, x)
  group = groups[0]
  params = nnx.state(model, nnx.Param)
  forced = _force(nnx.to_pure_dict(params), group, 2, -1)
  nnx.replace_by_pure_dict(params, forced)
  nnx.update(model, params)
  tau = 2 * x.shape[0]
  optimizer = nnx.Optimizer(
      model,
      snr_jax.snr(optax.sgd(0.0), groups, tau_init=tau, tau_min=tau, tau_max=tau),
      wrt=nnx.Param,
  )
  capture = snr_jax.with_preactivations(model, groups)

  @nnx.jit
  def step(model, optimizer, xb):
    def loss_fn(model):
      out, acts = capture(model, xb)
      return jnp.sum(out**2), acts

    (_, acts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads, activations=acts)
    return acts

  kernel_before = np.asarray(model.layers[0].kernel[...])
  masks = []
  for t in range(3):
    step(model, optimizer, jax.random.normal(jax.random.PRNGKey(t), x.shape))
    masks.append(np.asarray(optimizer.opt_state.resets.last_resets[group.name][...]))
  assert [m[2] for m in masks] == [False, True, False]
  assert sum(m.sum() for m in masks) == 1
  kernel = np.asarray(model.layers[0].kernel[...])
  assert np.all(kernel[:, 2] != 0)  # re-drawn
  np.testing.assert_array_equal(np.delete(kernel, 2, 1), np.delete(kernel_before, 2, 1))
  np.testing.assert_array_equal(np.asarray(model.layers[1].kernel[...])[2], 0)  # outgoing


def test_batchnorm_running_stats_reset_with_the_model_state():
  model = BatchNormCNN(train=True)
  x = jax.random.normal(KEY, (4, 6, 6, 2))
  variables = model.init(KEY, x)
  groups = snr_jax.discover_groups(model, variables, x, mutable=['batch_stats'])
  assert sorted('/'.join(s.path) for s in groups[0].state) == [
      'batch_stats/BatchNorm_0/mean',
      'batch_stats/BatchNorm_0/var',
  ]
  stats = jax.tree.map(lambda a: a + 3.0, {'batch_stats': variables['batch_stats']})
  mask = {groups[0].name: jnp.array([False, True, False, False])}
  out = snr_jax.reset_model_state(stats, groups, mask)['batch_stats']['BatchNorm_0']
  np.testing.assert_array_equal(out['mean'], [3.0, 0.0, 3.0, 3.0])
  np.testing.assert_array_equal(out['var'], [4.0, 1.0, 4.0, 4.0])


@pytest.mark.slow
def test_declared_group_with_a_firing_predicate():
  class GeluNet(nn.Module):

    @nn.compact
    def __call__(self, x):
      h = nn.Dense(4, name='hidden')(x)
      self.sow('intermediates', 'pre', h)
      return nn.Dense(2, name='out')(nn.gelu(h))

  x = jnp.ones((3, 5))
  params = GeluNet().init(KEY, x)['params']
  group = snr_jax.NeuronGroup(
      'hidden',
      4,
      snr_jax.dense_group('hidden', 4, layer='hidden').incoming,
      snr_jax.dense_group('hidden', 4, layer='hidden', consumer='out').outgoing,
      activation=('hidden', 'pre'),
      firing=lambda h: h > 1.0,
  )
  pre = jnp.array([[0.5, 2.0, -1.0, 1.5]] * 3)
  assert list(snr_jax.fired(pre, group.firing)) == [False, True, False, True]
  tx = snr_jax.snr(optax.sgd(0.0), [group], tau_init=6, tau_min=6, tau_max=6)
  state = tx.init(params)
  _, state = tx.update(
      jax.tree.map(jnp.zeros_like, params), state, params, activations={'hidden': pre}
  )
  np.testing.assert_array_equal(state.resets.rule.ages['hidden'], [3, 0, 3, 0])
  assert 'firing predicate: user-declared' in snr_jax.describe_groups([group])


@pytest.mark.slow
def test_snr_on_an_nnx_split_state_of_param_variables():
  model = NNXNet(nnx.Rngs(0))
  x = jax.random.normal(KEY, (4, 4))
  groups = snr_jax.discover_groups(model, x)
  _, params, _ = nnx.split(model, nnx.Param, ...)  # leaves are nnx.Param variables
  tx = snr_jax.snr(optax.sgd(0.1), groups, tau_init=4, tau_min=4, tau_max=4)
  state = tx.init(params)
  acts = {g.name: -jnp.ones((4, g.size)) for g in groups}  # nothing fires: all reset
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, state = tx.update(grads, state, params, activations=acts)
  new = optax.apply_updates(params, updates)
  assert all(bool(m.all()) for m in state.resets.last_resets.values())
  np.testing.assert_array_equal(new['layers'][1]['kernel'][...], 0)  # outgoing zeroed
  assert not np.allclose(new['layers'][0]['kernel'][...], params['layers'][0]['kernel'][...])


def test_a_declared_stacked_group_must_name_its_layers():
  model, x, variables, _ = _setup('scanned')
  params = variables['params']
  flat = snr_jax.NeuronGroup(
      'fc1',
      5,
      (snr_jax.ParamSlice(('stack', 'fc1', 'kernel'), -1, nn.initializers.lecun_normal()),),
  )
  with pytest.raises(snr_jax.GroupError, match='incoming.*has 3 entries'):
    snr_jax.validate_groups(
        [
            snr_jax.NeuronGroup(
                'fc1',
                5,
                (
                    snr_jax.ParamSlice(
                        ('stack', 'fc1', 'kernel'), 0, nn.initializers.lecun_normal()
                    ),
                ),
            )
        ],
        params,
    )
  with pytest.raises(snr_jax.GroupError, match='3 stacked layers.*no layer axis'):
    snr_jax.validate_groups([flat.__class__('fc1', 15, flat.incoming, layers=3)], params)
  ok = snr_jax.NeuronGroup(
      'fc1',
      15,
      (
          snr_jax.ParamSlice(
              ('stack', 'fc1', 'kernel'), -1, nn.initializers.lecun_normal(), layer_axis=0
          ),
      ),
      layers=3,
  )
  assert snr_jax.validate_groups([ok], params)[0].units == 5


@pytest.mark.slow
def test_cbp_reads_consumer_rows_through_the_discovered_layout():
  from snr_jax._src.cbp import outgoing_mean_magnitude, transfer_to_biases

  model, x, variables, _ = _setup('cnn_channel_first')
  groups = snr_jax.discover_groups(model, variables, x)
  conv1 = next(g for g in groups if g.name == 'Conv_1')
  params = variables['params']
  w = np.asarray(params['Dense_0']['kernel'])  # rows: (channel, h, w) flattened
  rows = w.reshape(5, 4, -1)  # 5 channels x 2*2 positions
  amounts = {g.name: jnp.zeros((g.size,)) for g in groups}
  amounts['Conv_1'] = amounts['Conv_1'].at[1].set(2.0)
  out = transfer_to_biases(params, groups, amounts)
  np.testing.assert_allclose(
      out['Dense_0']['bias'] - params['Dense_0']['bias'], 2.0 * rows[1].sum(axis=0), rtol=1e-5
  )
  np.testing.assert_allclose(
      outgoing_mean_magnitude(params, conv1), np.abs(rows).mean(axis=(1, 2)), rtol=1e-5
  )
  model, x, variables, _ = _setup('scanned')
  groups = snr_jax.discover_groups(model, variables, x)
  k = np.asarray(variables['params']['stack']['fc2']['kernel'])  # (layers, units, out)
  np.testing.assert_allclose(
      outgoing_mean_magnitude(variables['params'], groups[0]),
      np.abs(k).mean(axis=2).reshape(-1),
      rtol=1e-5,
  )


@pytest.mark.slow
def test_per_token_snr_on_a_scanned_group_counts_positions_per_layer_and_unit():
  model, x, variables, _ = _setup('scanned')
  groups = snr_jax.discover_groups(model, variables, x)
  g = groups[0]
  params = variables['params']
  tx = snr_jax.snr(
      optax.sgd(0.0), groups, estimator='per_token', tau_init=10, tau_min=10, tau_max=10
  )
  state = tx.init(params)
  acts = jnp.ones((3, 2, 6, 5))  # (layers, batch, tokens, units)
  acts = acts.at[2, :, :, 4].set(-1.0)  # (layer 2, unit 4): silent
  acts = acts.at[1, 0, :3, 0].set(-1.0)  # (layer 1, unit 0): fires at 9 of 12
  grads = jax.tree.map(jnp.zeros_like, params)
  _, state = tx.update(grads, state, params, activations={g.name: acts})
  ages = np.asarray(state.resets.rule.ages[g.name]).reshape(3, 5)
  assert ages[2, 4] == 0 and bool(state.resets.last_resets[g.name].reshape(3, 5)[2, 4])
  assert ages[1, 0] == 12 // 9 and ages[0, 0] == 1 and ages.shape == (3, 5)
