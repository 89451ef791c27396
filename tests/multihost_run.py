"""SNR under jax.distributed: one program, run by every process (multi-controller).

:func:`train` trains a small MLP with SNR for ``steps`` steps on a global batch of 64 over
8 CPU devices: in the test's own process (its 8 devices, conftest.py), or, as
``python tests/multihost_run.py NUM_PROCESSES PROCESS_ID PORT STEPS OUT``, in each of
NUM_PROCESSES processes with 8 / NUM_PROCESSES devices and gloo collectives on localhost.
Each process builds only its own part of every batch
(``make_array_from_process_local_data``); the step is ``jit`` over the global mesh (global
semantics, no argument) and, a second time, ``shard_map`` with ``data_axis``. It returns
the reset masks of every step and the final params, which process 0 of the script writes
to OUT (an .npz file).
"""

import sys

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import snr_jax
from parallel_setup import BATCH, setup


def train(steps: int) -> dict[str, np.ndarray]:
  """Per form (``'jit'``, ``'shard_map'``): ``{form}_masks`` (steps x units) and
  ``{form}_param_{path}``, from this process's view of the 8 global devices."""
  params, groups, loss_sum, xs, ys = setup(steps)
  xs, ys = np.asarray(xs), np.asarray(ys)

  mesh = Mesh(np.array(jax.devices()), ('d',))
  replicated, batch_sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P('d'))
  assert len(jax.devices()) == 8, jax.devices()
  share, process_id = BATCH // jax.process_count(), jax.process_index()
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
  return saved


if __name__ == '__main__':
  num_processes, process_id, port, steps = map(int, sys.argv[1:5])
  jax.config.update('jax_num_cpu_devices', 8 // num_processes)
  if num_processes > 1:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address=f'127.0.0.1:{port}',
        num_processes=num_processes,
        process_id=process_id,
    )
  saved = train(steps)
  if process_id == 0:
    np.savez(sys.argv[5], **saved)
  print('done', process_id)
