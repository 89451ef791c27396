"""A study: a grid of runs declared in a small file, with the paper's selection protocol.

    python -m experiments.study SPEC.json            # or SPEC.toml
    python -m experiments.study SPEC.json --workers 1 --dry-run
    python -m experiments.study SPEC.json --report    # CSV, table, figures; runs nothing
    python -m experiments.study --table results/study.csv --out results/study.md

A spec declares benchmarks (each with a dataset, task count, optimizers and their learning
rates) and methods (each with a grid of hyperparameter values). Every benchmark ×
optimizer × method is one *group*. Its cells follow Kumar et al.'s protocol:

1. *selection*: every hyperparameter setting of the grid runs with ``selection_seeds``
   (default 0, 1); the setting with the highest total average online accuracy (the mean
   over those seeds and over all tasks) is chosen (ties: the first listed);
2. *final*: the chosen setting runs with ``final_seeds`` (default 10..14, disjoint from
   the selection seeds, so the reported figure is not the one the choice was made on);
   the table reports its last-10% online accuracy, mean ± std over these seeds.

A method with a single setting skips the selection. A spec with ``"final": false`` is a
sweep: every setting of every method runs on the selection seeds and nothing more (the
robustness section below reads those runs). Each cell is one run of
``experiments.driver.drive`` (the compiled runner; its seeds batched as usual) in its
own directory under ``runs_dir`` with the usual config.json, metrics.csv, summary.json
and checkpoint. A cell whose summary says complete is skipped, and so is one whose seeds
the study CSV already records complete (a fresh clone resumes from the committed CSV,
with no runs directory); a cell that was killed resumes from its checkpoint. Ctrl-C (or
SIGTERM to the study's processes) stops the
study: running cells checkpoint, cells not yet started stay so (exit code 130). Cells
run in ``workers`` processes (default 2, each pinned to its own core, counting from the
first in every study: two studies at once share cores, so run one at a time or re-pin
with ``taskset -a -pc CORE PID``). After each cell the main process rewrites the study
CSV (one row per cell and seed), ``selection.json`` beside it, and the markdown table. The table
ends with each method's *spread*: best − worst last-10% accuracy over its grid, on the
selection seeds (the paper's robustness claim). With ``"figures": DIR`` the study also
draws, when it ends, accuracy and dead fraction per task of the final cells and the
spread (``--report`` redraws both and the table from the cells on disk, running nothing).

A method's key is its label in the results; ``"method"`` inside its grid names the
``snr_jax`` method when the label is not one (e.g. ``"snr_per_token": {"method": "snr",
"estimator": "per_token", "eta": [0.01, 0.05]}``).

Spec (JSON; TOML with the same keys)::

    {
      "name": "permuted",
      "runs_dir": "/work/study_runs/permuted",   # run directories (keep it out of git)
      "csv": "results/study_permuted.csv",
      "table": "results/study_permuted.md",
      "selection_seeds": [0, 1], "final_seeds": [10, 11, 12, 13, 14],
      "workers": 2, "checkpoint_every": 25, "tasks_per_call": 5,
      "benchmarks": [
        {"benchmark": "permuted_mnist", "dataset": "fashion_mnist", "num_tasks": 500,
         "optimizers": {"sgd": {"learning_rate": 0.01}, "adam": {"learning_rate": 0.001}},
         "config": {}, "methods": ["none", "l2", "snr"]},  # config: other ExperimentConfig
        {"benchmark": "permuted_mnist", "label": "permuted_mnist_w400", "width": 400,
         "dataset": "fashion_mnist"}                        # fields; methods: optional filter;
      ],                                                    # label: its name in the results
      "methods": {
        "none": {},
        "l2": {"strength": [1e-5, 1e-4, 1e-3]},             # lists: a cartesian grid
        "snr": {"eta": [0.01, 0.08, 0.3], "tau_max": 20000}, # scalars: fixed
        "shrink_perturb": {"grid": [{"shrink": 0.9999, "sigma": 1e-4},
                                    {"shrink": 0.999, "sigma": 1e-3}]},  # explicit settings
                                                    # (scalars beside "grid": fixed in each)
        "snr_pt": {"method": "snr", "estimator": "per_token", "eta": [0.01, 0.05]}  # a label
      },
      "final": true,                                        # false: selection seeds only
      "figures": "results/figures"                          # optional PNGs
    }

Relative paths are taken from the current directory.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import dataclasses
import itertools
import json
import math
import multiprocessing as mp
import os
import pathlib
import signal
import sys
import time
from typing import Any, Optional, Sequence

DEFAULT_SELECTION_SEEDS = (0, 1)
DEFAULT_FINAL_SEEDS = (10, 11, 12, 13, 14)
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
)


class StudyError(ValueError):
  """A bad study spec: printed as one message."""


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of a study: a group's setting with a set of seeds."""

  group: tuple[str, str, str, str]  # (benchmark, dataset, optimizer, method)
  config: dict  # ExperimentConfig keyword arguments
  hparams: dict
  seeds: tuple[int, ...]
  phase: str  # 'select' or 'final'
  out: str

  @property
  def label(self) -> str:
    return f"{'/'.join(self.group)} {hparams_slug(self.hparams)} [{self.phase}]"


def hparams_slug(hp: dict) -> str:
  return ','.join(f'{k}={v}' for k, v in sorted(hp.items())) or 'default'


def load_spec(path: pathlib.Path) -> dict:
  """Reads a JSON or TOML spec and checks its shape (names are checked when cells are built)."""
  text = pathlib.Path(path).read_text()
  if str(path).endswith('.toml'):
    import tomllib  # pylint: disable=import-outside-toplevel

    spec = tomllib.loads(text)
  else:
    spec = json.loads(text)
  for key in ('name', 'runs_dir', 'benchmarks', 'methods'):
    if key not in spec:
      raise StudyError(f"study spec {path} has no '{key}' (see python -m experiments.study -h).")
  if not isinstance(spec['methods'], dict) or not spec['methods']:
    raise StudyError("'methods' must map method names to their hyperparameter grids.")
  return spec


def method_settings(name: str, grid: Any) -> list[dict]:
  """The hyperparameter settings of one method's grid (see the module docstring)."""
  if not isinstance(grid, dict):
    raise StudyError(f'method {name!r}: its grid must be an object, got {grid!r}.')
  grid = {k: v for k, v in grid.items() if k != 'method'}  # the label's method, not a setting
  lists = {k: v for k, v in grid.items() if isinstance(v, list) and k != 'grid'}
  fixed = {k: v for k, v in grid.items() if not isinstance(v, list)}
  empty = sorted(k for k, v in lists.items() if not v)
  if empty:
    raise StudyError(f'method {name!r}: {empty} list no values; give at least one.')
  if 'grid' in grid:
    settings = grid['grid']
    if not isinstance(settings, list) or not all(isinstance(s, dict) for s in settings):
      raise StudyError(f"method {name!r}: 'grid' must be a list of settings (objects).")
    if lists:
      raise StudyError(
          f"method {name!r}: {sorted(lists)} are lists beside 'grid'; put "
          "their values into the grid's settings."
      )
    clash = sorted({k for s in settings for k in s} & set(fixed))
    if clash:
      raise StudyError(f"method {name!r}: {clash} are fixed and also in 'grid'; give each " 'once.')
    # scalars beside the grid are fixed in every setting (e.g. an estimator)
    return [dict(fixed, **s) for s in settings] or [fixed]
  keys = sorted(lists)
  return [
      dict(fixed, **dict(zip(keys, combo)))
      for combo in itertools.product(*(lists[k] for k in keys))
  ]


def method_of(label: str, grid: Any) -> str:
  """The ``snr_jax`` method a spec's method key runs: its grid's ``"method"``, else the key."""
  from snr_jax._src.methods import METHODS  # pylint: disable=import-outside-toplevel

  method = grid.get('method', label) if isinstance(grid, dict) else label
  if method not in METHODS:
    hint = (
        ''
        if isinstance(grid, dict) and 'method' in grid
        else f'; to use {label!r} as a label, name the method in its grid, e.g. '
        f'{{"method": "snr", ...}}'
    )
    raise StudyError(
        f'method {label!r}: unknown method {method!r}, choose one of ' f'{sorted(METHODS)}{hint}.'
    )
  return method


def build_groups(spec: dict) -> list[dict]:
  """Every benchmark × optimizer × method with its settings and cell configs."""
  from experiments.benchmarks import ExperimentConfig  # pylint: disable=import-outside-toplevel

  runs_dir = pathlib.Path(spec['runs_dir'])
  sel_seeds = tuple(spec.get('selection_seeds', DEFAULT_SELECTION_SEEDS))
  fin_seeds = tuple(spec.get('final_seeds', DEFAULT_FINAL_SEEDS))
  sweep_only = not spec.get('final', True)
  groups = []
  for b in spec['benchmarks']:
    bench = b.get('benchmark')
    optimizers = b.get('optimizers', {'sgd': {}})
    names = b.get('methods', list(spec['methods']))
    for m in names:
      if m not in spec['methods']:
        raise StudyError(
            f"benchmark {bench!r} lists method {m!r}, which 'methods' does " 'not declare.'
        )
    for opt, opt_cfg in optimizers.items():
      for m in names:
        settings = method_settings(m, spec['methods'][m])
        parts = (
            {'benchmark': bench, 'method': method_of(m, spec['methods'][m]), 'optimizer': opt},
            {
                k: v
                for k, v in b.items()
                if k
                in (
                    'dataset',
                    'num_tasks',
                    'examples_per_task',
                    'epochs',
                    'batch_size',
                    'model_scale',
                    'width',
                    'model',
                    'vocab_size',
                )
            },
            opt_cfg,
        )
        twice = sorted(k for k in set().union(*parts) if sum(k in p for p in parts) > 1)
        if twice:
          raise StudyError(
              f'{bench}/{opt}: {twice} given both in the benchmark entry and '
              "in its optimizer's settings; give each once."
          )
        base = dict(b.get('config', {}), **{k: v for p in parts for k, v in p.items()})
        try:
          for hp in settings:
            ExperimentConfig(**dict(base, hparams=hp))
        except (TypeError, ValueError) as e:
          raise StudyError(f'{bench}/{opt}/{m}: {e}') from None
        dataset = base.get('dataset') or ExperimentConfig(**base).dataset_name
        key = (b.get('label', bench), dataset, opt, m)
        if any(g['key'] == key for g in groups):
          raise StudyError(
              f"two benchmark entries make the group {'/'.join(key)}: give each "
              'a distinct \'label\' (e.g. "permuted_mnist_w400").'
          )
        where = runs_dir / f'{key[0]}-{dataset}' / opt / m
        groups.append(
            {
                'key': key,
                'base': base,
                'settings': settings,
                'select': [
                    Cell(
                        key,
                        base,
                        hp,
                        sel_seeds,
                        'select',
                        str(where / f'{hparams_slug(hp)}-select'),
                    )
                    for hp in settings
                ]
                if len(settings) > 1 or sweep_only
                else [],
                'final_seeds': None if sweep_only else fin_seeds,
                'where': where,
            }
        )
  return groups


def final_cell(group: dict, hp: dict) -> Cell:
  return Cell(
      group['key'],
      group['base'],
      hp,
      group['final_seeds'],
      'final',
      str(group['where'] / f'{hparams_slug(hp)}-final'),
  )


def _config(cell: Cell):
  from experiments.benchmarks import ExperimentConfig  # pylint: disable=import-outside-toplevel

  return ExperimentConfig(**dict(cell.config, hparams=cell.hparams))


def cell_state(cell: Cell) -> str:
  """``'done'``, ``'partial'`` (results or a checkpoint exist) or ``'new'``.

  Raises:
    StudyError: the directory holds a run of another config or seeds.
  """
  from experiments import results  # pylint: disable=import-outside-toplevel

  out = pathlib.Path(cell.out)
  if not (out / 'config.json').exists():
    return 'new'
  record = json.loads((out / 'config.json').read_text())
  want = results.config_record(_config(cell), list(cell.seeds), '', '')
  if record['config'] != json.loads(json.dumps(want['config'], default=str)) or record[
      'seeds'
  ] != list(cell.seeds):
    raise StudyError(
        f'{out} holds a run of another config or seeds than the spec declares '
        'for it; use a new runs_dir, or delete that directory.'
    )
  summary = out / 'summary.json'
  if summary.exists() and json.loads(summary.read_text()).get('complete'):
    return 'done'
  return 'partial'


# --- workers ---------------------------------------------------------------------------

_DATASETS: dict = {}


_STOP = None  # in a worker: the study's stop event


def _stop_on_sigterm() -> None:
  """SIGTERM (``kill``, a scheduler's notice) stops the study as Ctrl-C does."""

  def interrupt(signum, frame):
    raise KeyboardInterrupt

  signal.signal(signal.SIGTERM, interrupt)


def _init_worker(counter, stop) -> None:
  """Pool initializer: pins each worker to its own core (round robin), keeps the
  study's stop event, and treats SIGTERM as Ctrl-C."""
  global _STOP  # pylint: disable=global-statement
  _STOP = stop
  _stop_on_sigterm()
  with counter.get_lock():
    i = counter.value
    counter.value += 1
  cores = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {cores[i % len(cores)]})


def _run_cell_unless_stopped(cell: Cell, **kw) -> Optional[dict]:
  """``run_cell`` in a worker, or None once the study was interrupted: the pool hands
  workers cells queued before the interruption, which must not start."""
  if _STOP is not None and _STOP.is_set():
    return None
  try:
    return run_cell(cell, **kw)
  except KeyboardInterrupt:  # this worker's next cell must not start either
    if _STOP is not None:
      _STOP.set()
    raise


def run_cell(
    cell: Cell,
    data_dir: Optional[str] = None,
    source: Optional[str] = None,
    checkpoint_every: int = 25,
    tasks_per_call: int = 5,
    stop_after: Optional[int] = None,
) -> dict:
  """Runs (or resumes) one cell; returns ``{'summary', 'wall_s'}``. Runs in a worker."""
  from experiments.driver import drive  # pylint: disable=import-outside-toplevel
  from experiments import data  # pylint: disable=import-outside-toplevel

  config = _config(cell)
  name = config.dataset_name
  if name not in _DATASETS:
    _DATASETS[name] = data.load_dataset(name, data_dir=data_dir, source=source)
  out = pathlib.Path(cell.out)
  info_path = out / 'study_cell.json'
  info = json.loads(info_path.read_text()) if info_path.exists() else {'wall_s': 0.0}
  t = time.perf_counter()
  try:
    summary = drive(
        config,
        _DATASETS[name],
        list(cell.seeds),
        out,
        checkpoint_every=checkpoint_every,
        tasks_per_call=tasks_per_call,
        progress=False,
        stop_after=stop_after,
    )
    info['resumed_from'] = summary.get('resumed_from', 0)
  finally:  # the time of an interrupted run counts too (summed over the runs of a cell)
    if out.is_dir():
      info['wall_s'] += time.perf_counter() - t
      info_path.write_text(json.dumps(info))
  return {'summary': summary, 'wall_s': info['wall_s'], 'resumed_from': info['resumed_from']}


# --- study-level results ---------------------------------------------------------------


def cell_rows(study: str, cell: Cell) -> list[dict]:
  """The study CSV rows of one cell (one per seed), from its metrics.csv; [] if none."""
  out = pathlib.Path(cell.out)
  if not (out / 'metrics.csv').exists():
    return []
  with open(out / 'metrics.csv', newline='') as f:
    metrics = list(csv.DictReader(f))
  config = _config(cell)
  total = config.resolved('num_tasks')
  info = out / 'study_cell.json'
  wall = json.loads(info.read_text())['wall_s'] if info.exists() else ''
  rows = []
  for seed in cell.seeds:
    mine = sorted((r for r in metrics if int(r['seed']) == seed), key=lambda r: int(r['task']))
    if not mine:
      continue
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
        }
    )
  return rows


def recorded_rows(prior: Sequence[dict], study: str, cell: Cell) -> list[dict]:
  """The cell's rows in an earlier study CSV, if they record all its seeds complete; else [].

  A committed CSV outlives the runs directory (a new machine has none): a cell whose
  every seed is recorded there with all its tasks done counts as done, so the study
  resumes where the committed results stop instead of rerunning them.
  """
  config = _config(cell)
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


# --- the markdown table ----------------------------------------------------------------


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
  m = sum(xs) / len(xs)
  return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def _hparams_text(hp: Any) -> str:
  """``'k=v, ...'`` for a setting (a dict or the CSV's JSON of one); 'defaults' if empty."""
  hp = json.loads(hp) if isinstance(hp, str) else hp
  return ', '.join(f'{k}={v}' for k, v in hp.items()) or 'defaults'


def _progress(rs: Sequence[dict]) -> Optional[str]:
  """``'running (done/total tasks)'`` while any of a cell's runs is incomplete, else None."""
  done, total = min(int(r['tasks_done']) for r in rs), int(rs[0]['tasks_total'])
  return f'running ({done}/{total} tasks)' if done < total else None


def _selection_runs(rows: Sequence[dict]) -> dict[tuple, list[dict]]:
  """The selection rows by setting: ``{(benchmark, dataset, optimizer, method, hparams
  JSON): [row per seed]}``, in the rows' order."""
  out: dict = {}
  for r in rows:
    if r['phase'] == 'select':
      key = (r['benchmark'], r['dataset'], r['optimizer'], r['method'], r['hparams'])
      out.setdefault(key, []).append(r)
  return out


def make_table(rows: Sequence[dict], title: str = 'Study results') -> str:
  """A markdown table of the final cells: last-10% online accuracy, mean ± std over seeds.

  One row per benchmark × dataset × optimizer, one column per method (the best mean in
  bold); a cell still running shows its progress. A second table gives the chosen
  hyperparameters. Task counts below the protocol's are marked as reduced. Without final
  cells (a sweep, or a study still selecting) it lists every setting on the selection
  seeds instead (:func:`selection_table`).
  """
  from snr_jax._src.methods import METHODS  # pylint: disable=import-outside-toplevel

  final = [r for r in rows if r['phase'] == 'final']
  spread = spread_table(rows)
  if not final:
    return (
        f'# {title}\n\nNo final cells yet.\n'
        + selection_table(rows)
        + (f'\n{spread}' if spread else '')
    )
  order = {m: i for i, m in enumerate(METHODS)}
  methods = sorted({r['method'] for r in final}, key=lambda m: (order.get(m, 99), m))
  lines = [
      f'# {title}',
      '',
      'Online accuracy over the last 10% of tasks, mean ± std over seeds (n = seeds), '
      'at the hyperparameters chosen by total average online accuracy on the selection '
      'seeds. Bold: the best mean in the row.',
      '',
      '| benchmark | optimizer | tasks | ' + ' | '.join(methods) + ' |',
      '|---|---|---|' + '---|' * len(methods),
  ]
  chosen = []
  for key in sorted({(r['benchmark'], r['dataset'], r['optimizer']) for r in final}):
    mine = [r for r in final if (r['benchmark'], r['dataset'], r['optimizer']) == key]
    total, proto = int(mine[0]['tasks_total']), int(mine[0]['protocol_tasks'])
    tasks = f'{total}' if total >= proto else f'{total} (reduced; protocol {proto})'
    cells, means = {}, {}
    for m in methods:
      rs = [r for r in mine if r['method'] == m]
      if not rs:
        cells[m] = '–'
        continue
      progress = _progress(rs)
      if progress:
        cells[m] = progress
      else:
        mean, std = _mean_std([float(r['last10_accuracy']) for r in rs])
        means[m] = mean
        cells[m] = f'{mean:.3f} ± {std:.3f} (n={len(rs)})'
      chosen.append((key, m, rs[0]['hparams'], rs[0]['learning_rate']))
    best = max(means.values()) if means else None
    row = [f'**{cells[m]}**' if m in means and means[m] == best else cells[m] for m in methods]
    lines.append(f'| {key[0]} ({key[1]}) | {key[2]} | {tasks} | ' + ' | '.join(row) + ' |')
  lines += [
      '',
      '| benchmark | optimizer | method | learning rate | chosen hyperparameters |',
      '|---|---|---|---|---|',
  ]
  for (bench, ds, opt), m, hp, lr in chosen:
    lines.append(f'| {bench} ({ds}) | {opt} | {m} | {lr} | {_hparams_text(hp)} |')
  return '\n'.join(lines) + '\n' + (f'\n{spread}' if spread else '')


def selection_table(rows: Sequence[dict]) -> str:
  """Markdown: every setting on the selection seeds, last-10% and all-task online
  accuracy, mean ± std over its seeds ('' without selection cells); a setting whose runs
  are not all complete shows its progress."""
  settings = _selection_runs(rows)
  if not settings:
    return ''
  lines = [
      '',
      '## Every setting on the selection seeds',
      '',
      'Online accuracy over the last 10% of tasks and over all tasks, mean ± std over '
      'the selection seeds (n = seeds).',
      '',
      '| benchmark | optimizer | method | hyperparameters | last 10% | all tasks | n |',
      '|---|---|---|---|---|---|---|',
  ]
  for key, rs in sorted(settings.items(), key=lambda kv: (_method_order(kv[0][:4]), kv[0][4])):
    last = whole = _progress(rs)
    if not last:
      last = '{:.3f} ± {:.3f}'.format(*_mean_std([float(r['last10_accuracy']) for r in rs]))
      whole = '{:.3f} ± {:.3f}'.format(*_mean_std([float(r['avg_accuracy']) for r in rs]))
    lines.append(
        f'| {key[0]} ({key[1]}) | {key[2]} | {key[3]} | {_hparams_text(key[4])} | '
        f'{last} | {whole} | {len(rs)} |'
    )
  return '\n'.join(lines) + '\n'


def setting_scores(rows: Sequence[dict]) -> dict[tuple, list[dict]]:
  """Each group's complete selection settings with their last-10% accuracy over seeds.

  Returns:
    ``{(benchmark, dataset, optimizer, method): [{'hparams', 'mean', 'std', 'n'}, ...]}``
    for groups with at least two settings whose selection runs are all complete.
  """
  by_group: dict = {}
  for key, rs in _selection_runs(rows).items():
    if not _progress(rs):
      mean, std = _mean_std([float(r['last10_accuracy']) for r in rs])
      by_group.setdefault(key[:4], []).append(
          {'hparams': json.loads(key[4]), 'mean': mean, 'std': std, 'n': len(rs)}
      )
  return {key: scored for key, scored in by_group.items() if len(scored) >= 2}


def _method_order(key: tuple) -> tuple:
  """Sort key of a group key: benchmark, dataset, optimizer, then the registry's order."""
  from snr_jax._src.methods import METHODS  # pylint: disable=import-outside-toplevel

  return key[:3], list(METHODS).index(key[3]) if key[3] in METHODS else 99, key[3]


def spread_table(rows: Sequence[dict]) -> str:
  """Markdown: per group, best − worst last-10% accuracy over its grid ('' if none)."""
  scores = setting_scores(rows)
  if not scores:
    return ''
  lines = [
      '## Robustness to the hyperparameter',
      '',
      "Last-10% online accuracy of every setting of a method's grid on the selection "
      'seeds; spread = best − worst setting. Seed std: the mean over settings of the '
      'std over seeds, the scale of noise a spread should be read against.',
      '',
      '| benchmark | optimizer | method | settings | best | worst | spread | seed std |',
      '|---|---|---|---|---|---|---|---|',
  ]
  for key in sorted(scores, key=_method_order):
    sc = scores[key]
    best = max(sc, key=lambda x: x['mean'])
    worst = min(sc, key=lambda x: x['mean'])
    noise = sum(x['std'] for x in sc) / len(sc)
    lines.append(
        f'| {key[0]} ({key[1]}) | {key[2]} | {key[3]} | {len(sc)} | '
        f"{best['mean']:.3f} ({_hparams_text(best['hparams'])}) | "
        f"{worst['mean']:.3f} ({_hparams_text(worst['hparams'])}) | "
        f"{best['mean'] - worst['mean']:.3f} | {noise:.3f} |"
    )
  return '\n'.join(lines) + '\n'


# --- the study loop --------------------------------------------------------------------


def draw_figures(rows: Sequence[dict], out_dir: pathlib.Path, name: str, log=print) -> list:
  """The study's PNGs: per benchmark × dataset, curves of the final cells and the spread."""
  from experiments import plots  # pylint: disable=import-outside-toplevel

  written = []
  for bench, ds in sorted({(r['benchmark'], r['dataset']) for r in rows}):
    mine = [r for r in rows if (r['benchmark'], r['dataset']) == (bench, ds)]
    stem = out_dir / f'{name}_{bench}-{ds}'
    if any(r['phase'] == 'final' for r in mine):
      written.append(
          plots.plot_study_curves(
              mine, stem.with_name(stem.name + '_curves.png'), title=f'{bench} ({ds}), final cells'
          )
      )
    scores = setting_scores(mine)
    scores = {k: scores[k] for k in sorted(scores, key=_method_order)}
    if scores:
      written.append(
          plots.plot_spread(
              scores,
              stem.with_name(stem.name + '_spread.png'),
              title=f'{bench} ({ds}): last-10% accuracy per setting',
          )
      )
  for path in written:
    log(f'wrote    {path}')
  return written


def run_study(
    spec: dict,
    *,
    workers: Optional[int] = None,
    dry_run: bool = False,
    stop_after: Optional[int] = None,
    report: bool = False,
    log=print,
) -> dict:
  """Runs every cell of ``spec`` not yet done (see the module docstring).

  Args:
    spec: the loaded spec.
    workers: worker processes (default: the spec's ``workers``, else 2); 0 runs the
      cells in this process (for tests and debugging).
    dry_run: list the cells and their states without running anything.
    report: run nothing; rewrite the CSV, selection, table and figures from the cells
      on disk.
    stop_after: end every cell after this many tasks, with a checkpoint (simulates a
      killed study; a later call resumes each cell).
    log: where progress lines go.

  Returns:
    ``{'ran': [cell labels], 'skipped': [...], 'failed': [...], 'selection': {...},
    'rows': [...]}``; a cell that fails in a worker is logged and left for the next run.
  """
  groups = build_groups(spec)
  name = spec['name']
  workers = spec.get('workers', 2) if workers is None else workers
  kw = dict(
      data_dir=spec.get('data_dir'),
      source=spec.get('source'),
      checkpoint_every=spec.get('checkpoint_every', 25),
      tasks_per_call=spec.get('tasks_per_call', 5),
      stop_after=stop_after,
  )
  csv_path = pathlib.Path(spec.get('csv', pathlib.Path(spec['runs_dir']) / 'study.csv'))
  table_path = spec.get('table')
  ran, skipped, failed, selection = [], [], [], {}
  known: list[Cell] = []
  prior = read_csv(csv_path) if csv_path.exists() else []

  def rows_of(c: Cell) -> list[dict]:
    return cell_rows(name, c) or recorded_rows(prior, name, c)

  def state_of(c: Cell) -> str:
    state = cell_state(c)
    return 'done' if state == 'new' and recorded_rows(prior, name, c) else state

  def refresh():
    rows = [r for c in known for r in rows_of(c)]
    write_csv(csv_path, rows)
    (csv_path.parent / f'{csv_path.stem}_selection.json').write_text(
        json.dumps(selection, indent=2)
    )
    if table_path:
      pathlib.Path(table_path).parent.mkdir(parents=True, exist_ok=True)
      pathlib.Path(table_path).write_text(make_table(rows, f'Study {name!r}'))
    return rows

  def finals_ready(g) -> Optional[Cell]:
    """The group's final cell once its selection is complete, else None."""
    if not g['select']:
      return final_cell(g, g['settings'][0])
    if any(state_of(c) != 'done' for c in g['select']):
      return None
    rows = [r for c in g['select'] for r in rows_of(c)]
    hp, scores = select_setting(rows, g['settings'])
    selection['/'.join(g['key'])] = {'chosen': hp, 'scores': scores}
    return None if g['final_seeds'] is None else final_cell(g, hp)

  pending: list[Cell] = []
  for g in groups:
    pending += g['select']
    f = finals_ready(g)
    if f is not None:
      pending.append(f)
  # groups whose final is not yet known
  waiting = [g for g in groups if g['select'] and g['final_seeds'] is not None]
  waiting = [
      g for g in waiting if not any(c.group == g['key'] and c.phase == 'final' for c in pending)
  ]
  if dry_run:
    for c in pending:
      log(f'{state_of(c):8s} {c.label}  -> {c.out}')
    for g in waiting:
      log(f"{'later':8s} {'/'.join(g['key'])} final (after its selection)")
    return {'ran': [], 'skipped': [], 'selection': selection, 'rows': []}
  if report:
    known.extend(pending)
    for g in groups:
      if g['final_seeds'] is None and g['select']:
        finals_ready(g)
    rows = refresh()
    if spec.get('figures'):
      draw_figures(rows, pathlib.Path(spec['figures']), name, log)
    return {'ran': [], 'skipped': [], 'selection': selection, 'rows': rows}

  pool = stop = None
  if workers > 0:
    ctx = mp.get_context('spawn')
    stop = ctx.Event()
    pool = cf.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(ctx.Value('i', 0), stop)
    )
  futures: dict = {}

  def submit(c: Cell):
    known.append(c)
    state = state_of(c)
    if state == 'done':
      skipped.append(c.label)
      log(f'done     {c.label}')
      return False
    log(f'{"resume" if state == "partial" else "queue":8s} {c.label}')
    if pool is None:
      res = run_cell(c, **kw)
      finished(c, res)
    else:
      futures[pool.submit(_run_cell_unless_stopped, c, **kw)] = c
    return True

  def finished(c: Cell, res: dict):
    ran.append(c.label)
    s = res['summary']
    heads = ', '.join(f"{x['mean']:.4f} ± {x['std']:.4f}" for x in s['by_sweep_value'])
    log(
        f"finished {c.label}: {s['tasks_done']}/{s['tasks_total']} tasks, last-10% {heads}, "
        f"{res['wall_s']:.0f} s"
        + (f", resumed from task {res['resumed_from']}" if res['resumed_from'] else '')
    )
    newly = [g for g in waiting if g['key'] == c.group]
    for g in newly:
      f = finals_ready(g) if stop_after is None else None
      if f is not None:
        waiting.remove(g)
        refresh()
        submit(f)
    refresh()

  try:
    for c in pending:
      submit(c)
    while futures:
      done, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
      for fut in done:
        c = futures.pop(fut)
        try:
          res = fut.result()
        except Exception as e:  # pylint: disable=broad-except
          failed.append(c.label)  # the other cells go on; rerunning the study retries it
          log(f'FAILED   {c.label}: {type(e).__name__}: {e}')
          continue
        finished(c, res)
  except KeyboardInterrupt:
    # Ctrl-C reaches the workers too: a running cell checkpoints and ends. Cells not
    # started stay unstarted; running the study again resumes them all.
    if stop is not None:
      stop.set()
    log('interrupted: running cells keep their checkpoints; run the study again to resume.')
    raise
  finally:
    if pool is not None:
      pool.shutdown(cancel_futures=True)
  for g in groups:
    if g['final_seeds'] is None and g['select']:
      finals_ready(g)  # a sweep: records its scores in selection.json
  rows = refresh()
  if spec.get('figures'):
    draw_figures(rows, pathlib.Path(spec['figures']), name, log)
  return {'ran': ran, 'skipped': skipped, 'failed': failed, 'selection': selection, 'rows': rows}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.study',
      description=__doc__.splitlines()[0],
      epilog='See the module docstring (python -c "import experiments.study as s; '
      'print(s.__doc__)") for the spec format.',
  )
  parser.add_argument('spec', nargs='?', help='study spec (.json or .toml)')
  parser.add_argument('--workers', type=int, help='worker processes (default: spec, else 2)')
  parser.add_argument('--dry-run', action='store_true', help='list cells and their states')
  parser.add_argument(
      '--report',
      action='store_true',
      help='run nothing: rewrite the CSV, table and figures from the cells ' 'on disk',
  )
  parser.add_argument(
      '--stop-after', type=int, help='end each cell after this many tasks ' '(with a checkpoint)'
  )
  parser.add_argument(
      '--table',
      metavar='STUDY_CSV',
      help='only write a markdown table from ' 'a study CSV (to --out)',
  )
  parser.add_argument('--out', help='markdown file for --table (default: stdout)')
  args = parser.parse_args(argv)
  try:
    if args.table:
      text = make_table(
          read_csv(pathlib.Path(args.table)), f'Study results ({pathlib.Path(args.table).stem})'
      )
      if args.out:
        pathlib.Path(args.out).write_text(text)
        print(f'wrote {args.out}')
      else:
        print(text)
      return 0
    if not args.spec:
      parser.error('give a study spec, or --table STUDY_CSV.')
    _stop_on_sigterm()
    run_study(
        load_spec(pathlib.Path(args.spec)),
        workers=args.workers,
        dry_run=args.dry_run,
        stop_after=args.stop_after,
        report=args.report,
        log=lambda s: print(s, flush=True),
    )
  except (StudyError, FileNotFoundError) as e:
    parser.exit(2, f'error: {e}\n')
  except KeyboardInterrupt:
    return 130
  return 0


if __name__ == '__main__':
  sys.exit(main())
