"""A run's output directory: config, dataset, per-task metrics, headline, checkpoints.

Layout of ``OUT/``:

* ``config.json``: the full experiment config (with the protocol's resolved values),
  the seeds, and the dataset name and source that served the data;
* ``metrics.csv``: one row per (seed, sweep value, task): accuracy, loss, weight
  magnitude, resets and dead fraction per neuron group; rewritten after every chunk of
  tasks, so a crash or Ctrl-C keeps everything finished so far;
* ``summary.json``: the headline (mean online accuracy over the last 10% of tasks,
  mean ± std over seeds, per sweep value), written with the metrics;
* ``checkpoint/state.msgpack``: the run's full carry at a task boundary, written
  atomically with Flax's serialization every ``checkpoint_every`` tasks.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pathlib
from typing import Any, Optional, Sequence

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


def config_record(config, seeds: Sequence[int], dataset: str, source: str) -> dict:
  d = config.to_dict()
  d['hparams'] = {k: (repr(v) if not isinstance(v, (int, float, str, bool)) else v)
                  for k, v in d['hparams'].items()}
  return {'config': d, 'seeds': list(seeds), 'dataset': dataset, 'source': source}


def fingerprint(record: dict) -> str:
  """Hash of what determines the results (config and seeds, not the output paths)."""
  key = json.dumps({'config': record['config'], 'seeds': record['seeds'],
                    'dataset': record['dataset']}, sort_keys=True, default=str)
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
  checkpoint = out / 'checkpoint' / 'state.msgpack'
  if checkpoint.exists():
    found.append((checkpoint, serialization.msgpack_restore(checkpoint.read_bytes())
                  .get('fingerprint')))
  for path, other in found:
    if other != fp:
      raise ValueError(f'{path} was written by a run with a different config or seeds; '
                       'resume with the same flags, or use a new --out directory.')


def write_config(out: pathlib.Path, record: dict) -> None:
  out.mkdir(parents=True, exist_ok=True)
  _atomic_write(out / 'config.json', json.dumps(record, indent=2, default=str).encode())


def metrics_rows(metrics: dict, members: Sequence[dict], first_task: int = 0) -> list[dict]:
  rows = []
  acc = np.asarray(metrics['accuracy'])
  for i, m in enumerate(members):
    for t in range(acc.shape[1]):
      row = {'seed': m['seed'], 'sweep_value': m['sweep_value'], 'task': first_task + t,
             'accuracy': float(acc[i, t]), 'loss': float(metrics['loss'][i, t]),
             'weight_magnitude': float(metrics['weight_magnitude'][i, t])}
      for g, v in sorted(metrics['resets'].items()):
        row[f'resets/{g}'] = int(v[i, t])
      for g, v in sorted(metrics['dead_fraction'].items()):
        row[f'dead_fraction/{g}'] = float(v[i, t])
      rows.append(row)
  return rows


def summarize(metrics: dict, members: Sequence[dict], total_tasks: int) -> dict:
  """Headline per sweep value; ``complete`` says whether all tasks have run."""
  acc = np.asarray(metrics['accuracy'])
  out = {'metric': 'online accuracy, mean over the last 10% of tasks, mean ± std over seeds',
         'tasks_done': int(acc.shape[1]), 'tasks_total': total_tasks,
         'complete': acc.shape[1] == total_tasks, 'by_sweep_value': []}
  values = sorted({m['sweep_value'] for m in members})
  for v in values:
    idx = [i for i, m in enumerate(members) if m['sweep_value'] == v]
    s = last_fraction_summary(acc[idx])
    s['sweep_value'] = v
    s['seeds'] = [members[i]['seed'] for i in idx]
    out['by_sweep_value'].append(s)
  return out


def write_metrics(out: pathlib.Path, metrics: dict, members: Sequence[dict],
                  total_tasks: int) -> dict:
  rows = metrics_rows(metrics, members)
  tmp = out / 'metrics.csv.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, out / 'metrics.csv')
  summary = summarize(metrics, members, total_tasks)
  _atomic_write(out / 'summary.json', json.dumps(summary, indent=2).encode())
  return summary


def read_metrics(out: pathlib.Path) -> list[dict]:
  with open(out / 'metrics.csv', newline='') as f:
    return list(csv.DictReader(f))


def save_checkpoint(out: pathlib.Path, fp: str, done: int, carry: Any, chunks: list) -> None:
  (out / 'checkpoint').mkdir(parents=True, exist_ok=True)
  payload = {'fingerprint': fp, 'done': done, 'carry': carry, 'chunks': chunks}
  _atomic_write(out / 'checkpoint' / 'state.msgpack', serialization.msgpack_serialize(
      serialization.to_state_dict(payload)))


def load_checkpoint(out: pathlib.Path, fp: str, carry_template: Any) -> Optional[dict]:
  """The checkpoint in ``out`` as ``{'done', 'carry', 'metrics'}``, or None if absent.

  Raises:
    ValueError: the checkpoint belongs to a different config or seeds.
  """
  path = out / 'checkpoint' / 'state.msgpack'
  if not path.exists():
    return None
  raw = serialization.msgpack_restore(path.read_bytes())
  if raw.get('fingerprint') != fp:
    raise ValueError(f'{path} was written by a run with a different config or seeds; '
                     'resume with the same flags, or use a new --out directory.')
  carry = serialization.from_state_dict(carry_template, raw['carry'])
  chunks = [c for _, c in sorted(raw['chunks'].items(), key=lambda kv: int(kv[0]))]
  return {'done': int(raw['done']), 'carry': carry, 'metrics': chunks}
