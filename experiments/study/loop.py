"""The study loop: runs every cell not yet done, the finals once their selection is
complete, and rewrites the CSV, selection and table after each cell."""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing as mp
import pathlib
from typing import Optional, Sequence

from experiments.study.cells import cell_state, init_worker, run_cell, run_cell_unless_stopped
from experiments.study.figures import draw_figures
from experiments.study.rows import (
    cell_curves,
    cell_rows,
    curves_key,
    read_csv,
    read_curves,
    recorded_rows,
    write_csv,
    write_curves,
)
from experiments.study.selection import select_setting
from experiments.study.spec import Cell, StudyError, build_groups, final_cell
from experiments.study.tables import make_table


def run_study(
    spec: dict,
    *,
    workers: Optional[int] = None,
    dry_run: bool = False,
    stop_after: Optional[int] = None,
    report: bool = False,
    methods: Optional[Sequence[str]] = None,
    log=print,
) -> dict:
  """Runs every cell of ``spec`` not yet done (see the package docstring).

  Args:
    spec: the loaded spec.
    workers: worker processes (default: the spec's ``workers``, else 2); 0 runs the
      cells in this process (for tests and debugging).
    dry_run: list the cells and their states without running anything.
    report: run nothing; rewrite the CSV, selection, table and figures from the cells
      on disk.
    stop_after: end every cell after this many tasks, with a checkpoint (simulates a
      killed study; a later call resumes each cell).
    methods: run only the groups of these method labels (the spec's ``methods`` keys),
      in this order; the other groups wait for a later call. The CSV, selection and
      table still cover every group with results. Default: every method, in the spec's
      order.
    log: where progress lines go.

  Returns:
    ``{'ran': [cell labels], 'skipped': [...], 'failed': [...], 'selection': {...},
    'rows': [...]}``; a cell that fails in a worker is logged and left for the next run.
  """
  groups = build_groups(spec)
  spec_order = {g['key']: i for i, g in enumerate(groups)}
  held = []  # groups of the methods this call leaves for later
  if methods is not None:
    held = [g for g in groups if g['key'][3] not in methods]
    groups = _groups_of_methods(groups, methods, spec)
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
  known.extend(c for g in held for c in _recorded_cells(g))  # their rows stay in the CSV
  prior = read_csv(csv_path) if csv_path.exists() else []
  curves_path = csv_path.parent / f'{csv_path.stem}_curves.json'
  prior_curves = read_curves(curves_path)

  def rows_of(c: Cell) -> list[dict]:
    return cell_rows(name, c) or recorded_rows(prior, name, c)

  def state_of(c: Cell) -> str:
    state = cell_state(c)
    return 'done' if state == 'new' and recorded_rows(prior, name, c) else state

  def refresh():
    in_spec_order = sorted(known, key=lambda c: spec_order[c.group])  # stable within a group
    rows = [r for c in in_spec_order for r in rows_of(c)]
    write_csv(csv_path, rows)
    curves = {}  # a final cell's curves from its run, else as the committed file has them
    for c in in_spec_order:
      key = curves_key(c.group, c.hparams, c.phase)
      mine = cell_curves(c) if c.phase == 'final' else {}
      if mine or (c.phase == 'final' and key in prior_curves):
        curves[key] = mine or prior_curves[key]
    if curves:
      write_curves(curves_path, curves)
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

  for g in held:
    finals_ready(g)  # records a completed selection; runs nothing
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
      draw_figures(rows, pathlib.Path(spec['figures']), name, log, read_curves(curves_path))
    return {'ran': [], 'skipped': [], 'selection': selection, 'rows': rows}

  pool = stop = None
  if workers > 0:
    ctx = mp.get_context('spawn')
    stop = ctx.Event()
    pool = cf.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=init_worker, initargs=(ctx.Value('i', 0), stop)
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
      futures[pool.submit(run_cell_unless_stopped, c, **kw)] = c
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
    draw_figures(rows, pathlib.Path(spec['figures']), name, log, read_curves(curves_path))
  return {'ran': ran, 'skipped': skipped, 'failed': failed, 'selection': selection, 'rows': rows}


def _groups_of_methods(groups: list[dict], methods: Sequence[str], spec: dict) -> list[dict]:
  """The groups whose method label is in ``methods``, ordered as ``methods`` lists them."""
  unknown = [m for m in methods if m not in spec['methods']]
  if unknown:
    raise StudyError(
        f'--methods names {unknown}, which the spec does not declare; its methods are '
        f"{sorted(spec['methods'])}."
    )
  return sorted(
      (g for g in groups if g['key'][3] in methods), key=lambda g: list(methods).index(g['key'][3])
  )


def _recorded_cells(g: dict) -> list[Cell]:
  """A held-back group's cells that may have rows: its selection cells and every final."""
  finals = [] if g['final_seeds'] is None else [final_cell(g, hp) for hp in g['settings']]
  return list(g['select']) + finals
