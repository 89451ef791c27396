"""SNR's cost in a data-parallel step: 8 virtual CPU devices, ``shard_map`` over the batch.

The 784-100-100-10 MLP with a global batch of 128 (16 per device), steps inside
``lax.scan`` inside ``shard_map``: plain ``optax.sgd`` against the same wrapped with SNR
(``data_axis``: one all-reduce of the firing vector per group per step). Medians of
several interleaved repetitions in one process; prints steps/s and the time ratio.

    python -m experiments.bench_data_parallel [--steps 2000] [--reps 5]

The 8 devices share this machine's cores, so the figure is the relative cost of SNR's
reductions and bookkeeping, not a speed-up. ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
set beforehand runs it on N devices instead (e.g. one per core).
"""

from __future__ import annotations

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import argparse  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import snr_jax  # noqa: E402
from experiments._bench import median_times, timed  # noqa: E402
from experiments.bench_overhead import MLP  # noqa: E402


def make_run(model, optimizer, forward, mesh, steps):
  """``steps`` data-parallel steps over a sharded stack of batches, one compiled call."""
  def local(params, xs, ys):
    def step(carry, xy):
      p, s = carry
      def loss_fn(q):
        out, acts = forward(q, xy[0])
        # each shard's part of the global mean; shard_map sums replicated params' grads
        return optax.softmax_cross_entropy_with_integer_labels(
            out, xy[1]).sum() / (xy[0].shape[0] * mesh.size), acts
      (loss, acts), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
      extra = {} if acts is None else {'activations': acts}
      u, s = optimizer.update(g, s, p, **extra)
      return (optax.apply_updates(p, u), s), loss
    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), (xs, ys))
    losses = jax.lax.psum(losses, 'd')   # the global batch's loss
    return params, losses

  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(None, 'd'), P(None, 'd')),
                               out_specs=(P(), P(None))))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--batch', type=int, default=128, help='global batch (a multiple of '
                      'the device count)')
  args = parser.parse_args(argv)
  mesh = Mesh(np.array(jax.devices()), ('d',))
  model, batch = MLP(), args.batch
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, 784))
  params = model.init(jax.random.PRNGKey(0), x)['params']
  groups = snr_jax.discover_groups(model, params, x)
  capture = snr_jax.with_preactivations(model, groups)
  plain = lambda p, xb: (model.apply({'params': p}, xb), None)
  with_acts = lambda p, xb: capture({'params': p}, xb)
  sgd = optax.sgd(1e-2)
  runs = {'sgd': make_run(model, sgd, plain, mesh, args.steps),
          'snr histogram': make_run(model, snr_jax.snr(sgd, groups, data_axis='d'), with_acts,
                                    mesh, args.steps),
          'snr geometric': make_run(model, snr_jax.snr(sgd, groups, estimator='geometric',
                                                       data_axis='d'), with_acts, mesh,
                                    args.steps)}
  kx, ky = jax.random.split(jax.random.PRNGKey(2))
  sharded = NamedSharding(mesh, P(None, 'd'))
  xs = jax.device_put(jax.random.uniform(kx, (args.steps, batch, 784)), sharded)
  ys = jax.device_put(jax.random.randint(ky, (args.steps, batch), 0, 10), sharded)
  calls = {name: (lambda run=run: run(params, xs, ys)) for name, run in runs.items()}
  for call in calls.values():
    timed(call)
  medians = median_times(calls, args.reps)
  print(f'{args.steps} data-parallel steps, global batch {batch} ({batch // mesh.size} per '
        f'device) over {mesh.size} {jax.devices()[0].platform} devices, median of {args.reps}')
  for name, med in medians.items():
    print(f'  {name:18s} {args.steps / med:8.0f} steps/s   ratio to sgd '
          f'{med / medians["sgd"]:5.2f}')


if __name__ == '__main__':
  main()
