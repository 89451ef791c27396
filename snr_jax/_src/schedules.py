"""When thresholds are refreshed: every K task boundaries, every P steps, or at random."""

from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp

from snr_jax._src.checks import integer_in, number_in


class ScheduleState(NamedTuple):
  tasks_seen: jax.Array  # task boundaries signalled so far (int32)
  steps: jax.Array  # steps taken so far (int32)


@dataclasses.dataclass(frozen=True)
class RefreshSchedule:
  """A refresh schedule. Build it with [`every_n_tasks`][snr_jax.every_n_tasks],
  [`every_n_steps`][snr_jax.every_n_steps] or [`at_random`][snr_jax.at_random].

  Attributes:
    kind: ``'tasks'``, ``'steps'`` or ``'random'``.
    every: the period (in task boundaries or steps) for the fixed schedules.
    prob: the per-step probability that a neuron is refreshed, for ``'random'``.
  """

  kind: str
  every: int = 0
  prob: float = 0.0

  def __post_init__(self):
    if self.kind not in ('tasks', 'steps', 'random'):
      raise ValueError(
          f"unknown refresh schedule {self.kind!r}: use 'tasks', 'steps' or "
          "'random' (every_n_tasks, every_n_steps, at_random)."
      )
    # the library's one integer and number checks (NumPy ints are ints, bools are not)
    if self.kind in ('tasks', 'steps'):
      object.__setattr__(self, 'every', integer_in('refresh period', self.every, 1))
    if self.kind == 'random':
      object.__setattr__(
          self, 'prob', number_in('refresh probability', self.prob, 0.0, 1.0, lo_open=True)
      )

  def init(self) -> ScheduleState:
    return ScheduleState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  def due(
      self, state: ScheduleState, end_of_task: jax.Array, key: jax.Array, sizes: Mapping[str, int]
  ) -> tuple[dict[str, jax.Array], ScheduleState]:
    """Advances the counters by one step; returns which neurons refresh now.

    Args:
      state: the counters.
      end_of_task: bool scalar, True on a task's last step.
      key: PRNG key (used by the random schedule).
      sizes: ``{group name: number of units}``.

    Returns:
      ``({group name: bool (size,)}, new counters)``.
    """
    tasks = state.tasks_seen + end_of_task.astype(jnp.int32)
    steps = state.steps + 1
    new = ScheduleState(tasks, steps)
    if self.kind == 'random':
      keys = jax.random.split(key, len(sizes))
      return {
          name: jax.random.bernoulli(k, self.prob, (n,))
          for k, (name, n) in zip(keys, sizes.items())
      }, new
    if self.kind == 'tasks':
      now = end_of_task & (tasks % self.every == 0)
    else:
      now = steps % self.every == 0
    return {name: jnp.broadcast_to(now, (n,)) for name, n in sizes.items()}, new


def every_n_tasks(k: int = 16) -> RefreshSchedule:
  """Refresh all thresholds at every ``k``-th signalled end of task (the paper's K)."""
  return RefreshSchedule('tasks', every=k)


def every_n_steps(n: int) -> RefreshSchedule:
  """Refresh all thresholds every ``n`` steps (for training without task boundaries)."""
  return RefreshSchedule('steps', every=n)


def at_random(prob: float = 1e-4) -> RefreshSchedule:
  """Refresh each neuron independently with probability ``prob`` per step (the
  authors' transformer setting, 1e-4)."""
  return RefreshSchedule('random', prob=prob)
