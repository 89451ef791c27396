"""Shared helpers for the benchmark scripts."""

import os
import statistics
import time
from typing import Callable


def pin_cores(cores: int) -> int:
  """Pins this process to its first ``cores`` cores (0: leave as is); returns the count.

  Call it before the first JAX computation, so XLA's threads inherit the affinity. On a
  2-core machine an unpinned run of the same compiled function takes 1.2 s or 2.2 s
  from one repetition to the next, which swamps the differences being measured.
  """
  if cores > 0:
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
  return len(os.sched_getaffinity(0))


def median_time(fn: Callable[[], object], reps: int) -> float:
  """Median wall time of ``fn()`` over ``reps`` calls (``fn`` must block until done)."""
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)
