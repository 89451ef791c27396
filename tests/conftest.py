"""Small Flax models shared by the core tests."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest


class TinyMLP(nn.Module):
  hidden: tuple = (6, 5)
  outputs: int = 3

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for h in self.hidden:
      x = nn.relu(nn.Dense(h)(x))
    return nn.Dense(self.outputs)(x)


class TinyCNN(nn.Module):
  """conv -> relu -> pool -> conv -> relu -> flatten -> dense -> relu -> out."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), padding='VALID')(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(3, (3, 3), padding='VALID')(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(5)(x))
    return nn.Dense(2)(x)


class Block(nn.Module):
  width: int = 8
  ffn: int = 12

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=2)(y)
    y = nn.LayerNorm()(x)
    y = nn.Dense(self.width)(nn.relu(nn.Dense(self.ffn, name='fc1')(y)))
    return x + y


class TinyGPT(nn.Module):
  vocab: int = 11

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, 8)(tokens)
    x = Block()(x)
    return nn.Dense(self.vocab)(nn.LayerNorm()(x))


@pytest.fixture
def mlp():
  model = TinyMLP()
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 7))
  params = model.init(jax.random.PRNGKey(0), x)['params']
  return model, params, x


@pytest.fixture
def mlp_step(mlp):
  """The MLP with what an update takes: ``(model, params, x, groups, acts, grads)``."""
  import snr_jax  # pylint: disable=import-outside-toplevel

  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)
  _, acts = snr_jax.apply_with_preactivations(model, {'params': params}, x, groups=groups)
  return model, params, x, groups, acts, jax.tree.map(jnp.ones_like, params)


@pytest.fixture
def cnn():
  model = TinyCNN()
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 10, 10, 2))
  params = model.init(jax.random.PRNGKey(0), x)['params']
  return model, params, x


@pytest.fixture
def gpt():
  model = TinyGPT()
  x = jnp.arange(12).reshape(2, 6) % 11
  params = model.init(jax.random.PRNGKey(0), x)['params']
  return model, params, x
