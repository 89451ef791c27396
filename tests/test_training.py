"""Training-loop glue: a Flax TrainState step passing activations, one metrics dict for
every method, and gradient accumulation with SNR seeing every micro-batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax.training import train_state

import snr_jax
from snr_jax._src.training import apply_gradients, reset_metrics


class MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(2, name='out')(nn.relu(nn.Dense(4, name='hidden')(x)))


def _setup():
  model = MLP()
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
  params = model.init(jax.random.PRNGKey(0), x)['params']
  return model, x, params, snr_jax.discover_groups(model, params, x)


@pytest.mark.slow
def test_train_state_step_passes_activations():
  model, x, params, groups = _setup()
  tx = snr_jax.snr(optax.sgd(0.1), groups)
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  forward = snr_jax.with_preactivations(model, groups)

  def loss_fn(p):
    out, acts = forward({'params': p}, x)
    return jnp.sum(out**2), acts

  (_, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  with pytest.raises(Exception, match='activations'):
    state.apply_gradients(grads=grads)  # Flax's own step cannot pass them
  new = jax.jit(apply_gradients)(state, grads, activations=acts)
  assert int(new.step) == 1
  fired = np.asarray(snr_jax.fired(acts['hidden']))
  np.testing.assert_array_equal(
      new.opt_state.resets.rule.ages['hidden'], np.where(fired, 0, x.shape[0])
  )
  assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new.params, params))


@pytest.mark.parametrize('name', sorted(snr_jax.METHODS))
def test_reset_metrics_on_every_method(name):
  model, x, params, groups = _setup()
  tx = snr_jax.make_method(
      name, optax.sgd(0.1), groups=groups, init_fn=lambda k: model.init(k, x)['params']
  )
  state = tx.init(params)
  acts = {'hidden': jnp.ones((3, 4))}
  _, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params, activations=acts)
  metrics = jax.jit(reset_metrics)(state)
  if name in ('snr', 'snr_l2'):
    assert sorted(metrics) == ['dead_fraction/hidden', 'mean_threshold/hidden', 'resets/hidden']
  elif name in ('redo', 'cbp'):
    assert sorted(metrics) == ['resets/hidden']
  else:
    assert metrics == {}
  assert all(np.ndim(v) == 0 for v in metrics.values())
  nested = jax.jit(lambda st: reset_metrics(st, nested=True))(state)
  assert {f'{k}/{g}': v for k, per in nested.items() for g, v in per.items()} == metrics
  if name in ('snr', 'snr_l2', 'redo', 'cbp'):
    with pytest.warns(DeprecationWarning, match='snr_info is deprecated.*reset_metrics'):
      snr_info = snr_jax.snr_info
    assert jax.tree.map(np.asarray, snr_info(state)) == jax.tree.map(np.asarray, nested)


def test_gradient_accumulation_inside_snr_counts_every_micro_batch():
  model, x, params, groups = _setup()
  inner = optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2).gradient_transformation()
  tx = snr_jax.snr(inner, groups, tau_init=6, tau_min=6, tau_max=6)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  silent = {'hidden': -jnp.ones((3, 4))}
  _, state = tx.update(grads, state, params, activations=silent)  # micro-batch 1: age 3
  np.testing.assert_array_equal(state.resets.rule.ages['hidden'], 3)
  acc = state.inner_state.acc_grads['hidden']['kernel']
  assert np.all(np.asarray(acc) != 0)
  _, state = tx.update(grads, state, params, activations=silent)  # micro-batch 2: age 6: reset
  assert bool(state.resets.last_resets['hidden'].all())
  np.testing.assert_array_equal(state.resets.rule.ages['hidden'], 0)
