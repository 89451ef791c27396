"""The selection protocol on study CSV rows: the chosen setting of a group, and every
complete setting's score (the spread reads those)."""

from __future__ import annotations

import json
import math
from typing import Optional, Sequence


def select_setting(rows: Sequence[dict], settings: Sequence[dict]) -> tuple[dict, list[dict]]:
  """The setting with the highest total average online accuracy over its selection runs.

  Args:
    rows: study CSV rows of one group's complete selection cells.
    settings: the group's settings, in spec order (ties go to the first).

  Returns:
    ``(chosen setting, [{'hparams', 'score', 'seeds'}, ...])``.
  """
  scores = []
  for hp in settings:
    key = json.dumps(hp, sort_keys=True)
    mine = [float(r['avg_accuracy']) for r in rows if r['hparams'] == key]
    scores.append(
        {
            'hparams': hp,
            'score': sum(mine) / len(mine) if mine else float('nan'),
            'seeds': len(mine),
        }
    )
  best = max(
      range(len(settings)),
      key=lambda i: (not math.isnan(scores[i]['score']), scores[i]['score'], -i),
  )
  return settings[best], scores


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
  """Mean and standard deviation (over the values given, not a sample estimate)."""
  m = sum(xs) / len(xs)
  return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def progress_text(rs: Sequence[dict]) -> Optional[str]:
  """``'running (done/total tasks)'`` while any of a cell's runs is incomplete, else None."""
  done, total = min(int(r['tasks_done']) for r in rs), int(rs[0]['tasks_total'])
  return f'running ({done}/{total} tasks)' if done < total else None


def selection_runs(rows: Sequence[dict]) -> dict[tuple, list[dict]]:
  """The selection rows by setting: ``{(benchmark, dataset, optimizer, method, hparams
  JSON): [row per seed]}``, in the rows' order."""
  out: dict = {}
  for r in rows:
    if r['phase'] == 'select':
      key = (r['benchmark'], r['dataset'], r['optimizer'], r['method'], r['hparams'])
      out.setdefault(key, []).append(r)
  return out


def setting_scores(rows: Sequence[dict]) -> dict[tuple, list[dict]]:
  """Each group's complete selection settings with their last-10% accuracy over seeds.

  Returns:
    ``{(benchmark, dataset, optimizer, method): [{'hparams', 'mean', 'std', 'n'}, ...]}``
    for groups with at least two settings whose selection runs are all complete.
  """
  by_group: dict = {}
  for key, rs in selection_runs(rows).items():
    if not progress_text(rs):
      mean, std = mean_std([float(r['last10_accuracy']) for r in rs])
      by_group.setdefault(key[:4], []).append(
          {'hparams': json.loads(key[4]), 'mean': mean, 'std': std, 'n': len(rs)}
      )
  return {key: scored for key, scored in by_group.items() if len(scored) >= 2}


def method_order(key: tuple) -> tuple:
  """Sort key of a group key: benchmark, dataset, optimizer, then the registry's order."""
  from snr_jax._src.methods import METHODS  # pylint: disable=import-outside-toplevel

  return key[:3], list(METHODS).index(key[3]) if key[3] in METHODS else 99, key[3]
