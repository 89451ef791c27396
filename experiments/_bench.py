"""The timing helpers that every benchmark script (``experiments/bench_*.py``) uses."""

import os
import statistics
import time
from typing import Any, Callable, Mapping


def pin_cores(cores: int) -> int:
  """Pins this process to its first ``cores`` cores (0: leave as is); returns the count.

  Call it before the first JAX computation, so XLA's threads inherit the affinity.
  Unpinned on a small machine, XLA's thread pool makes the same compiled function's time
  vary from one repetition to the next by more than the differences being measured (the
  speed page gives the figures).
  """
  if cores > 0:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
  return len(os.sched_getaffinity(0))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
  """``(wall seconds, result)`` of one call of ``fn``, waiting until its result is ready."""
  import jax  # pylint: disable=import-outside-toplevel

  t = time.perf_counter()
  out = jax.block_until_ready(fn())
  return time.perf_counter() - t, out


def interleaved_times(fns: Mapping[str, Callable[[], Any]], reps: int) -> dict[str, list]:
  """Wall times of each ``fn()`` over ``reps`` rounds, one call of each per round.

  The calls are interleaved (``a, b, a, b, ...``) so that a drift in the machine's load
  hits every function alike. Compile (call each once) before timing.
  """
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      times[name].append(timed(fn)[0])
  return times


def median_times(fns: Mapping[str, Callable[[], Any]], reps: int) -> dict[str, float]:
  """Median wall time of each ``fn()`` over ``reps`` interleaved calls
  (:func:`interleaved_times`); the ratios of the medians are then comparable."""
  return {name: statistics.median(ts) for name, ts in interleaved_times(fns, reps).items()}


def round_ratios(times: Mapping[str, list], base: str) -> dict[str, list]:
  """Each function's time over ``base``'s in the same round of :func:`interleaved_times`:
  a ratio measured seconds apart, less exposed to the load's drift than a ratio of
  medians."""
  return {name: [t / b for t, b in zip(ts, times[base])] for name, ts in times.items()}


def median_time(fn: Callable[[], Any], reps: int) -> float:
  """Median wall time of ``fn()`` over ``reps`` calls (see :func:`median_times`)."""
  return median_times({'fn': fn}, reps)['fn']
