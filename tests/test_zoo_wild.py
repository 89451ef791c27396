"""Models from the wild: each is modelled on a public codebase's architecture (written
here, not copied) and trained end to end with SNR as its users hold it, with no override
and no declaration:

* dopamine's DQN family (conv torso + Dense, the initializer built inside ``__call__``
  from a traced value) with a C51 head and with a dueling head;
* the lm1b example's transformer block (``nn.with_logical_partitioning`` initializers,
  params kept boxed as ``LogicallyPartitioned``);
* the flax sharding guide's MLP (``nn.with_partitioning``, trained with ``nn.Partitioned``
  params through a ``TrainState``);
* equinox's ``eqx.nn.MLP`` and a CNN like the equinox docs' one (``eqx.partition`` /
  ``eqx.combine``);
* an NNX MLP trained with ``nnx.Optimizer`` and logged with ``reset_metrics``
  (flat and nested) on ``optimizer.opt_state``.

For each: the discovered groups equal the truth written by hand; ``snr(...).init`` on the
params as the user holds them; 12 jitted steps in which units are reset; after a reset,
noise on a reset unit's incoming weights moves the output by exactly 0; a reset moves
nothing outside its slices and keeps the containers (boxes, modules) as they were;
``reset_metrics`` on the state as the user holds it.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from flax.training import train_state

import snr_jax
from snr_jax._src.util import key_path_to_path
from snr_jax._src.reset import _unit_mask, keep_masks
from test_discovery import _flatten_rows, as_truth, truth

KEY = jax.random.PRNGKey(0)
STEPS = 12
# Resets come quickly: a unit silent for 2 batches of 4 examples is reset.
FAST = dict(eta=0.5, tau_init=8, tau_max=8, tau_min=1)


# --- helpers that address params by their jax key paths, whatever holds them --------------


def _is_box(x):
  return isinstance(x, (nn.meta.AxisMetadata, nnx.Variable))


def _containers(tree):
  """The type of every leaf's holder (box, variable or the array itself), by path."""
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: _is_box(x) or x is None)[0]
  return {key_path_to_path(kp): type(x).__name__ for kp, x in flat}


def _on_slices(tree, group, units, fn, slices=None):
  """``tree`` with ``fn(leaf, mask)`` applied to the given units' slices of ``group``."""
  mask = jnp.zeros((group.size,), bool).at[jnp.asarray(units)].set(True)
  slices = {s.path: s for s in (group.incoming if slices is None else slices)}

  def one(kp, leaf):
    s = slices.get(key_path_to_path(kp))
    if s is None:
      return leaf
    return fn(leaf, _unit_mask(mask, group, s, leaf.shape))

  return jax.tree_util.tree_map_with_path(one, tree)


def silence(tree, group, units):
  """Zero the units' incoming slices: their pre-activation is 0, they never fire, and a
  ReLU's zero gradient keeps them so under SGD."""
  return _on_slices(tree, group, units, lambda w, m: jnp.where(m, 0.0, w).astype(w.dtype))


def jolt(tree, group, units, seed=7):
  """Noise on the units' incoming slices."""

  def fn(w, m):
    noise = jax.random.normal(jax.random.PRNGKey(seed), w.shape, jnp.float32)
    return jnp.where(m, w + noise, w).astype(w.dtype)

  return _on_slices(tree, group, units, fn)


def assert_cut_off(apply, params, groups, masks):
  """Every masked unit's incoming weights no longer reach the output: noise on them
  moves it by exactly 0."""
  seen = 0
  for g in groups:
    for u in np.flatnonzero(np.asarray(masks[g.name])):
      np.testing.assert_array_equal(
          apply(params), apply(jolt(params, g, [int(u)])), err_msg=f'{g.name} unit {u}'
      )
      seen += 1
  assert seen


def assert_reset_is_confined(apply, params, groups, unit=0):
  """``reset_params`` on the params as the user holds them: the same containers come
  out, nothing outside the reset slices moves, and each reset unit is cut off (while the
  same noise moved the output before the reset)."""
  for g in groups:
    masks = {h.name: jnp.zeros((h.size,), bool) for h in groups}
    masks[g.name] = masks[g.name].at[unit].set(True)
    assert not np.array_equal(apply(params), apply(jolt(params, g, [unit]))), g.name
    new = snr_jax.reset_params(params, groups, masks, jax.random.PRNGKey(3))
    assert jax.tree.structure(new) == jax.tree.structure(params)
    assert _containers(new) == _containers(params)
    keep = keep_masks(params, groups, masks)
    for k, o, n in zip(jax.tree.leaves(keep), jax.tree.leaves(params), jax.tree.leaves(new)):
      np.testing.assert_array_equal(np.where(k, np.asarray(o), 0), np.where(k, np.asarray(n), 0))
    assert_cut_off(apply, new, groups, masks)


def reset_log(opt_state, groups):
  """``reset_metrics`` on the state as the user holds it, with the keys it must have."""
  m = snr_jax.reset_metrics(opt_state)
  for g in groups:
    for k in ('resets', 'dead_fraction', 'mean_threshold'):
      assert f'{k}/{g.name}' in m
  return m


def train(step, params, opt_state, groups, apply, x):
  """STEPS jitted steps; checks units are reset and cut off right after their reset."""
  resets = 0
  for _ in range(STEPS):
    params, opt_state = step(params, opt_state, x)
    log = reset_log(opt_state, groups)
    n = sum(int(log[f'resets/{g.name}']) for g in groups)
    if n:
      masks = snr_jax._src.transform.find_reset_state(opt_state).last_resets
      assert_cut_off(apply, params, groups, masks)
    resets += n
  assert resets > 0
  return params, opt_state


def linen_step(model, groups, opt):
  forward = snr_jax.with_preactivations(model, groups)

  @jax.jit
  def step(params, opt_state, x):
    def loss_fn(p):
      out, acts = forward({'params': p}, x)
      return jnp.mean(out.astype(jnp.float32) ** 2), acts

    (_, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params, activations=acts)
    return optax.apply_updates(params, updates), opt_state

  return step


def names(groups):
  return {g.name: g for g in groups}


# --- dopamine: DQN torso, C51 and dueling heads, the initializer built in __call__ ----------


class DopamineNet(nn.Module):
  """Atari-style conv torso then Dense, as dopamine's jax networks build it: the
  initializer is made inside ``__call__`` (``1 / jnp.sqrt(3.0)`` is traced there)."""

  num_actions: int = 3
  num_atoms: int = 5
  head: str = 'c51'

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.variance_scaling(
        scale=1.0 / jnp.sqrt(3.0), mode='fan_in', distribution='uniform'
    )
    x = x.astype(jnp.float32) / 255.0
    x = nn.relu(nn.Conv(4, (4, 4), (2, 2), kernel_init=init, name='conv0')(x))
    x = nn.relu(nn.Conv(4, (3, 3), (1, 1), kernel_init=init, name='conv1')(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(16, kernel_init=init, name='torso')(x))
    if self.head == 'c51':
      logits = nn.Dense(self.num_actions * self.num_atoms, kernel_init=init, name='logits')(x)
      logits = logits.reshape((x.shape[0], self.num_actions, self.num_atoms))
      probs = nn.softmax(logits)
      support = jnp.linspace(-10.0, 10.0, self.num_atoms)
      return jnp.sum(support * probs, axis=-1)
    value = nn.Dense(1, kernel_init=init, name='value_out')(
        nn.relu(nn.Dense(8, kernel_init=init, name='value_hidden')(x))
    )
    adv = nn.Dense(self.num_actions, kernel_init=init, name='adv_out')(
        nn.relu(nn.Dense(8, kernel_init=init, name='adv_hidden')(x))
    )
    return value + adv - jnp.mean(adv, axis=-1, keepdims=True)


def dopamine_truth(head):
  rows = _flatten_rows(6, 6, 4, False)  # 12x12 frames, stride 2, SAME
  out = [
      truth('conv0', 4, {'conv0/kernel': 3, 'conv0/bias': 0}, {'conv1/kernel': 2}),
      truth(
          'conv1',
          4,
          {'conv1/kernel': 3, 'conv1/bias': 0},
          {'torso/kernel': 0},
          unit_of={'torso/kernel': rows},
      ),
  ]
  if head == 'c51':
    out.append(truth('torso', 16, {'torso/kernel': 1, 'torso/bias': 0}, {'logits/kernel': 0}))
  else:
    out += [
        truth(
            'torso',
            16,
            {'torso/kernel': 1, 'torso/bias': 0},
            {'value_hidden/kernel': 0, 'adv_hidden/kernel': 0},
        ),
        truth(
            'value_hidden',
            8,
            {'value_hidden/kernel': 1, 'value_hidden/bias': 0},
            {'value_out/kernel': 0},
        ),
        truth(
            'adv_hidden', 8, {'adv_hidden/kernel': 1, 'adv_hidden/bias': 0}, {'adv_out/kernel': 0}
        ),
    ]
  return sorted(out)


@pytest.mark.slow
@pytest.mark.parametrize('head', ['c51', 'dueling'])
def test_dopamine_dqn_with_initializer_built_in_call(head):
  model = DopamineNet(head=head)
  x = jax.random.randint(KEY, (4, 12, 12, 2), 0, 256).astype(jnp.uint8)
  params = model.init(KEY, x)['params']
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # the initializer is recovered: nothing to warn about
    groups = snr_jax.discover_groups(model, params, x)
  assert sorted(as_truth(g) for g in groups) == dopamine_truth(head)

  # the recovered initializer is dopamine's: uniform with bound sqrt(3 * scale / fan_in)
  kernel_init = names(groups)['torso'].incoming[0].init
  fan_in = 6 * 6 * 4
  w = jax.jit(lambda k: kernel_init(k, (fan_in, 16), jnp.float32))(KEY)
  bound = np.sqrt(3 * (1 / np.sqrt(3.0)) / fan_in)
  assert np.max(np.abs(w)) <= bound and np.max(np.abs(w)) > 0.9 * bound

  apply = lambda p: model.apply({'params': p}, x)
  params = silence(params, names(groups)['torso'], [0, 3])
  params = silence(params, names(groups)['conv1'], [1])
  opt = snr_jax.snr(optax.sgd(1e-3), groups, **FAST)
  opt_state = opt.init(params)
  params, opt_state = train(linen_step(model, groups, opt), params, opt_state, groups, apply, x)
  assert_reset_is_confined(apply, params, groups)


@pytest.mark.slow
def test_an_initializer_that_cannot_be_recovered_warns_at_discovery_and_steps_run():
  class InputScaled(nn.Module):

    @nn.compact
    def __call__(self, x):
      init = nn.initializers.variance_scaling(jnp.mean(x**2), 'fan_in', 'normal')
      h = nn.relu(nn.Dense(6, kernel_init=init, name='hidden')(x))
      return nn.Dense(2, name='out')(h)

  model, x = InputScaled(), jnp.ones((4, 3))
  params = model.init(KEY, x)['params']
  with pytest.warns(UserWarning, match=r"hidden/kernel.*initializers=\{'hidden/kernel'"):
    groups = snr_jax.discover_groups(model, params, x)
  params = silence(params, groups[0], [2])
  opt = snr_jax.snr(optax.sgd(1e-3), groups, **FAST)
  train(
      linen_step(model, groups, opt),
      params,
      opt.init(params),
      groups,
      lambda p: model.apply({'params': p}, x),
      x,
  )


# --- lm1b: a transformer block with logically partitioned initializers, params boxed --------


class MlpBlock(nn.Module):
  mlp_dim: int = 12

  @nn.compact
  def __call__(self, x, deterministic=True):
    d = x.shape[-1]
    init = nn.initializers.xavier_uniform()
    h = nn.Dense(
        self.mlp_dim,
        kernel_init=nn.with_logical_partitioning(init, ('embed', 'mlp')),
        bias_init=nn.with_logical_partitioning(nn.initializers.normal(1e-6), ('mlp',)),
        name='wi',
    )(x)
    h = nn.relu(h)
    h = nn.Dropout(0.1)(h, deterministic=deterministic)
    return nn.Dense(
        d,
        kernel_init=nn.with_logical_partitioning(init, ('mlp', 'embed')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
        name='wo',
    )(h)


class Lm1bLike(nn.Module):
  vocab: int = 11
  emb: int = 8

  @nn.compact
  def __call__(self, tokens, deterministic=True):
    x = nn.Embed(
        self.vocab,
        self.emb,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ('vocab', 'embed')
        ),
        name='embed',
    )(tokens)
    y = nn.LayerNorm(
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)), name='ln_attn'
    )(x)
    y = nn.SelfAttention(
        num_heads=2,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.xavier_uniform(), ('embed', 'heads', 'kv')
        ),
        name='attn',
    )(y, deterministic=deterministic)
    x = x + y
    y = nn.LayerNorm(
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)), name='ln_mlp'
    )(x)
    x = x + MlpBlock(name='mlp')(y, deterministic=deterministic)
    return nn.Dense(
        self.vocab,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.xavier_uniform(), ('embed', 'vocab')
        ),
        name='logits',
    )(x)


@pytest.mark.slow
def test_lm1b_block_with_logically_partitioned_params_kept_boxed():
  model = Lm1bLike()
  tokens = jax.random.randint(KEY, (4, 5), 0, 11)
  params = model.init(KEY, tokens)['params']  # boxed, as lm1b keeps them
  assert isinstance(params['mlp']['wi']['kernel'], nn.LogicallyPartitioned)
  groups = snr_jax.discover_groups(model, params, tokens)
  assert [as_truth(g) for g in groups] == [
      truth('mlp/wi', 12, {'mlp/wi/kernel': 1, 'mlp/wi/bias': 0}, {'mlp/wo/kernel': 0})
  ]
  left = {x.layer for x in groups.left_out}
  assert 'mlp/wo' in left  # it feeds the residual add

  apply = lambda p: model.apply({'params': p}, tokens)
  params = silence(params, groups[0], [2, 5])
  opt = snr_jax.snr(optax.adam(1e-3), groups, **FAST)
  opt_state = opt.init(params)
  params, opt_state = train(
      linen_step(model, groups, opt), params, opt_state, groups, apply, tokens
  )
  assert isinstance(params['mlp']['wi']['kernel'], nn.LogicallyPartitioned)
  assert params['mlp']['wi']['kernel'].names == ('embed', 'mlp')
  # Adam's moments of the boxed params are boxed too, and still are after the resets
  mu = opt_state.inner_state[0].mu
  assert isinstance(mu['mlp']['wi']['kernel'], nn.LogicallyPartitioned)
  assert_reset_is_confined(apply, params, groups)


# --- the flax sharding guide: DotReluDot blocks, nn.Partitioned params in a TrainState ------


class DotReluDot(nn.Module):
  depth: int
  mesh: jax.sharding.Mesh

  @nn.compact
  def __call__(self, x):
    y = nn.Dense(
        self.depth,
        kernel_init=nn.with_partitioning(nn.initializers.xavier_normal(), (None, 'model')),
        use_bias=False,
    )(x)
    y = jax.nn.relu(y)
    y = jax.lax.with_sharding_constraint(
        y, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec('data', 'model'))
    )
    w2 = self.param(
        'W2',
        nn.with_partitioning(nn.initializers.xavier_normal(), ('model', None)),
        (self.depth, x.shape[-1]),
    )
    return jnp.dot(y, w2)


class ShardedMLP(nn.Module):
  mesh: jax.sharding.Mesh
  num_layers: int = 2
  depth: int = 8

  @nn.compact
  def __call__(self, x):
    for _ in range(self.num_layers):
      x = DotReluDot(self.depth, self.mesh)(x)
    return x


@pytest.mark.slow
def test_sharding_guide_mlp_trained_with_partitioned_params():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ('data', 'model'))
  model = ShardedMLP(mesh)
  x = jax.random.normal(KEY, (4, 6))
  params = model.init(KEY, x)['params']
  assert isinstance(params['DotReluDot_0']['Dense_0']['kernel'], nn.Partitioned)
  groups = snr_jax.discover_groups(model, params, x)
  assert sorted(as_truth(g) for g in groups) == sorted(
      truth(
          f'DotReluDot_{i}/Dense_0',
          8,
          {f'DotReluDot_{i}/Dense_0/kernel': 1},
          {f'DotReluDot_{i}/W2': 0},
      )
      for i in range(2)
  )
  # the layer's own initializer, out of its box: xavier normal, not lecun normal
  init = groups[0].incoming[0].init
  w = jax.jit(lambda k: init(k, (600, 400), jnp.float32))(KEY)
  assert abs(float(jnp.std(w)) - np.sqrt(2 / 1000)) < 0.002

  opt = snr_jax.snr(optax.sgd(1e-3), groups, **FAST)
  params = silence(params, groups[1], [4])
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=opt)
  forward = snr_jax.with_preactivations(model, groups)

  @jax.jit
  def step(state, _, x):
    def loss_fn(p):
      out, acts = forward({'params': p}, x)
      return jnp.mean(out**2), acts

    (_, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = snr_jax.apply_gradients(state, grads, activations=acts)
    return state, state.opt_state

  apply = lambda s: model.apply({'params': s.params if hasattr(s, 'params') else s}, x)
  resets = 0
  for _ in range(STEPS):
    state, _ = step(state, None, x)
    log = reset_log(state.opt_state, groups)
    n = sum(int(log[f'resets/{g.name}']) for g in groups)
    if n:
      assert_cut_off(
          apply,
          state.params,
          groups,
          snr_jax._src.transform.find_reset_state(state.opt_state).last_resets,
      )
    resets += n
  assert resets > 0
  assert _containers(state.params) == _containers(params)
  assert isinstance(state.params['DotReluDot_1']['W2'], nn.Partitioned)
  assert_reset_is_confined(apply, state.params, groups)


# --- equinox: MLP and a CNN like the docs' one, trained through partition/combine -----------


class EqxCNN(eqx.Module):
  """Like the equinox docs' CNN (conv, max pool, relu, ravel, Linear-sigmoid, Linear-relu,
  Linear, log-softmax), shrunk; one example at a time, channel-first."""

  layers: list

  def __init__(self, key):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    self.layers = [
        eqx.nn.Conv2d(1, 3, kernel_size=4, key=k1),
        eqx.nn.MaxPool2d(kernel_size=2),
        jax.nn.relu,
        jnp.ravel,
        eqx.nn.Linear(3 * 8 * 8, 16, key=k2),
        jax.nn.sigmoid,
        eqx.nn.Linear(16, 8, key=k3),
        jax.nn.relu,
        eqx.nn.Linear(8, 4, key=k4),
        jax.nn.log_softmax,
    ]

  def __call__(self, x):
    for layer in self.layers:
      x = layer(x)
    return x


EQX = {
    'mlp': (
        lambda: eqx.nn.MLP(5, 3, 8, 2, key=KEY),
        (4, 5),
        [
            truth(
                'layers/0', 8, {'layers/0/weight': 0, 'layers/0/bias': 0}, {'layers/1/weight': 1}
            ),
            truth(
                'layers/1', 8, {'layers/1/weight': 0, 'layers/1/bias': 0}, {'layers/2/weight': 1}
            ),
        ],
    ),
    'cnn': (
        lambda: EqxCNN(KEY),
        (4, 1, 12, 12),
        [
            truth(
                'layers/0',
                3,
                {'layers/0/weight': 0, 'layers/0/bias': 0},
                {'layers/4/weight': 1},
                unit_of={'layers/4/weight': _flatten_rows(8, 8, 3, True)},
            ),
            truth(
                'layers/6', 8, {'layers/6/weight': 0, 'layers/6/bias': 0}, {'layers/8/weight': 1}
            ),
        ],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(EQX))
def test_equinox_model_trained_through_partition_and_combine(name):
  make, shape, expected = EQX[name]
  model = make()
  params, static = eqx.partition(model, eqx.is_array)
  x = jax.random.normal(KEY, shape)

  def f(params, x):
    return jax.vmap(eqx.combine(params, static))(x)

  groups = snr_jax.discover_groups(f, params, x)
  assert sorted(as_truth(g) for g in groups) == sorted(expected)
  opt = snr_jax.snr(optax.sgd(1e-3), groups, **FAST)
  params = silence(params, groups[-1], [1, 6])
  opt_state = opt.init(params)
  forward = snr_jax.with_preactivations(f, groups)

  @jax.jit
  def step(params, opt_state, x):
    def loss_fn(p):
      out, acts = forward(p, x)
      return jnp.mean(out**2), acts

    (_, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params, activations=acts)
    return eqx.apply_updates(params, updates), opt_state

  apply = lambda p: f(p, x)
  params, opt_state = train(step, params, opt_state, groups, apply, x)
  assert isinstance(params, type(model))
  assert isinstance(eqx.combine(params, static), type(model))
  assert_reset_is_confined(apply, params, groups)


def test_a_path_missing_from_module_params_names_the_params_leaves():
  params, _ = eqx.partition(eqx.nn.MLP(5, 3, 8, 2, key=KEY), eqx.is_array)
  assert snr_jax._src.groups.get_path(params, ('layers', '1', 'bias')).shape == (8,)
  with pytest.raises(snr_jax.GroupError, match=r"'layers/7/weight'.*layers/0/weight"):
    snr_jax._src.groups.get_path(params, ('layers', '7', 'weight'))


# --- NNX: an MLP trained with nnx.Optimizer, logged from optimizer.opt_state ---------------


class NNXMLP(nnx.Module):

  def __init__(self, rngs):
    self.layers = nnx.List([nnx.Linear(5, 8, rngs=rngs), nnx.Linear(8, 8, rngs=rngs)])
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    for layer in self.layers:
      x = nnx.relu(layer(x))
    return self.head(x)


@pytest.mark.slow
def test_nnx_mlp_logged_from_the_optimizer_state():
  model = NNXMLP(nnx.Rngs(0))
  x = jax.random.normal(KEY, (4, 5))
  groups = snr_jax.discover_groups(model, x)
  assert sorted(as_truth(g) for g in groups) == sorted(
      [
          truth('layers/0', 8, {'layers/0/kernel': 1, 'layers/0/bias': 0}, {'layers/1/kernel': 0}),
          truth('layers/1', 8, {'layers/1/kernel': 1, 'layers/1/bias': 0}, {'head/kernel': 0}),
      ]
  )
  graphdef, _ = nnx.split(model)
  nnx.update(model, silence(nnx.state(model, nnx.Param), groups[0], [3]))
  optimizer = nnx.Optimizer(model, snr_jax.snr(optax.sgd(1e-3), groups, **FAST), wrt=nnx.Param)
  forward = snr_jax.with_preactivations(model, groups)

  @nnx.jit
  def step(model, optimizer, x):
    def loss_fn(model):
      out, acts = forward(model, x)
      return jnp.mean(out**2), acts

    (_, acts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads, activations=acts)

  def apply(params):
    return nnx.merge(graphdef, params, nnx.state(model, nnx.Not(nnx.Param)))(x)

  resets = 0
  for _ in range(STEPS):
    step(model, optimizer, x)
    info = snr_jax.reset_metrics(optimizer.opt_state, nested=True)
    log = reset_log(optimizer.opt_state, groups)
    n = sum(int(log[f'resets/{g.name}']) for g in groups)
    assert n == sum(int(v) for v in info['resets'].values())
    if n:
      masks = snr_jax._src.transform.find_reset_state(optimizer.opt_state).last_resets
      assert_cut_off(apply, nnx.state(model, nnx.Param), groups, masks)
    resets += n
  assert resets > 0
  assert_reset_is_confined(apply, nnx.state(model, nnx.Param), groups)
