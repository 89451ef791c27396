"""The training problem shared by the data-parallel tests and the multi-host script: a
small MLP whose first layer starts with half its units silent (so resets happen early),
its discovered groups, a forward pass that captures pre-activations, and a fixed stream of
global batches of 64."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import snr_jax

BATCH = 64


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(32, name='h0')(x))
    x = nn.relu(nn.Dense(32, name='h1')(x))
    return nn.Dense(4, name='out')(x)


def setup(steps: int):
  """``(params, groups, loss_sum, xs, ys)``; ``loss_sum(p, x, y)`` is the shard's part of
  the global mean loss (its sum over the shard / the global batch) and the activations."""
  model = MLP()
  x0 = jnp.ones((BATCH, 8))
  params = model.init(jax.random.PRNGKey(0), x0)['params']
  params['h0']['bias'] = params['h0']['bias'].at[:16].set(-3.0)
  groups = snr_jax.discover_groups(model, params, x0)
  capture = snr_jax.with_preactivations(model, groups)

  def loss_sum(p, x, y):
    logits, acts = capture({'params': p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum() / BATCH, acts

  kx, ky = jax.random.split(jax.random.PRNGKey(1))
  xs = jax.random.normal(kx, (steps, BATCH, 8))
  ys = jax.random.randint(ky, (steps, BATCH), 0, 4)
  return params, groups, loss_sum, xs, ys
