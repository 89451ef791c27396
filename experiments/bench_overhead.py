"""SNR's cost per step: plain optax against the same optimizer wrapped with SNR.

``--model mlp`` (default): the 784-100-100-10 MLP, batch 16, ``optax.sgd``, steps inside
``lax.scan``: SNR with the histogram (τ_max = 20,000) and geometric estimators, each with
``control_flow='branch'`` and ``'select'`` (histogram-select refreshes its 20,001-bin
quantiles on every step, about 0.1 s a step here: it runs only with ``--steps 100`` or
fewer, or when named with ``--only``), each also capped (``max_resets_per_step='auto'``),
and continual backprop. ``--model gpt``: the Permuted-Shakespeare GPT
(``bench_per_token``'s run, Adam, batch 8 × 128 tokens): per-token and geometric SNR, both
control-flow options. ``--model vit``: design §7's ViT (``vit_for((28, 28, 1), 10)``,
Adam, batch 16, random 28×28 images): histogram and geometric SNR, both options.

All runs of a model are compiled, then timed interleaved in one process; it prints
steps/s, the time ratio to the plain optimizer (ratio of the medians, and the median of
the ratios measured in the same round), and the bytes of SNR state per unit (ages,
thresholds and the estimator's statistics) for each estimator, from shapes.

    python -m experiments.bench_overhead [--model mlp|gpt|vit] [--steps N] [--reps 5]
        [--cores 1] [--skip NAME] [--only NAME]

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
  print(f'{steps} steps, batch {batch}')
  return compare_calls(calls, steps, reps, cores, base)


def compare_calls(calls, steps, reps, cores, base):
  """`compare` for calls ready to time (each runs ``steps`` steps)."""
  for call in calls.values():  # compile
    timed(call)
  times = interleaved_times(calls, reps)
  medians = {name: statistics.median(ts) for name, ts in times.items()}
  ratios = round_ratios(times, base)
  print(f'{steps} steps, median of {reps}, {jax.devices()[0].platform}, {cores} core(s)')
  for name, med in medians.items():
    r = ratios[name]
    print(
        f'  {name:30s} {steps / med:10.0f} steps/s   ratio to {base} '
        f'{med / medians[base]:6.3f} (per round {statistics.median(r):6.3f}, '
        f'{min(r):.3f}-{max(r):.3f})'
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


def _names(argv):
  """Pops every ``--skip NAME`` and ``--only NAME`` out of ``argv``."""
  picked = {'--skip': set(), '--only': set()}
  for flag, names in picked.items():
    while flag in argv:
      i = argv.index(flag)
      names.add(argv[i + 1])
      del argv[i : i + 2]
  return picked['--skip'], picked['--only']


def _keep(configs, base, skip, only):
  return {
      name: c
      for name, c in configs.items()
      if name == base or (name not in skip and (not only or name in only))
  }


def print_state_bytes(groups, estimators, **kwargs):
  """Prints the bytes of SNR state per unit of ``groups`` for each estimator."""
  per_unit = []
  for est in estimators:
    opts = dict(kwargs.get(est, {}))
    resets = snr_jax.self_normalized_resets(groups, estimator=est, **opts)
    shapes = jax.eval_shape(lambda r=resets: r.rule.init(r.groups, None))
    leaves = jax.tree.leaves((shapes.ages, shapes.thresholds, shapes.estimator))
    units = sum(g.size for g in resets.groups)
    total = sum(x.size * x.dtype.itemsize for x in leaves)
    per_unit.append(f'{est} {total // units:,} bytes ({total / 2**20:,.2f} MiB for {units} units)')
  print('SNR state per unit (ages, thresholds, estimator): ' + ', '.join(per_unit))


def mlp_main(argv, skip, only):
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
      configs[f'snr-{est}-{cf}-capped'] = snr(est, cf, max_resets_per_step='auto')
  configs['cbp-branch'] = (snr_jax.continual_backprop(sgd, groups, control_flow='branch'), True)
  configs['cbp-select'] = (snr_jax.continual_backprop(sgd, groups, control_flow='select'), True)
  if args.steps > 100:  # ~0.1 s a step: the every-step refresh of 20,001 bins per unit
    skip |= {n for n in configs if n.startswith('snr-histogram-select') and n not in only}
  capture = snr_jax.with_preactivations(model, groups)
  plain = lambda p, x: (model.apply({'params': p}, x), None)
  with_acts = lambda p, x: capture({'params': p}, x)
  runs = {
      name: make_run(opt, with_acts if s else plain, args.steps, args.batch)
      for name, (opt, s) in _keep(configs, 'sgd', skip, only).items()
  }
  compare(runs, params, task_data(), args.steps, args.batch, args.reps, cores, 'sgd')
  print_state_bytes(groups, ('histogram', 'geometric', 'per_token'), histogram={'tau_max': 20_000})


def gpt_main(argv, skip, only):
  from experiments import bench_per_token  # pylint: disable=import-outside-toplevel

  args, cores, model, data, params = bench_per_token.gpt_setup(argv, __doc__.splitlines()[0])
  groups = snr_jax.discover_groups(model, params, data[: args.batch, :-1])
  adam = optax.adam(1e-3)
  # bench_per_token's settings: a random refresh, so that the refresh branch runs now and then
  schedule = snr_jax.at_random(1e-3)
  ages = {
      'per_token': {},
      'geometric': dict(tau_init=16 * args.batch, tau_min=args.batch),
  }
  configs = {'adam': (adam, False)}
  for est, kw in ages.items():
    for cf in ('branch', 'select'):
      configs[f'snr-{est}-{cf}'] = (
          snr_jax.snr(
              adam, groups, estimator=est, eta=0.05, schedule=schedule, control_flow=cf, **kw
          ),
          True,
      )
  runs = {
      name: bench_per_token.make_run(opt, groups, model, args.steps, args.batch, s)
      for name, (opt, s) in _keep(configs, 'adam', skip, only).items()
  }
  print(
      f'GPT scale {args.scale} ({sum(g.size for g in groups)} FFN units), batch {args.batch} x '
      f'{args.tokens} tokens, vocab {args.vocab}, Adam'
  )
  compare_calls(
      {name: (lambda run=run: run(params, data)) for name, run in runs.items()},
      args.steps,
      args.reps,
      cores,
      'adam',
  )
  print_state_bytes(groups, ('histogram', 'geometric', 'per_token'), geometric=ages['geometric'])


def vit_main(argv, skip, only):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--cores', type=int, default=1, help='pin to this many cores (0: no pinning)')
  args = parser.parse_args(argv)
  cores = pin_cores(args.cores)
  from experiments.models.transformer import vit_for  # pylint: disable=import-outside-toplevel

  model = vit_for((28, 28, 1), 10)
  kx, ky = jax.random.split(jax.random.PRNGKey(0))
  n = 10 * args.batch  # a task of 10 batches: end_of_task every 10 steps
  data = (jax.random.uniform(kx, (n, 28, 28, 1)), jax.random.randint(ky, (n,), 0, 10))
  params = jax.jit(model.init)(jax.random.PRNGKey(1), data[0][: args.batch])['params']
  groups = snr_jax.discover_groups(model, params, data[0][: args.batch])
  adam = optax.adam(1e-3)
  kw = dict(tau_init=16 * args.batch, tau_min=args.batch)
  configs = {'adam': (adam, False)}
  for est in ('histogram', 'geometric'):
    for cf in ('branch', 'select'):
      configs[f'snr-{est}-{cf}'] = (
          snr_jax.snr(adam, groups, estimator=est, control_flow=cf, **kw),
          True,
      )
  # the histogram's every-step refresh (20,001 bins per unit) is ~0.1 s a step here
  if args.steps > 100:
    skip |= {'snr-histogram-select'} - only
  capture = snr_jax.with_preactivations(model, groups)
  plain = lambda p, x: (model.apply({'params': p}, x), None)
  with_acts = lambda p, x: capture({'params': p}, x)
  runs = {
      name: make_run(opt, with_acts if s else plain, args.steps, args.batch)
      for name, (opt, s) in _keep(configs, 'adam', skip, only).items()
  }
  print(f'ViT vit_for((28, 28, 1), 10) ({sum(g.size for g in groups)} FFN units), Adam')
  compare(runs, params, data, args.steps, args.batch, args.reps, cores, 'adam')
  print_state_bytes(groups, ('histogram', 'geometric'), geometric=kw, histogram=kw)


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  skip, only = _names(argv)
  model = 'mlp'
  if '--model' in argv:
    i = argv.index('--model')
    model = argv[i + 1]
    del argv[i : i + 2]
  mains = {'mlp': mlp_main, 'gpt': gpt_main, 'vit': vit_main}
  if model not in mains:
    raise SystemExit(f'--model must be one of {sorted(mains)}, got {model!r}')
  mains[model](argv, skip, only)


def state_bytes_per_unit(opt) -> int:
  """Bytes of the optimizer's reset state per unit of the MLP's groups (from shapes)."""
  shapes = jax.eval_shape(opt.init, MLP().init(jax.random.PRNGKey(0), jnp.ones((1, 784)))['params'])
  rule = shapes.resets.rule
  units = sum(a.shape[0] for a in rule.ages.values())
  leaves = jax.tree.leaves((rule.ages, rule.thresholds, rule.estimator))
  return sum(x.size * x.dtype.itemsize for x in leaves) // units


if __name__ == '__main__':
  main()
