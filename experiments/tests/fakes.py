"""Small dataset files in the real formats, for loader and end-to-end tests."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
  """Write ``arr`` (uint8) as an IDX file, the MNIST distribution format."""
  arr = np.asarray(arr, dtype=np.uint8)
  header = struct.pack('>BBBB', 0, 0, 0x08, arr.ndim) + struct.pack(f'>{arr.ndim}I', *arr.shape)
  raw = header + arr.tobytes()
  path.parent.mkdir(parents=True, exist_ok=True)
  if gz:
    with gzip.open(path, 'wb') as f:
      f.write(raw)
  else:
    path.write_bytes(raw)


def make_mnist_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return (
      rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
      rng.integers(0, 10, (n,), dtype=np.uint8),
  )


def write_mnist_dir(d: Path, n: int = 30, seed: int = 0, gz: bool = True, prefix: str = 'train'):
  images, labels = make_mnist_like(n, seed)
  sfx = '.gz' if gz else ''
  write_idx(d / f'{prefix}-images-idx3-ubyte{sfx}', images, gz)
  write_idx(d / f'{prefix}-labels-idx1-ubyte{sfx}', labels, gz)
  return images, labels


def cifar_batch(n: int, seed: int, num_classes: int = 10, one_based: bool = False):
  rng = np.random.default_rng(seed)
  data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
  labels = [int(v) for v in rng.integers(0, num_classes, n) + (1 if one_based else 0)]
  return data, labels


def dump_py2_style(path_or_file, data, labels, protocol=2):
  """A dict with bytes keys, as in the original Python-2 CIFAR pickles."""
  obj = {
      b'batch_label': b'testing batch',
      b'labels': labels,
      b'data': data,
      b'filenames': [b'x.png'] * len(labels),
  }
  if isinstance(path_or_file, (str, Path)):
    with open(path_or_file, 'wb') as f:
      pickle.dump(obj, f, protocol=protocol)
  else:
    pickle.dump(obj, path_or_file, protocol=protocol)


def write_imagenet32(d: Path, per_batch: int = 6, npz: bool = False, every_class: bool = False):
  """Ten batches of ``per_batch`` images of classes 1-3 (1-based, as the files are), or
  with ``every_class`` of all 1,000 classes round-robin (Continual ImageNet's stream
  draws from all of them)."""
  d.mkdir(parents=True, exist_ok=True)
  all_data, all_labels = [], []
  for i in range(1, 11):
    data, labels = cifar_batch(per_batch, seed=100 + i, num_classes=3, one_based=True)
    if every_class:
      labels = [int(c) for c in (np.arange(per_batch) + (i - 1) * per_batch) % 1000 + 1]
    if npz:
      np.savez(
          d / f'train_data_batch_{i}.npz', data=data, labels=np.array(labels), mean=data.mean(0)
      )
    else:
      with open(d / f'train_data_batch_{i}', 'wb') as f:
        pickle.dump({'data': data, 'labels': labels, 'mean': data.mean(0)}, f)
    all_data.append(data)
    all_labels += labels
  return np.concatenate(all_data), np.array(all_labels)


# Flags that shorten each benchmark's protocol to seconds (the defaults run for hours).
SHORT_PROTOCOL = {
    'permuted_mnist': ['--examples-per-task', '64'],
    'random_label_mnist': ['--examples-per-task', '32', '--epochs', '2'],
    'random_label_cifar': ['--examples-per-task', '32', '--epochs', '2'],
    'continual_imagenet': ['--examples-per-task', '4', '--epochs', '1', '--batch-size', '2'],
    'permuted_shakespeare': ['--examples-per-task', '8', '--epochs', '1', '--batch-size', '4'],
}


def write_data_dir(d: Path) -> Path:
  """Small copies of every benchmark's data in ``d``, as a data directory holds them."""
  write_mnist_dir(d / 'mnist', n=300)
  cifar = d / 'cifar-10-batches-py'
  cifar.mkdir(parents=True)
  for i in range(1, 6):
    dump_py2_style(cifar / f'data_batch_{i}', *cifar_batch(20, seed=i))
  write_imagenet32(d / 'imagenet32', per_batch=200, every_class=True)  # 2 images a class
  (d / 'shakespeare.txt').write_text(' '.join(f'w{i % 37} v{(i * 7) % 11}' for i in range(2000)))
  return d
