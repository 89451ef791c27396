"""SNR's cost per step: the 784-100-100-10 MLP, batch 16, steps inside ``lax.scan``.

Times plain ``optax.sgd`` against the same optimizer wrapped with SNR (histogram with
τ_max = 20,000 and geometric estimators, each with ``control_flow='branch'`` and
``'select'``; the histogram also with ``max_resets_per_step=None``, the exact path that
draws whole parameters), all in one process, and prints steps/s, the time ratio to plain
SGD (ratio of the medians of several interleaved repetitions, after a compile, and the
median of the ratios measured in the same round), and SNR's state memory per unit.

    python -m experiments.bench_overhead [--steps 10000] [--reps 5] [--cores 1] [--skip NAME]

By default the process is pinned to one core (see ``experiments._bench.pin_cores``);
``--cores 0`` leaves the affinity alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import snr_jax
from experiments._bench import interleaved_times, pin_cores, round_ratios, timed


class MLP(nn.Module):
  hidden: tuple = (100, 100)

  @nn.compact
  def __call__(self, x):
    for h in self.hidden:
      x = nn.relu(nn.Dense(h)(x))
    return nn.Dense(10)(x)


def make_run(optimizer, forward, steps, batch):
  """A whole run of ``steps`` steps on one task-sized dataset, one compiled function.

  ``forward(params, x)`` returns ``(logits, pre-activations or None)``; the
  pre-activations, when given, go to ``optimizer.update`` as ``activations=``, with
  ``end_of_task`` on the last step of each pass over the task, as a user's step would
  (so a threshold refresh is compiled in and runs). The run returns the optimizer's
  final state too: a statistic that never reaches the output (an SNR gap histogram)
  would otherwise be dead code that XLA removes, and go untimed.
  """

  def loss_fn(params, x, y):
    out, acts = forward(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), acts

  def step(carry, i):
    params, state, data_x, data_y = carry
    # one Permuted-MNIST-sized task (10,000 examples) held on device, read batch by batch
    start = (i % (data_x.shape[0] // batch)) * batch
    x = jax.lax.dynamic_slice_in_dim(data_x, start, batch)
    y = jax.lax.dynamic_slice_in_dim(data_y, start, batch)
    (loss, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
    extra = (
        {}
        if acts is None
        else {'activations': acts, 'end_of_task': (i + 1) % (data_x.shape[0] // batch) == 0}
    )
    updates, state = optimizer.update(grads, state, params, **extra)
    return (optax.apply_updates(params, updates), state, data_x, data_y), loss

  @jax.jit
  def run(params, data_x, data_y):
    state = optimizer.init(params)
    (params, state, *_), losses = jax.lax.scan(
        step, (params, state, data_x, data_y), jnp.arange(steps)
    )
    return params, losses, state

  return run


TASK_EXAMPLES = 10_000
"""Examples in one task of the benchmarks (a Permuted-MNIST task)."""


def task_data():
  """``TASK_EXAMPLES`` random 784-pixel images and labels: one Permuted-MNIST-sized task."""
  kx, ky = jax.random.split(jax.random.PRNGKey(0))
  return (
      jax.random.uniform(kx, (TASK_EXAMPLES, 784)),
      jax.random.randint(ky, (TASK_EXAMPLES,), 0, 10),
  )


def compare(runs, params, data, steps, batch, reps, cores, base):
  """Compiles each run, times them interleaved, prints steps/s and ratios to ``base``."""
  calls = {name: (lambda run=run: run(params, *data)) for name, run in runs.items()}
  for call in calls.values():  # compile
    timed(call)
  times = interleaved_times(calls, reps)
  medians = {name: statistics.median(ts) for name, ts in times.items()}
  ratios = {name: statistics.median(r) for name, r in round_ratios(times, base).items()}
  print(
      f'{steps} steps, batch {batch}, median of {reps}, '
      f'{jax.devices()[0].platform}, {cores} core(s)'
  )
  for name, med in medians.items():
    print(
        f'  {name:28s} {steps / med:10.0f} steps/s   ratio to {base} '
        f'{med / medians[base]:6.3f} (per round {ratios[name]:6.3f})'
    )
  return medians


def mlp_setup(description: str, argv=None):
  """The MLP benchmarks' flags (--steps, --reps, --batch, --cores), core pinning, and the
  model with its params: ``(args, cores, model, x, params)``."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--steps', type=int, default=10_000)
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--cores', type=int, default=1, help='pin to this many cores (0: no pinning)')
  args = parser.parse_args(argv)
  cores = pin_cores(args.cores)
  model = MLP()
  x = jnp.ones((args.batch, 784))
  return args, cores, model, x, model.init(jax.random.PRNGKey(0), x)['params']


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  skip = set()
  while '--skip' in argv:
    i = argv.index('--skip')
    skip.add(argv[i + 1])
    del argv[i : i + 2]
  args, cores, model, x, params = mlp_setup(__doc__.splitlines()[0], argv)
  groups = snr_jax.discover_groups(model, params, jax.random.normal(jax.random.PRNGKey(1), x.shape))
  sgd = optax.sgd(1e-2)
  snr = lambda est, cf, **kw: (
      snr_jax.snr(sgd, groups, estimator=est, tau_max=20_000, control_flow=cf, **kw),
      True,
  )
  configs = {'sgd': (sgd, False)}
  for est in ('histogram', 'geometric'):
    for cf in ('branch', 'select'):
      configs[f'snr-{est}-{cf}'] = snr(est, cf)
  configs['snr-histogram-branch-exact'] = snr('histogram', 'branch', max_resets_per_step=None)
  configs['cbp-branch'] = (snr_jax.continual_backprop(sgd, groups, control_flow='branch'), True)
  configs['cbp-select'] = (snr_jax.continual_backprop(sgd, groups, control_flow='select'), True)
  capture = snr_jax.with_preactivations(model, groups)
  plain = lambda p, x: (model.apply({'params': p}, x), None)
  with_acts = lambda p, x: capture({'params': p}, x)
  # --skip: e.g. snr-histogram-select, whose every-step refresh (a cumsum over 20,001 bins
  # per unit) takes ~0.1 s a step on this CPU
  runs = {
      name: make_run(opt, with_acts if s else plain, args.steps, args.batch)
      for name, (opt, s) in configs.items()
      if name not in skip
  }
  compare(runs, params, task_data(), args.steps, args.batch, args.reps, cores, 'sgd')
  print(
      'SNR state per unit (ages, thresholds, estimator): '
      + ', '.join(
          f"{est} {state_bytes_per_unit(configs[f'snr-{est}-branch'][0]) :,} bytes"
          for est in ('histogram', 'geometric')
      )
  )


def state_bytes_per_unit(opt) -> int:
  """Bytes of the optimizer's reset state per unit of the MLP's groups (from shapes)."""
  shapes = jax.eval_shape(opt.init, MLP().init(jax.random.PRNGKey(0), jnp.ones((1, 784)))['params'])
  rule = shapes.resets.rule
  units = sum(a.shape[0] for a in rule.ages.values())
  leaves = jax.tree.leaves((rule.ages, rule.thresholds, rule.estimator))
  return sum(x.size * x.dtype.itemsize for x in leaves) // units


if __name__ == '__main__':
  main()
