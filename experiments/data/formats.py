"""Readers for the raw file formats the benchmarks' datasets are distributed in.

* IDX (MNIST, Fashion-MNIST): big-endian header ``0x00 0x00 <dtype> <ndim>``,
  ``ndim`` uint32 sizes, then the data; optionally gzip-compressed.
* CIFAR-10 python batches: pickled dicts with ``data`` (N, 3072) uint8 in
  channel-major order (1024 red, 1024 green, 1024 blue) and ``labels``.
* Downsampled ImageNet 32x32 (Chrabaszcz et al. 2017): pickled dicts (or ``.npz``)
  with ``data`` (N, 3072) uint8, same channel-major order, and 1-based ``labels``.

Pickles are read with a restricted unpickler that only rebuilds numpy arrays and
plain Python containers, so a malicious file cannot run code.
"""

from __future__ import annotations

import gzip
import io
import pickle
import warnings
from pathlib import Path
from typing import IO, Any, Union

import numpy as np

_IDX_DTYPES = {
    0x08: np.dtype('>u1'),
    0x09: np.dtype('>i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}


def open_maybe_gzip(path: Union[str, Path]) -> IO[bytes]:
  """Open ``path`` for binary reading, decompressing if it is gzip (by magic bytes)."""
  path = Path(path)
  with open(path, 'rb') as f:
    magic = f.read(2)
  if magic == b'\x1f\x8b':
    return gzip.open(path, 'rb')
  return open(path, 'rb')


def read_idx(path: Union[str, Path]) -> np.ndarray:
  """Read an IDX file (``.gz`` or not) into a native-endian numpy array.

  Args:
    path: file path.

  Returns:
    array with the shape stored in the header.

  Raises:
    ValueError: if the header is malformed or the payload size does not match.
  """
  with open_maybe_gzip(path) as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(f'{path}: not an IDX file (bad magic {raw[:4]!r})')
  dtype = _IDX_DTYPES[raw[2]]
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f'{path}: truncated IDX header')
  shape = tuple(int(s) for s in np.frombuffer(raw, dtype='>u4', count=ndim, offset=4))
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(
        f'{path}: IDX payload has {len(raw) - header} bytes, header {shape} ' f'implies {expected}'
    )
  arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
  return arr.astype(dtype.newbyteorder('='))


# (module, name) pairs a numpy-array pickle may legitimately reference.
_SAFE_GLOBALS = {
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', 'scalar'),
    ('numpy.core.numeric', '_frombuffer'),
    ('numpy._core.numeric', '_frombuffer'),
    ('_codecs', 'encode'),
    ('copy_reg', '_reconstructor'),
    ('copyreg', '_reconstructor'),
    ('__builtin__', 'object'),
    ('builtins', 'object'),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in _SAFE_GLOBALS:
      raise pickle.UnpicklingError(
          f'refusing to unpickle {module}.{name}: only numpy arrays '
          'and plain containers are allowed in dataset files'
      )
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', DeprecationWarning)  # numpy.core -> numpy._core shim
      return super().find_class(module, name)


def load_pickle(f: Union[str, Path, IO[bytes]]) -> Any:
  """Unpickle a dataset file (Python 2 or 3 pickle) allowing only numpy arrays and containers.

  Python 2 pickles are decoded with ``encoding="bytes"``; string keys of the top-level
  dict come back as ``bytes`` and are decoded to ``str`` here.
  """
  if isinstance(f, (str, Path)):
    with open(f, 'rb') as fh:
      return load_pickle(fh)
  obj = _NumpyOnlyUnpickler(f, encoding='bytes').load()
  if isinstance(obj, dict):
    obj = {(k.decode('latin1') if isinstance(k, bytes) else k): v for k, v in obj.items()}
  return obj


def chw_rows_to_nhwc(data: np.ndarray, size: int = 32, channels: int = 3) -> np.ndarray:
  """Convert (N, C*H*W) channel-major rows (CIFAR / downsampled-ImageNet layout) to NHWC."""
  data = np.asarray(data)
  if data.ndim != 2 or data.shape[1] != channels * size * size:
    raise ValueError(f'expected rows of {channels * size * size} values, got shape {data.shape}')
  return np.ascontiguousarray(data.reshape(-1, channels, size, size).transpose(0, 2, 3, 1))


def read_batch(path_or_file: Union[str, Path, IO[bytes]], name: str = '') -> dict[str, np.ndarray]:
  """Read one CIFAR / downsampled-ImageNet batch (pickle or ``.npz``).

  Args:
    path_or_file: a path, or an open binary file (pickle only).
    name: used in error messages when a file object is given.

  Returns:
    dict with ``data`` (N, 3072) uint8 and ``labels`` (N,) int64, labels as stored.

  Raises:
    ValueError: if the file lacks ``data`` / ``labels`` or their sizes disagree.
  """
  label = name or str(path_or_file)
  if isinstance(path_or_file, (str, Path)) and str(path_or_file).endswith('.npz'):
    with np.load(path_or_file, allow_pickle=False) as z:
      d = {k: z[k] for k in z.files}
  else:
    d = load_pickle(path_or_file)
  if not isinstance(d, dict) or 'data' not in d or 'labels' not in d:
    keys = sorted(d) if isinstance(d, dict) else type(d).__name__
    raise ValueError(f"{label}: expected a dict with 'data' and 'labels', got {keys}")
  data = np.asarray(d['data'])
  labels = np.asarray(d['labels']).astype(np.int64).reshape(-1)
  if data.dtype != np.uint8:
    raise ValueError(f"{label}: 'data' has dtype {data.dtype}, expected uint8")
  if data.shape[0] != labels.shape[0]:
    raise ValueError(f'{label}: {data.shape[0]} images but {labels.shape[0]} labels')
  return {'data': data, 'labels': labels}


def read_batch_bytes(raw: bytes, name: str) -> dict[str, np.ndarray]:
  """:func:`read_batch` for a pickle already in memory (e.g. a tar member)."""
  return read_batch(io.BytesIO(raw), name=name)
