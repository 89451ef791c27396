"""SNR under jax.distributed: one program, run by every process (multi-controller).

``python tests/multihost_run.py NUM_PROCESSES PROCESS_ID PORT STEPS OUT`` trains a small
MLP with SNR for STEPS steps on a global batch of 64 over 8 CPU devices (8 in one process,
or 4 in each of 2 processes with gloo collectives on localhost). Each process builds only
its own part of every batch (``make_array_from_process_local_data``); the step is ``jit``
over the global mesh (global semantics, no argument) and, a second time, ``shard_map``
with ``data_axis``. Process 0 writes the reset masks of every step and the final params to
OUT (an .npz file).
"""

import os
import sys

num_processes, process_id, port, steps, out = (
    int(sys.argv[1]),
    int(sys.argv[2]),
    int(sys.argv[3]),
    int(sys.argv[4]),
    sys.argv[5],
)
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={8 // num_processes}'

import jax  # noqa: E402

if num_processes > 1:
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=f'127.0.0.1:{port}', num_processes=num_processes, process_id=process_id
  )

import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import snr_jax  # noqa: E402
from parallel_setup import BATCH, setup  # noqa: E402

params, groups, loss_sum, xs, ys = setup(steps)
xs, ys = np.asarray(xs), np.asarray(ys)

mesh = Mesh(np.array(jax.devices()), ('d',))
replicated, batch_sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P('d'))
assert len(jax.devices()) == 8, jax.devices()
share = BATCH // jax.process_count()
rows = slice(process_id * share, (process_id + 1) * share)  # this process's part of a batch


def global_batch(t):
  return (
      jax.make_array_from_process_local_data(batch_sharded, xs[t, rows]),
      jax.make_array_from_process_local_data(batch_sharded, ys[t, rows]),
  )


def replicate(tree):
  return jax.tree.map(
      lambda a: jax.make_array_from_callback(
          np.shape(a), replicated, lambda idx, a=np.asarray(a): a[idx]
      ),
      tree,
  )


def make_step(tx):
  def step(p, s, x, y):
    (_, acts), g = jax.value_and_grad(loss_sum, has_aux=True)(p, x, y)
    u, s = tx.update(g, s, p, activations=acts)
    return optax.apply_updates(p, u), s, s.resets.last_resets

  return step


hp = dict(eta=0.08, tau_min=64, tau_max=640, schedule=snr_jax.every_n_steps(20), key=3)
tx = snr_jax.snr(optax.sgd(0.05), groups, **hp)
tx_dp = snr_jax.snr(optax.sgd(0.05), groups, data_axis='d', **hp)
forms = {
    'jit': (tx, jax.jit(make_step(tx), out_shardings=replicated)),
    'shard_map': (
        tx_dp,
        jax.jit(
            jax.shard_map(
                make_step(tx_dp),
                mesh=mesh,
                in_specs=(P(), P(), P('d'), P('d')),
                out_specs=(P(), P(), P()),
            )
        ),
    ),
}
saved = {}
for name, (opt, step) in forms.items():
  p, s = replicate(params), replicate(opt.init(params))
  masks = []
  for t in range(steps):
    p, s, m = step(p, s, *global_batch(t))
    masks.append(np.concatenate([np.asarray(m[g.name]) for g in groups]))
  saved[f'{name}_masks'] = np.stack(masks)
  for path, leaf in jax.tree_util.tree_flatten_with_path(p)[0]:
    saved[f'{name}_param_{jax.tree_util.keystr(path)}'] = np.asarray(leaf)
if process_id == 0:
  np.savez(out, **saved)
print('done', process_id)
