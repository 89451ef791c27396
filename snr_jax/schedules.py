"""When SNR refreshes its thresholds (design §3): after tasks, every n steps, or at random.

Each name is also exported from `snr_jax` itself; this namespace gathers them for
``from snr_jax import schedules``.

Examples:
  >>> from snr_jax import schedules
  >>> isinstance(schedules.every_n_tasks(1), schedules.RefreshSchedule)
  True
"""

from snr_jax._src.schedules import (
    RefreshSchedule,
    ScheduleState,
    at_random,
    every_n_steps,
    every_n_tasks,
)

__all__ = [
    'RefreshSchedule',
    'ScheduleState',
    'at_random',
    'every_n_steps',
    'every_n_tasks',
]
