"""flax is optional: with every flax import refused, snr_jax imports and trains a
plain-function MLP with SNR (discovery, pre-activation capture, a reset step)."""

import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import importlib.abc, sys

    class NoFlax(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name == 'flax' or name.startswith('flax.'):
          raise ImportError(f'{name} is blocked (flax is not installed here)')
        return None

    sys.meta_path.insert(0, NoFlax())

    import jax, jax.numpy as jnp, optax
    import snr_jax

    def mlp(params, x):
      h = jax.nn.relu(x @ params['l1']['kernel'] + params['l1']['bias'])
      return h @ params['l2']['kernel'] + params['l2']['bias']

    k1, k2, kx = jax.random.split(jax.random.key(0), 3)
    params = {'l1': {'kernel': jax.random.normal(k1, (5, 8)), 'bias': jnp.zeros(8)},
              'l2': {'kernel': jax.random.normal(k2, (8, 3)), 'bias': jnp.zeros(3)}}
    x = jax.random.normal(kx, (4, 5))

    groups = snr_jax.discover_groups(mlp, params, x)
    assert [g.size for g in groups] == [8], groups
    declared = snr_jax.dense_group('h', 8, layer='l1', consumer='l2')
    snr_jax.validate_groups([declared], params)

    forward = snr_jax.with_preactivations(mlp, groups)
    tx = snr_jax.snr(optax.sgd(0.1), groups, tau_init=4, tau_min=4, tau_max=4)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
      def loss(p):
        out, acts = forward(p, x)
        return jnp.mean(out ** 2), acts
      (_, acts), grads = jax.value_and_grad(loss, has_aux=True)(params)
      silent = jax.tree.map(lambda a: -jnp.abs(a) - 1, acts)   # every unit silent: resets
      updates, state = tx.update(grads, state, params, activations=silent)
      return optax.apply_updates(params, updates), state

    for _ in range(4):
      params, state = step(params, state)
    metrics = snr_jax.reset_metrics(state)
    assert int(sum(v for k, v in metrics.items() if k.startswith('resets/'))) == 8, metrics
    assert not any(m == 'flax' or m.startswith('flax.') for m in sys.modules)
    print('ok without flax')
""")


@pytest.mark.slow
def test_snr_trains_a_plain_function_with_flax_imports_blocked(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [root, env.get('PYTHONPATH')]))
  out = subprocess.run(
      [sys.executable, '-c', _SCRIPT],
      env=env,
      cwd=tmp_path,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert out.returncode == 0, out.stdout + out.stderr
  assert 'ok without flax' in out.stdout
