"""The per-token SNR estimator's cost on the GPT train step (issue 12, design §3c).

The Permuted-Shakespeare GPT (1 pre-LN block, width 32, 2 heads, ReLU FFN 256 at scale
1), batch 8 × 128 tokens, Adam 1e-3, steps inside ``lax.scan`` on random tokens held on
the device. Times plain ``optax.adam`` against the same optimizer wrapped with SNR
(per-token, and the batch-level geometric estimator for comparison), all in one
process, interleaved, and prints steps/s and the time ratio to plain Adam (median of
``--reps`` repetitions, after a compile). The SNR runs also capture the FFN's
pre-activations in the forward pass, so the ratio includes that capture.

    python -m experiments.bench_per_token [--steps 300] [--reps 5] [--scale 1] [--cores 1]

By default the process is pinned to one core (see ``experiments._bench.pin_cores``);
``--cores 0`` leaves the affinity alone. The refresh is ``at_random(1e-3)`` so that the
refresh branch is taken now and then, as in a real run.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import optax

import snr_jax
from experiments._bench import median_time, pin_cores
from experiments.models.transformer import GPT


def make_run(optimizer, groups, model, steps, batch, with_snr):
  """A whole run of ``steps`` Adam steps on random tokens, one compiled function."""

  def loss_fn(params, toks):
    x, y = toks[:, :-1], toks[:, 1:]
    if with_snr:
      logits, acts = snr_jax.apply_with_preactivations(model, {'params': params}, x, groups=groups)
    else:
      logits, acts = model.apply({'params': params}, x), None
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), acts

  def step(carry, i):
    params, state, data = carry
    start = (i % (data.shape[0] // batch)) * batch
    toks = jax.lax.dynamic_slice_in_dim(data, start, batch)
    (loss, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, toks)
    extra = {'activations': acts} if with_snr else {}
    updates, state = optimizer.update(grads, state, params, **extra)
    return (optax.apply_updates(params, updates), state, data), loss

  @jax.jit
  def run(params, data):
    state = optimizer.init(params)
    # the final state is returned so that no statistic of it is dead code (left untimed)
    (params, state, _), losses = jax.lax.scan(step, (params, state, data), jnp.arange(steps))
    return params, losses, state

  return run


def gpt_setup(argv, description):
  """The GPT benchmarks' command line, core pinning, model, token data and params:
  ``(args, cores, model, data, params)`` (shared with ``bench_overhead --model gpt``)."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--tokens', type=int, default=128)
  parser.add_argument('--vocab', type=int, default=300)
  parser.add_argument('--scale', type=int, default=1)
  parser.add_argument('--cores', type=int, default=1, help='pin to this many cores (0: no pinning)')
  args = parser.parse_args(argv)
  cores = pin_cores(args.cores)
  model = GPT(vocab_size=args.vocab, context_length=args.tokens, scale=args.scale)
  data = jax.random.randint(
      jax.random.PRNGKey(0), (32 * args.batch, args.tokens + 1), 0, args.vocab
  )
  params = jax.jit(model.init)(jax.random.PRNGKey(1), data[: args.batch, :-1])['params']
  return args, cores, model, data, params


def main(argv=None):
  args, cores, model, data, params = gpt_setup(argv, __doc__.splitlines()[0])
  groups = snr_jax.discover_groups(model, params, data[: args.batch, :-1])
  adam = optax.adam(1e-3)
  schedule = snr_jax.at_random(1e-3)
  configs = {
      'adam': (adam, False),
      'snr-per_token': (
          snr_jax.snr(adam, groups, estimator='per_token', eta=0.05, schedule=schedule),
          True,
      ),
      'snr-geometric': (
          snr_jax.snr(
              adam,
              groups,
              estimator='geometric',
              eta=0.05,
              tau_init=16 * args.batch,
              tau_min=args.batch,
              schedule=schedule,
          ),
          True,
      ),
  }
  runs = {
      name: make_run(opt, groups, model, args.steps, args.batch, s)
      for name, (opt, s) in configs.items()
  }
  for run in runs.values():  # compile
    jax.block_until_ready(run(params, data))
  times = {name: [] for name in runs}
  for _ in range(args.reps):  # interleave, so drifts in machine load hit all alike
    for name, run in runs.items():
      times[name].append(median_time(lambda run=run: jax.block_until_ready(run(params, data)), 1))
  base = statistics.median(times['adam'])
  print(
      f'GPT scale {args.scale} ({groups[0].size} FFN units), {args.steps} steps, batch '
      f'{args.batch} x {args.tokens} tokens, vocab {args.vocab}, median of {args.reps}, '
      f'{jax.devices()[0].platform}, {cores} core(s)'
  )
  for name, ts in times.items():
    med = statistics.median(ts)
    print(f'{name:15s} {args.steps / med:8.1f} steps/s   ratio to adam {med / base:5.2f}')


if __name__ == '__main__':
  main()
