"""bfloat16 params and activations: every estimator and method trains, resets and keeps its
bookkeeping in its own dtypes (ages, thresholds and counts in int32; the geometric
estimator's sums and CBP's statistics in float32), whatever the params' dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import snr_jax
from conftest import TinyMLP
from experiments.models import GPT

BF16 = jnp.bfloat16


def _kill(params, groups, units=3):
  """The first ``units`` units of every group silenced (bias -10): they must reset."""
  params = jax.tree.map(lambda p: p, params)
  for g in groups:
    for s in g.incoming:
      if s.path[-1] == 'bias':
        node = params
        for k in s.path[:-1]:
          node = node[k]
        node['bias'] = node['bias'].at[:units].set(-10.0)
  return params


def _setup(name):
  if name == 'mlp':
    model = TinyMLP(hidden=(24, 20))
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 7)).astype(BF16)
    y = jnp.arange(8) % 3
  else:
    model = GPT(vocab_size=23, context_length=8, width=16, num_heads=2, ffn_width=24)
    x = jax.random.randint(jax.random.PRNGKey(1), (4, 8), 0, 23)
    y = jnp.roll(x, -1, axis=1)
  params = model.init(jax.random.PRNGKey(0), x)['params']
  groups = snr_jax.discover_groups(model, params, x)
  params = jax.tree.map(lambda p: p.astype(BF16), _kill(params, groups))
  return model, params, x, y, groups


METHODS = {
    'snr-histogram': lambda g, **kw: snr_jax.snr(
        optax.adam(1e-3),
        g,
        estimator='histogram',
        tau_min=4,
        tau_init=8,
        tau_max=256,
        schedule=snr_jax.every_n_steps(10),
        **kw,
    ),
    'snr-geometric': lambda g, **kw: snr_jax.snr(
        optax.adam(1e-3),
        g,
        estimator='geometric',
        tau_min=4,
        tau_init=8,
        tau_max=256,
        schedule=snr_jax.every_n_steps(10),
        **kw,
    ),
    'snr-per_token': lambda g, **kw: snr_jax.snr(
        optax.adam(1e-3), g, estimator='per_token', schedule=snr_jax.every_n_steps(10), **kw
    ),
    'redo': lambda g, **kw: snr_jax.redo(optax.adam(1e-3), g, period=5, **kw),
    'cbp': lambda g, **kw: snr_jax.continual_backprop(
        optax.adam(1e-3), g, maturity=2, replacement_rate=0.2, **kw
    ),
}

CASES = [(m, k) for m in ('mlp', 'gpt') for k in METHODS if m == 'mlp' or k.startswith('snr')]


@pytest.mark.slow
@pytest.mark.parametrize('model_name, method', CASES, ids=[f'{m}-{k}' for m, k in CASES])
def test_bf16_params_and_activations_train_and_reset(model_name, method):
  model, params, x, y, groups = _setup(model_name)
  forward = snr_jax.with_preactivations(model, groups)
  _, acts = forward({'params': params}, x)
  assert all(a.dtype == BF16 for a in acts.values()), {k: a.dtype for k, a in acts.items()}
  opt = METHODS[method](groups, max_resets_per_step=2)

  def step(carry, _):
    params, state = carry

    def loss_fn(p):
      logits, acts = forward({'params': p}, x)
      logits = logits.astype(jnp.float32)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), acts

    (loss, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, state = opt.update(grads, state, params, activations=acts)
    resets = sum(
        jnp.sum(m) for m in snr_jax._src.transform.find_reset_state(state).last_resets.values()
    )
    return (optax.apply_updates(params, updates), state), (loss, resets)

  state = opt.init(params)
  (new, state), (losses, resets) = jax.jit(
      lambda p, s: jax.lax.scan(step, (p, s), None, length=30)
  )(params, state)
  assert int(resets.sum()) > 0, 'no reset: the silenced units should have been reset'
  assert np.all(np.isfinite(np.asarray(losses)))
  assert all(p.dtype == BF16 for p in jax.tree.leaves(new))
  assert all(np.all(np.isfinite(np.asarray(p, np.float32))) for p in jax.tree.leaves(new))
  # the bookkeeping keeps the dtypes a float32 model's state has
  f32 = jax.tree.map(lambda p: p.astype(jnp.float32), params)
  expect = jax.eval_shape(opt.init, f32).resets.rule
  got = state.resets.rule
  assert jax.tree.map(lambda a: a.dtype, got) == jax.tree.map(lambda a: a.dtype, expect)
  if method.startswith('snr'):
    assert all(a.dtype == jnp.int32 for a in jax.tree.leaves((got.ages, got.thresholds)))
