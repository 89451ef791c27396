"""Self-Normalized Resets (Farias & Jozefiak, ICLR 2025).

Each neuron's *age* counts the examples since it last fired. A neuron is reset when
``P(A_i ≥ a_i) ≤ η`` under its own inter-firing law, i.e. when its age reaches its
threshold ``τ_i``, the ``(1 − η)`` quantile of its recorded gaps (design §2–§5).
The threshold estimator (`snr_jax.thresholds`) says how a batch's firing moves
the ages: for the per-token estimator (design §3c) they count positions (tokens, spatial
positions), see `position_ages`.

References:
  Farias & Jozefiak, "Self-Normalized Resets for Plasticity in Continual Learning",
  ICLR 2025, https://arxiv.org/abs/2410.20098.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from snr_jax._src import checks as _checks
from snr_jax._src.checks import integer_in, number_at_least, number_in
from snr_jax._src.activations import ActivationError
from snr_jax._src.groups import NeuronGroup
from snr_jax._src.reset import cap_mask, max_resets_arg, resets_cap
from snr_jax._src.util import any_in_batch, control_flow_arg, control_flow_for, run_if
from snr_jax._src.schedules import RefreshSchedule, ScheduleState, every_n_tasks
from snr_jax._src.thresholds import ESTIMATORS, INT_MAX, RATE_CAP, Estimator, global_firing
from snr_jax._src.transform import NeuronResets, ResetRule, with_resets

AGE_UNITS = ('examples', 'steps', 'positions')


class SNRState(NamedTuple):
  """Per-group SNR statistics (all dicts keyed by group name).

  Attributes:
    ages: int32 (size,), examples (or steps) since each unit last fired; for the
      per-token estimator, positions (see `position_ages`).
    thresholds: int32 (size,), τ_i in the same unit.
    estimator: the threshold estimator's state per group.
    schedule: refresh counters.
  """

  ages: dict[str, jax.Array]
  thresholds: dict[str, jax.Array]
  estimator: dict[str, Any]
  schedule: ScheduleState


@dataclasses.dataclass(frozen=True)
class SNRRule(ResetRule):
  """The SNR reset rule; build it with
  [`self_normalized_resets`][snr_jax.self_normalized_resets]."""

  estimator: Estimator
  tau_init: int
  schedule: RefreshSchedule
  age_unit: str = 'examples'
  batch_size: Optional[int] = None
  axis_name: Optional[str] = None
  data_axis: Optional[str] = None
  control_flow: str = 'auto'
  max_resets_per_step: Any = None
  state_type: ClassVar[type] = SNRState

  def _increment(self, group: NeuronGroup, activation: jax.Array) -> int:
    if self.age_unit == 'steps':
      return 1
    if self.batch_size is None:
      return activation.shape[0]
    # Without a data_axis the activations hold the whole batch, so a batch_size that
    # differs from their leading axis would age units by examples they never saw.
    if self.data_axis is None and activation.shape[0] != self.batch_size:
      raise ActivationError(
          f"batch_size={self.batch_size}, but the activation of group '{group.name}' has "
          f'{activation.shape[0]} examples on its leading axis (shape {activation.shape}): '
          'leave batch_size unset (ages then grow by the leading axis), or, when each '
          'replica holds a shard of the batch (shard_map or pmap), pass data_axis= '
          '(batch_size is then the global batch).'
      )
    return self.batch_size

  def init(self, groups: Sequence[NeuronGroup], params: Any) -> SNRState:
    del params
    return SNRState(
        ages={g.name: jnp.zeros((g.size,), jnp.int32) for g in groups},
        thresholds={g.name: jnp.full((g.size,), self.tau_init, jnp.int32) for g in groups},
        estimator={g.name: self.estimator.init(g.size) for g in groups},
        schedule=self.schedule.init(),
    )

  def select(
      self,
      state: SNRState,
      groups: Sequence[NeuronGroup],
      activations: Mapping[str, jax.Array],
      params: Any,
      *,
      end_of_task: jax.Array,
      key: jax.Array,
  ):
    del params
    ages, est, masks = {}, {}, {}
    increments = {g.name: self._increment(g, activations[g.name]) for g in groups}
    # The estimator says what this batch's firing is and how it moves the ages
    # (batch-level: back to 0 if fired anywhere; per-token: the gap in positions).
    firings = {
        g.name: self.estimator.observe(activations[g.name], increments[g.name], g.firing)
        for g in groups
    }
    if self.data_axis is not None:  # the global batch: one all-reduce for all groups
      # a given batch_size is already the global batch's; a measured one is a shard's
      firings = global_firing(
          firings, self.data_axis, self.age_unit != 'steps' and self.batch_size is None
      )
      increments = {k: getattr(f, 'increment', increments[k]) for k, f in firings.items()}
    for g in groups:
      firing = firings[g.name]
      before = state.ages[g.name]
      age = self.estimator.advance_ages(before, firing)
      # over the cap, the most overdue units reset now; the others stay over their
      # threshold (nothing recorded, ages kept) and reset on a later step
      reset = cap_mask(
          age >= state.thresholds[g.name],
          resets_cap(self.max_resets_per_step, g.size),
          age - state.thresholds[g.name],
          self.control_flow,
      )
      est[g.name] = self.estimator.record(
          state.estimator[g.name], firing, age_before=before, reset=reset, age_at_reset=age
      )
      ages[g.name] = jnp.where(reset, 0, age)
      masks[g.name] = reset

    # Refresh thresholds after this step's resets (design §5 step 5), all groups in one
    # conditional: the quantiles (a cumsum over every bin for the histogram) cost
    # nothing on the other steps.
    due, schedule = self.schedule.due(
        state.schedule,
        end_of_task,
        jax.random.fold_in(key, state.schedule.steps),
        {g.name: g.size for g in groups},
    )

    def refresh(operands):
      thr, est = operands
      out_thr, out_est = {}, {}
      for g in groups:
        out_thr[g.name], out_est[g.name] = self.estimator.refresh(
            est[g.name], thr[g.name], due[g.name], increments[g.name]
        )
      return out_thr, out_est

    if control_flow_for(self.control_flow) == 'select':
      # refresh is already masked by `due`: run every step, it changes nothing off it
      thresholds, est = refresh((state.thresholds, est))
    else:
      any_due = jnp.any(jnp.stack([jnp.any(d) for d in due.values()]))
      thresholds, est = run_if(
          any_in_batch(any_due, self.axis_name), refresh, (state.thresholds, est)
      )
    return masks, SNRState(ages, thresholds, est, schedule)


def self_normalized_resets(
    groups: Sequence[NeuronGroup],
    *,
    eta: float = 0.08,
    estimator: str = 'histogram',
    tau_init: Optional[int] = None,
    tau_min: Optional[int] = None,
    tau_max: Optional[int] = None,
    expansion: Optional[float] = None,
    schedule: Optional[RefreshSchedule] = None,
    age_unit: Optional[str] = None,
    batch_size: Optional[int] = None,
    axis_name: Optional[str] = None,
    check_finite: bool = False,
    state_budget: int = 2**30,
    data_axis: Optional[str] = None,
    control_flow: str = 'auto',
    max_resets_per_step: Any = None,
) -> NeuronResets:
  """The bare rule bound to groups: SNR's [`NeuronResets`][snr_jax.NeuronResets], no optimizer.

  Pure ``init``/``apply`` functions: drive it with
  [`reset_state`][snr_jax.reset_state], or wrap an optimizer with
  [`with_resets`][snr_jax.with_resets]; [`snr`][snr_jax.snr] is that optax wrapper.

  Args:
    groups: the neuron groups ([`discover_groups`][snr_jax.discover_groups] or declared).
    eta: rejection percentile η in (0, 1): reset when ``P(A ≥ age) ≤ η``. Default
      0.08 (the authors' Permuted-MNIST notebook; their code's default is 0.01, their
      transformer runs use 0.05; their per-token sweep spans 0.01–0.4).
    estimator: ``'histogram'`` (design §3a, released code), ``'geometric'`` (§3b,
      O(1) memory) or ``'per_token'`` (§3c, O(1) memory: per-position firing rates
      and ages in positions, for token models and other layouts with many positions
      per example; [`PerTokenEstimator`][snr_jax.PerTokenEstimator]).
    tau_init: initial threshold τ_0; default ``tau_max`` (histogram, geometric) or
      10 positions (per_token, the authors' value; clamped into
      ``[tau_min, tau_max]``).
    tau_min: floor on τ: default 100 examples (the released code), 1 for per_token.
    tau_max: ceiling on τ; also the histogram's last bin. Default 20,000 examples;
      for per_token 2³⁰ positions, i.e. no ceiling in practice (without doubling, τ
      is at most ``−ln η`` times the positions seen since the refresh).
    expansion: factor applied to τ when the estimated quantile does not lie below it
      (default 2). Not accepted by per_token, which sets τ to the estimate.
    schedule: when thresholds refresh: ``every_n_tasks(16)`` (default; signal ends
      of tasks with ``end_of_task=True``), ``every_n_steps(n)``, or ``at_random(p)``
      (the authors' transformer runs: 1e-4 for geometric, 1/(k·120) for per_token).
    age_unit: ``'examples'`` (default; ages grow by the batch size, the paper) or
      ``'steps'`` for the batch-level estimators; per_token ages count
      ``'positions'`` (its default and only unit).
    batch_size: examples per step, over the whole batch (with ``data_axis``: the
      global batch, not a shard's); default: the leading axis of each activation (times
      the number of shards with ``data_axis``). Without ``data_axis`` it must equal the
      activations' leading axis (a mismatch is an error at trace time). Not accepted by
      per_token, which counts the positions of each activation.
    axis_name: name of the enclosing vmap/pmap axis when runs are batched (e.g.
      ``jax.vmap(run, axis_name='seeds')``), so that resets and refreshes run as real
      branches only when some member needs them; results are unchanged.

    check_finite: opt-in check that every pre-activation is finite, with
      ``jax.experimental.checkify`` (run the step under ``checkify.checkify``; the
      error names the group). Without it, a NaN pre-activation counts as silent
      (``NaN > 0`` is False): the unit ages towards a reset, which re-draws it.

    data_axis: the data-parallel axis name when the update runs inside ``shard_map`` or
      ``pmap`` over shards of the batch: firing is reduced over it (a unit fires if it
      fired on any shard, ages grow by the global batch), so every replica makes the
      same resets. Not needed for ``jit`` with sharded inputs, where the batch is global.
    state_budget: the most bytes SNR's state (ages, thresholds, estimator) may take;
      computed from shapes alone before anything is allocated (default 1 GiB). The
      histogram estimator holds ``tau_max + 1`` int32 counters per unit.
    control_flow: how the step skips work it does not need (design §10). ``'branch'``:
      fresh weights are drawn under a ``lax.cond`` and thresholds refreshed under a
      zero-or-one-trip ``while_loop``, only on the steps that need them. ``'select'``:
      both run on every step and ``jnp.where`` keeps their results, so the lowered step
      holds no ``stablehlo.case``/``while``/``if`` (XLA:GPU evaluates those predicates on
      the host: a device-to-host synchronisation per step). Results are the same (masks
      equal, params within float rounding). ``'auto'`` (default): ``'select'`` on a GPU
      backend, ``'branch'`` elsewhere (resolved at trace time from
      ``jax.default_backend()``; pass it explicitly when exporting for another platform).
      Measured on this project's CPU (784-100-100-10 MLP, batch 16, SNR/SGD step time,
      see CHANGELOG): ``'select'`` costs more there, most for the histogram, whose refresh
      (a cumulative sum over ``tau_max + 1`` bins per unit) then runs on every step.
    max_resets_per_step: the most units of a group reset in one step: an int, ``'auto'``
      (``max(16, ⌈size / 16⌉)``) or None (default: no cap). A capped reset draws fresh
      values for those units' incoming slices only and scatters them in (work follows
      the resets, not the parameters' size; no parameter-sized buffer on steps without
      resets). Units over the cap stay over their threshold and reset on a later step
      (the most overdue first). A group of at most the cap's size, and None, take the
      exact path: whole parameters drawn from their initializers and selected by mask,
      the released code's draws (use None to replay it). The capped draw asks the
      initializer for ``k`` slices at once, which has the same law per element for
      fan-in scaled kernels (Flax's default lecun_normal), normal, uniform and constant
      initializers; a fan-out/fan-average or orthogonal initializer draws one whole layer
      and keeps the slices. Not the default, by measurement: on this project's CPU the
      capped step (its ``k`` slots gathered into place on every step, a gather along the
      unit axis that XLA:CPU does not vectorise) made SNR 1.4-1.8x plain SGD on the MLP
      against 1.1-1.4x for the exact path (docs/speed.md, 2026-12-03); on a GPU it is
      unmeasured.

  Returns:
    A [`NeuronResets`][snr_jax.NeuronResets]; see [`snr`][snr_jax.snr] for the optax wrapper.

  Raises:
    ValueError: for hyperparameters out of range, an unknown estimator or unit, or an
      argument that the chosen estimator does not take.
  """
  eta = number_in('eta (a tail probability)', eta, 0.0, 1.0, lo_open=True, hi_open=True)
  if estimator not in ESTIMATORS:
    raise ValueError(f'unknown estimator {estimator!r}: choose one of {sorted(ESTIMATORS)}.')
  est_cls = ESTIMATORS[estimator]
  if age_unit is None:
    age_unit = est_cls.age_units[0]
  if age_unit not in AGE_UNITS:
    raise ValueError(f'unknown age_unit {age_unit!r}: choose one of {list(AGE_UNITS)}.')
  if age_unit not in est_cls.age_units:
    raise ValueError(
        f'age_unit {age_unit!r} does not apply to estimator {estimator!r}, '
        f'whose ages count {" or ".join(est_cls.age_units)}; leave age_unit '
        'unset or choose another estimator.'
    )
  per_token = estimator == 'per_token'
  if per_token and expansion is not None:
    raise ValueError(
        "estimator='per_token' sets τ to its estimate at a refresh, with no "
        'expansion (design §3c); leave expansion unset.'
    )
  if per_token and batch_size is not None:
    raise ValueError(
        "estimator='per_token' counts the positions of each pre-activation "
        '(all axes but the last); leave batch_size unset.'
    )
  # the defaults are the estimator class's (Estimator.default_tau_*)
  default_min, default_max = est_cls.default_tau_min, est_cls.default_tau_max
  default_init = est_cls.default_tau_init
  unit = f' (in {age_unit})'
  tau_min = integer_in('tau_min', default_min if tau_min is None else tau_min, 1, what=unit)
  tau_max = integer_in('tau_max', default_max if tau_max is None else tau_max, 1, what=unit)
  if tau_min > tau_max:
    raise ValueError(f'tau_min ({tau_min}) must not exceed tau_max ({tau_max}).')
  if tau_init is None:
    tau_init = tau_max if default_init is None else min(max(default_init, tau_min), tau_max)
  tau_init = integer_in('tau_init', tau_init, tau_min, tau_max, what=' (= [tau_min, tau_max])')
  if per_token:
    if tau_max > RATE_CAP:
      raise ValueError(
          f'tau_max must be at most {RATE_CAP} positions for per_token, got ' f'{tau_max}.'
      )
    est = est_cls(eta=eta, tau_min=tau_min, tau_max=tau_max)
  else:
    # unset, the expansion is the estimator class's default (2)
    given = (
        {}
        if expansion is None
        else {'expansion': float(number_at_least('expansion', expansion, 1))}
    )
    est = est_cls(eta=eta, tau_min=tau_min, tau_max=tau_max, **given)
    if tau_max * est.expansion >= INT_MAX:
      raise ValueError(
          f'tau_max * expansion = {tau_max * est.expansion} overflows int32; ' 'lower tau_max.'
      )
  if batch_size is not None:
    batch_size = integer_in('batch_size', batch_size, 1, what=' or None')
  if schedule is None:
    schedule = every_n_tasks(16)
  if not isinstance(schedule, RefreshSchedule):
    raise ValueError(
        'schedule must be built with snr_jax.every_n_tasks, every_n_steps or '
        f'at_random, got {type(schedule).__name__}.'
    )
  control_flow = control_flow_arg(control_flow)
  rule = SNRRule(
      est,
      tau_init,
      schedule,
      age_unit,
      batch_size,
      axis_name,
      _checks.axis_name_or_none('data_axis', data_axis),
      control_flow,
      max_resets_arg(max_resets_per_step),
  )
  resets = NeuronResets(groups, rule, axis_name, bool(check_finite), control_flow)
  _check_state_budget(resets.groups, est, estimator, integer_in('state_budget', state_budget, 1))
  return resets


def state_bytes_per_unit(estimator: Any) -> int:
  """Bytes of SNR state per unit for an estimator: its own state (from shapes alone,
  nothing allocated) plus the int32 age and threshold."""
  shapes = jax.eval_shape(lambda: estimator.init(1))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)) + 8


def _check_state_budget(groups, estimator, name: str, budget: int) -> None:
  per_unit = state_bytes_per_unit(estimator)
  total = per_unit * sum(g.size for g in groups)
  if total > budget:
    sizes = ', '.join(f"'{g.name}': {g.size} units" for g in groups)
    raise ValueError(
        f"SNR's state would take {total / 2 ** 20:,.1f} MiB ({per_unit:,} bytes per unit with "
        f'estimator={name!r}; groups {sizes}), over state_budget={budget:,} bytes. Use '
        "estimator='geometric' (16 bytes per unit), a smaller tau_max, or raise "
        'state_budget.'
    )


def snr(
    inner: optax.GradientTransformation,
    groups: Sequence[NeuronGroup],
    *,
    key: Any = _checks.DEFAULT_KEY,
    eta: float = 0.08,
    estimator: str = 'histogram',
    tau_init: Optional[int] = None,
    tau_min: Optional[int] = None,
    tau_max: Optional[int] = None,
    expansion: Optional[float] = None,
    schedule: Optional[RefreshSchedule] = None,
    age_unit: Optional[str] = None,
    batch_size: Optional[int] = None,
    axis_name: Optional[str] = None,
    check_finite: bool = False,
    state_budget: int = 2**30,
    data_axis: Optional[str] = None,
    control_flow: str = 'auto',
    max_resets_per_step: Any = None,
    seed: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Optax wrapper: ``inner`` with Self-Normalized Resets, as one optax transformation.

  ``update(grads, state, params, activations={group: pre-activation},
  end_of_task=False, key=None)`` performs design §5 steps 2–5: ages and gap records from
  the batch's firing, the inner update, resets of units whose age reached their
  threshold (incoming weights re-drawn, outgoing weights and optimizer moments
  zeroed), and a threshold refresh when the schedule says so.

  The hyperparameters are those of
  [`self_normalized_resets`][snr_jax.self_normalized_resets], with the same defaults;
  its Args give each one in full.

  Args:
    inner: the optimizer to wrap, e.g. ``optax.sgd(1e-2)``.
    groups: neuron groups ([`discover_groups`][snr_jax.discover_groups] or declared).
    key: int seed or PRNG key for the fresh weights (default 0; or pass ``key=`` to
      ``update``).
    eta: rejection percentile η in (0, 1): reset when ``P(A ≥ age) ≤ η``.
    estimator: ``'histogram'``, ``'geometric'`` or ``'per_token'``.
    tau_init: initial threshold τ_0 (default: the estimator's).
    tau_min: floor on τ (default: the estimator's).
    tau_max: ceiling on τ, also the histogram's last bin (default: the estimator's).
    expansion: factor applied to τ when the estimate does not lie below it (default 2;
      not accepted by per_token).
    schedule: when thresholds refresh (default ``every_n_tasks(16)``).
    age_unit: ``'examples'`` (default) or ``'steps'``; per_token counts ``'positions'``.
    batch_size: examples per step over the whole batch (default: the activations'
      leading axis).
    axis_name: the enclosing vmap/pmap axis when runs are batched.
    check_finite: check with ``checkify`` that every pre-activation is finite.
    state_budget: the most bytes SNR's state may take (default 1 GiB).
    data_axis: the data-parallel axis inside ``shard_map``/``pmap``.
    control_flow: ``'branch'``, ``'select'`` or ``'auto'`` (default).
    max_resets_per_step: the most units of a group reset in one step: an int,
      ``'auto'`` or None (default: no cap).
    seed: deprecated name of ``key`` (a ``DeprecationWarning``; removed in the next
      release).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    ValueError: as [`self_normalized_resets`][snr_jax.self_normalized_resets] does.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, snr_jax
    >>> def mlp(params, x):
    ...   return jax.nn.relu(x @ params['l1']['kernel']) @ params['l2']['kernel']
    >>> params = {'l1': {'kernel': jnp.ones((3, 4))}, 'l2': {'kernel': jnp.ones((4, 2))}}
    >>> x = jnp.ones((8, 3))
    >>> groups = snr_jax.discover_groups(mlp, params, x)
    >>> opt = snr_jax.snr(optax.sgd(0.1), groups, eta=0.05)
    >>> state = opt.init(params)
    >>> _, acts = snr_jax.with_preactivations(mlp, groups)(params, x)
    >>> grads = jax.tree.map(jnp.zeros_like, params)
    >>> updates, state = opt.update(grads, state, params, activations=acts)
    >>> params = optax.apply_updates(params, updates)
  """
  resets = self_normalized_resets(
      groups,
      eta=eta,
      estimator=estimator,
      tau_init=tau_init,
      tau_min=tau_min,
      tau_max=tau_max,
      expansion=expansion,
      schedule=schedule,
      age_unit=age_unit,
      batch_size=batch_size,
      axis_name=axis_name,
      check_finite=check_finite,
      state_budget=state_budget,
      data_axis=data_axis,
      control_flow=control_flow,
      max_resets_per_step=max_resets_per_step,
  )
  return with_resets(inner, resets, _checks.key_or_seed('snr', key, seed))


def dead_fraction(ages: jax.Array, dead_after: int = 1000) -> jax.Array:
  """Fraction of units whose age reached ``dead_after`` (in the ages' unit).

  With batch-level ages (examples) that is design §7's dead neuron: no firing for the last
  ``dead_after`` examples. With per-token ages (positions) a unit's age is its last
  within-batch mean gap ``⌊BT/c⌋ ≤ BT`` plus ``BT`` per silent batch since, so it counts
  as dead once that gap reaches ``dead_after`` positions; such a unit has been silent on
  at least the last ``⌈dead_after/BT⌉ − 1`` whole batches (so with ``dead_after ≤ BT``, a
  unit firing at fewer than one position in ``dead_after`` counts as dead). To match the
  examples definition pass ``dead_after`` × positions per example (e.g. 1,000 × 128).
  """
  number_in('dead_after', dead_after, 0, float('inf'), lo_open=True)  # 0 counts every unit
  return jnp.mean(ages >= dead_after)
