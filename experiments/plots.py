"""Accuracy and dead fraction per task, one line per run (and sweep value), a band of
± one std over seeds."""

from __future__ import annotations

import json
import pathlib
from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

from experiments.results import read_metrics


def load_run(run: pathlib.Path) -> dict[str, dict[str, np.ndarray]]:
  """``{label: {'accuracy': (seeds, tasks), 'dead_fraction': (seeds, tasks)}}``."""
  run = pathlib.Path(run)
  if not (run / 'metrics.csv').exists():
    raise FileNotFoundError(f'{run} holds no metrics.csv: is it a result directory of '
                            'python -m experiments.cli?')
  record = json.loads((run / 'config.json').read_text())
  cfg = record['config']
  rows = read_metrics(run)
  dead_cols = [c for c in rows[0] if c.startswith('dead_fraction/')]
  series = defaultdict(lambda: defaultdict(list))
  for r in rows:
    key = (float(r['sweep_value']), int(r['seed']))
    series[key]['accuracy'].append(float(r['accuracy']))
    series[key]['dead_fraction'].append(np.mean([float(r[c]) for c in dead_cols]))
  out = {}
  for value in sorted({k[0] for k in series}):
    label = cfg['method'] + (f" {cfg['sweep'][0]}={value:g}" if cfg.get('sweep') else '')
    seeds = sorted(k for k in series if k[0] == value)
    n = min(len(series[k]['accuracy']) for k in seeds)
    out[label] = {m: np.array([series[k][m][:n] for k in seeds])
                  for m in ('accuracy', 'dead_fraction')}
  return out


def plot_runs(runs: Sequence[pathlib.Path], path: pathlib.Path,
              title: Optional[str] = None) -> pathlib.Path:
  """Writes a PNG with two panels (accuracy, dead fraction) for the given runs."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  if not runs:
    raise ValueError('give at least one result directory to plot.')
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for run in runs:
    for label, m in load_run(run).items():
      for ax, name in zip(axes, ('accuracy', 'dead_fraction')):
        y = m[name]
        tasks = np.arange(1, y.shape[1] + 1)
        mean, std = y.mean(axis=0), y.std(axis=0)
        (line,) = ax.plot(tasks, mean, label=f'{label} ({y.shape[0]} seeds)')
        ax.fill_between(tasks, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  axes[0].set(xlabel='task', ylabel='online accuracy', title='Accuracy per task')
  axes[1].set(xlabel='task', ylabel='fraction of dead units',
              title='Dead units (no firing in 1,000 examples)')
  axes[0].legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
