"""A cell on disk and its run: its state (new, partial, done), and running or resuming it,
in this process or in a worker that is pinned to a core and stops with the study."""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import signal
import time
from typing import Optional

from experiments.study.spec import Cell, StudyError, cell_config


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
  want = results.config_record(cell_config(cell), list(cell.seeds), '', '')
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


_DATASETS: dict = {}  # by name: a process loads each dataset once, for all its cells


_STOP = None  # in a worker: the study's stop event


def stop_on_sigterm() -> None:
  """SIGTERM (``kill``, a scheduler's notice) stops the study as Ctrl-C does.

  Ctrl-C reaches the whole process group; a ``kill`` of the study's process reaches it
  alone, so the study passes it on to its pool's workers, whose running cells then
  checkpoint and end. Later SIGTERMs are ignored, so one sent to the group as well
  cannot interrupt a worker's checkpoint.
  """

  def interrupt(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for child in multiprocessing.active_children():
      os.kill(child.pid, signal.SIGTERM)
    raise KeyboardInterrupt

  signal.signal(signal.SIGTERM, interrupt)


def init_worker(counter, stop) -> None:
  """Pool initializer: pins each worker to its own core (round robin), keeps the
  study's stop event, and treats SIGTERM as Ctrl-C."""
  global _STOP  # pylint: disable=global-statement
  _STOP = stop
  stop_on_sigterm()
  with counter.get_lock():
    i = counter.value
    counter.value += 1
  cores = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {cores[i % len(cores)]})


def run_cell_unless_stopped(cell: Cell, **kw) -> Optional[dict]:
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

  config = cell_config(cell)
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
