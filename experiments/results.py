"""A run's output directory: config, dataset, per-task metrics, headline, checkpoints.

Layout of ``OUT/``:

* ``config.json``: the full experiment config (with the protocol's resolved values),
  the seeds, and the dataset name and source that served the data;
* ``metrics.csv``: one row per (seed, sweep value, task): accuracy, loss, weight
  magnitude, resets and dead fraction per neuron group; rewritten after every chunk of
  tasks, so a crash or Ctrl-C keeps everything finished so far;
* ``summary.json``: the headline (mean online accuracy over the last 10% of tasks,
  mean ± std over seeds, per sweep value), written with the metrics; ``complete`` is
  true only once every task has run *and* the checkpoint of the last task is on disk;
* ``checkpoint/<tasks done>/``: an orbax checkpoint of the run's full carry and the
  metrics so far, at a task boundary, every ``checkpoint_every`` tasks. Orbax writes it
  into a temporary directory and renames it when complete, so a killed run leaves at
  worst an unfinished temporary directory, which is never loaded; only the newest
  checkpoint is kept. Under several processes every process writes its own shards of
  the carry (orbax's multi-host protocol) and process 0 the rest. Run directories from
  before orbax hold ``checkpoint/state.msgpack`` (Flax msgpack); it is still read when
  no orbax checkpoint exists, and removed once one is written.

Under several processes only process 0 writes config, metrics and summary (the driver
asks :func:`is_writer`); every process takes part in a checkpoint.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pathlib
import shutil
from typing import Any, Optional, Sequence

import jax
import numpy as np
from flax import serialization

from experiments.runner import last_fraction_summary


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
  tmp = path.with_suffix(path.suffix + '.tmp')
  with open(tmp, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def is_writer() -> bool:
  """Whether this process writes results: the only one, or process 0 of several."""
  return jax.process_index() == 0


def config_record(config, seeds: Sequence[int], dataset: str, source: str) -> dict:
  d = config.to_dict()
  d['hparams'] = {
      k: (repr(v) if not isinstance(v, (int, float, str, bool)) else v)
      for k, v in d['hparams'].items()
  }
  return {'config': d, 'seeds': list(seeds), 'dataset': dataset, 'source': source}


def fingerprint(record: dict) -> str:
  """Hash of what determines the results (config and seeds, not the output paths)."""
  key = json.dumps(
      {'config': record['config'], 'seeds': record['seeds'], 'dataset': record['dataset']},
      sort_keys=True,
      default=str,
  )
  return hashlib.sha256(key.encode()).hexdigest()[:16]


def check_resumable(out: pathlib.Path, fp: str) -> None:
  """Refuses (before anything is written) a directory that holds another run.

  Raises:
    ValueError: ``out``'s ``config.json`` or checkpoint was written by a run with a
      different config, seeds or dataset.
  """
  config = out / 'config.json'
  found = []
  if config.exists():
    try:
      found.append((config, fingerprint(json.loads(config.read_text()))))
    except (ValueError, KeyError):
      found.append((config, None))
  latest = _latest(out)
  if latest is not None:
    found.append((out / 'checkpoint' / str(latest[1]), _read_meta(*latest)['fingerprint']))
  legacy = out / 'checkpoint' / _LEGACY
  if legacy.exists():
    found.append((legacy, serialization.msgpack_restore(legacy.read_bytes()).get('fingerprint')))
  for path, other in found:
    if other != fp:
      raise ValueError(_other_run(path))


def _other_run(path) -> str:
  return (
      f'{path} was written by a run with a different config or seeds; resume with the '
      'same flags, or use a new --out directory.'
  )


def write_config(out: pathlib.Path, record: dict) -> None:
  out.mkdir(parents=True, exist_ok=True)
  _atomic_write(out / 'config.json', json.dumps(record, indent=2, default=str).encode())


def metrics_rows(metrics: dict, members: Sequence[dict], first_task: int = 0) -> list[dict]:
  rows = []
  acc = np.asarray(metrics['accuracy'])
  for i, m in enumerate(members):
    for t in range(acc.shape[1]):
      row = {
          'seed': m['seed'],
          'sweep_value': m['sweep_value'],
          'task': first_task + t,
          'accuracy': float(acc[i, t]),
          'loss': float(metrics['loss'][i, t]),
          'weight_magnitude': float(metrics['weight_magnitude'][i, t]),
      }
      for g, v in sorted(metrics['resets'].items()):
        row[f'resets/{g}'] = int(v[i, t])
      for g, v in sorted(metrics['dead_fraction'].items()):
        row[f'dead_fraction/{g}'] = float(v[i, t])
      rows.append(row)
  return rows


def summarize(
    metrics: dict, members: Sequence[dict], total_tasks: int, *, saved_tasks: int
) -> dict:
  """Headline per sweep value.

  ``complete`` says whether all tasks have run and the checkpoint after the last one
  (``saved_tasks``, the tasks the newest checkpoint on disk holds) was written: a run
  whose final save failed is not complete, and its rerun writes that checkpoint.
  """
  acc = np.asarray(metrics['accuracy'])
  done = int(acc.shape[1])
  out = {
      'metric': 'online accuracy, mean over the last 10% of tasks, mean ± std over seeds',
      'tasks_done': done,
      'tasks_total': total_tasks,
      'tasks_checkpointed': saved_tasks,
      'complete': done == total_tasks and saved_tasks == total_tasks,
      'by_sweep_value': [],
  }
  values = sorted({m['sweep_value'] for m in members})
  for v in values:
    idx = [i for i, m in enumerate(members) if m['sweep_value'] == v]
    s = last_fraction_summary(acc[idx])
    s['sweep_value'] = v
    s['seeds'] = [members[i]['seed'] for i in idx]
    out['by_sweep_value'].append(s)
  return out


def write_metrics(
    out: pathlib.Path, metrics: dict, members: Sequence[dict], total_tasks: int, *, saved_tasks: int
) -> dict:
  """Writes ``metrics.csv`` and ``summary.json`` (see :func:`summarize`)."""
  rows = metrics_rows(metrics, members)
  tmp = out / 'metrics.csv.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, out / 'metrics.csv')
  return write_summary(out, metrics, members, total_tasks, saved_tasks=saved_tasks)


def write_summary(
    out: pathlib.Path, metrics: dict, members: Sequence[dict], total_tasks: int, *, saved_tasks: int
) -> dict:
  summary = summarize(metrics, members, total_tasks, saved_tasks=saved_tasks)
  _atomic_write(out / 'summary.json', json.dumps(summary, indent=2).encode())
  return summary


def read_metrics(out: pathlib.Path) -> list[dict]:
  with open(out / 'metrics.csv', newline='') as f:
    return list(csv.DictReader(f))


_LEGACY = 'state.msgpack'  # the checkpoint file of run directories from before orbax


def _manager(out: pathlib.Path, create: bool):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  # orbax (0.12.7, 0.12.8) refuses relative paths, and the user's --out usually is one
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, create=create, enable_async_checkpointing=False, cleanup_tmp_directories=create
  )
  return ocp.CheckpointManager((out / 'checkpoint').absolute(), options=options)


def _latest(out: pathlib.Path):
  """``(manager, step)`` of the newest complete orbax checkpoint in ``out``, or None."""
  directory = out / 'checkpoint'
  if not (directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())):
    return None  # nothing to read: no manager, so nothing is touched
  manager = _manager(out, create=False)
  step = manager.latest_step()
  return None if step is None else (manager, step)


def _read_meta(manager, step: int) -> dict:
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def save_checkpoint(out: pathlib.Path, fp: str, done: int, carry: Any, chunks: list) -> None:
  """Checkpoints the carry and the metrics so far (orbax; every process must call it)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  history = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *chunks)
  manager = _manager(out, create=True)
  try:
    manager.save(
        done,
        force=True,
        args=ocp.args.Composite(
            carry=ocp.args.StandardSave(carry),
            history=ocp.args.StandardSave(history),
            meta=ocp.args.JsonSave({'fingerprint': fp, 'done': done}),
        ),
    )
    manager.wait_until_finished()
  except BaseException:
    # a half-written checkpoint must not be left to block or confuse the rerun
    if is_writer():
      _remove_unfinished(out / 'checkpoint')
    raise
  finally:
    manager.close()
  legacy = out / 'checkpoint' / _LEGACY
  if is_writer() and legacy.exists():
    legacy.unlink()


def _remove_unfinished(directory: pathlib.Path) -> None:
  """Removes orbax's temporary directories (a save that did not finish)."""
  for p in directory.glob('*.orbax-checkpoint-tmp*'):
    shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(out: pathlib.Path, fp: str, carry_template: Any) -> Optional[dict]:
  """The checkpoint in ``out`` as ``{'done', 'carry', 'metrics'}``, or None if absent.

  The newest complete orbax checkpoint, else a legacy ``state.msgpack``. The carry is
  restored with ``carry_template``'s structure, dtypes and shardings; ``metrics`` is a
  list of per-chunk metrics (one chunk holding every task so far).

  Raises:
    ValueError: the checkpoint belongs to a different config or seeds.
  """
  latest = _latest(out)
  if latest is None:
    return _load_legacy(out, fp, carry_template)
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  manager, step = latest
  meta = _read_meta(manager, step)
  if meta['fingerprint'] != fp:
    raise ValueError(_other_run(out / 'checkpoint' / str(step)))
  state = manager.restore(
      step,
      args=ocp.args.Composite(
          carry=ocp.args.StandardRestore(carry_template), history=ocp.args.StandardRestore()
      ),
  )
  history = jax.tree.map(np.asarray, state['history'])
  return {'done': int(meta['done']), 'carry': state['carry'], 'metrics': [history]}


def _load_legacy(out: pathlib.Path, fp: str, carry_template: Any) -> Optional[dict]:
  path = out / 'checkpoint' / _LEGACY
  if not path.exists():
    return None
  raw = serialization.msgpack_restore(path.read_bytes())
  if raw.get('fingerprint') != fp:
    raise ValueError(_other_run(path))
  carry = serialization.from_state_dict(carry_template, raw['carry'])
  chunks = [c for _, c in sorted(raw['chunks'].items(), key=lambda kv: int(kv[0]))]
  return {'done': int(raw['done']), 'carry': carry, 'metrics': chunks}
