"""Replays the paper's released code's recorded run through our histogram estimator."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snr_jax

TRACE = (
    pathlib.Path(__file__).resolve().parents[1].parent
    / 'shared'
    / 'data'
    / 'snr_reference_trace.npz'
)


@pytest.fixture(scope='module')
def trace():
  if not TRACE.exists():
    pytest.skip(
        f'reference trace not found at {TRACE} (it lives in shared/data beside the '
        'project root, as on CI).'
    )
  return dict(np.load(TRACE))


@pytest.mark.parametrize('control_flow', ['branch', 'select'])
def test_replay_matches_released_code_at_every_step(trace, control_flow):
  fired = trace['fired']
  steps, layers, units = fired.shape
  bs, spt = int(trace['batch_size']), int(trace['steps_per_task'])
  groups = tuple(
      snr_jax.NeuronGroup(
          f'layer{i}', units, (snr_jax.ParamSlice(('w',), -1, jax.nn.initializers.zeros),)
      )
      for i in range(layers)
  )
  resets = snr_jax.self_normalized_resets(
      groups,
      estimator='histogram',
      eta=float(trace['eta']),
      tau_init=int(trace['tau0']),
      tau_min=int(trace['tau_min']),
      tau_max=int(trace['tau_max']),
      expansion=float(trace['expansion']),
      schedule=snr_jax.every_n_tasks(int(trace['refresh_every_tasks'])),
      max_resets_per_step=None,  # the exact path: every due unit resets at once
      control_flow=control_flow,
  )
  params = {'w': jnp.zeros((1, units))}
  # +1 where a neuron fired (in one example of the batch), -1 elsewhere
  acts = np.where(fired[:, :, None, :], 1.0, -1.0).astype(np.float32)
  acts = np.broadcast_to(acts, (steps, layers, bs, units)).copy()
  acts[:, :, 1:, :] = -1.0
  end_of_task = (np.arange(steps) + 1) % spt == 0

  def step(state, xs):
    a, eot = xs
    _, _, state = resets.apply(
        params, None, state, {f'layer{i}': a[i] for i in range(layers)}, end_of_task=eot
    )
    stack = lambda d: jnp.stack([d[f'layer{i}'] for i in range(layers)])
    return state, (stack(state.rule.ages), stack(state.last_resets), stack(state.rule.thresholds))

  run = jax.jit(lambda s: jax.lax.scan(step, s, (jnp.asarray(acts), jnp.asarray(end_of_task))))
  _, (ages, reset_mask, thresholds) = run(resets.init(params))
  assert int(trace['reset_mask'].sum()) > 0
  np.testing.assert_array_equal(np.asarray(ages), trace['ages_after_step'])
  np.testing.assert_array_equal(np.asarray(reset_mask), trace['reset_mask'])
  thresholds = np.asarray(thresholds)
  np.testing.assert_array_equal(thresholds[spt - 1 :: spt], trace['thresholds'][1:])
  np.testing.assert_array_equal(
      thresholds[: spt - 1], np.broadcast_to(trace['thresholds'][0], thresholds[: spt - 1].shape)
  )
