"""Neuron-group discovery and declaration, and clear errors for bad input."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import snr_jax


@pytest.mark.slow
def test_discovers_mlp_groups(mlp):
  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)
  assert [(g.name, g.size) for g in groups] == [('Dense_0', 6), ('Dense_1', 5)]
  assert groups[0].outgoing[0].path == ('Dense_1', 'kernel')
  assert groups[1].outgoing[0].path == ('Dense_2', 'kernel')  # output layer: outgoing only


@pytest.mark.slow
def test_discovers_cnn_groups_with_flatten(cnn):
  model, params, x = cnn
  groups = snr_jax.discover_groups(model, params, x)
  assert [(g.name, g.size) for g in groups] == [('Conv_0', 4), ('Conv_1', 3), ('Dense_0', 5)]
  assert groups[1].outgoing[0].path == ('Dense_0', 'kernel')


@pytest.mark.slow
def test_discovers_only_the_ffn_in_a_transformer(gpt):
  model, params, x = gpt
  groups = snr_jax.discover_groups(model, params, x)
  assert [(g.name, g.size) for g in groups] == [('Block_0/fc1', 12)]
  _, acts = snr_jax.apply_with_preactivations(model, {'params': params}, x, groups=groups)
  assert acts['Block_0/fc1'].shape == (2, 6, 12)


def test_preactivations_come_from_the_same_forward_pass(mlp):
  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)
  out, acts = snr_jax.apply_with_preactivations(model, {'params': params}, x, groups=groups)
  h = x @ params['Dense_0']['kernel'] + params['Dense_0']['bias']
  assert jnp.allclose(acts['Dense_0'], h, atol=1e-6)
  assert jnp.allclose(out, model.apply({'params': params}, x), atol=1e-6)


def test_declared_groups_from_a_sown_activation():
  class Sowing(nn.Module):

    @nn.compact
    def __call__(self, x):
      h = nn.Dense(4, name='hidden')(x)
      self.sow('intermediates', 'pre', h)
      return nn.Dense(1, name='out')(nn.gelu(h))

  m = Sowing()
  x = jnp.ones((3, 2))
  params = m.init(jax.random.PRNGKey(0), x)['params']
  g = snr_jax.dense_group('h', 4, layer='hidden', consumer='out', activation='pre')
  snr_jax.validate_groups([g], params)
  _, state = m.apply({'params': params}, x, mutable=['intermediates'])
  acts = snr_jax.preactivations_from_intermediates(state['intermediates'], [g])
  assert acts['h'].shape == (3, 4)


# --- bad input: each raises a clear error naming the problem --------------------------


def _groups_params():
  groups = (snr_jax.dense_group('h', 5, layer='l1', consumer='l2'),)
  params = {
      'l1': {'kernel': jnp.ones((3, 5)), 'bias': jnp.zeros(5)},
      'l2': {'kernel': jnp.ones((5, 2)), 'bias': jnp.zeros(2)},
  }
  return groups, params


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(eta=0.0), 'eta .* must be a number in'),
        (dict(eta=1.5), 'eta .* must be a number in'),
        (dict(tau_min=50, tau_max=10), 'tau_min .* must not exceed tau_max'),
        (dict(estimator='median'), "unknown estimator 'median'.*geometric.*histogram"),
        (dict(age_unit='epochs'), "unknown age_unit 'epochs'"),
        (dict(tau_init=5, tau_min=10, tau_max=20), 'tau_init must be an int in'),
        (dict(expansion=0.5), 'expansion must be a number >= 1'),
        (dict(tau_min=0), 'tau_min must be a positive int'),
        (dict(batch_size=0), 'batch_size must be a positive int'),
        (dict(schedule='tasks'), 'schedule must be built with'),
    ],
)
def test_bad_hyperparameters(kwargs, match):
  groups, _ = _groups_params()
  with pytest.raises(ValueError, match=match):
    snr_jax.snr(optax.sgd(0.1), groups, **kwargs)


@pytest.mark.parametrize(
    'make, match',
    [
        (lambda: snr_jax.every_n_tasks(0), 'refresh period must be a positive int'),
        (lambda: snr_jax.every_n_steps(True), 'refresh period must be a positive int, got True'),
        (lambda: snr_jax.at_random(2.0), r'refresh probability must be a number in \(0.0, 1.0\]'),
    ],
)
def test_bad_schedules(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_numpy_ints_are_schedule_periods():
  assert snr_jax.every_n_tasks(np.int64(4)) == snr_jax.every_n_tasks(4)


@pytest.mark.parametrize(
    'group, match',
    [
        (snr_jax.dense_group('h', 5, layer='l9'), "unknown parameter path 'l9/kernel'"),
        (snr_jax.dense_group('h', 4, layer='l1'), 'has 5 entries on axis -1 .* group has 4'),
        (
            snr_jax.dense_group('h', 5, layer='l1', consumer='l1'),
            "outgoing parameter 'l1/kernel' has 3 entries .* not a multiple of the group size 5",
        ),
        (
            snr_jax.NeuronGroup(
                'h', 5, (snr_jax.ParamSlice(('l1', 'bias'), 2, jax.nn.initializers.zeros),)
            ),
            'has no axis 2',
        ),
        (snr_jax.NeuronGroup('h', 0, ()), 'size must be a positive int'),
    ],
)
def test_groups_that_do_not_match_params_fail_at_init(group, match):
  _, params = _groups_params()
  opt = snr_jax.snr(optax.sgd(0.1), [group])
  with pytest.raises(snr_jax.GroupError, match=match):
    opt.init(params)


def test_duplicate_and_empty_groups():
  groups, params = _groups_params()
  with pytest.raises(snr_jax.GroupError, match='duplicate neuron group names'):
    snr_jax.validate_groups(groups * 2, params)
  with pytest.raises(snr_jax.GroupError, match='no neuron groups given'):
    snr_jax.validate_groups((), params)


def _update(acts, params=True):
  groups, p = _groups_params()
  opt = snr_jax.snr(optax.sgd(0.1), groups)
  state = opt.init(p)
  grads = jax.tree.map(jnp.zeros_like, p)
  return opt.update(grads, state, p if params else None, activations=acts)


def test_missing_activations():
  with pytest.raises(snr_jax.ActivationError, match='missing activations'):
    _update(None)


def test_activations_missing_a_group():
  with pytest.raises(snr_jax.ActivationError, match=r"missing groups \['h'\]"):
    _update({'other': jnp.ones((2, 5))})


def test_activations_of_the_wrong_shape():
  with pytest.raises(snr_jax.ActivationError, match=r'shape \(2, 4\); expected \(batch, ..., 5\)'):
    _update({'h': jnp.ones((2, 4))})
  with pytest.raises(snr_jax.ActivationError, match='must be a mapping'):
    _update([jnp.ones((2, 5))])


def test_update_without_params():
  with pytest.raises(ValueError, match='need the current params'):
    _update({'h': jnp.ones((2, 5))}, params=False)


def test_discovery_without_relu_layers_names_the_fix():
  class Linear(nn.Module):

    @nn.compact
    def __call__(self, x):
      return nn.Dense(2)(nn.tanh(nn.Dense(3)(x)))

  m = Linear()
  x = jnp.ones((2, 4))
  params = m.init(jax.random.PRNGKey(0), x)['params']
  with pytest.raises(snr_jax.GroupError, match='Declare the groups with snr_jax.dense_group'):
    snr_jax.discover_groups(m, params, x)


def test_missing_intermediate_path():
  g = snr_jax.dense_group('h', 4, layer='hidden', activation='nowhere')
  with pytest.raises(snr_jax.ActivationError, match="no intermediate at 'nowhere'"):
    snr_jax.preactivations_from_intermediates({'hidden': {}}, [g])
