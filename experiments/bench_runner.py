"""Speed of the experiment runner on the paper's protocols.

* Permuted MNIST protocol (MLP, batch 16, 625 steps per task): steps/s inside the runner
  for SNR and for no intervention, 1 seed (the default mode: sequential) and 8 seeds
  (vmapped); for 1 seed, also the bare train step (the runner's own step, same model,
  optimizer and method, in ``lax.scan`` on a fixed pre-made batch stream, as in
  ``bench_overhead``) timed interleaved with the runner in this process, and the time
  ratio runner / bare (``--profile`` adds the runner vmapped over its one member and
  the bare step with the runner's batch gather, to split the difference);
* the wall time of the full 500-task Permuted protocol for one seed with SNR, compile
  included (the speed page sets it beside the paper's released code on the same machine);
* the CNN inside the runner on the Random-label CIFAR protocol (batch 16), one seed;
* with ``--protocols``: the runner / bare ratio also (or instead) on the class-pair ViT
  and CNN (Fashion-MNIST, batch 100) and the random-label CNN (Fashion-MNIST images,
  batch 16), the protocols of the CNN and ViT studies (fewer epochs a task, so a timed
  call is short);
* with ``--mesh-devices N``: instead of the above, 8 seeds of the Permuted protocol
  vmapped on one device against the same members placed on a mesh of N devices
  (``--mode mesh``; on CPU, N virtual devices), timed interleaved.

Permuted runs use Fashion-MNIST when it is installed (Debian's dataset-fashion-mnist;
MNIST itself is not to be had here, and it has the same shape), else generated data of
MNIST's shape. CIFAR is generated data of CIFAR-10's shape. Speed does not depend on the
pixel values.

    python -m experiments.bench_runner [--tasks 8] [--reps 3] [--cores 1] [--skip-full]
        [--skip-seeds] [--only-ratio] [--profile] [--protocols permuted,vit,cnn,cnn_pairs]
    python -m experiments.bench_runner --mesh-devices 8 --cores 0
"""

from __future__ import annotations

import argparse

import numpy as np

from experiments._bench import median_time, median_times, pin_cores, timed


def _generated(name, n, shape, classes):
  from experiments.data import Dataset  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  return Dataset(
      name=name,
      source='generated (benchmark)',
      images=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
      labels=rng.integers(0, classes, n).astype(np.int32),
      num_classes=classes,
  )


def _mnist_like():
  from experiments import data  # pylint: disable=import-outside-toplevel

  try:
    return data.load_fashion_mnist(), 'fashion_mnist'
  except data.DatasetNotFoundError:
    return _generated('mnist', 60_000, (28, 28, 1), 10), None


def runner_call(config, dataset, seeds, tasks, mode='auto'):
  """``run(tasks tasks)`` of the compiled runner from a fresh carry, compiled."""
  from experiments import runner  # pylint: disable=import-outside-toplevel

  mode = runner.default_mode(config, len(seeds)) if mode == 'auto' else mode
  exp = runner.make_run(config, dataset, axis_name='members' if mode in ('vmap', 'mesh') else None)
  init, run = runner.compile_batched(exp, mode, tasks)
  carry = init(runner.seed_keys(seeds), np.zeros(len(seeds), np.float32))
  call = lambda: run(carry, 0, tasks)
  timed(call)  # compile
  return call


def _one_task(config, exp, dataset):
  """Task 0 of the config's stream, materialised: float inputs and labels on the device."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from experiments import runner  # pylint: disable=import-outside-toplevel

  p = config.protocol
  classes = (
      dataset.num_classes if p.task == 'class_pair' else max(dataset.num_classes, p.num_outputs)
  )
  n = config.resolved('examples_per_task')
  lookup, labels = runner._make_task(  # pylint: disable=protected-access
      config, exp.data, 0, jax.random.PRNGKey(1), classes
  )
  return jax.jit(lambda: (lookup(jnp.arange(n)), labels))()


def bare_call(config, dataset, tasks, gather=False):
  """The runner's train step alone, for as many steps as ``tasks`` tasks, compiled.

  One seed, no vmap, no task stream: the steps run in ``lax.scan`` on one pre-made task
  of the config's protocol (its inputs already in float, for Permuted already permuted),
  its batches read in order with ``dynamic_slice`` as in ``bench_overhead``;
  ``end_of_task`` marks the same steps as in the runner. With ``gather`` (Permuted
  only), each batch is instead gathered from the dataset and pixel-permuted as the
  runner does it (uint8 rows, then the permutation, then float).
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from experiments import data, runner  # pylint: disable=import-outside-toplevel

  exp = runner.make_run(config, dataset)
  carry = jax.jit(exp.init)(jax.random.PRNGKey(0), 0.0)
  n, batch = config.resolved('examples_per_task'), config.resolved('batch_size')
  steps = config.steps_per_task
  task_x, task_y = _one_task(config, exp, dataset)
  if gather:
    if config.protocol.task != 'permuted':
      raise ValueError("the batch-gather variant is the Permuted protocol's only")
    images, labels = exp.data['images'], exp.data['labels']
    idx, perm = data.permuted_task_indices(
        jax.random.PRNGKey(1), images.shape[0], task_x.shape[1], n
    )

  @jax.jit
  def run(params, opt_state, task_x, task_y):
    train = exp.train_step(carry.sweep_value)

    def step(c, i):
      params, opt_state = c
      start = (i % (n // batch)) * batch
      if gather:
        rows = idx[start + jnp.arange(batch)]
        xb = data.to_float(images[rows].reshape(batch, -1)[:, perm])
        yb = labels[rows]
      else:
        xb = jax.lax.dynamic_slice_in_dim(task_x, start, batch)
        yb = jax.lax.dynamic_slice_in_dim(task_y, start, batch)
      params, opt_state, (loss, acc, _) = train(params, opt_state, xb, yb, i % steps == steps - 1)
      return (params, opt_state), (loss, acc)

    return jax.lax.scan(step, (params, opt_state), jnp.arange(tasks * steps))

  call = lambda: run(carry.params, carry.opt_state, task_x, task_y)
  timed(call)  # compile
  return call


def steps_per_second(config, dataset, seeds, tasks, reps, mode='auto'):
  t = median_time(runner_call(config, dataset, seeds, tasks, mode), reps)
  return tasks * config.steps_per_task / t


def runner_against_bare(config, dataset, tasks, reps, profile=False):
  """Steps/s of the runner (its default mode for one seed: sequential) and of the bare
  step for one seed, timed interleaved: ``{'runner': ..., 'bare': ...}``. ``profile``
  adds the runner vmapped over its one member (``'runner, vmap over 1'``) and the bare
  step with the runner's batch gather (``'bare + gather'``), which split the runner's
  extra time."""
  calls = {
      'runner': runner_call(config, dataset, [0], tasks),
      'bare': bare_call(config, dataset, tasks),
  }
  if profile:
    calls['runner, vmap over 1'] = runner_call(config, dataset, [0], tasks, mode='vmap')
    calls['bare + gather'] = bare_call(config, dataset, tasks, gather=True)
  steps = tasks * config.steps_per_task
  return {name: steps / t for name, t in median_times(calls, reps).items()}


def mesh_against_vmap(config, dataset, seeds, tasks, reps):
  """Steps/s of the members vmapped on one device and placed on every device, timed
  interleaved: ``{'vmap': ..., 'mesh': ...}``."""
  calls = {mode: runner_call(config, dataset, seeds, tasks, mode) for mode in ('vmap', 'mesh')}
  steps = tasks * config.steps_per_task
  return {mode: steps / t for mode, t in median_times(calls, reps).items()}


# name -> (what it is, ExperimentConfig fields): the runner/bare ratio's protocols.
RATIO_PROTOCOLS = {
    'permuted': ('permuted MLP', dict(benchmark='permuted_mnist')),
    'vit': (
        'class-pair ViT',
        dict(benchmark='continual_imagenet', model='vit', dataset='fashion_mnist', epochs=2),
    ),
    'cnn': (
        'random-label CNN',
        dict(benchmark='random_label_cifar', dataset='fashion_mnist', epochs=20),
    ),
    'cnn_pairs': (
        'class-pair CNN',
        dict(benchmark='continual_imagenet', dataset='fashion_mnist', epochs=2),
    ),
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--tasks', type=int, default=8, help='tasks per timed call')
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--cores', type=int, default=1, help='pin to this many cores (0: none)')
  parser.add_argument('--skip-full', action='store_true', help='skip the 500-task run')
  parser.add_argument('--skip-seeds', action='store_true', help='skip the 8-seed runs')
  parser.add_argument(
      '--profile',
      action='store_true',
      help='also time the runner vmapped over its one member and the bare '
      "step with the runner's batch gather",
  )
  parser.add_argument(
      '--only-ratio',
      action='store_true',
      help='only the runner / bare ratios (implies --skip-full --skip-seeds, ' 'no CIFAR)',
  )
  parser.add_argument(
      '--mesh-devices',
      type=int,
      default=0,
      help='only compare 8 seeds vmapped on one device with the same on a '
      'mesh of this many devices (virtual CPU devices on CPU)',
  )
  parser.add_argument(
      '--protocols',
      default='permuted',
      help='comma-separated runner/bare ratio protocols: permuted (the MLP, batch 16), vit '
      '(class pairs of Fashion-MNIST, the small ViT, batch 100), cnn (random labels on '
      "Fashion-MNIST images, the paper's CNN, batch 16); vit and cnn need Fashion-MNIST",
  )
  args = parser.parse_args(argv)
  protocols = [p.strip() for p in args.protocols.split(',') if p.strip()]
  unknown = sorted(set(protocols) - set(RATIO_PROTOCOLS))
  if unknown or not protocols:
    parser.error(f'--protocols: unknown {unknown}; choose from {sorted(RATIO_PROTOCOLS)}')
  if args.mesh_devices:
    import jax  # pylint: disable=import-outside-toplevel

    jax.config.update('jax_num_cpu_devices', args.mesh_devices)  # before any device is used
  if args.only_ratio:
    args.skip_full = args.skip_seeds = True
  cores = pin_cores(args.cores)

  import jax  # pylint: disable=import-outside-toplevel
  from experiments.benchmarks import ExperimentConfig  # pylint: disable=import-outside-toplevel
  from experiments.runner import run_experiment  # pylint: disable=import-outside-toplevel

  mnist, name = _mnist_like()
  print(
      f'{jax.default_backend()}, {cores} core(s); permuted data: {mnist.name} '
      f'({mnist.source}); median of {args.reps}'
  )
  if args.mesh_devices:
    if jax.device_count() != args.mesh_devices:
      raise SystemExit(
          f'asked for {args.mesh_devices} devices, JAX sees '
          f'{jax.device_count()}: run this in a fresh process.'
      )
    for method in ('none', 'snr'):
      cfg = ExperimentConfig('permuted_mnist', method=method, dataset=name)
      sps = mesh_against_vmap(cfg, mnist, list(range(8)), args.tasks, args.reps)
      print(
          f"permuted MLP  {method:5s} 8 seeds: vmap on 1 device {sps['vmap'] * 8:8.0f} "
          f"seed-steps/s; mesh on {args.mesh_devices} devices {sps['mesh'] * 8:8.0f} "
          f"seed-steps/s; mesh / vmap throughput {sps['mesh'] / sps['vmap']:5.2f}"
      )
    return
  for protocol in protocols:
    what, fields = RATIO_PROTOCOLS[protocol]
    if protocol == 'permuted':
      dataset, fields = mnist, {**fields, 'dataset': name}
    else:
      from experiments import data  # pylint: disable=import-outside-toplevel

      dataset = data.load_fashion_mnist()
    for method in ('none', 'snr'):
      cfg = ExperimentConfig(method=method, **fields)
      sps = runner_against_bare(cfg, dataset, args.tasks, args.reps, args.profile)
      for label, value in sps.items():
        label = 'runner, 1 seed' if label == 'runner' else label
        print(
            f'{what:16s} {method:5s} {label:19s}: {value:8.0f} steps/s; time / bare step '
            f'{sps["bare"] / value:5.2f}'
        )
      if protocol == 'permuted' and not args.skip_seeds:
        sps = steps_per_second(cfg, dataset, list(range(8)), args.tasks, args.reps)
        print(
            f'permuted MLP  {method:5s} 8 seed(s): {sps:8.0f} steps/s '
            f'({sps * 8:8.0f} seed-steps/s)'
        )

  if not args.skip_full:
    cfg = ExperimentConfig('permuted_mnist', method='snr', dataset=name)
    wall, out = timed(lambda: run_experiment(cfg, mnist, seeds=[0]))
    steps = cfg.resolved('num_tasks') * cfg.steps_per_task
    print(
        f'full Permuted protocol, SNR, 1 seed: {cfg.resolved("num_tasks")} tasks, '
        f'{steps} steps in {wall:.1f} s (compile included), last-10% accuracy '
        f'{out["metrics"]["accuracy"][0, -50:].mean():.3f}'
    )

  if args.only_ratio:
    return
  cifar = _generated('cifar10', 1_000, (32, 32, 3), 10)
  cfg = ExperimentConfig('random_label_cifar', method='snr', epochs=20)
  sps = steps_per_second(cfg, cifar, [0], 2, args.reps)
  print(f'random-label CIFAR CNN  snr 1 seed: {sps:8.0f} steps/s')


if __name__ == '__main__':
  main()
