"""Task streams for the continual-learning benchmarks, as pure JAX functions.

Every function maps (data arrays, PRNG key[, task index]) to one task's training set and
is jit-compatible: sizes (``num_examples``, ``per_class``, ``seq_len`` ...) are Python
ints and must be marked static when the caller jits (e.g.
``jax.jit(permuted_task, static_argnames="num_examples")``); the key and the task index
may be traced. A stream is reproducible: the same key (and index) gives the same task.
The usual pattern is ``task_key = jax.random.fold_in(stream_key, t)``.

Images come in as uint8 (divided by 255) or floating point (used as is, assumed in
[0, 1]); tasks come out as float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def to_float(images: Array) -> Array:
  """uint8/integer images -> float32 in [0, 1]; floating images -> float32 unchanged."""
  images = jnp.asarray(images)
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def _check_count(what: str, requested: int, available: int) -> None:
  if not isinstance(requested, int):
    raise TypeError(
        f'{what} must be a Python int (mark it static under jit), ' f'got {type(requested)}'
    )
  if requested < 1 or requested > available:
    raise ValueError(f'{what}={requested} must be in [1, {available}]')


def shuffle(key: Array, n: int) -> Array:
  """A random permutation of ``range(n)`` by one sort of random 32-bit keys.

  ``jax.random.permutation`` sorts in several rounds, and a Permuted task shuffles
  MNIST's 60,000 images at every task: on CPU one sort is the cheaper shuffle (the speed
  page gives the figures). Equal keys (about 0.4 pairs per 60,000 draws) keep their index
  order, a bias far below anything a benchmark can see.
  """
  return jnp.argsort(jax.random.bits(key, (n,), jnp.uint32), stable=True).astype(jnp.int32)


def shuffle_prefix(key: Array, n: int, k: int, axis_name=None) -> Array:
  """``shuffle(key, n)[:k]``, to the same bits, without sorting all ``n`` keys.

  A Permuted task keeps 10,000 of MNIST's 60,000 shuffled images, and sorting all
  60,000 random keys is a large share of a task's time on CPU (speed page). The ``k`` smallest
  keys lie below a threshold that about ``k + 8√k`` of the uniform keys fall under;
  only those (at most ``k + 16√k``, compacted in index order) are sorted, so ties
  keep their index order as in :func:`shuffle`. When the count falls outside
  ``[k, k + 16√k]`` (for 10,000 of 60,000, with probability 2·10⁻¹⁷; often for a
  small ``k``) the full sort gives the answer; under
  ``vmap`` pass its ``axis_name`` so that the full sort runs only when some member
  needs it (otherwise both run).
  """
  margin = int(8 * math.sqrt(k))
  capacity = k + 2 * margin
  if capacity >= n // 2:
    return shuffle(key, n)[:k]
  bits = jax.random.bits(key, (n,), jnp.uint32)  # the keys shuffle() sorts
  below = bits < np.uint32((k + margin) / n * 2**32)
  slot = jnp.where(below, jnp.cumsum(below) - 1, capacity)  # capacity: dropped
  candidates = (
      jnp.full((capacity,), n, jnp.int32).at[slot].set(jnp.arange(n, dtype=jnp.int32), mode='drop')
  )
  candidate_bits = (
      jnp.full((capacity,), np.iinfo(np.uint32).max, jnp.uint32).at[slot].set(bits, mode='drop')
  )  # padding sorts after every candidate (all are below the threshold)
  fast = candidates[jnp.argsort(candidate_bits, stable=True)[:k]]
  count = jnp.sum(below)
  ok = (count >= k) & (count <= capacity)
  return jax.lax.cond(
      _any_member(~ok, axis_name), lambda: jnp.where(ok, fast, shuffle(key, n)[:k]), lambda: fast
  )


def _any_member(pred: Array, axis_name) -> Array:
  """``pred`` or'ed over a named vmap axis: a shared ``lax.cond`` predicate stays a branch."""
  if axis_name is None:
    return pred
  return jax.lax.psum(pred.astype(jnp.int32), axis_name) > 0


def pixel_permutation(key: Array, num_pixels: int) -> Array:
  """The pixel permutation :func:`permuted_task` uses for ``key`` (int32, shape (num_pixels,))."""
  perm_key, _ = jax.random.split(key)
  return jax.random.permutation(perm_key, num_pixels)


def permuted_task(
    images: Array, labels: Array, key: Array, num_examples: int
) -> tuple[Array, Array]:
  """One Permuted-MNIST task.

  A new pixel permutation (one for all images of the task) and a fresh shuffle of the
  dataset; the task is the first ``num_examples`` images of that shuffle (10,000 in
  the paper), flattened and permuted.

  Args:
    images: (N, ...) images, uint8 or float.
    labels: (N,) integer labels (kept as they are).
    key: PRNG key of this task.
    num_examples: examples per task (static).

  Returns:
    x: float32 (num_examples, D) with D the number of values per image, x[i] =
      flatten(images[s_i])[perm]; y: int32 (num_examples,) = labels[s_i].
  """
  n = images.shape[0]
  _check_count('num_examples', num_examples, n)
  flat = jnp.reshape(jnp.asarray(images), (n, -1))
  idx, perm = permuted_task_indices(key, n, flat.shape[1], num_examples)
  x = to_float(flat[idx][:, perm])
  y = jnp.asarray(labels)[idx].astype(jnp.int32)
  return x, y


def permuted_task_indices(
    key: Array, num_images: int, num_pixels: int, num_examples: int, axis_name=None
) -> tuple[Array, Array]:
  """The images and the pixel permutation of :func:`permuted_task`, as indices.

  ``permuted_task(...)`` is ``flatten(images)[idx][:, perm]`` with ``labels[idx]``; a
  training loop can gather a batch at a time (``flatten(images[idx[b]])[:, perm]``)
  instead of materialising the whole task.

  ``axis_name``: the vmap axis this runs under, if any (see :func:`shuffle_prefix`).

  Returns:
    idx: int32 (num_examples,) image indices; perm: int32 (num_pixels,).
  """
  perm_key, shuffle_key = jax.random.split(key)
  perm = jax.random.permutation(perm_key, num_pixels)
  idx = shuffle_prefix(shuffle_key, num_images, num_examples, axis_name)
  return idx, perm


def random_label_task(
    images: Array,
    labels: Array,
    key: Array,
    num_examples: int,
    num_classes: int = 10,
    flatten: bool = False,
) -> tuple[Array, Array]:
  """One random-label task (Random-label MNIST / CIFAR).

  The images are a fixed subset: always ``images[:num_examples]`` (1,200 for MNIST, 128
  for CIFAR), the same for every task; choose which images by ordering ``images`` once on
  the host (e.g. a seeded shuffle) before the stream starts. Each task draws new labels,
  i.i.d. uniform over ``num_classes``, from ``key``.

  Args:
    images: (N, ...) images, uint8 or float.
    labels: the true labels; ignored (accepted for a uniform signature).
    key: PRNG key of this task.
    num_examples: size of the fixed subset (static).
    num_classes: number of classes to draw labels from (static).
    flatten: return x as (num_examples, D) instead of the image shape.

  Returns:
    x: float32 (num_examples, *image_shape) (or (num_examples, D) if ``flatten``);
    y: int32 (num_examples,) random labels.
  """
  del labels
  _check_count('num_examples', num_examples, images.shape[0])
  x = to_float(images[:num_examples])
  if flatten:
    x = jnp.reshape(x, (num_examples, -1))
  y = jax.random.randint(key, (num_examples,), 0, num_classes, dtype=jnp.int32)
  return x, y


def class_pair(key: Array, task_index: Array | int, num_classes: int = 1000) -> Array:
  """The two classes of task ``task_index`` of a Continual-ImageNet stream.

  Classes are taken two at a time from a random ordering of all classes, as in Dohare et
  al.'s Continual ImageNet: tasks ``0 .. num_classes//2 - 1`` use disjoint pairs (every class
  exactly once), then a fresh ordering is drawn for the next ``num_classes//2`` tasks, and so
  on. The two classes of a task are always distinct. Depends only on (key, task_index).

  Args:
    key: PRNG key of the whole stream (not per task).
    task_index: task number (may be traced).
    num_classes: number of classes (static, >= 2).

  Returns:
    int32 (2,): [class labelled 0, class labelled 1].
  """
  if num_classes < 2:
    raise ValueError(f'num_classes must be >= 2, got {num_classes}')
  pairs_per_round = num_classes // 2
  task_index = jnp.asarray(task_index, dtype=jnp.int32)
  pairs_key, _ = jax.random.split(key)  # the other half shuffles examples in class_pair_task
  round_key = jax.random.fold_in(pairs_key, task_index // pairs_per_round)
  order = jax.random.permutation(round_key, num_classes)
  j = task_index % pairs_per_round
  return jax.lax.dynamic_slice(order, (2 * j,), (2,)).astype(jnp.int32)


def class_pair_task(
    images: Array,
    labels: Array,
    key: Array,
    task_index: Array | int,
    per_class: int = 600,
    num_classes: int = 1000,
) -> tuple[Array, Array]:
  """One Continual-ImageNet task: binary classification between a new pair of classes.

  The pair is :func:`class_pair` (key, task_index). The task holds the first ``per_class``
  images of each of the two classes (in the order they appear in ``images``), labelled 0
  for the first class and 1 for the second, in an order shuffled by (key, task_index).

  Every class must have at least ``per_class`` images: this is checked when ``labels`` is a
  concrete array, and cannot be under jit (missing images would silently repeat image 0),
  so check once on the host, e.g. by loading with ``load_imagenet32(max_per_class=600)``.

  Args:
    images: (N, 32, 32, 3) images, uint8 or float.
    labels: (N,) int labels in [0, num_classes).
    key: PRNG key of the whole stream.
    task_index: task number (may be traced).
    per_class: training images per class (static; 600 in the paper).
    num_classes: number of classes (static).

  Returns:
    x: float32 (2 * per_class, *image_shape); y: int32 (2 * per_class,) in {0, 1}.
  """
  _check_count('per_class', per_class, images.shape[0])
  if not isinstance(labels, jax.core.Tracer):
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=num_classes)
    if counts.min() < per_class:
      raise ValueError(
          f'class {int(counts.argmin())} has {int(counts.min())} images, '
          f'fewer than per_class={per_class}'
      )
  idx, y = class_pair_indices(labels, key, task_index, per_class, num_classes)
  return to_float(jnp.asarray(images)[idx]), y


def class_pair_indices(
    labels: Array, key: Array, task_index: Array | int, per_class: int, num_classes: int = 1000
) -> tuple[Array, Array]:
  """The images (as indices) and binary labels of :func:`class_pair_task`.

  Returns:
    idx: int32 (2 * per_class,) image indices, shuffled; y: int32 (2 * per_class,).
  """
  labels = jnp.asarray(labels)
  pair = class_pair(key, task_index, num_classes)
  idx0 = jnp.nonzero(labels == pair[0], size=per_class)[0]
  idx1 = jnp.nonzero(labels == pair[1], size=per_class)[0]
  idx = jnp.concatenate([idx0, idx1])
  y = jnp.concatenate([jnp.zeros(per_class, jnp.int32), jnp.ones(per_class, jnp.int32)])
  _, examples_key = jax.random.split(key)
  shuffle_key = jax.random.fold_in(examples_key, task_index)
  order = jax.random.permutation(shuffle_key, 2 * per_class)
  return idx[order], y[order]


def vocab_permutation(key: Array, vocab_size: int) -> Array:
  """The word bijection :func:`permuted_vocab_task` uses for ``key`` (int32, (vocab_size,))."""
  perm_key, _ = jax.random.split(key)
  return jax.random.permutation(perm_key, vocab_size)


def permuted_vocab_task(
    tokens: Array, vocab_size: int, key: Array, seq_len: int, num_sequences: int
) -> tuple[Array, Array]:
  """One Permuted-Shakespeare task: next-token prediction under a fresh word bijection.

  Every word id w (``<unk>`` included) becomes ``perm[w]`` for a random permutation
  ``perm`` of ``range(vocab_size)``; the task is ``num_sequences`` windows of
  ``seq_len + 1`` consecutive tokens starting at uniformly random offsets, split into
  inputs (first ``seq_len``) and targets (last ``seq_len``, i.e. inputs shifted by one).
  For the paper's 32 batches of 8 x 128 tokens, use ``seq_len=128, num_sequences=256``.

  Args:
    tokens: (T,) int word ids in [0, vocab_size).
    vocab_size: vocabulary size (static).
    key: PRNG key of this task.
    seq_len: tokens per sequence (static); needs T >= seq_len + 1.
    num_sequences: sequences in the task (static).

  Returns:
    inputs, targets: int32 (num_sequences, seq_len) each.
  """
  t = tokens.shape[0]
  _check_count('seq_len', seq_len, t - 1)
  if not isinstance(num_sequences, int) or num_sequences < 1:
    raise ValueError(f'num_sequences must be a positive Python int, got {num_sequences!r}')
  perm_key, start_key = jax.random.split(key)
  perm = jax.random.permutation(perm_key, vocab_size).astype(jnp.int32)
  starts = jax.random.randint(start_key, (num_sequences,), 0, t - seq_len, dtype=jnp.int32)
  windows = starts[:, None] + jnp.arange(seq_len + 1, dtype=jnp.int32)[None, :]
  seqs = perm[jnp.asarray(tokens)[windows]]
  return seqs[:, :-1], seqs[:, 1:]


def batch_indices(num_examples: int, batch_size: int, epochs: int, key: Array) -> Array:
  """Example indices for ``epochs`` passes in minibatches, reshuffled every epoch.

  Each epoch is a fresh permutation cut into ``num_examples // batch_size`` batches; a
  final partial batch is dropped (none is in the paper's settings: 10,000/16, 1,200/16,
  128/16, 1,200/100). Memory-light alternative to :func:`batches`: gather
  ``x[idx[step]]`` inside the ``lax.scan`` body.

  Args:
    num_examples: examples in the task (static).
    batch_size: examples per batch (static).
    epochs: passes over the task (static).
    key: PRNG key for the shuffles.

  Returns:
    int32 (epochs * (num_examples // batch_size), batch_size).
  """
  _check_count('batch_size', batch_size, num_examples)
  if not isinstance(epochs, int) or epochs < 1:
    raise ValueError(f'epochs must be a positive Python int, got {epochs!r}')
  steps = num_examples // batch_size
  keys = jax.random.split(key, epochs)
  perms = jax.vmap(lambda k: shuffle(k, num_examples))(keys)
  return perms[:, : steps * batch_size].reshape(epochs * steps, batch_size).astype(jnp.int32)


def batches(x: Array, y: Array, batch_size: int, epochs: int, key: Array) -> tuple[Array, Array]:
  """Cut a task into minibatches for ``lax.scan``, reshuffled every epoch.

  Materialises every batch: memory is ``epochs`` times the task (e.g. Random-label MNIST,
  400 epochs of 1,200 x 784 float32, is 1.5 GB); prefer :func:`batch_indices` there.

  Args:
    x: (N, ...) inputs.
    y: (N, ...) targets.
    batch_size: examples per batch (static).
    epochs: passes over the task (static).
    key: PRNG key for the shuffles.

  Returns:
    xb: (steps, batch_size, ...), yb: (steps, batch_size, ...), steps =
    epochs * (N // batch_size).
  """
  if x.shape[0] != y.shape[0]:
    raise ValueError(f'x has {x.shape[0]} examples but y has {y.shape[0]}')
  idx = batch_indices(x.shape[0], batch_size, epochs, key)
  return x[idx], y[idx]
