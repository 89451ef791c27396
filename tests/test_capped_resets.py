"""design §4: reset work follows the resets (``max_resets_per_step``).

A capped group draws fresh values for the up-to-``k`` units it resets and scatters them
in; units over the cap stay due and reset on later steps; nothing else moves.
"""

import dataclasses
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import snr_jax
from snr_jax._src.reset import _fan_free, cap_mask, resets_cap


class Wide(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(40)(x))
    x = nn.relu(nn.Dense(30)(x))
    return nn.Dense(3)(x)


class _Empty(NamedTuple):
  pass


@dataclasses.dataclass(frozen=True)
class FixedRule(snr_jax.ResetRule):
  """Resets the given units of each group on every step (capped like SNR's rule)."""

  units: Any
  max_resets_per_step: Any = 4
  state_type: ClassVar[type] = _Empty

  def init(self, groups, params):
    return _Empty()

  def select(self, state, groups, activations, params, *, end_of_task, key):
    masks = {}
    for g in groups:
      m = (
          jnp.zeros((g.size,), bool)
          .at[jnp.asarray(dict(self.units).get(g.name, []), int)]
          .set(True)
      )
      masks[g.name] = cap_mask(m, resets_cap(self.max_resets_per_step, g.size))
    return masks, state


def _setup():
  model = Wide()
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 9))
  params = model.init(jax.random.PRNGKey(0), x)['params']
  params = jax.tree.map(lambda p: p + 0.25, params)  # nonzero biases: a reset is visible
  groups = snr_jax.discover_groups(model, params, x)
  _, acts = snr_jax.apply_with_preactivations(model, {'params': params}, x, groups=groups)
  return model, params, x, groups, acts


@pytest.mark.slow
@pytest.mark.parametrize('control_flow', ['branch', 'select'])
def test_a_reset_unit_forgets_its_old_incoming_weights_and_nothing_else_moves(control_flow):
  model, params, x, groups, acts = _setup()
  resets = snr_jax.NeuronResets(groups, FixedRule((('Dense_0', [7]),)), control_flow=control_flow)
  adam = optax.adam(1e-2)
  opt_state = jax.tree.map(lambda a: jnp.ones_like(a) if a.ndim else a, adam.init(params))
  state = resets.init(params, 3)
  apply = jax.jit(lambda p, s: resets.apply(p, s, state, acts, optimizer=adam))
  new, new_opt, _ = apply(params, opt_state)
  # perturb the unit's old incoming weights: after the reset nothing depends on them
  moved = jax.tree.map(lambda a: a, params)
  moved['Dense_0'] = {
      'kernel': params['Dense_0']['kernel'].at[:, 7].add(3.0),
      'bias': params['Dense_0']['bias'].at[7].add(-2.0),
  }
  new_moved, _, _ = apply(moved, opt_state)
  out = model.apply({'params': new}, x)
  np.testing.assert_array_equal(np.asarray(model.apply({'params': new_moved}, x)), np.asarray(out))
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(new_moved)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # only unit 7's slices changed: incoming column re-drawn, bias 0, outgoing row 0
  k0, k0n = np.asarray(params['Dense_0']['kernel']), np.asarray(new['Dense_0']['kernel'])
  assert not np.allclose(k0n[:, 7], k0[:, 7])
  np.testing.assert_array_equal(np.delete(k0n, 7, 1), np.delete(k0, 7, 1))
  b0 = np.asarray(new['Dense_0']['bias'])
  assert b0[7] == 0
  np.testing.assert_array_equal(
      np.delete(b0, 7), np.delete(np.asarray(params['Dense_0']['bias']), 7)
  )
  k1, k1n = np.asarray(params['Dense_1']['kernel']), np.asarray(new['Dense_1']['kernel'])
  np.testing.assert_array_equal(k1n[7], 0)
  np.testing.assert_array_equal(np.delete(k1n, 7, 0), np.delete(k1, 7, 0))
  for layer in ('Dense_2',):
    for name in params[layer]:
      np.testing.assert_array_equal(np.asarray(new[layer][name]), np.asarray(params[layer][name]))
  np.testing.assert_array_equal(
      np.asarray(new['Dense_1']['bias']), np.asarray(params['Dense_1']['bias'])
  )
  # Adam's moments zeroed on exactly those slices
  mu = new_opt[0].mu
  np.testing.assert_array_equal(np.asarray(mu['Dense_0']['kernel'])[:, 7], 0)
  np.testing.assert_array_equal(np.delete(np.asarray(mu['Dense_0']['kernel']), 7, 1), 1)
  np.testing.assert_array_equal(np.asarray(mu['Dense_1']['kernel'])[7], 0)
  np.testing.assert_array_equal(np.delete(np.asarray(mu['Dense_1']['kernel']), 7, 0), 1)
  np.testing.assert_array_equal(np.asarray(mu['Dense_2']['kernel']), 1)


def test_capped_draws_follow_the_initializer_and_touch_only_the_reset_units():
  model, params, x, groups, acts = _setup()
  units = (('Dense_0', [1, 5, 20, 33]), ('Dense_1', [0, 29]))
  resets = snr_jax.NeuronResets(groups, FixedRule(units))
  new, _, state = jax.jit(lambda p: resets.apply(p, None, resets.init(p, 0), acts))(params)
  for name, us in units:
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(state.last_resets[name])), us)
  fresh = np.asarray(new['Dense_0']['kernel'])[:, [1, 5, 20, 33]]
  assert abs(fresh.mean()) < 0.3 and 0.5 / 3 < fresh.std() < 2 / 3  # lecun_normal, fan-in 9
  # the same units' columns differ from each other (not one column broadcast)
  assert len({tuple(np.round(c, 6)) for c in fresh.T}) == 4


def test_no_reset_changes_nothing_and_keeps_the_key():
  model, params, x, groups, acts = _setup()
  resets = snr_jax.NeuronResets(groups, FixedRule(()))
  state = resets.init(params, 0)
  new, _, after = jax.jit(lambda p: resets.apply(p, None, state, acts))(params)
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(jax.random.key_data(after.key), jax.random.key_data(state.key))


def test_a_capped_step_draws_no_parameter_sized_sample():
  # the jaxpr's random bits: k = 2 slices of 9 inputs per capped group, not 9 x 40
  model, params, x, groups, acts = _setup()
  resets = snr_jax.NeuronResets(groups, FixedRule((), max_resets_per_step=2))
  state = resets.init(params, 0)
  text = str(jax.make_jaxpr(lambda p: resets.apply(p, None, state, acts))(params))
  shapes = {s for s in __import__('re').findall(r'u32\[([\d,]+)\]', text)}
  sizes = [int(np.prod([int(d) for d in s.split(',')])) for s in shapes]
  assert max(sizes) < 9 * 40, shapes


@pytest.mark.slow
def test_due_units_over_the_cap_reset_on_the_following_steps():
  # 5 units, 3 of them silent; tau = 3 examples at batch 1, at most 1 reset per step
  group = snr_jax.NeuronGroup(
      'h', 5, (snr_jax.ParamSlice(('w',), -1, jax.nn.initializers.normal()),)
  )
  resets = snr_jax.self_normalized_resets(
      group, tau_min=3, tau_init=3, tau_max=100, max_resets_per_step=1
  )
  params = {'w': jnp.ones((2, 5))}
  acts = {'h': jnp.asarray([[-1.0, -1.0, -1.0, 1.0, 1.0]])}
  state = resets.init(params)
  step = jax.jit(lambda p, s: resets.apply(p, None, s, acts))
  resets_at = []
  for _ in range(5):
    params, _, state = step(params, state)
    resets_at.append(np.flatnonzero(np.asarray(state.last_resets['h'])).tolist())
  # due together at step 3, reset one per step over 3 steps, each unit once
  assert resets_at == [[], [], [0], [1], [2]], resets_at
  # without a cap they reset together (the exact path)
  exact = snr_jax.self_normalized_resets(
      group, tau_min=3, tau_init=3, tau_max=100, max_resets_per_step=None
  )
  state = exact.init(params)
  masks = []
  for _ in range(3):
    params, _, state = exact.apply(params, None, state, acts)
    masks.append(np.flatnonzero(np.asarray(state.last_resets['h'])).tolist())
  assert masks == [[], [], [0, 1, 2]]


@pytest.mark.slow
def test_redo_and_cbp_defer_over_the_cap():
  model, params, x, groups, acts = _setup()
  dead = {
      'Dense_0': jnp.where(jnp.arange(40) < 6, -1.0, 1.0) * jnp.ones((5, 40)),
      'Dense_1': jnp.ones((5, 30)),
  }
  opt = snr_jax.redo(optax.sgd(0.0), groups, period=3, threshold=0.0, max_resets_per_step=2)
  state = opt.init(params)
  update = jax.jit(
      lambda s: opt.update(jax.tree.map(jnp.zeros_like, params), s, params, activations=dead)
  )
  counts = []
  for _ in range(5):
    _, state = update(state)
    counts.append(int(state.resets.last_resets['Dense_0'].sum()))
  assert counts == [0, 0, 2, 2, 2], counts  # 6 dormant units at step 3, 2 per step
  # CBP owes 0.5 x 40 = 20 replacements at once; at most 3 a step, the rest stay owed
  cbp = snr_jax.continual_backprop(
      optax.sgd(0.0), groups, replacement_rate=0.5, maturity=0, max_resets_per_step=3
  )
  state = cbp.init(params)
  update = jax.jit(
      lambda s: cbp.update(jax.tree.map(jnp.zeros_like, params), s, params, activations=acts)
  )
  _, state = update(state)
  assert int(state.resets.last_resets['Dense_0'].sum()) == 3
  assert float(state.resets.rule.to_replace['Dense_0']) == 17.0
  with pytest.raises(ValueError, match='max_resets_per_step'):
    snr_jax.continual_backprop(optax.sgd(0.1), groups, max_resets_per_step=0)


def test_resets_cap_and_fan_checks():
  assert resets_cap(None, 100) is None and resets_cap(4, 4) is None
  assert resets_cap('auto', 100) == 16 and resets_cap('auto', 3072) == 192
  assert resets_cap('auto', 10) is None and resets_cap(3, 10) == 3
  init = jax.nn.initializers
  assert _fan_free(init.lecun_normal(), 1, 2) and _fan_free(init.normal(), 0, 2)
  assert not _fan_free(init.glorot_uniform(), 1, 2) and not _fan_free(init.orthogonal(), 1, 2)
  assert not _fan_free(init.lecun_normal(), 0, 2)  # the unit axis counted in fan-in
  with pytest.raises(ValueError, match='max_resets_per_step'):
    snr_jax.snr(optax.sgd(0.1), _setup()[3], max_resets_per_step='all')


@pytest.mark.slow
def test_a_fan_dependent_initializer_keeps_its_law_when_capped():
  # glorot over (9, 40): the capped path draws the whole layer and keeps the slices
  group = snr_jax.NeuronGroup(
      'h', 400, (snr_jax.ParamSlice(('w',), -1, jax.nn.initializers.glorot_normal()),)
  )
  resets = snr_jax.NeuronResets((group,), FixedRule((('h', list(range(16))),), 16))
  params = {'w': jnp.zeros((900, 400))}
  new, _, _ = resets.apply(params, None, resets.init(params), {'h': jnp.ones((1, 400))})
  fresh = np.asarray(new['w'])[:, :16]
  # glorot's std sqrt(2 / (900 + 400)) = 0.039 (drawn as 16 columns alone it would be 0.046)
  assert abs(fresh.std() - np.sqrt(2 / 1300)) < 0.002, fresh.std()
  np.testing.assert_array_equal(np.asarray(new['w'])[:, 16:], 0)
