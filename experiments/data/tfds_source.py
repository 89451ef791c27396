"""Reading already-prepared TensorFlow Datasets (TFDS) directories, offline.

The loaders never let TFDS touch the network unless the caller passes
``allow_download=True``: they look for a prepared dataset directory
(``<tfds_dir>/<name>[/<config>]/<version>/dataset_info.json``) themselves and
open it with :func:`tfds.builder_from_directory`, which reads only local files.

Reading needs:
  * ``array_record`` datasets of plain tensors: only ``tensorflow_datasets``
    (+ ``array_record``), via ``builder.as_data_source``;
  * ``tfrecord`` datasets, or ones with encoded ``Image``/``Text`` features:
    TensorFlow as well (``pip install tensorflow-cpu``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np


class TfdsUnavailable(Exception):
  """TFDS cannot serve this dataset here; the message says why (for error reports)."""


def tfds_data_dirs(data_dir: Optional[os.PathLike | str]) -> list[Path]:
  """TFDS data dirs to look in: ``data_dir``, ``$TFDS_DATA_DIR``, ``~/tensorflow_datasets``."""
  out: list[Path] = []
  cands = []
  if data_dir is not None:
    cands.append(Path(data_dir).expanduser())
  if os.environ.get('TFDS_DATA_DIR'):
    cands.append(Path(os.environ['TFDS_DATA_DIR']).expanduser())
  cands.append(Path('~/tensorflow_datasets').expanduser())
  for c in cands:
    if c not in out:
      out.append(c)
  return out


def _version_key(name: str) -> tuple[int, ...]:
  return tuple(int(p) for p in name.split('.'))


def find_prepared(tfds_name: str, dirs: Iterable[Path]) -> Optional[Path]:
  """Return the newest prepared version directory of ``tfds_name`` in ``dirs``, or None.

  Args:
    tfds_name: TFDS name, optionally with a config, e.g. ``"imagenet_resized/32x32"``.
    dirs: TFDS data directories to look in, in order.
  """
  for d in dirs:
    base = d / tfds_name
    if not base.is_dir():
      continue
    versions = []
    for v in base.iterdir():
      try:
        key = _version_key(v.name)
      except ValueError:
        continue
      if (v / 'dataset_info.json').is_file():
        versions.append((key, v))
    if versions:
      return max(versions)[1]
  return None


def _read_records(
    builder: Any,
    split: str,
    keys: tuple[str, ...],
    keep: Optional[Callable[[dict], bool]] = None,
    chunk: int = 4096,
) -> dict[str, list]:
  """Read ``keys`` of every record of ``split`` from an array_record builder."""
  source = builder.as_data_source(split=split)
  out: dict[str, list] = {k: [] for k in keys}
  n = len(source)
  for start in range(0, n, chunk):
    idx = list(range(start, min(n, start + chunk)))
    recs = source.__getitems__(idx) if hasattr(source, '__getitems__') else [source[i] for i in idx]
    for r in recs:
      if keep is not None and not keep(r):
        continue
      for k in keys:
        out[k].append(r[k])
  return out


def load_tfds(
    tfds_name: str,
    split: str,
    keys: tuple[str, ...],
    data_dir: Optional[os.PathLike | str],
    allow_download: bool = False,
    keep: Optional[Callable[[dict], bool]] = None,
) -> tuple[dict[str, Any], str]:
  """Load ``keys`` of a TFDS dataset split as numpy, without network unless allowed.

  Args:
    tfds_name: TFDS dataset name (with config if any).
    split: split name, e.g. ``"train"``.
    keys: feature names to return, e.g. ``("image", "label")``.
    data_dir: extra TFDS data directory to search first.
    allow_download: if no prepared copy is found, let TFDS download and prepare it
      (needs network and usually TensorFlow).
    keep: optional predicate on a record (dict) applied while reading
      (array_record path only); lets callers subsample without holding everything.

  Returns:
    (dict key -> list or array of values, source description).

  Raises:
    TfdsUnavailable: with the reason, when TFDS cannot serve the data here.
  """
  if importlib.util.find_spec('tensorflow_datasets') is None:
    raise TfdsUnavailable('tensorflow_datasets is not installed')
  dirs = tfds_data_dirs(data_dir)
  prepared = find_prepared(tfds_name, dirs)
  import tensorflow_datasets as tfds  # imported lazily: only when this source is tried

  if prepared is None:
    where = ', '.join(str(d / tfds_name) for d in dirs)
    if not allow_download:
      raise TfdsUnavailable(
          f'no prepared copy of {tfds_name!r} at {where} '
          '(downloading is disabled; pass allow_download=True to let TFDS '
          'fetch it)'
      )
    try:
      builder = tfds.builder(tfds_name, data_dir=str(dirs[0]))
      builder.download_and_prepare()
    except Exception as e:  # network, missing TensorFlow, manual download needed, ...
      raise TfdsUnavailable(
          f'download of {tfds_name!r} into {dirs[0]} failed: ' f'{type(e).__name__}: {e}'
      ) from e
    prepared = find_prepared(tfds_name, dirs[:1])
    if prepared is None:
      raise TfdsUnavailable(f'TFDS reported success but no prepared {tfds_name!r} is in {dirs[0]}')

  desc = f'tfds {tfds_name} {prepared.name} in {prepared.parent}'
  try:
    builder = tfds.builder_from_directory(str(prepared))
    fmt = str(getattr(builder.info, 'file_format', '')).lower()
    if 'array_record' in fmt:
      try:
        data = _read_records(builder, split, keys, keep)
        return data, f'{desc} (array_record)'
      except ModuleNotFoundError as e:
        raise TfdsUnavailable(
            f'prepared copy at {prepared} needs {e.name!r} to decode '
            '(pip install tensorflow-cpu)'
        ) from e
    if importlib.util.find_spec('tensorflow') is None:
      raise TfdsUnavailable(
          f"prepared copy at {prepared} is in {fmt or 'tfrecord'} format, "
          'which needs TensorFlow to read (pip install tensorflow-cpu)'
      )
    ds = builder.as_dataset(split=split, batch_size=-1)
    arrays = tfds.as_numpy(ds)
    data = {k: np.asarray(arrays[k]) for k in keys}
    if keep is not None:
      n = len(next(iter(data.values())))
      mask = np.array([keep({k: data[k][i] for k in keys}) for i in range(n)], dtype=bool)
      data = {k: v[mask] for k, v in data.items()}
    return data, f"{desc} ({fmt or 'tfrecord'})"
  except TfdsUnavailable:
    raise
  except Exception as e:
    raise TfdsUnavailable(
        f'prepared copy at {prepared} could not be read: ' f'{type(e).__name__}: {e}'
    ) from e
