"""A study's spec: loading it, each method's grid of settings, and the groups and cells
it declares (see the package docstring for the format)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
from typing import Any

DEFAULT_SELECTION_SEEDS = (0, 1)
DEFAULT_FINAL_SEEDS = (10, 11, 12, 13, 14)


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
  """The hyperparameter settings of one method's grid (see the package docstring)."""
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


def cell_config(cell: Cell):
  """The cell's ``ExperimentConfig``."""
  from experiments.benchmarks import ExperimentConfig  # pylint: disable=import-outside-toplevel

  return ExperimentConfig(**dict(cell.config, hparams=cell.hparams))
