"""The study CSV: a cell's rows (one per seed) from its run directory, the rows an earlier
CSV records for it (so a committed CSV resumes a study without the runs), reading and
writing the file; and the curves file beside it, each final cell's accuracy and dead
fraction per task (so the figures can be drawn again without the runs)."""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
from typing import Sequence

from experiments.study.spec import Cell, cell_config

CSV_FIELDS = (
    'study',
    'benchmark',
    'dataset',
    'optimizer',
    'learning_rate',
    'method',
    'hparams',
    'phase',
    'seed',
    'tasks_done',
    'tasks_total',
    'protocol_tasks',
    'avg_accuracy',
    'last10_accuracy',
    'dead_fraction_last',
    'wall_s',
    'run_dir',
    'layers',
)


def layer_figures(metrics: Sequence[dict], steps_per_task: int) -> dict:
  """Per neuron group: resets per step over the run and the dead fraction after its last task.

  ``metrics`` are one seed's rows of a run's metrics.csv, in task order; its
  ``resets/<group>`` columns count a task's resets, its ``dead_fraction/<group>`` columns
  the fraction of units dead at the task's end. Groups are the model's layers (a conv
  layer's channels, a Dense layer's units), so conv and dense layers are reported apart.
  """
  steps = len(metrics) * steps_per_task
  out = {}
  for key in metrics[-1]:
    if key.startswith('resets/'):
      group = key[len('resets/') :]
      out.setdefault(group, {})['resets_per_step'] = sum(float(r[key]) for r in metrics) / steps
    elif key.startswith('dead_fraction/'):
      group = key[len('dead_fraction/') :]
      out.setdefault(group, {})['dead_last'] = float(metrics[-1][key])
  return out


def _metrics_by_seed(cell: Cell) -> dict[int, list[dict]]:
  """``{seed: its rows of the cell's metrics.csv in task order}`` for the cell's seeds
  that have rows; {} without a metrics.csv."""
  path = pathlib.Path(cell.out) / 'metrics.csv'
  if not path.exists():
    return {}
  with open(path, newline='') as f:
    metrics = list(csv.DictReader(f))
  by_seed = {}
  for seed in cell.seeds:
    mine = sorted((r for r in metrics if int(r['seed']) == seed), key=lambda r: int(r['task']))
    if mine:
      by_seed[seed] = mine
  return by_seed


def cell_rows(study: str, cell: Cell) -> list[dict]:
  """The study CSV rows of one cell (one per seed), from its metrics.csv; [] if none."""
  out = pathlib.Path(cell.out)
  by_seed = _metrics_by_seed(cell)
  if not by_seed:
    return []
  config = cell_config(cell)
  total = config.resolved('num_tasks')
  info = out / 'study_cell.json'
  wall = json.loads(info.read_text())['wall_s'] if info.exists() else ''
  rows = []
  for seed, mine in by_seed.items():
    acc = [float(r['accuracy']) for r in mine]
    k = max(1, math.ceil(total * 0.1))
    dead = [float(v) for key, v in mine[-1].items() if key.startswith('dead_fraction/')]
    rows.append(
        {
            'study': study,
            'benchmark': cell.group[0],
            'dataset': cell.group[1],
            'optimizer': cell.group[2],
            'learning_rate': config.resolved('learning_rate'),
            'method': cell.group[3],
            'hparams': json.dumps(cell.hparams, sort_keys=True),
            'phase': cell.phase,
            'seed': seed,
            'tasks_done': len(acc),
            'tasks_total': total,
            'protocol_tasks': config.protocol.num_tasks,
            'avg_accuracy': sum(acc) / len(acc),
            'last10_accuracy': sum(acc[-k:]) / len(acc[-k:]),
            'dead_fraction_last': sum(dead) / len(dead) if dead else '',
            'wall_s': wall,
            'run_dir': str(out),
            'layers': json.dumps(layer_figures(mine, config.steps_per_task), sort_keys=True),
        }
    )
  return rows


def curves_key(group: Sequence[str], hparams: dict, phase: str) -> str:
  """A cell's key in the study's curves file: ``benchmark/dataset/optimizer/method``,
  its hyperparameters (sorted JSON) and its phase."""
  return '/'.join(group) + ' ' + json.dumps(hparams, sort_keys=True) + ' ' + phase


def cell_curves(cell: Cell) -> dict[str, dict[str, list]]:
  """``{seed: {'accuracy': [...], 'dead_fraction': [...]}}``, one value per task done,
  from the cell's metrics.csv ({} if none). The dead fraction is the mean over the
  model's layers at each task's end; values are rounded to 5 decimals (a few kB a seed)."""
  curves = {}
  for seed, mine in _metrics_by_seed(cell).items():
    dead = [[float(v) for k, v in r.items() if k.startswith('dead_fraction/')] for r in mine]
    curves[str(seed)] = {
        'accuracy': [round(float(r['accuracy']), 5) for r in mine],
        'dead_fraction': [round(sum(d) / len(d), 5) if d else 0.0 for d in dead],
    }
  return curves


def read_curves(path: pathlib.Path) -> dict:
  """A study's curves file (`cell_curves` of each final cell, by `curves_key`); {} if none."""
  return json.loads(path.read_text()) if path.exists() else {}


def write_curves(path: pathlib.Path, curves: dict) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + '.tmp')
  tmp.write_text(json.dumps(curves, sort_keys=True, separators=(',', ':')) + '\n')
  os.replace(tmp, path)


def recorded_rows(prior: Sequence[dict], study: str, cell: Cell) -> list[dict]:
  """The cell's rows in an earlier study CSV, if they record all its seeds complete; else [].

  A committed CSV outlives the runs directory (a new machine has none): a cell whose
  every seed is recorded there with all its tasks done counts as done, so the study
  resumes where the committed results stop instead of rerunning them.
  """
  config = cell_config(cell)
  want = {
      'study': study,
      'benchmark': cell.group[0],
      'dataset': cell.group[1],
      'optimizer': cell.group[2],
      'method': cell.group[3],
      'hparams': json.dumps(cell.hparams, sort_keys=True),
      'phase': cell.phase,
  }
  total = config.resolved('num_tasks')
  mine = {}
  for r in prior:
    if all(str(r.get(k)) == str(v) for k, v in want.items()) and float(r['learning_rate']) == float(
        config.resolved('learning_rate')
    ):
      mine[int(r['seed'])] = r
  if sorted(mine) != sorted(cell.seeds) or any(
      int(r['tasks_done']) != total or int(r['tasks_total']) != total for r in mine.values()
  ):
    return []
  return [mine[s] for s in cell.seeds]


def write_csv(path: pathlib.Path, rows: Sequence[dict]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + '.tmp')
  with open(tmp, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS))
    w.writeheader()
    w.writerows(rows)
  os.replace(tmp, path)


def read_csv(path: pathlib.Path) -> list[dict]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))
