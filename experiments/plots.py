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
    raise FileNotFoundError(
        f'{run} holds no metrics.csv: is it a result directory of ' 'python -m experiments.cli?'
    )
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
    out[label] = {
        m: np.array([series[k][m][:n] for k in seeds]) for m in ('accuracy', 'dead_fraction')
    }
  return out


def plot_runs(
    runs: Sequence[pathlib.Path], path: pathlib.Path, title: Optional[str] = None
) -> pathlib.Path:
  """Writes a PNG with two panels (accuracy, dead fraction) for the given runs."""
  if not runs:
    raise ValueError('give at least one result directory to plot.')
  plt, fig, axes = _figure(1, 2, (5.5, 4.0))
  axes = axes[0]
  for run in runs:
    for label, m in load_run(run).items():
      for ax, name in zip(axes, ('accuracy', 'dead_fraction')):
        y = m[name]
        tasks = np.arange(1, y.shape[1] + 1)
        mean, std = y.mean(axis=0), y.std(axis=0)
        (line,) = ax.plot(tasks, mean, label=f'{label} ({y.shape[0]} seeds)')
        ax.fill_between(tasks, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  axes[0].set(xlabel='task', ylabel='online accuracy', title='Accuracy per task')
  axes[1].set(
      xlabel='task',
      ylabel='fraction of dead units',
      title='Dead units (no firing in 1,000 examples)',
  )
  axes[0].legend()
  return _save(plt, fig, path, title)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
  """Trailing moving average along the last axis (the first points average fewer tasks)."""
  c = np.cumsum(y, axis=-1)
  out = c.copy()
  out[..., window:] = c[..., window:] - c[..., :-window]
  return out / np.minimum(np.arange(1, y.shape[-1] + 1), window)


def _figure(nrows: int, ncols: int, size: tuple[float, float]):
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
  return plt, fig, axes


def _save(plt, fig, path: pathlib.Path, title: Optional[str]) -> pathlib.Path:
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _study_series(rows: Sequence[dict], curves: Optional[dict]) -> Optional[dict]:
  """One final cell's ``{'accuracy': (seeds, tasks), 'dead_fraction': ...}`` from the
  study's curves file, else from its run directory; None if neither holds it."""
  from experiments.study.rows import curves_key  # pylint: disable=import-outside-toplevel

  r = rows[0]
  group = (r['benchmark'], r['dataset'], r['optimizer'], r['method'])
  kept = (curves or {}).get(curves_key(group, json.loads(r['hparams']), r['phase']))
  if kept:
    n = min(len(v['accuracy']) for v in kept.values())
    return {
        m: np.array([kept[s][m][:n] for s in sorted(kept, key=int)])
        for m in ('accuracy', 'dead_fraction')
    }
  run = pathlib.Path(r['run_dir'])
  if not (run / 'metrics.csv').exists():
    return None
  (series,) = load_run(run).values()
  return series


def plot_study_curves(
    rows: Sequence[dict],
    path: pathlib.Path,
    title: Optional[str] = None,
    curves: Optional[dict] = None,
) -> tuple[Optional[pathlib.Path], list[str]]:
  """A study's final cells: accuracy and dead fraction per task, one row per optimizer.

  Args:
    rows: study CSV rows (``experiments.study``) of one benchmark and dataset; the
      final ones are drawn, one line per method (mean over seeds, moving average over
      2% of the tasks).
    path: the PNG to write.
    title: optional figure title.
    curves: the study's curves file (``experiments.study.rows.read_curves``), where a
      cell's per-task values outlive its run directory; a cell missing there is read
      from its run directory.

  Returns:
    ``(path, missing)``: ``path`` is None when no final cell could be drawn; ``missing``
    names the ``optimizer/method`` cells whose curves are kept nowhere.
  """
  final = [r for r in rows if r['phase'] == 'final']
  if not final:
    raise ValueError('no final cells to draw.')
  from snr_jax._src.methods import METHODS  # pylint: disable=import-outside-toplevel

  order = {m: i for i, m in enumerate(METHODS)}
  optimizers = sorted({r['optimizer'] for r in final})
  drawn, missing = [], []
  plt, fig, axes = _figure(len(optimizers), 2, (6.0, 3.6))
  for ax_row, opt in zip(axes, optimizers):
    mine = [r for r in final if r['optimizer'] == opt]
    for method in sorted({r['method'] for r in mine}, key=lambda m: (order.get(m, 99), m)):
      series = _study_series([r for r in mine if r['method'] == method], curves)
      if series is None:
        missing.append(f'{opt}/{method}')
        continue
      drawn.append(method)
      for ax, name in zip(ax_row, ('accuracy', 'dead_fraction')):
        y = series[name].mean(axis=0)
        window = max(1, y.shape[0] // 50)
        ax.plot(
            np.arange(1, y.shape[0] + 1),
            _smooth(y, window),
            lw=1.2,
            label=f'{method} ({series[name].shape[0]} seeds)',
        )
    ax_row[0].set(xlabel='task', ylabel='online accuracy', title=f'{opt}: accuracy per task')
    ax_row[1].set(
        xlabel='task',
        ylabel='fraction of dead units',
        title=f'{opt}: dead units (silent for 1,000 examples)',
    )
    if drawn:
      ax_row[0].legend(fontsize=7, ncol=2)
  if not drawn:
    plt.close(fig)
    return None, missing
  return _save(plt, fig, path, title), missing


def plot_spread(scores: dict, path: pathlib.Path, title: Optional[str] = None) -> pathlib.Path:
  """Each setting's last-10% accuracy per method, a line from worst to best.

  Args:
    scores: ``experiments.study.setting_scores`` of one benchmark and dataset.
    path: the PNG to write.
    title: optional figure title.

  Returns:
    ``path``.
  """
  optimizers = sorted({k[2] for k in scores})
  plt, fig, axes = _figure(1, len(optimizers), (6.0, 3.8))
  for ax, opt in zip(axes[0], optimizers):
    keys = [k for k in scores if k[2] == opt]
    for x, key in enumerate(keys):
      means = np.array([s['mean'] for s in scores[key]])
      ax.plot([x, x], [means.min(), means.max()], color='0.6', lw=3, zorder=1)
      ax.scatter(np.full(means.shape, x), means, s=14, zorder=2)
      ax.annotate(
          f'{means.max() - means.min():.3f}',
          (x, means.max()),
          fontsize=7,
          ha='center',
          va='bottom',
          xytext=(0, 3),
          textcoords='offset points',
      )
    ax.set_xticks(range(len(keys)), [k[3] for k in keys], rotation=30, ha='right', fontsize=8)
    ax.set(ylabel='last-10% online accuracy', title=f'{opt}: spread over each grid')
  return _save(plt, fig, path, title)
