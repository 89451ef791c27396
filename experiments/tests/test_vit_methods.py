"""Smoke run: the benchmark ViT (patch 4, pre-LN, ReLU FFN) on a class-pair stream of
generated images, with every method (SNR and SNR+L2 with each estimator).

Continual ImageNet-32 itself cannot be had on this machine; its loader is tested on
generated files elsewhere. This only shows that every method trains the ViT end to end
under jit and lax.scan, through a task boundary.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import snr_jax
from experiments import data as snr_data
from experiments.models import ViT

pytestmark = pytest.mark.slow  # trains the ViT with every method

IMAGES, CLASSES, PER_CLASS, BATCH = 8, 4, 6, 4

CASES = [(m, {}) for m in sorted(snr_jax.METHODS)] + [
    ('snr', dict(estimator='geometric', tau_init=8, tau_min=4, tau_max=64)),
    ('snr', dict(estimator='per_token', tau_init=4)),
    ('snr_l2', dict(estimator='per_token', tau_init=4)),
]


@pytest.fixture(scope='module')
def setup():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(CLASSES * 10, IMAGES, IMAGES, 3)), jnp.float32)
  labels = jnp.asarray(np.repeat(np.arange(CLASSES), 10), jnp.int32)
  model = ViT(num_outputs=2, patch_size=4, width=16, num_blocks=2, num_heads=2, mlp_width=32)
  params = model.init(jax.random.PRNGKey(0), images[:BATCH])['params']
  groups = snr_jax.discover_groups(model, params, images[:BATCH])
  return model, params, groups, images, labels


@pytest.mark.parametrize(
    'method, hp', CASES, ids=[f'{m}-{h.get("estimator", "")}' for m, h in CASES]
)
def test_vit_class_pair_stream_runs_with_every_method(setup, method, hp):
  model, params, groups, images, labels = setup
  assert [g.size for g in groups] == [32, 32]  # one FFN group per block
  init_fn = lambda k: model.init(k, images[:BATCH])['params']
  tx = snr_jax.make_method(method, optax.adam(1e-3), groups=groups, init_fn=init_fn, **hp)
  steps = 2 * PER_CLASS // BATCH

  def loss_fn(p, x, y):
    logits, acts = snr_jax.apply_with_preactivations(model, {'params': p}, x, groups=groups)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), acts

  def task(carry, t):
    idx, y = snr_data.class_pair_indices(labels, jax.random.PRNGKey(1), t, PER_CLASS, CLASSES)

    def step(c, i):
      p, s = c
      b = jax.lax.dynamic_slice_in_dim(jnp.arange(2 * PER_CLASS), i * BATCH, BATCH)
      (loss, acts), g = jax.value_and_grad(loss_fn, has_aux=True)(p, images[idx[b]], y[b])
      u, s = tx.update(g, s, p, activations=acts, end_of_task=i == steps - 1)
      return (optax.apply_updates(p, u), s), loss

    return jax.lax.scan(step, carry, jnp.arange(steps))

  run = jax.jit(lambda p: jax.lax.scan(task, (p, tx.init(p)), jnp.arange(3)))
  (p, s), losses = run(params)
  assert np.isfinite(np.asarray(losses)).all()
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(p))
  if hp.get('estimator') == 'per_token':
    # a batch is 4 images × 4 patches = 16 positions; no refresh within 3 tasks
    rule = s.resets.rule
    for est in rule.estimator.values():
      np.testing.assert_array_equal(est.total, 1 + 16 * 3 * steps)
