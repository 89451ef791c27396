"""Independent seeds never share a reset stream, however they are batched (design §8), and
a run stays a pure function of its seed."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import snr_jax


class Net(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(2, name='out')(nn.relu(nn.Dense(4, name='h')(x)))


X = jnp.ones((3, 5))
SILENT = {'h': -jnp.ones((3, 4))}  # every unit silent: all are reset at the first step


def _fresh_kernel(tx, state, params):
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), state, params, activations=SILENT)
  return optax.apply_updates(params, updates)['h']['kernel']


def _members():
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  params = jax.vmap(lambda k: Net().init(k, X)['params'])(keys)
  groups = snr_jax.discover_groups(Net(), jax.tree.map(lambda a: a[0], params), X)
  return keys, params, groups


def _tx(groups, seed=0):
  return snr_jax.snr(optax.sgd(0.0), groups, tau_init=3, tau_min=3, tau_max=3, key=seed)


@pytest.mark.slow
def test_vmapped_init_over_members_params_gives_independent_streams():
  _, params, groups = _members()
  tx = _tx(groups)
  fresh = jax.vmap(lambda p: _fresh_kernel(tx, tx.init(p), p))(params)
  assert not np.allclose(fresh[0], fresh[1])
  # and a member alone draws what it draws inside the batch: a pure function of seed, params
  one = jax.tree.map(lambda a: a[1], params)
  np.testing.assert_array_equal(_fresh_kernel(tx, tx.init(one), one), fresh[1])


def test_optimizers_built_per_member_with_their_own_seed_are_independent():
  keys, params, groups = _members()
  same = jax.tree.map(lambda a: jnp.stack([a[0], a[0]]), params)  # even with equal params

  def member(k, p):
    tx = _tx(groups, seed=k)
    return _fresh_kernel(tx, tx.init(p), p)

  fresh = jax.vmap(member)(keys, same)
  assert not np.allclose(fresh[0], fresh[1])


@pytest.mark.slow
def test_shrink_perturb_members_initialised_together_draw_their_own_noise():
  _, params, _ = _members()
  init_fn = lambda k: Net().init(k, X)['params']
  for noise in ('fast', 'init'):
    tx = snr_jax.shrink_perturb(optax.sgd(0.0), init_fn, shrink=1.0, sigma=1.0, noise=noise)

    def noise_of(p, tx=tx):
      return tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[0]['h']['kernel']

    drawn = jax.vmap(noise_of)(params)
    assert not np.allclose(drawn[0], drawn[1]), noise
    one = jax.tree.map(lambda a: a[1], params)
    np.testing.assert_allclose(noise_of(one), drawn[1], rtol=1e-6, atol=1e-7)
