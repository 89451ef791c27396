"""What capturing pre-activations with ``with_preactivations`` costs, and discovery's time.

1. Capture: an SNR (histogram) train step on the 784-100-100-10 MLP, batch 16, steps
   inside ``lax.scan``, reading the pre-activations (a) from a hand-written
   ``self.sow`` in the model and (b) with ``snr_jax.with_preactivations`` on the plain
   model. Medians of several repetitions, interleaved, in one process; prints steps/s
   and the ratio (b)/(a).
2. Discovery: wall time of ``snr_jax.discover_groups`` on a 12-block GPT (width scale
   16), median of 3.

    python -m experiments.bench_capture [--steps 10000] [--reps 5] [--cores 1]
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import snr_jax
from experiments._bench import median_time, pin_cores
from experiments.bench_overhead import compare, make_run, task_data


class MLP(nn.Module):
  sown: bool = False

  @nn.compact
  def __call__(self, x):
    for i, h in enumerate((100, 100)):
      x = nn.Dense(h, name=f'Dense_{i}')(x)
      if self.sown:
        self.sow('intermediates', f'pre_{i}', x)
      x = nn.relu(x)
    return nn.Dense(10, name='Dense_2')(x)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=10_000)
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--cores', type=int, default=1, help='pin to this many cores (0: no pinning)')
  args = parser.parse_args(argv)
  cores = pin_cores(args.cores)

  x = jax.random.normal(jax.random.PRNGKey(1), (args.batch, 784))
  plain, sowing = MLP(), MLP(sown=True)
  params = plain.init(jax.random.PRNGKey(0), x)['params']
  groups = snr_jax.discover_groups(plain, params, x)
  declared = [
      snr_jax.dense_group(
          g.name, g.size, layer=g.name, consumer=f'Dense_{i + 1}', activation=(f'pre_{i}',)
      )
      for i, g in enumerate(groups)
  ]
  capture = snr_jax.with_preactivations(plain, groups)

  def sown(p, xb):
    out, state = sowing.apply({'params': p}, xb, mutable=['intermediates'])
    return out, snr_jax.preactivations_from_intermediates(state['intermediates'], declared)

  def captured(p, xb):
    return capture({'params': p}, xb)

  sgd = optax.sgd(1e-2)
  runs = {
      'hand-written sow': make_run(snr_jax.snr(sgd, declared), sown, args.steps, args.batch),
      'with_preactivations': make_run(snr_jax.snr(sgd, groups), captured, args.steps, args.batch),
  }
  print('capture:')
  compare(runs, params, task_data(), args.steps, args.batch, args.reps, cores, 'hand-written sow')

  from experiments.models import GPT  # noqa: E402  (the harness's benchmark model)

  gpt = GPT(vocab_size=500, num_layers=12, scale=16)
  tokens = jnp.zeros((8, 128), jnp.int32)
  gparams = gpt.init(jax.random.PRNGKey(0), tokens)['params']
  t = median_time(lambda: snr_jax.discover_groups(gpt, gparams, tokens), 3)
  print(f'discovery: 12-block GPT (scale 16): {t:.2f} s (median of 3)')


if __name__ == '__main__':
  main()
