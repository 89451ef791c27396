"""SNR's cost in a data-parallel step: 8 virtual CPU devices, ``shard_map`` over the batch.

The 784-100-100-10 MLP (``--hidden-layers`` sets its depth) with a global batch of 128
(16 per device), steps inside ``lax.scan`` inside ``shard_map``: plain ``optax.sgd``
against the same wrapped with SNR (``data_axis``: every group's firing in one buffer of
the gradients' all-reduce), and, as a control, plain SGD plus that buffer alone. Several
interleaved rounds in one process; prints median steps/s and, per function, its time
over plain SGD's in the same round (median and range over the rounds).

    python -m experiments.bench_data_parallel [--steps 2000] [--reps 5] [--batch 128] \
        [--hidden-layers 2]

The 8 devices share this machine's cores, so the figure is the relative cost of SNR's
reductions and bookkeeping, not a speed-up. ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
set beforehand runs it on N devices instead (e.g. one per core).
"""

from __future__ import annotations

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import snr_jax  # noqa: E402
from snr_jax._src.util import psum_packed  # noqa: E402
import statistics  # noqa: E402

from experiments._bench import interleaved_times, round_ratios, timed  # noqa: E402
from experiments.bench_overhead import MLP, TASK_EXAMPLES  # noqa: E402


def make_run(model, optimizer, forward, mesh, steps):
  """``steps`` data-parallel steps over a sharded stack of batches, one compiled call."""

  def local(params, xs, ys):
    def step(carry, xy):
      p, s = carry

      def loss_fn(q):
        out, acts = forward(q, xy[0])
        # each shard's part of the global mean; shard_map sums replicated params' grads
        return (
            optax.softmax_cross_entropy_with_integer_labels(out, xy[1]).sum()
            / (xy[0].shape[0] * mesh.size),
            acts,
        )

      (loss, acts), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
      extra = {} if acts is None else {'activations': acts, 'end_of_task': xy[2]}
      u, s = optimizer.update(g, s, p, **extra)
      return (optax.apply_updates(p, u), s), loss

    # a task ends every TASK_EXAMPLES of each device's examples: as often, in steps, as in
    # bench_overhead at the same batch per device
    ends = (jnp.arange(xs.shape[0]) + 1) % (TASK_EXAMPLES // xs.shape[1]) == 0
    (params, state), losses = jax.lax.scan(step, (params, optimizer.init(params)), (xs, ys, ends))
    losses = jax.lax.psum(losses, 'd')  # the global batch's loss
    # the final state is an output, so that no statistic of it is dead code (untimed)
    return params, losses, state

  return jax.jit(
      jax.shard_map(
          local,
          mesh=mesh,
          in_specs=(P(), P(None, 'd'), P(None, 'd')),
          out_specs=(P(), P(None), P()),
      )
  )


def with_firing_all_reduce(inner, axis_name):
  """``inner`` plus what SNR's data-parallel step adds to the collectives and nothing
  else: every group's firing flags summed over ``axis_name`` the way SNR sums them
  (:func:`snr_jax._src.util.psum_packed`) and kept in the state (so that it is not dead
  code)."""

  def init(params):
    return inner.init(params), jnp.zeros((), jnp.float32)

  def update(updates, state, params=None, *, activations, end_of_task=False):
    del end_of_task
    inner_state, total = state
    fired = {k: (h > 0).any(axis=0) for k, h in activations.items()}
    summed = psum_packed(fired, {k: jnp.float32 for k in fired}, axis_name)
    updates, inner_state = inner.update(updates, inner_state, params)
    return updates, (inner_state, total + sum(v.sum() for v in summed.values()))

  return optax.GradientTransformationExtraArgs(init, update)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument(
      '--batch', type=int, default=128, help='global batch (a multiple of ' 'the device count)'
  )
  parser.add_argument(
      '--hidden-layers',
      type=int,
      default=2,
      help='hidden layers of 100 units: one neuron group each',
  )
  args = parser.parse_args(argv)
  mesh = Mesh(np.array(jax.devices()), ('d',))
  model, batch = MLP(hidden=(100,) * args.hidden_layers), args.batch
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, 784))
  params = model.init(jax.random.PRNGKey(0), x)['params']
  groups = snr_jax.discover_groups(model, params, x)
  capture = snr_jax.with_preactivations(model, groups)
  plain = lambda p, xb: (model.apply({'params': p}, xb), None)
  with_acts = lambda p, xb: capture({'params': p}, xb)
  sgd = optax.sgd(1e-2)
  runs = {
      'sgd': make_run(model, sgd, plain, mesh, args.steps),
      'sgd + firing psum': make_run(
          model, with_firing_all_reduce(sgd, 'd'), with_acts, mesh, args.steps
      ),
      'snr histogram': make_run(
          model, snr_jax.snr(sgd, groups, data_axis='d'), with_acts, mesh, args.steps
      ),
      'snr geometric': make_run(
          model,
          snr_jax.snr(sgd, groups, estimator='geometric', data_axis='d'),
          with_acts,
          mesh,
          args.steps,
      ),
  }
  kx, ky = jax.random.split(jax.random.PRNGKey(2))
  sharded = NamedSharding(mesh, P(None, 'd'))
  xs = jax.device_put(jax.random.uniform(kx, (args.steps, batch, 784)), sharded)
  ys = jax.device_put(jax.random.randint(ky, (args.steps, batch), 0, 10), sharded)
  calls = {name: (lambda run=run: run(params, xs, ys)) for name, run in runs.items()}
  for call in calls.values():
    timed(call)
  times = interleaved_times(calls, args.reps)
  ratios = round_ratios(times, 'sgd')
  print(
      f'{args.steps} data-parallel steps, {len(groups)} groups, global batch {batch} '
      f'({batch // mesh.size} per device) over {mesh.size} {jax.devices()[0].platform} '
      f'devices, {args.reps} interleaved rounds'
  )
  for name, ts in times.items():
    r = ratios[name]
    print(
        f'  {name:18s} {args.steps / statistics.median(ts):8.0f} steps/s   time / sgd in '
        f'a round: median {statistics.median(r):5.2f}, range {min(r):.2f}-{max(r):.2f}'
    )


if __name__ == '__main__':
  main()
