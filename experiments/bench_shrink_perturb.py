"""Shrink & Perturb's cost per step: the 784-100-100-10 MLP, batch 16, steps in ``lax.scan``.

Times plain ``optax.sgd`` against it wrapped with Shrink & Perturb, with the default cheap
noise (``noise='fast'``) and with a full initializer draw per step (``noise='init'``), all
in one process, and prints steps/s and the time ratio to plain SGD (median of several
repetitions, interleaved, after a compile).

    python -m experiments.bench_shrink_perturb [--steps 10000] [--reps 5] [--cores 1]
"""

from __future__ import annotations


import optax

import snr_jax
from snr_jax._src.shrink_perturb import NOISES
from experiments.bench_overhead import compare, make_run, mlp_setup, task_data


def main(argv=None):
  args, cores, model, x, params = mlp_setup(__doc__.splitlines()[0], argv)
  init_fn = lambda k: model.init(k, x)['params']
  sgd = optax.sgd(1e-2)
  configs = {'sgd': sgd}
  for noise in NOISES:
    configs[f'sp-{noise}'] = snr_jax.shrink_perturb(sgd, init_fn, noise=noise)
  plain = lambda p, xb: (model.apply({'params': p}, xb), None)
  runs = {name: make_run(opt, plain, args.steps, args.batch) for name, opt in configs.items()}
  compare(runs, params, task_data(), args.steps, args.batch, args.reps, cores, 'sgd')


if __name__ == '__main__':
  main()
