"""``control_flow='select'``: a train step with no host-evaluated control flow (design §10).

With ``'select'`` every resetting method's lowered update holds no ``stablehlo.case``,
``while`` or ``if`` (XLA:GPU evaluates their predicates on the host); its results equal
the branching step's: the same masks at every step, params within float rounding.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import snr_jax
from test_lowering import control_flow_ops, linen_setup, lower

NONE = {'case': 0, 'while': 0, 'if': 0}

METHODS = {
    # name: (groups, control_flow, **kw) -> optimizer; small thresholds so resets happen
    'snr-histogram': lambda groups, cf, **kw: snr_jax.snr(
        optax.adam(1e-2),
        groups,
        estimator='histogram',
        tau_min=8,
        tau_init=16,
        tau_max=64,
        schedule=snr_jax.every_n_steps(25),
        control_flow=cf,
        **kw,
    ),
    'snr-geometric': lambda groups, cf, **kw: snr_jax.snr(
        optax.adam(1e-2),
        groups,
        estimator='geometric',
        tau_min=8,
        tau_init=16,
        tau_max=64,
        schedule=snr_jax.every_n_steps(25),
        control_flow=cf,
        **kw,
    ),
    'snr-per_token': lambda groups, cf, **kw: snr_jax.snr(
        optax.adam(1e-2),
        groups,
        estimator='per_token',
        schedule=snr_jax.at_random(0.05),
        control_flow=cf,
        **kw,
    ),
    'redo': lambda groups, cf, **kw: snr_jax.redo(
        optax.adam(1e-2), groups, period=10, threshold=0.3, control_flow=cf, **kw
    ),
    'cbp': lambda groups, cf, **kw: snr_jax.continual_backprop(
        optax.adam(1e-2), groups, replacement_rate=0.05, maturity=5, control_flow=cf, **kw
    ),
    'cbp-stochastic': lambda groups, cf, **kw: snr_jax.continual_backprop(
        optax.adam(1e-2),
        groups,
        replacement_rate=0.05,
        maturity=5,
        rounding='stochastic',
        control_flow=cf,
        **kw,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize('method', METHODS)
def test_select_update_lowers_with_no_control_flow(method):
  # the README MLP's update alone (the model has none of its own), for cuda and tpu
  _, params, x, _, groups, forward = linen_setup('mlp')
  _, acts = jax.eval_shape(forward, {'params': params}, x)
  for cap in ('auto', 2, None):
    opt = METHODS[method](groups, 'select', max_resets_per_step=cap)

    def update(grads, state, params, acts, end_of_task, opt=opt):
      return opt.update(grads, state, params, activations=acts, end_of_task=end_of_task)

    args = (params, jax.eval_shape(opt.init, params), params, acts, jnp.bool_(False))
    for platform in ('cuda', 'tpu'):
      text = lower(update, *args, platforms=(platform,))
      assert control_flow_ops(text) == NONE, (method, cap, platform, control_flow_ops(text))
  branch = METHODS[method](groups, 'branch')
  text = lower(
      lambda g, s, p, a: branch.update(g, s, p, activations=a),
      params,
      jax.eval_shape(branch.init, params),
      params,
      acts,
      platforms=('cuda',),
  )
  assert sum(control_flow_ops(text).values()) > 0  # the check sees the branching step's


def test_select_train_step_of_a_cnn_lowers_with_no_control_flow():
  model, params, x, y, groups, forward = linen_setup('cnn-im2col')
  opt = METHODS['snr-histogram'](groups, 'select')

  def step(params, state, x, y):
    def loss_fn(p):
      logits, acts = forward({'params': p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), acts

    (_, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, state = opt.update(grads, state, params, activations=acts, end_of_task=True)
    return optax.apply_updates(params, updates), state

  # one platform at a time: a module exported for several holds a `case` on the platform
  # index wherever a primitive lowers per platform (threefry), which compiling for one
  # platform removes
  for platform in ('cuda', 'tpu'):
    text = lower(step, params, jax.eval_shape(opt.init, params), x, y, platforms=(platform,))
    assert control_flow_ops(text) == NONE, (platform, control_flow_ops(text))
  del model


@pytest.mark.parametrize('bad', ['Select', 'cond', None, 1])
def test_control_flow_is_checked_by_every_constructor(bad, mlp_step):
  groups = mlp_step[3]
  builders = [
      lambda: snr_jax.snr(optax.sgd(0.1), groups, control_flow=bad),
      lambda: snr_jax.snr_l2(optax.sgd(0.1), groups, control_flow=bad),
      lambda: snr_jax.redo(optax.sgd(0.1), groups, control_flow=bad),
      lambda: snr_jax.continual_backprop(optax.sgd(0.1), groups, control_flow=bad),
      lambda: snr_jax.make_method('snr', optax.sgd(0.1), groups=groups, control_flow=bad),
      lambda: snr_jax.NeuronResets(groups, snr_jax.ReDoRule(), control_flow=bad),
  ]
  for build in builders:
    with pytest.raises(
        ValueError, match=r"control_flow must be one of \['auto', 'branch', " r"'select'\]"
    ):
      build()


def test_auto_is_branch_on_cpu():
  from snr_jax._src.util import control_flow_for  # pylint: disable=import-outside-toplevel

  assert jax.default_backend() == 'cpu'
  assert control_flow_for('auto') == 'branch'
  assert control_flow_for('select') == 'select' and control_flow_for('branch') == 'branch'


# --- the same results ------------------------------------------------------------------------


class SmallCNN(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (3, 3), padding='VALID')(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(12)(x))
    return nn.Dense(3)(x)


class SmallMLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    for h in (24, 20):
      x = nn.relu(nn.Dense(h)(x))
    return nn.Dense(3)(x)


@functools.lru_cache(maxsize=None)
def _model(name):
  model, shape = {'mlp': (SmallMLP(), (8, 10)), 'cnn': (SmallCNN(), (4, 7, 7, 2))}[name]
  xs = jax.random.normal(jax.random.PRNGKey(1), (300,) + shape) - 0.3
  ys = jax.random.randint(jax.random.PRNGKey(2), (300, shape[0]), 0, 3)
  params = model.init(jax.random.PRNGKey(0), xs[0])['params']
  groups = snr_jax.discover_groups(model, params, xs[0])
  return model, params, xs, ys, groups, snr_jax.with_preactivations(model, groups)


def _run(name, opt):
  """300 steps in one scan: final params and the reset masks of every step."""
  model, params, xs, ys, groups, forward = _model(name)
  del model

  def step(carry, data):
    params, state = carry
    (x, y), i = data

    def loss_fn(p):
      logits, acts = forward({'params': p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), acts

    (_, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, state = opt.update(
        grads, state, params, activations=acts, end_of_task=(i + 1) % 50 == 0
    )
    masks = snr_jax._src.transform.find_reset_state(state).last_resets
    return (optax.apply_updates(params, updates), state), jnp.concatenate(
        [masks[g.name] for g in groups]
    )

  run = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), ((xs, ys), jnp.arange(300))))
  (params, _), masks = run(params)
  return params, np.asarray(masks)


# the exact path (max_resets_per_step=None) is compared in both modes by the reference trace
CASES = [
    ('mlp', 'snr-histogram', 'auto'),
    ('mlp', 'snr-geometric', 2),
    ('mlp', 'redo', 3),
    ('mlp', 'cbp', 1),
    ('cnn', 'snr-histogram', 2),
]


@pytest.mark.slow
@pytest.mark.parametrize('model_name, method, cap', CASES)
def test_select_and_branch_give_the_same_run(model_name, method, cap):
  groups = _model(model_name)[4]
  p_branch, m_branch = _run(model_name, METHODS[method](groups, 'branch', max_resets_per_step=cap))
  p_select, m_select = _run(model_name, METHODS[method](groups, 'select', max_resets_per_step=cap))
  assert m_branch.sum() > 0, 'no reset in 300 steps: the comparison would be vacuous'
  np.testing.assert_array_equal(m_branch, m_select)
  for a, b in zip(jax.tree.leaves(p_branch), jax.tree.leaves(p_select)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
