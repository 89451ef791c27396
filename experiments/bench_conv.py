"""Benchmark: CNN SGD training steps inside ``lax.scan`` on CPU, nn.Conv vs im2col.

One step = forward + cross-entropy + backward + SGD update, batch 16 of 32x32x3 images,
10 classes (``--batch``, ``--image``, ``--outputs`` change them), the paper's CNN
(conv5x5x16, pool, conv5x5x16, pool, Dense 100, Dense 100).
``--steps`` steps (default 1000) run in one jitted ``lax.scan``; batches cycle through a
fixed random 128-image set (like Random-label CIFAR).  Each configuration is compiled and
run once to warm up, then timed ``--reps`` times (default 3); the median is reported.

Configurations (``--configs``): ``xla`` = nn.Conv + nn.max_pool (plain Flax),
``im2col`` = Im2colConv + reshape max-pool (the library default); ``xla+reshape`` and
``im2col+xlapool`` isolate the two changes.

    python -m experiments.bench_conv [--steps 1000] [--reps 3] [--configs ...] [--cores N]
        [--batch 100 --image 28,28,1 --outputs 2]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from experiments._bench import median_time, pin_cores, timed
from experiments.models import CNN

CONFIGS = {
    'xla': dict(conv_impl='xla', pool_impl='xla'),
    'im2col': dict(conv_impl='im2col', pool_impl='reshape'),
    'xla+reshape': dict(conv_impl='xla', pool_impl='reshape'),
    'im2col+xlapool': dict(conv_impl='im2col', pool_impl='xla'),
}


def make_runner(model, steps, batch, lr=0.01):
  def loss_fn(params, x, y):
    logits = model.apply({'params': params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def run(params, images, labels):
    n_batches = images.shape[0] // batch

    def step(params, i):
      j = (i % n_batches) * batch
      x = jax.lax.dynamic_slice_in_dim(images, j, batch)
      y = jax.lax.dynamic_slice_in_dim(labels, j, batch)
      loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
      params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
      return params, loss

    return jax.lax.scan(step, params, jnp.arange(steps))

  return run


def bench(name, steps, reps, batch=16, image=(32, 32, 3), outputs=10):
  model = CNN(num_outputs=outputs, **CONFIGS[name])
  kx, ky, kp = jax.random.split(jax.random.key(0), 3)
  images = jax.random.normal(kx, (max(128, 2 * batch), *image))
  labels = jax.random.randint(ky, (images.shape[0],), 0, outputs)
  params = model.init(kp, images[:1])['params']
  run = make_runner(model, steps, batch)
  warm, (_, losses) = timed(lambda: run(params, images, labels))  # compile + warm-up
  med = median_time(lambda: run(params, images, labels), reps)
  print(
      f'{name:>15}: {steps / med:9.1f} steps/s  (median of {reps}: {med:.3f} s for '
      f'{steps} steps; compile+warm-up {warm:.1f} s; final loss {float(losses[-1]):.3f})',
      flush=True,
  )
  return steps / med


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--steps', type=int, default=1000)
  ap.add_argument('--reps', type=int, default=3)
  ap.add_argument('--configs', nargs='+', default=['xla', 'im2col'], choices=list(CONFIGS))
  ap.add_argument('--cores', type=int, default=0, help='pin to this many cores (0: none)')
  ap.add_argument('--batch', type=int, default=16, help='images per step')
  ap.add_argument(
      '--image',
      default='32,32,3',
      help='image shape H,W,C (28,28,1 for Fashion-MNIST)',
  )
  ap.add_argument('--outputs', type=int, default=10, help='classes (2 for class pairs)')
  args = ap.parse_args()
  image = tuple(int(n) for n in args.image.split(','))
  pin_cores(args.cores)
  print(f'jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}')
  res = {c: bench(c, args.steps, args.reps, args.batch, image, args.outputs) for c in args.configs}
  if 'xla' in res and 'im2col' in res:
    print(f"speed-up im2col / xla: {res['im2col'] / res['xla']:.1f}x")


if __name__ == '__main__':
  main()
