"""Tests for experiments.models: shapes, Im2colConv == nn.Conv, GPT causality and scaling."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.models import (CNN, GPT, MLP, ViT, Im2colConv, gpt_widths, max_pool_2x2, model_for)

KEY = jax.random.key(0)


def _init(model, x, key=KEY):
  return jax.jit(model.init)(key, x)['params']


def _shapes(model, x):
  """Parameter shapes without running anything (abstract evaluation)."""
  return jax.tree_util.tree_map(lambda a: a.shape, jax.eval_shape(model.init, KEY, x)['params'])


def _apply(model, p, x):
  return jax.jit(model.apply)({'params': p}, x)


# ----------------------------------------------------------------------------- shapes


def test_mlp_shapes_and_params():
  m = MLP()
  x = jnp.ones((3, 28, 28, 1))
  out, v = jax.eval_shape(m.init_with_output, KEY, x)
  p = v['params']
  assert out.shape == (3, 10)
  assert p['Dense_0']['kernel'].shape == (784, 100)
  assert p['Dense_1']['kernel'].shape == (100, 100)
  assert p['Dense_2']['kernel'].shape == (100, 10)
  assert p['Dense_0']['bias'].shape == (100,)


@pytest.mark.parametrize('conv_impl', ['im2col', 'xla'])
def test_cnn_shapes_and_params(conv_impl):
  m = CNN(conv_impl=conv_impl)
  x = jnp.ones((2, 32, 32, 3))
  assert jax.eval_shape(m.init_with_output, KEY, x)[0].shape == (2, 10)
  assert _shapes(m, x) == {
      'Conv_0': {'kernel': (5, 5, 3, 16), 'bias': (16,)},
      'Conv_1': {'kernel': (5, 5, 16, 16), 'bias': (16,)},
      'Dense_0': {'kernel': (5 * 5 * 16, 100), 'bias': (100,)},  # VALID: 32->28->14->10->5
      'Dense_1': {'kernel': (100, 100), 'bias': (100,)},
      'Dense_2': {'kernel': (100, 10), 'bias': (10,)},
  }
  # 28x28 (MNIST-like) and 2 outputs (Continual ImageNet)
  m2 = CNN(num_outputs=2, conv_impl=conv_impl)
  x2 = jnp.ones((4, 28, 28, 1))
  out, v = jax.eval_shape(m2.init_with_output, KEY, x2)
  assert v['params']['Dense_0']['kernel'].shape == (4 * 4 * 16, 100)
  assert out.shape == (4, 2)


@pytest.mark.slow
def test_cnn_impls_agree():
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  fast = CNN(conv_impl='im2col', pool_impl='reshape')
  ref = CNN(conv_impl='xla', pool_impl='xla')
  p = _init(ref, x)
  assert _shapes(fast, x) == jax.tree_util.tree_map(jnp.shape, p)
  np.testing.assert_allclose(_apply(fast, p, x), _apply(ref, p, x), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='conv_impl'):
    jax.eval_shape(CNN(conv_impl='bogus').init, KEY, x)


def test_vit_shapes():
  x = jnp.ones((2, 32, 32, 3))
  for pool in ('mean', 'cls'):
    m = ViT(pool=pool)
    out, v = jax.eval_shape(m.init_with_output, KEY, x)
    p = v['params']
    assert out.shape == (2, 10)
    ffn = p['block_0']['ffn']
    assert ffn['Dense_0']['kernel'].shape == (64, 256)
    assert ffn['Dense_1']['kernel'].shape == (256, 64)
    assert 'block_1' in p and 'block_2' not in p
  assert p['pos_embed'].shape == (1, 64 + 1, 64)


def test_gpt_shapes():
  m = GPT(vocab_size=50)
  tok = jnp.zeros((3, 128), jnp.int32)
  out, v = jax.eval_shape(m.init_with_output, KEY, tok)
  p = v['params']
  assert out.shape == (3, 128, 50)
  assert jax.eval_shape(m.apply, v, tok[:, :17]).shape == (3, 17, 50)
  assert p['block_0']['ffn']['Dense_0']['kernel'].shape == (32, 256)
  assert p['block_0']['ffn']['Dense_1']['kernel'].shape == (256, 32)
  assert p['head']['kernel'].shape == (32, 50)
  assert p['pos_embed']['embedding'].shape == (128, 32)
  assert 'block_1' not in p
  with pytest.raises(ValueError, match='context_length'):
    jax.eval_shape(m.apply, v, jnp.zeros((1, 129), jnp.int32))


# ------------------------------------------------------------------- Im2colConv vs nn.Conv


@pytest.mark.slow
@pytest.mark.parametrize(
    'kernel_size,strides,in_ch,padding',
    [
        ((5, 5), 1, 3, 'VALID'),
        ((5, 5), 1, 3, 'SAME'),
        ((3, 2), 1, 4, ((2, 1), (0, 3))),
        ((3, 3), 2, 2, 'SAME'),
        ((3, 3), 2, 2, 1),
    ],
)
def test_im2col_matches_conv(padding, kernel_size, strides, in_ch):
  x = jax.random.normal(jax.random.key(1), (2, 11, 10, in_ch))
  ref = nn.Conv(7, kernel_size, strides=strides, padding=padding)
  ours = Im2colConv(7, kernel_size, strides=strides, padding=padding)
  p_ref = _init(ref, x)
  p_ours = _init(ours, x)
  # identical layouts and, from the same key, identical initial values
  assert jax.tree_util.tree_map(jnp.shape, p_ref) == jax.tree_util.tree_map(jnp.shape, p_ours)
  np.testing.assert_array_equal(p_ref['kernel'], p_ours['kernel'])
  np.testing.assert_array_equal(p_ours['bias'], 0.0)
  # non-zero bias so that it is exercised; outputs and gradients (params and input)
  p = dict(p_ref, bias=jax.random.normal(jax.random.key(2), (7,)))
  w = jax.random.normal(jax.random.key(3), (64,))

  def out_and_grads(mod):
    def loss(p, x):
      y = mod.apply({'params': p}, x)
      return jnp.sum(jnp.tanh(y) * w[: y.shape[-1]] * jnp.cos(y.sum(-1, keepdims=True))), y

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(p, x)

  (_, y_ref), g_ref = out_and_grads(ref)
  (_, y_ours), g_ours = out_and_grads(ours)
  assert y_ref.shape == y_ours.shape
  np.testing.assert_allclose(y_ours, y_ref, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_im2col_fields_and_batch_dims():
  conv = Im2colConv(4, 3)
  assert conv.kernel_size == 3 and conv.padding == 'VALID'
  # initializer fields named as in nn.Conv, usable to re-draw parameters
  ref = nn.Conv(4, (3, 3), padding='VALID')
  k = jax.random.key(5)
  shape = (3, 3, 2, 4)
  np.testing.assert_array_equal(conv.kernel_init(k, shape), ref.kernel_init(k, shape))
  np.testing.assert_array_equal(conv.bias_init(k, (4,)), jnp.zeros(4))
  x = jax.random.normal(KEY, (2, 3, 6, 6, 2))  # two batch dims
  p = _init(conv, x)
  y = _apply(conv, p, x)
  assert y.shape == (2, 3, 4, 4, 4)
  np.testing.assert_allclose(y, _apply(ref, p, x), rtol=1e-5, atol=1e-5)
  y1 = _apply(conv, p, x[0, 0])  # unbatched
  np.testing.assert_allclose(y1, y[0, 0], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError):
    jax.eval_shape(Im2colConv(4, 3, padding='CIRCULAR').init, KEY, x)


@pytest.mark.slow
def test_max_pool_2x2_matches_nn_max_pool():
  for shape in [(2, 8, 6, 3), (1, 5, 7, 2)]:
    x = jax.random.normal(KEY, shape)
    ref = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
    np.testing.assert_array_equal(jax.jit(max_pool_2x2)(x), ref)
    w = jax.random.normal(jax.random.key(1), ref.shape)
    g = jax.jit(jax.grad(lambda x, w=w: jnp.sum(max_pool_2x2(x) * w)))(x)
    g_ref = jax.jit(jax.grad(lambda x, w=w: jnp.sum(nn.max_pool(x, (2, 2), (2, 2)) * w)))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6)  # no ties in random data


# ------------------------------------------------------------------------------- GPT


@pytest.mark.slow
def test_gpt_is_causal():
  m = GPT(vocab_size=23, context_length=16)
  tok = jax.random.randint(jax.random.key(1), (2, 16), 0, 23)
  p = _init(m, tok)
  base = _apply(m, p, tok)
  t = 9
  tok2 = tok.at[:, t].set((tok[:, t] + 5) % 23).at[:, t + 3].set((tok[:, t + 3] + 1) % 23)
  out = _apply(m, p, tok2)
  np.testing.assert_allclose(out[:, :t], base[:, :t], rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(out[:, t:] - base[:, t:])).max() > 1e-4


@pytest.mark.parametrize(
    'scale,width,ffn', [(1, 32, 256), (4, 64, 512), (16, 128, 1024), (2, 46, 362)]
)
def test_gpt_scale(scale, width, ffn):
  assert gpt_widths(32, 256, 2, scale) == (width, ffn)
  m = GPT(vocab_size=11, context_length=8, scale=scale)
  assert (m.model_width, m.model_ffn_width) == (width, ffn)
  p = _shapes(m, jnp.zeros((1, 8), jnp.int32))
  assert p['block_0']['ffn']['Dense_0']['kernel'] == (width, ffn)
  assert p['block_0']['ffn']['Dense_1']['kernel'] == (ffn, width)
  assert p['tok_embed']['embedding'] == (11, width)
  assert width % 2 == 0


def test_gpt_widths_rules():
  # width * sqrt(scale) rounded to a multiple of num_heads
  assert gpt_widths(30, 100, 4, 1) == (32, 100)
  assert gpt_widths(32, 256, 3, 2) == (45, 362)  # 45.25 -> 45 (15 heads dims of 3)
  assert gpt_widths(32, 256, 2, 2)[0] == 2 * round(32 * math.sqrt(2) / 2)
  with pytest.raises(ValueError):
    gpt_widths(32, 256, 2, 0)


def test_gpt_num_layers():
  m = GPT(vocab_size=7, context_length=8, num_layers=3)
  p = _shapes(m, jnp.zeros((1, 8), jnp.int32))
  assert {'block_0', 'block_1', 'block_2'} <= set(p)


# ------------------------------------------------------- neuron-group conventions


@pytest.mark.parametrize(
    'name,kw,x',
    [
        ('mlp', {}, jnp.ones((2, 784))),
        ('cnn', {}, jnp.ones((2, 32, 32, 3))),
        ('cnn', {'conv_impl': 'xla'}, jnp.ones((2, 32, 32, 3))),
        ('vit', {}, jnp.ones((2, 32, 32, 3))),
        ('gpt', {'vocab_size': 13, 'context_length': 8}, jnp.ones((2, 8), jnp.int32)),
    ],
)
def test_neuron_group_conventions(name, kw, x):
  """Each declared producer has kernel/bias with units on the last axis; its output,
  captured by capture_intermediates, is the pre-activation; the consumer reads it."""
  m = model_for(name, **kw)
  v = jax.eval_shape(m.init, KEY, x)
  p = v['params']
  _, state = jax.eval_shape(lambda v, x: m.apply(v, x, capture_intermediates=True), v, x)
  inter = state['intermediates']
  groups = m.neuron_group_paths()
  assert groups
  for prod, cons in groups:
    pp, cp, ip = p, p, inter
    for k in prod:
      pp, ip = pp[k], ip[k]
    for k in cons:
      cp = cp[k]
    assert set(pp) == {'kernel', 'bias'}
    n = pp['kernel'].shape[-1]
    assert pp['bias'].shape == (n,)
    (pre,) = ip['__call__']  # called exactly once
    assert pre.shape[-1] == n
    ck = cp['kernel']
    if ck.ndim == 4:  # conv -> conv: input-channel axis
      assert ck.shape[2] == n
    else:  # dense consumer: rows are a multiple of n (conv -> flatten -> dense)
      assert ck.shape[0] % n == 0


def test_model_for():
  assert isinstance(model_for('MLP', hidden=(5,)), MLP)
  assert isinstance(model_for('cnn'), CNN)
  assert isinstance(model_for('vit'), ViT)
  assert isinstance(model_for('gpt', vocab_size=3), GPT)
  with pytest.raises(ValueError, match='cnn, gpt, mlp, vit'):
    model_for('resnet')


@pytest.mark.parametrize(
    'name,kw,x',
    [
        ('mlp', {}, jnp.ones((2, 784))),
        *[
            ('cnn', {'conv_impl': c, 'pool_impl': p}, jnp.ones((2, 28, 28, 1)))
            for c in ('im2col', 'xla')
            for p in ('reshape', 'xla')
        ],
        ('vit', {}, jnp.ones((2, 32, 32, 3))),
        ('gpt', {'vocab_size': 13, 'context_length': 8}, jnp.ones((2, 8), jnp.int32)),
    ],
)
def test_discovery_finds_exactly_the_declared_groups(name, kw, x):
  """Every harness model's neuron groups, as discovery finds them, are the ones it
  declares: the runner refuses to start otherwise."""
  from experiments.runner import check_discovered_groups  # pylint: disable=import-outside-toplevel
  import snr_jax  # pylint: disable=import-outside-toplevel

  m = model_for(name, **kw)
  params = m.init(KEY, x)['params']
  groups = snr_jax.discover_groups(m, params, x)
  assert check_discovered_groups(m, groups) is groups


def test_runner_refuses_groups_that_differ_from_the_declaration():
  from experiments.runner import check_discovered_groups  # pylint: disable=import-outside-toplevel
  import snr_jax  # pylint: disable=import-outside-toplevel

  class Declares3(MLP):

    def neuron_group_paths(self):
      return [*super().neuron_group_paths(), (('Dense_2',), ('Dense_3',))]

  x = jnp.ones((2, 784))
  m = Declares3(hidden=(8, 8))
  groups = snr_jax.discover_groups(m, m.init(KEY, x)['params'], x)
  with pytest.raises(ValueError, match=r'not found: Dense_2 -> Dense_3\. Run snr_jax\.describe'):
    check_discovered_groups(m, groups)
  with pytest.raises(ValueError, match=r'not declared: Dense_1 -> Dense_2'):
    check_discovered_groups(MLP(hidden=(8,)), groups)
