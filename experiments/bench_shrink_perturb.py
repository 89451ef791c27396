"""Shrink & Perturb's cost per step: the 784-100-100-10 MLP, batch 16, steps in ``lax.scan``.

Times plain ``optax.sgd`` against it wrapped with Shrink & Perturb, with the default cheap
noise (``noise='fast'``) and with a full initializer draw per step (``noise='init'``), all
in one process, and prints steps/s and the time ratio to plain SGD (median of several
repetitions, interleaved, after a compile).

    python -m experiments.bench_shrink_perturb [--steps 10000] [--reps 5] [--cores 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import snr_jax
from snr_jax.shrink_perturb import NOISES
from experiments._bench import pin_cores
from experiments.bench_overhead import MLP, make_run


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=10_000)
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--cores', type=int, default=1,
                      help='pin to this many cores (0: no pinning)')
  args = parser.parse_args(argv)
  cores = pin_cores(args.cores)

  model = MLP()
  x = jnp.ones((args.batch, 784))
  params = model.init(jax.random.PRNGKey(0), x)['params']
  init_fn = lambda k: model.init(k, x)['params']
  sgd = optax.sgd(1e-2)
  configs = {'sgd': sgd}
  for noise in NOISES:
    configs[f'sp-{noise}'] = snr_jax.shrink_perturb(sgd, init_fn, noise=noise)
  runs = {name: make_run(opt, None, model, args.steps, args.batch, False)
          for name, opt in configs.items()}
  kx, ky = jax.random.split(jax.random.PRNGKey(0))
  data = (jax.random.uniform(kx, (10_000, 784)), jax.random.randint(ky, (10_000,), 0, 10))
  for run in runs.values():  # compile
    jax.block_until_ready(run(params, *data))
  times = {name: [] for name in runs}
  for _ in range(args.reps):   # interleaved, so drifts in machine load hit all alike
    for name, run in runs.items():
      t = time.perf_counter()
      jax.block_until_ready(run(params, *data))
      times[name].append(time.perf_counter() - t)
  base = statistics.median(times['sgd'])
  print(f'{args.steps} steps, batch {args.batch}, median of {args.reps}, '
        f'{jax.devices()[0].platform}, {cores} core(s)')
  for name, ts in times.items():
    med = statistics.median(ts)
    print(f'{name:10s} {args.steps / med:10.0f} steps/s   ratio to sgd {med / base:5.2f}')


if __name__ == '__main__':
  main()
