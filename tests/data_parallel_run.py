"""Every resetting method, data parallel on 8 virtual CPU devices, against one device.

Run in a fresh process (the device count is fixed when JAX starts):
``python tests/data_parallel_run.py STEPS``. For SNR (histogram and per-token), ReDo and
CBP it trains a small MLP for STEPS steps on a global batch of 64 four ways: on one
device; with ``jit`` and the batch sharded over 8 devices (no argument); inside
``shard_map`` (default ``check_vma``) and inside ``pmap``, both with ``data_axis``. It
prints, per method, the resets made, the reset masks that differ from the one-device run
at any step, the largest parameter difference at the end, and the largest spread between
pmap replicas at any step.
"""

import os

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
import json
import sys
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import snr_jax
from parallel_setup import setup

STEPS, N = int(sys.argv[1]), 8


params, groups, loss_sum, xs, ys = setup(STEPS)
METHODS = {
    'snr': lambda ax: snr_jax.snr(
        optax.sgd(0.05),
        groups,
        eta=0.08,
        tau_min=64,
        tau_max=640,
        schedule=snr_jax.every_n_steps(20),
        key=3,
        data_axis=ax,
    ),
    'snr_per_token': lambda ax: snr_jax.snr(
        optax.sgd(0.05),
        groups,
        estimator='per_token',
        eta=0.3,
        tau_init=200,
        schedule=snr_jax.every_n_steps(20),
        key=3,
        data_axis=ax,
    ),
    'redo': lambda ax: snr_jax.redo(
        optax.sgd(0.05), groups, threshold=0.0, period=10, key=3, data_axis=ax
    ),
    'cbp': lambda ax: snr_jax.continual_backprop(
        optax.sgd(0.05), groups, replacement_rate=0.02, maturity=5, key=3, data_axis=ax
    ),
}


def check(make_tx):
  tx = make_tx(None)
  tx_dp = make_tx('d')
  out = {}

  def step_global(carry, xy):
    p, s = carry
    (_, acts), g = jax.value_and_grad(loss_sum, has_aux=True)(p, *xy)
    u, s = tx.update(g, s, p, activations=acts)
    return (optax.apply_updates(p, u), s), s.resets.last_resets

  def make_step(sum_grads):
    def step_shard(p, s, x, y):
      (_, acts), g = jax.value_and_grad(loss_sum, has_aux=True)(p, x, y)
      if sum_grads:  # pmap; under shard_map (check_vma) the gradients of replicated params
        g = jax.lax.psum(g, 'd')  # come out summed over the axis already (design §9)
      u, s = tx_dp.update(g, s, p, activations=acts)
      return optax.apply_updates(p, u), s, s.resets.last_resets

    return step_shard

  def run_global(xs, ys):
    return jax.lax.scan(step_global, (params, tx.init(params)), (xs, ys))

  ref = jax.jit(run_global)(xs, ys)
  out = {}
  # jit with a sharded batch: no argument needed
  mesh = Mesh(np.array(jax.devices()), ('d',))
  sh = NamedSharding(mesh, P(None, 'd'))
  jit_sh = jax.jit(run_global)(jax.device_put(xs, sh), jax.device_put(ys, sh))
  # shard_map under the default check_vma
  sm = jax.jit(
      jax.shard_map(
          make_step(False),
          mesh=mesh,
          in_specs=(P(), P(), P('d'), P('d')),
          out_specs=(P(), P(), P()),
      )
  )
  # pmap over 8 replicas
  pm = jax.pmap(make_step(True), axis_name='d')
  rep = lambda t: jax.tree.map(lambda a: jnp.stack([a] * N), t)
  p_sm, s_sm = params, tx_dp.init(params)
  p_pm, s_pm = rep(params), rep(tx_dp.init(params))
  masks = {'shard_map': [], 'pmap': []}
  for t in range(STEPS):
    p_sm, s_sm, m = sm(p_sm, s_sm, xs[t], ys[t])
    masks['shard_map'].append(m)
    p_pm, s_pm, m = pm(p_pm, s_pm, xs[t].reshape(N, -1, 8), ys[t].reshape(N, -1))
    masks['pmap'].append(jax.tree.map(lambda a: a[0], m))
    spread = max(float(jnp.max(jnp.abs(a - a[0]))) for a in jax.tree.leaves(p_pm))
    out['pmap_spread'] = max(out.get('pmap_spread', 0.0), spread)

  ref_masks = ref[1]
  out['resets'] = int(sum(np.asarray(v).sum() for v in ref_masks.values()))
  for name, (p, ms) in {
      'jit_sharded': (jit_sh[0][0], None),
      'shard_map': (p_sm, masks['shard_map']),
      'pmap': (jax.tree.map(lambda a: a[0], p_pm), masks['pmap']),
  }.items():
    out[f'{name}_param_diff'] = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(ref[0][0]))
    )
    if ms is None:
      ms_stacked = jit_sh[1]
    else:
      ms_stacked = {k: np.stack([np.asarray(m[k]) for m in ms]) for k in ref_masks}
    out[f'{name}_mask_mismatches'] = int(
        sum((np.asarray(ms_stacked[k]) != np.asarray(ref_masks[k])).sum() for k in ref_masks)
    )
  return out


print(json.dumps({name: check(make) for name, make in METHODS.items()}))
