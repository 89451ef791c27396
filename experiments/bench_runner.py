"""Speed of the experiment runner on the paper's protocols.

* Permuted MNIST protocol (MLP, batch 16, 625 steps per task): steps/s inside the runner
  for SNR and for no intervention, 1 seed and 8 seeds (vmapped);
* the wall time of the full 500-task Permuted protocol for one seed with SNR, compile
  included (the paper's released code runs it at about 290 steps/s here: ~18 minutes);
* the CNN inside the runner on the Random-label CIFAR protocol (batch 16), one seed.

Permuted runs use Fashion-MNIST when it is installed (Debian's dataset-fashion-mnist;
MNIST itself is not to be had here, and it has the same shape), else generated data of
MNIST's shape. CIFAR is generated data of CIFAR-10's shape. Speed does not depend on the
pixel values.

    python -m experiments.bench_runner [--tasks 8] [--reps 3] [--cores 1] [--skip-full]
"""

from __future__ import annotations

import argparse

import numpy as np

from experiments._bench import median_time, pin_cores, timed


def _generated(name, n, shape, classes):
  from experiments.data import Dataset  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  return Dataset(name=name, source='generated (benchmark)',
                 images=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                 labels=rng.integers(0, classes, n).astype(np.int32), num_classes=classes)


def _mnist_like():
  from experiments import data  # pylint: disable=import-outside-toplevel
  try:
    return data.load_fashion_mnist(), 'fashion_mnist'
  except data.DatasetNotFoundError:
    return _generated('mnist', 60_000, (28, 28, 1), 10), None


def steps_per_second(config, dataset, seeds, tasks, reps, mode='auto'):
  import jax  # pylint: disable=import-outside-toplevel
  from experiments import runner  # pylint: disable=import-outside-toplevel
  mode = runner.default_mode(config) if mode == 'auto' else mode
  exp = runner.make_run(config, dataset, axis_name='members' if mode == 'vmap' else None)
  init, run = runner.compile_batched(exp, mode, tasks)
  keys = runner.seed_keys(seeds)
  carry = init(keys, np.zeros(len(seeds), np.float32))
  timed(lambda: run(carry, 0, tasks))  # compile
  t = median_time(lambda: run(carry, 0, tasks), reps)
  return tasks * config.steps_per_task / t


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--tasks', type=int, default=8, help='tasks per timed call')
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--cores', type=int, default=1, help='pin to this many cores (0: none)')
  parser.add_argument('--skip-full', action='store_true', help='skip the 500-task run')
  args = parser.parse_args(argv)
  cores = pin_cores(args.cores)

  import jax  # pylint: disable=import-outside-toplevel
  from experiments.benchmarks import ExperimentConfig  # pylint: disable=import-outside-toplevel
  from experiments.runner import run_experiment  # pylint: disable=import-outside-toplevel

  mnist, name = _mnist_like()
  print(f'{jax.default_backend()}, {cores} core(s); permuted data: {mnist.name} '
        f'({mnist.source}); median of {args.reps}')
  for method in ('none', 'snr'):
    cfg = ExperimentConfig('permuted_mnist', method=method, dataset=name)
    for seeds in ([0], list(range(8))):
      sps = steps_per_second(cfg, mnist, seeds, args.tasks, args.reps)
      print(f'permuted MLP  {method:5s} {len(seeds)} seed(s): {sps:8.0f} steps/s '
            f'({sps * len(seeds):8.0f} seed-steps/s)')

  if not args.skip_full:
    cfg = ExperimentConfig('permuted_mnist', method='snr', dataset=name)
    wall, out = timed(lambda: run_experiment(cfg, mnist, seeds=[0]))
    steps = cfg.resolved('num_tasks') * cfg.steps_per_task
    print(f'full Permuted protocol, SNR, 1 seed: {cfg.resolved("num_tasks")} tasks, '
          f'{steps} steps in {wall:.1f} s (compile included), last-10% accuracy '
          f'{out["metrics"]["accuracy"][0, -50:].mean():.3f}')

  cifar = _generated('cifar10', 1_000, (32, 32, 3), 10)
  cfg = ExperimentConfig('random_label_cifar', method='snr', epochs=20)
  sps = steps_per_second(cfg, cifar, [0], 2, args.reps)
  print(f'random-label CIFAR CNN  snr 1 seed: {sps:8.0f} steps/s')


if __name__ == '__main__':
  main()
