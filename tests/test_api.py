"""The public namespace and the pure reset_state step."""

import dataclasses
import importlib
import inspect
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import snr_jax

INTERNALS = (
    'lowest_k',
    'redo_scores',
    'saturating_add',
    'outgoing_magnitude',
    'keep_masks',
    'check_activations',
    'ignoring_reset_args',
    'find_reset_state',
    'apply_resets',
)


def test_namespace_exports_exactly_all_and_no_internals():
  assert snr_jax.__all__ == sorted(snr_jax.__all__)
  public = {n for n in vars(snr_jax) if not n.startswith('_')}
  modules = {n for n in public if type(getattr(snr_jax, n)).__name__ == 'module'}
  assert public - modules == set(snr_jax.__all__)
  assert not set(INTERNALS) & public
  for state in (
      'SNRState',
      'CBPState',
      'ReDoState',
      'ShrinkPerturbState',
      'L2InitState',
      'NeuronResetsState',
      'WithResetsState',
  ):
    assert state in snr_jax.__all__ and hasattr(getattr(snr_jax, state), '_fields')


@pytest.mark.parametrize('name', ['estimators', 'reset', 'rules', 'schedules'])
def test_sub_namespaces_re_export_top_level_objects_only(name):
  module = importlib.import_module(f'snr_jax.{name}')
  assert module.__all__ == sorted(module.__all__)
  assert {n for n in vars(module) if not n.startswith('_')} == set(module.__all__)
  for n in module.__all__:
    assert n in snr_jax.__all__ and getattr(module, n) is getattr(snr_jax, n), n
  # a sub-namespace shadows no top-level function: the function stays a function
  assert callable(snr_jax.snr) and type(snr_jax.snr).__name__ == 'function'


@pytest.mark.parametrize(
    'old, new',
    [
        ('ResetState', 'NeuronResetsState'),
        ('ResetOptState', 'WithResetsState'),
        ('snr_info', 'reset_metrics'),
    ],
)
def test_deprecated_names_warn_and_still_work(old, new):
  assert old not in snr_jax.__all__ and old not in vars(snr_jax)
  with pytest.warns(DeprecationWarning, match=f'snr_jax.{old} is deprecated.*snr_jax.{new}'):
    alias = getattr(snr_jax, old)
  if isinstance(alias, type):
    assert alias is getattr(snr_jax, new)
  with pytest.warns(DeprecationWarning):
    from snr_jax import ResetState  # noqa: F401  pylint: disable=import-outside-toplevel
  with pytest.raises(AttributeError, match='no attribute'):
    snr_jax.NoSuchName  # pylint: disable=pointless-statement


def test_old_state_names_still_match_states(mlp):
  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)
  state = snr_jax.snr(optax.sgd(0.1), groups).init(params)
  with pytest.warns(DeprecationWarning):
    assert isinstance(state, snr_jax.ResetOptState)
  with pytest.warns(DeprecationWarning):
    assert isinstance(state.resets, snr_jax.ResetState)


@pytest.mark.parametrize(
    'fn, own',
    [
        (snr_jax.snr, ('inner', 'key', 'seed')),
        (snr_jax.snr_l2, ('inner', 'strength', 'key', 'seed')),
    ],
)
def test_snr_wrappers_spell_out_every_hyperparameter(fn, own):
  """The wrappers take self_normalized_resets' hyperparameters by name, with its defaults."""
  bare = inspect.signature(snr_jax.self_normalized_resets).parameters
  params = inspect.signature(fn).parameters
  assert not any(p.kind is p.VAR_KEYWORD for p in params.values())
  assert {n: p.default for n, p in params.items() if n not in own} == {
      n: p.default for n, p in bare.items()
  }
  assert all(p.kind is p.KEYWORD_ONLY for n, p in params.items() if n not in ('inner', 'groups'))
  doc = fn.__doc__
  assert all(f'    {n}: ' in doc for n in params), 'every argument has a line in Args'


CONSTRUCTORS = [
    lambda groups, init_fn, **kw: snr_jax.snr(optax.sgd(0.1), groups, **kw),
    lambda groups, init_fn, **kw: snr_jax.snr_l2(optax.sgd(0.1), groups, **kw),
    lambda groups, init_fn, **kw: snr_jax.redo(optax.sgd(0.1), groups, **kw),
    lambda groups, init_fn, **kw: snr_jax.continual_backprop(optax.sgd(0.1), groups, **kw),
    lambda groups, init_fn, **kw: snr_jax.shrink_perturb(optax.sgd(0.1), init_fn, **kw),
    lambda groups, init_fn, **kw: snr_jax.with_resets(
        optax.sgd(0.1), snr_jax.self_normalized_resets(groups), **kw
    ),
    lambda groups, init_fn, **kw: snr_jax.make_method('snr', optax.sgd(0.1), groups=groups, **kw),
]


@pytest.mark.parametrize('build', CONSTRUCTORS)
def test_seed_is_a_deprecated_name_of_key(mlp, build):
  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)
  init_fn = lambda k: model.init(k, x)['params']
  with pytest.warns(DeprecationWarning, match=r'\(seed=\.\.\.\) is deprecated.*key='):
    old = build(groups, init_fn, seed=5).init(params)
  new = build(groups, init_fn, key=5).init(params)
  for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(TypeError, match='both key= and seed='):
    build(groups, init_fn, key=5, seed=5)
  assert 'seed' not in snr_jax.method_hyperparameters('snr')


ESTIMATORS = (snr_jax.HistogramEstimator, snr_jax.GeometricEstimator, snr_jax.PerTokenEstimator)


def test_every_estimator_implements_the_estimator_protocol_with_one_signature():
  protocol = {
      n: inspect.signature(getattr(snr_jax.Estimator, n))
      for n in ('init', 'observe', 'advance_ages', 'record', 'quantile', 'clear', 'refresh')
  }
  names = lambda sig: [(p.name, p.kind) for p in sig.parameters.values()]
  for cls in ESTIMATORS:
    for name, sig in protocol.items():
      assert names(inspect.signature(getattr(cls, name))) == names(sig), (cls, name)
    est = cls(eta=0.1, tau_min=cls.default_tau_min, tau_max=cls.default_tau_max)
    for attr in ('eta', 'tau_min', 'tau_max', 'expansion', 'age_units', 'default_tau_init'):
      getattr(est, attr)


@pytest.mark.parametrize(
    'name, cls',
    [
        ('histogram', snr_jax.HistogramEstimator),
        ('geometric', snr_jax.GeometricEstimator),
        ('per_token', snr_jax.PerTokenEstimator),
    ],
)
def test_the_rule_takes_its_defaults_from_the_estimator_class(mlp, name, cls):
  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)
  rule = snr_jax.self_normalized_resets(groups, estimator=name).rule
  assert type(rule.estimator) is cls
  assert (rule.estimator.tau_min, rule.estimator.tau_max) == (
      cls.default_tau_min,
      cls.default_tau_max,
  )
  init = cls.default_tau_init
  assert rule.tau_init == (cls.default_tau_max if init is None else init)
  assert rule.estimator.expansion == (None if name == 'per_token' else 2.0)


def test_reset_rule_protocol_declares_adjust_with_a_no_op_default(mlp):
  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)

  @dataclasses.dataclass(frozen=True)
  class Never(snr_jax.ResetRule):

    def init(self, groups, params):
      return ()

    def select(self, state, groups, activations, params, *, end_of_task, key):
      return {g.name: jnp.zeros((g.size,), bool) for g in groups}, state

  assert Never().adjust(params, {}, (), groups) is params  # the inherited no-op
  for rule in (snr_jax.SNRRule, snr_jax.ReDoRule, snr_jax.CBPRule):
    assert snr_jax.ResetRule in rule.__mro__
  assert snr_jax.CBPRule.adjust is not snr_jax.ResetRule.adjust
  resets = snr_jax.NeuronResets(groups, Never())
  _, acts = snr_jax.apply_with_preactivations(model, {'params': params}, x, groups=groups)
  p, _, _ = snr_jax.reset_state(resets, params, None, resets.init(params), acts)
  jax.tree.map(np.testing.assert_array_equal, p, params)

  @dataclasses.dataclass(frozen=True)
  class Duck:  # not a ResetRule subclass, no adjust: the protocol's default applies

    def init(self, groups, params):
      return ()

    def select(self, state, groups, activations, params, *, end_of_task, key):
      return {g.name: jnp.zeros((g.size,), bool) for g in groups}, state

  duck = snr_jax.NeuronResets(groups, Duck())
  assert duck.adjust(params, {}, ()) is params
  p, _, _ = snr_jax.reset_state(duck, params, None, duck.init(params), acts)
  jax.tree.map(np.testing.assert_array_equal, p, params)

  @dataclasses.dataclass(frozen=True)
  class NoSelect:

    def init(self, groups, params):
      return ()

  with pytest.raises(TypeError, match=r'rule NoSelect has no select\(\).*snr_jax.ResetRule'):
    snr_jax.NeuronResets(groups, NoSelect())


def test_first_docstring_lines_tell_the_wrapper_from_the_bare_rule():
  assert snr_jax.snr.__doc__.startswith('Optax wrapper')
  assert snr_jax.with_resets.__doc__.startswith('Optax wrapper')
  assert snr_jax.self_normalized_resets.__doc__.startswith('The bare rule bound to groups')


def test_version_comes_from_package_metadata():
  try:
    assert snr_jax.__version__ == metadata.version('snr_jax')
  except metadata.PackageNotFoundError:
    assert snr_jax.__version__ == '0.0.0+unknown'


@pytest.mark.slow
def test_reset_state_is_the_step_the_optax_face_runs(mlp):
  model, params, x = mlp
  groups = snr_jax.discover_groups(model, params, x)
  _, acts = snr_jax.apply_with_preactivations(model, {'params': params}, x, groups=groups)
  grads = jax.tree.map(jnp.ones_like, params)
  hp = dict(tau_min=1, tau_max=4, tau_init=4)  # ages reach the threshold: resets happen
  inner = optax.sgd(0.1)
  opt = snr_jax.snr(inner, groups, key=7, **hp)
  resetter = snr_jax.self_normalized_resets(groups, **hp)
  opt_state = opt.init(params)
  p1, s1 = params, resetter.init(params, key=7)
  i1 = inner.init(params)
  p0, resets = params, 0
  for _ in range(3):
    updates, opt_state = opt.update(grads, opt_state, p0, activations=acts)
    p0 = optax.apply_updates(p0, updates)
    u, i1 = inner.update(grads, i1, p1)
    p1, i1, s1 = snr_jax.reset_state(
        resetter, optax.apply_updates(p1, u), i1, s1, acts, optimizer=inner
    )
    resets += sum(int(m.sum()) for m in s1.last_resets.values())
  assert resets > 0
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(opt_state.resets), jax.tree.leaves(s1)):
    np.testing.assert_array_equal(a, b)
