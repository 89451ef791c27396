"""Container type and error type shared by the dataset loaders."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

#: Environment variable naming a directory that holds raw dataset files.
DATA_DIR_ENV = 'SNR_JAX_DATA_DIR'


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """One split of one dataset, held as numpy arrays on the host.

  Image datasets fill ``images`` and ``labels``; the text dataset fills
  ``tokens`` and ``vocab``. The runner moves the arrays to the device.

  Attributes:
    name: canonical dataset name, e.g. ``"mnist"``.
    source: human-readable description of what served the data, e.g.
      ``"idx files in /data/mnist"`` or ``"tfds mnist 3.0.1 in ~/tensorflow_datasets"``.
    split: ``"train"`` or ``"test"``.
    images: ``uint8`` array, NHWC, e.g. ``(60000, 28, 28, 1)`` for MNIST; ``None`` for text.
    labels: ``int32`` array ``(N,)`` of class ids in ``[0, num_classes)``; ``None`` for text.
    num_classes: number of classes (0 for text).
    tokens: ``int32`` array ``(T,)`` of word ids into ``vocab``; ``None`` for images.
    vocab: list of words, ``vocab[i]`` is the word with id ``i``; ``None`` for images.
  """

  name: str
  source: str
  split: str = 'train'
  images: Optional[np.ndarray] = None
  labels: Optional[np.ndarray] = None
  num_classes: int = 0
  tokens: Optional[np.ndarray] = None
  vocab: Optional[list[str]] = None

  def __len__(self) -> int:
    if self.images is not None:
      return int(self.images.shape[0])
    if self.tokens is not None:
      return int(self.tokens.shape[0])
    return 0

  @property
  def vocab_size(self) -> int:
    """Number of words in ``vocab`` (0 for image datasets)."""
    return len(self.vocab) if self.vocab is not None else 0

  def __repr__(self) -> str:
    parts = [f'name={self.name!r}', f'split={self.split!r}', f'source={self.source!r}']
    if self.images is not None:
      parts.append(f'images={self.images.dtype}{tuple(self.images.shape)}')
      parts.append(f'num_classes={self.num_classes}')
    if self.tokens is not None:
      parts.append(f'tokens={self.tokens.dtype}{tuple(self.tokens.shape)}')
      parts.append(f'vocab_size={self.vocab_size}')
    return f"Dataset({', '.join(parts)})"


class DatasetNotFoundError(FileNotFoundError):
  """A requested dataset could not be obtained from any source.

  Attributes:
    dataset: the dataset name.
    attempts: one line per source tried, saying where it looked and why it failed.
    how_to_get: instructions for obtaining the data.
  """

  def __init__(self, dataset: str, attempts: Sequence[str], how_to_get: str = ''):
    self.dataset = dataset
    self.attempts = list(attempts)
    self.how_to_get = how_to_get
    lines = [f'Dataset {dataset!r} could not be loaded. Sources tried, in order:']
    if self.attempts:
      lines += [f'  {i}. {a}' for i, a in enumerate(self.attempts, 1)]
    else:
      lines.append('  (none)')
    if how_to_get:
      lines.append('How to obtain it:')
      lines += [f'  {line}' for line in how_to_get.strip().splitlines()]
    super().__init__('\n'.join(lines))

  def __str__(self) -> str:  # FileNotFoundError would prefix errno fields otherwise
    return self.args[0]
