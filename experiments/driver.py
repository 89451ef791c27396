"""Drives a run chunk by chunk: progress bar, results written as it goes, checkpoints."""

from __future__ import annotations

import contextlib
import pathlib
import signal
import threading
from typing import Optional, Sequence

import jax
import numpy as np

from experiments import results
from experiments.benchmarks import ExperimentConfig
from experiments.runner import run_experiment


class _Stopped(Exception):
  """Raised between chunks to end a run early (``stop_after``)."""


def drive(
    config: ExperimentConfig,
    dataset,
    seeds: Sequence[int],
    out: pathlib.Path,
    *,
    checkpoint_every: int = 25,
    tasks_per_call: int = 5,
    mode: str = 'auto',
    progress: bool = True,
    stop_after: Optional[int] = None,
    batch_devices: int = 1,
) -> dict:
  """Runs (or resumes) an experiment, writing its results into ``out``.

  Tasks run ``tasks_per_call`` at a time from task 0, so an interrupted run resumes on
  the same chunk boundaries and ends bitwise identical to an uninterrupted one.
  Metrics and the headline are rewritten after every chunk; the carry is checkpointed
  at the first chunk boundary at or after every ``checkpoint_every`` tasks, at the end,
  and when interrupted (Ctrl-C).

  ``batch_devices`` > 1 (mode ``'mesh'``) shards each member's batches over that many
  devices (:func:`experiments.runner.run_experiment`).

  ``stop_after`` (tasks) ends the run early at the first chunk boundary at or after it,
  with a checkpoint, as an interruption would (a later call resumes it); the summary
  then has ``complete`` False.

  Under several processes (``jax.distributed``, every process calling ``drive`` alike)
  all of them compute and checkpoint their part of the carry; only process 0 writes
  config, metrics and summary, and shows progress. An interruption (Ctrl-C) reaches
  one process only, so there it keeps the last periodic checkpoint instead of writing
  a new one.

  Returns:
    The summary (headline per sweep value).
  """
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  out = pathlib.Path(out).absolute()
  total = config.resolved('num_tasks')
  record = results.config_record(config, seeds, dataset.name, dataset.source)
  fp = results.fingerprint(record)
  results.check_resumable(out, fp)  # a refused run leaves the directory as it was
  members = [
      {'seed': s, 'sweep_value': v}
      for s in seeds
      for v in (config.sweep[1] if config.sweep else (0.0,))
  ]
  writer = results.is_writer()
  bar = tqdm(
      total=total,
      desc=f'{config.benchmark} {config.method}',
      unit='task',
      disable=not (progress and writer),
  )
  latest = {'saved': 0}
  restored = {'done': 0}

  def restore(template):
    # Called once the run is built (config and data accepted), before it compiles.
    state = results.load_checkpoint(out, fp, template)
    if state is not None:
      bar.update(state['done'])
      latest.update(state, saved=state['done'])
      restored['done'] = state['done']
      # the results on disk are the checkpoint's, even if an interrupt cut the last
      # write short (a complete run never calls on_chunk again)
      publish(_history(state['metrics']))
    return state

  def publish(metrics):
    if writer:
      if not (out / 'config.json').exists():
        # written with the first results, so a run that fails to build or compile
        # leaves no trace
        results.write_config(out, record)
      results.write_metrics(out, metrics, members, total, saved_tasks=latest['saved'])

  def save(done, state):
    with _signals_deferred():  # a checkpoint is written whole, and then marked saved
      results.save_checkpoint(out, fp, done, state['carry'], state['metrics'])
      latest['saved'] = done

  def on_chunk(done, state):
    latest.update(state)  # first, so that an interrupt from here on can checkpoint it
    metrics = _history(state['metrics'])
    publish(metrics)  # before the save: a save that fails loses no results
    if done - latest['saved'] >= checkpoint_every or done == total:
      save(done, state)
      if done == total and writer:  # only now does the summary say complete
        results.write_summary(out, metrics, members, total, saved_tasks=done)
    bar.update(done - bar.n)
    bar.set_postfix(accuracy=f'{float(np.mean(metrics["accuracy"][:, -1])):.3f}')
    if stop_after is not None and stop_after <= done < total:
      if latest['saved'] < done:
        save(done, state)
      raise _Stopped

  try:
    out_run = run_experiment(
        config,
        dataset,
        seeds,
        mode=mode,
        chunk_tasks=tasks_per_call,
        on_chunk=on_chunk,
        restore=restore,
        batch_devices=batch_devices,
    )
  except _Stopped:
    metrics = _history(latest['metrics'])
    summary = results.summarize(metrics, members, total, saved_tasks=latest['saved'])
    summary['resumed_from'] = restored['done']
    return summary
  except KeyboardInterrupt:
    if 'carry' in latest and latest['done'] > latest['saved'] and jax.process_count() == 1:
      save(latest['done'], latest)
    raise
  finally:
    bar.close()
  summary = results.summarize(out_run['metrics'], members, total, saved_tasks=latest['saved'])
  summary['resumed_from'] = out_run['resumed_from']
  return summary


def _history(chunks) -> dict:
  """Per-chunk metrics as one ``(members, tasks)`` history."""
  return jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *chunks)


@contextlib.contextmanager
def _signals_deferred():
  """Holds SIGINT and SIGTERM back until the block ends, then delivers the first one
  caught to the handler it would have reached. A Ctrl-C inside an orbax save could leave
  its background threads (and so the process) waiting, and the handler's own save would
  race the interrupted one; deferred, the interrupt lands after a complete checkpoint.
  Only the main thread can set handlers, and only it runs them; a handler installed
  outside Python (``getsignal`` is None) cannot be put back, so it is left alone."""
  signals = (signal.SIGINT, signal.SIGTERM)
  if threading.current_thread() is not threading.main_thread() or any(
      signal.getsignal(s) is None for s in signals
  ):
    yield
    return
  caught = []
  held = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in signals}
  try:
    yield
  finally:
    for s, handler in held.items():
      signal.signal(s, handler)
    if caught:
      signal.raise_signal(caught[0])
