"""The compiled experiment runner on tiny generated data."""

import dataclasses
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import snr_jax
from experiments import data as experiment_data
from experiments import models
from experiments.benchmarks import ExperimentConfig
from experiments.data import Dataset
from experiments.data.streams import shuffle
from experiments.runner import last_fraction_summary, make_run, run_experiment, seed_keys
from snr_jax._src.ages import batch_ages
from snr_jax._src.transform import find_reset_state


def _images(name, n, shape, classes, seed=0):
  rng = np.random.default_rng(seed)
  return Dataset(
      name=name,
      source='generated for tests',
      images=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
      labels=rng.integers(0, classes, n).astype(np.int32),
      num_classes=classes,
  )


@pytest.fixture(scope='module')
def mnist():
  return _images('mnist', 256, (28, 28, 1), 10)


def _text():
  rng = np.random.default_rng(0)
  vocab = [f'w{i}' for i in range(30)]
  return Dataset(
      name='shakespeare',
      source='generated for tests',
      tokens=rng.integers(0, 30, 3000).astype(np.int32),
      vocab=vocab,
  )


TINY = {
    'permuted_mnist': (
        lambda: _images('mnist', 256, (28, 28, 1), 10),
        dict(examples_per_task=64, batch_size=16),
    ),
    'random_label_mnist': (
        lambda: _images('mnist', 256, (28, 28, 1), 10),
        dict(examples_per_task=32, epochs=2, batch_size=16),
    ),
    'random_label_cifar': (
        lambda: _images('cifar10', 64, (32, 32, 3), 10),
        dict(examples_per_task=32, epochs=2, batch_size=16),
    ),
    'continual_imagenet': (
        lambda: _images('imagenet32', 200, (32, 32, 3), 10),
        dict(examples_per_task=20, epochs=1, batch_size=10),
    ),
    'permuted_shakespeare': (_text, dict(examples_per_task=8, epochs=1, batch_size=4)),
}


@pytest.mark.parametrize('name', sorted(TINY))  # not 'benchmark': pytest-benchmark's fixture
@pytest.mark.slow
def test_three_task_run_of_each_benchmark(name):
  make_data, overrides = TINY[name]
  cfg = ExperimentConfig(
      name,
      method='snr',
      num_tasks=3,
      hparams=dict(tau_init=64, tau_min=16, tau_max=64),
      **overrides,
  )
  out = run_experiment(cfg, make_data(), seeds=[0])
  m = out['metrics']
  assert m['accuracy'].shape == (1, 3) and np.all((m['accuracy'] >= 0) & (m['accuracy'] <= 1))
  assert np.all(np.isfinite(m['loss'])) and np.all(m['weight_magnitude'] > 0)
  assert set(m['resets']) == set(out['groups']) == set(m['dead_fraction'])
  assert out['source'] == 'generated for tests'


@pytest.mark.slow
def test_same_seed_gives_identical_results(mnist):
  cfg = ExperimentConfig(
      'permuted_mnist',
      method='snr',
      num_tasks=3,
      examples_per_task=64,
      hparams=dict(tau_init=32, tau_min=16, tau_max=64),
  )
  a = run_experiment(cfg, mnist, seeds=[3])['metrics']
  b = run_experiment(cfg, mnist, seeds=[3])['metrics']
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  c = run_experiment(cfg, mnist, seeds=[4])['metrics']
  assert not np.array_equal(a['loss'], c['loss'])


@pytest.mark.parametrize('method', ['snr', 'shrink_perturb'])
@pytest.mark.slow
def test_vmapped_seeds_equal_seeds_one_by_one(method, mnist):
  hp = dict(tau_init=32, tau_min=16, tau_max=64) if method == 'snr' else {}
  cfg = ExperimentConfig(
      'permuted_mnist', method=method, num_tasks=3, examples_per_task=64, hparams=hp
  )
  batched = run_experiment(cfg, mnist, seeds=[0, 1, 2], mode='vmap')['metrics']
  if method == 'snr':
    assert sum(v.sum() for v in batched['resets'].values()) > 0
  for i, seed in enumerate([0, 1, 2]):
    one = run_experiment(cfg, mnist, seeds=[seed], mode='sequential')['metrics']
    for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(batched)):
      np.testing.assert_allclose(x[0], y[i], rtol=2e-5, atol=1e-6)


@pytest.mark.slow
def test_sweep_axis_equals_separate_runs(mnist):
  base = dict(num_tasks=2, examples_per_task=64)
  cfg = ExperimentConfig(
      'permuted_mnist',
      method='snr',
      sweep=('eta', (0.01, 0.3)),
      hparams=dict(tau_init=32, tau_min=16, tau_max=64),
      **base,
  )
  out = run_experiment(cfg, mnist, seeds=[0])
  assert [m['sweep_value'] for m in out['members']] == [0.01, 0.3]
  for i, eta in enumerate((0.01, 0.3)):
    single = ExperimentConfig(
        'permuted_mnist',
        method='snr',
        hparams=dict(eta=eta, tau_init=32, tau_min=16, tau_max=64),
        **base,
    )
    m = run_experiment(single, mnist, seeds=[0])['metrics']
    np.testing.assert_allclose(out['metrics']['accuracy'][i], m['accuracy'][0], rtol=1e-5)


@pytest.mark.slow
def test_online_accuracy_is_measured_before_the_update(mnist):
  # One task of a single batch: its online accuracy and loss must be those of the
  # initial parameters, whatever the (huge) learning rate does to them.
  cfg = ExperimentConfig(
      'permuted_mnist',
      method='none',
      num_tasks=1,
      examples_per_task=16,
      batch_size=16,
      learning_rate=50.0,
  )
  exp = make_run(cfg, mnist)
  carry = exp.init(jax.random.PRNGKey(0), 0.0)
  after, metrics = jax.jit(exp.run_tasks, static_argnums=3)(carry, exp.data, 0, 1)
  x, y = experiment_data.permuted_task(
      exp.data['images'], exp.data['labels'], jax.random.fold_in(carry.stream_key, 0), 16
  )
  model = models.MLP(num_outputs=10)
  before_logits = model.apply({'params': carry.params}, x)
  after_logits = model.apply({'params': after.params}, x)
  np.testing.assert_allclose(metrics['accuracy'][0], jnp.mean(before_logits.argmax(-1) == y))
  loss = optax.softmax_cross_entropy_with_integer_labels(before_logits, y).mean()
  np.testing.assert_allclose(metrics['loss'][0], loss, rtol=1e-5)
  after_loss = optax.softmax_cross_entropy_with_integer_labels(after_logits, y).mean()
  assert abs(float(after_loss) - float(loss)) > 1e-3


def _reference_permuted_run(cfg, dataset, groups):
  """The Permuted protocol written out plainly, as the runner defined it when the
  Permuted studies started: each task the first images of a shuffle of all of them,
  pixels permuted, batches in ``batch_indices`` order, one train step per batch,
  metrics per task; seeds vmapped, tasks and steps in ``lax.scan`` as in the runner
  (each batch gathered and converted as the runner does: the float operations that
  follow depend on it to the last bit).

  The runner must give these numbers to the bit: runs resume from checkpoints the
  runner wrote, so any change to what a step computes (or to the order of its float
  operations) would make a resumed run differ from an uninterrupted one.
  """
  n, batch = cfg.resolved('examples_per_task'), cfg.resolved('batch_size')
  steps = cfg.steps_per_task
  model = models.MLP(num_outputs=10)
  init_fn = lambda k: model.init(k, jnp.zeros((batch, 784)))['params']
  inner = (optax.adam if cfg.resolved('optimizer') == 'adam' else optax.sgd)(
      cfg.resolved('learning_rate')
  )
  tx = snr_jax.make_method(
      cfg.method,
      inner,
      groups=groups,
      init_fn=init_fn,
      key=jax.random.PRNGKey(0),
      axis_name='members',
      **cfg.hparams,
  )

  def loss_fn(params, xb, yb):
    logits, acts = snr_jax.apply_with_preactivations(model, {'params': params}, xb, groups=groups)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    return loss, (jnp.mean(jnp.argmax(logits, -1) == yb), acts)

  def one_task(carry, t, images, labels):
    task_key = jax.random.fold_in(carry.stream_key, t)
    perm_key, shuffle_key = jax.random.split(task_key)
    perm = jax.random.permutation(perm_key, 784)
    idx = shuffle(shuffle_key, images.shape[0])[:n]  # all images shuffled, first n kept
    order = experiment_data.batch_indices(n, batch, 1, jax.random.fold_in(task_key, 1))

    def step(c, inputs):
      params, opt_state, ages = c
      b, s = inputs
      xb = experiment_data.to_float(images[idx[b]].reshape(batch, 784)[:, perm])
      (loss, (acc, acts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, xb, labels[idx][b]
      )
      updates, opt_state = tx.update(
          grads, opt_state, params, activations=acts, end_of_task=s == steps - 1
      )
      params = optax.apply_updates(params, updates)
      ages = {g.name: batch_ages(ages[g.name], snr_jax.fired(acts[g.name]), batch) for g in groups}
      found = find_reset_state(opt_state)
      resets = {
          g.name: (
              jnp.zeros((), jnp.int32)
              if found is None
              else jnp.sum(found.last_resets[g.name]).astype(jnp.int32)
          )
          for g in groups
      }
      return (params, opt_state, ages), (loss, acc, resets)

    (params, opt_state, ages), (loss, acc, resets) = jax.lax.scan(
        step, (carry.params, carry.opt_state, carry.ages), (order, jnp.arange(steps))
    )
    leaves = jax.tree.leaves(params)
    metrics = {
        'accuracy': jnp.mean(acc),
        'loss': jnp.mean(loss),
        'resets': {k: jnp.sum(v) for k, v in resets.items()},
        'dead_fraction': {k: jnp.mean(a >= cfg.dead_after) for k, a in ages.items()},
        'weight_magnitude': sum(jnp.sum(jnp.abs(leaf)) for leaf in leaves)
        / sum(leaf.size for leaf in leaves),
    }
    return carry._replace(params=params, opt_state=opt_state, ages=ages), metrics

  def run(carry, images, labels):
    return jax.lax.scan(
        lambda c, t: one_task(c, t, images, labels), carry, jnp.arange(cfg.resolved('num_tasks'))
    )

  run = jax.jit(jax.vmap(run, in_axes=(0, None, None), axis_name='members'))
  return lambda carry: run(carry, jnp.asarray(dataset.images), jnp.asarray(dataset.labels))


@pytest.mark.parametrize(
    'method,optimizer,hparams',
    [
        ('snr', 'sgd', dict(tau_init=32, tau_min=16, tau_max=64)),
        ('cbp', 'adam', dict(replacement_rate=0.05, maturity=2)),
    ],
)
@pytest.mark.slow
def test_permuted_runner_matches_plain_reference_bitwise(method, optimizer, hparams, mnist):
  # 32 of the 256 images per task: few enough for the runner's partial shuffle to apply
  cfg = ExperimentConfig(
      'permuted_mnist',
      method=method,
      optimizer=optimizer,
      num_tasks=4,
      examples_per_task=32,
      hparams=hparams,
  )
  seeds = [0, 1]
  out = run_experiment(cfg, mnist, seeds=seeds, mode='vmap', chunk_tasks=2)
  exp = make_run(cfg, mnist, axis_name='members')
  fresh = jax.jit(jax.vmap(exp.init))(seed_keys(seeds), jnp.zeros(len(seeds), jnp.float32))
  carry, metrics = _reference_permuted_run(cfg, mnist, exp.groups)(fresh)
  assert sum(v.sum() for v in out['metrics']['resets'].values()) > 0
  for a, b in zip(jax.tree.leaves(out['metrics']), jax.tree.leaves(metrics)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(out['carry']), jax.tree.leaves(carry)):
    np.testing.assert_array_equal(a, b)


def test_headline_is_mean_over_last_tenth_of_tasks():
  acc = np.array([[0.0] * 18 + [0.5, 0.7], [0.0] * 18 + [0.9, 0.9]])
  s = last_fraction_summary(acc)
  assert s['last_tasks'] == 2
  assert s['per_seed'] == pytest.approx([0.6, 0.9])
  assert s['mean'] == pytest.approx(0.75) and s['std'] == pytest.approx(0.15)


def test_config_errors():
  with pytest.raises(ValueError, match="unknown benchmark 'pm'"):
    ExperimentConfig('pm')
  with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['etta'\]"):
    ExperimentConfig(method='snr', hparams={'etta': 0.1})
  with pytest.raises(ValueError, match="cannot sweep 'tau_max'"):
    ExperimentConfig(method='snr', sweep=('tau_max', (10, 20)))
  with pytest.raises(ValueError, match='num_tasks must be a positive int'):
    ExperimentConfig(num_tasks=0)
  with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adam'"):
    ExperimentConfig(optimizer='rmsprop')


@pytest.mark.slow
def test_schedule_text_sets_when_snr_refreshes(mnist):
  # tau_init far above any gap: only a refresh can move a threshold off it
  def thresholds_after_one_task(**hp):
    cfg = ExperimentConfig(
        'permuted_mnist',
        method='snr',
        num_tasks=2,
        examples_per_task=64,
        hparams=dict(tau_init=10_000, tau_min=16, tau_max=10_000, **hp),
    )
    exp = make_run(cfg, mnist)
    after, _ = jax.jit(exp.run_tasks, static_argnums=3)(
        exp.init(jax.random.PRNGKey(0), 0.0), exp.data, 0, 1
    )
    return find_reset_state(after.opt_state).rule.thresholds

  for thr in thresholds_after_one_task().values():  # default: every 16 tasks
    assert np.all(np.asarray(thr) == 10_000)
  refreshed = thresholds_after_one_task(schedule='tasks:1')
  assert all(np.all(np.asarray(thr) < 10_000) for thr in refreshed.values())
  for bad, message in [
      ('tasks', 'must be a string'),
      ('weeks:2', 'unknown refresh schedule'),
      ('steps:x', 'takes a positive int'),
      (16, 'must be a string'),
  ]:
    with pytest.raises(ValueError, match=message):
      ExperimentConfig(method='snr', hparams={'schedule': bad})


@pytest.mark.slow
def test_width_sets_the_mlp_hidden_layers_and_only_the_mlp(mnist):
  cfg = ExperimentConfig(
      'permuted_mnist', method='snr', num_tasks=1, width=24, examples_per_task=32
  )
  assert {g.name: g.size for g in make_run(cfg, mnist).groups} == {'Dense_0': 24, 'Dense_1': 24}
  assert {g.name: g.size for g in make_run(dataclasses.replace(cfg, width=None), mnist).groups} == {
      'Dense_0': 100,
      'Dense_1': 100,
  }
  assert cfg.to_dict()['width'] == 24
  assert 'width' not in ExperimentConfig().to_dict()  # earlier runs' records are unchanged
  with pytest.raises(ValueError, match="width sets the MLP's hidden width"):
    ExperimentConfig('random_label_cifar', width=24)
  with pytest.raises(ValueError, match='width must be a positive int'):
    ExperimentConfig(width=0)


@pytest.mark.slow
def test_model_vit_trains_the_small_vit_on_image_benchmarks(mnist):
  cfg = ExperimentConfig(
      'continual_imagenet',
      method='snr',
      num_tasks=1,
      model='vit',
      examples_per_task=20,
      batch_size=10,
      epochs=1,
  )
  exp = make_run(cfg, mnist)
  assert isinstance(exp.model, models.ViT) and exp.model.patch_size == 7  # 16 tokens
  assert {g.name: g.size for g in exp.groups} == {f'block_{i}/ffn/Dense_0': 256 for i in range(3)}
  assert cfg.to_dict()['model'] == 'vit'
  assert 'model' not in ExperimentConfig().to_dict()  # earlier runs' records are unchanged
  with pytest.raises(ValueError, match='model chooses the network of an image benchmark'):
    ExperimentConfig('permuted_mnist', model='vit')
  with pytest.raises(ValueError, match=r"model must be one of \('cnn', 'vit'\)"):
    ExperimentConfig('random_label_cifar', model='resnet')


@pytest.mark.slow
def test_vocab_size_caps_the_words_to_the_most_frequent():
  text = _text()
  counts = np.bincount(text.tokens)
  order = np.argsort(-counts, kind='stable')  # frequency ranks, as the loaders number words
  ranked = Dataset(
      name='shakespeare',
      source='generated for tests',
      tokens=np.argsort(order)[text.tokens].astype(np.int32),
      vocab=text.vocab,
  )
  cfg = ExperimentConfig(
      'permuted_shakespeare',
      method='none',
      num_tasks=1,
      vocab_size=8,
      examples_per_task=4,
      epochs=1,
      batch_size=2,
  )
  exp = make_run(cfg, ranked)
  assert exp.model.vocab_size == 8
  tokens = np.asarray(exp.data['tokens'])
  assert tokens.max() == 7 and np.array_equal(tokens == 7, np.asarray(ranked.tokens) >= 7)
  assert cfg.to_dict()['vocab_size'] == 8 and 'vocab_size' not in ExperimentConfig().to_dict()
  with pytest.raises(ValueError, match="vocab_size caps a text benchmark's vocabulary"):
    ExperimentConfig('permuted_mnist', vocab_size=8)
  with pytest.raises(ValueError, match='vocab_size must be at least 2'):
    ExperimentConfig('permuted_shakespeare', vocab_size=1)


def test_text_benchmark_rejects_image_data(mnist):
  with pytest.raises(ValueError, match='needs a text dataset'):
    make_run(ExperimentConfig('permuted_shakespeare', num_tasks=1), mnist)


@pytest.mark.slow
def test_mesh_mode_equals_vmap_and_resumes_bitwise(tmp_path):
  """Seeds placed on a mesh of 4 (virtual CPU devices, the repository's conftest.py) give
  the vmapped results, also with each member's batch sharded over 2 devices, and a run
  stopped after a chunk resumes on the mesh to the uninterrupted run's bits."""
  from experiments.driver import drive  # pylint: disable=import-outside-toplevel
  from experiments.runner import compile_batched  # pylint: disable=import-outside-toplevel

  if jax.device_count() < 4:  # on an accelerator jax_num_cpu_devices adds no devices
    pytest.skip(f'needs 4 devices; the {jax.default_backend()} backend has {jax.device_count()}')
  rng = np.random.default_rng(0)
  ds = Dataset(
      name='mnist',
      source='generated',
      images=rng.integers(0, 256, (128, 28, 28, 1), dtype=np.uint8),
      labels=rng.integers(0, 10, 128).astype(np.int32),
      num_classes=10,
  )
  cfg = ExperimentConfig(
      'permuted_mnist',
      method='snr',
      num_tasks=4,
      examples_per_task=32,
      hparams=dict(tau_init=32, tau_min=16, tau_max=64),
  )
  a = run_experiment(cfg, ds, seeds=[0, 1, 2, 3], mode='mesh')
  assert len(a['carry'].params['Dense_0']['kernel'].sharding.device_set) == 4  # one per member
  b = run_experiment(cfg, ds, seeds=[0, 1, 2, 3], mode='vmap')['metrics']
  for x, y in zip(jax.tree.leaves(a['metrics']), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)
  # a second mesh axis shards each member's batch over 2 devices: same resets, same numbers
  c = run_experiment(cfg, ds, seeds=[0, 1], mode='mesh', batch_devices=2)
  mesh2d = c['carry'].params['Dense_0']['kernel'].sharding.mesh
  assert dict(mesh2d.shape) == {'members': 2, 'batch': 2}
  for x, y in zip(jax.tree.leaves(c['metrics']), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y[:2], rtol=2e-5, atol=1e-6)
  for g in c['metrics']['resets']:
    np.testing.assert_array_equal(c['metrics']['resets'][g], b['resets'][g][:2])
  init, _ = compile_batched(make_run(cfg, ds, axis_name='members'), 'mesh', 2)
  carry = init(seed_keys([0, 1, 2, 3]), np.zeros(4, np.float32))
  assert len(jax.tree.leaves(carry)[0].sharding.device_set) == 4  # one member per device
  whole = tmp_path / 'whole'
  drive(cfg, ds, [0, 1, 2, 3], whole, tasks_per_call=2, mode='mesh', progress=False)
  resumed = tmp_path / 'resumed'
  drive(cfg, ds, [0, 1, 2, 3], resumed, tasks_per_call=2, mode='mesh', progress=False, stop_after=2)
  drive(cfg, ds, [0, 1, 2, 3], resumed, tasks_per_call=2, mode='mesh', progress=False)
  assert (whole / 'metrics.csv').read_text() == (resumed / 'metrics.csv').read_text()


@pytest.mark.parametrize(
    'mode, batch_devices, message',
    [
        ('vmap', 2, "shards batches over a mesh; use mode 'mesh'"),
        ('mesh', 3, 'does not divide the batch size 16'),
        ('mesh', 16, 'but this process has {local} device(s); use at most that many'),
    ],
)
def test_batch_devices_errors(mode, batch_devices, message, mnist):
  local = jax.local_device_count()  # 8 virtual CPU devices (conftest.py)
  if 'this process has' in message and local >= batch_devices:
    pytest.skip(f'needs a process with fewer than {batch_devices} devices')
  cfg = ExperimentConfig('permuted_mnist', num_tasks=1, examples_per_task=64)
  with pytest.raises(ValueError, match=re.escape(message.format(local=local))):
    run_experiment(cfg, mnist, seeds=[0, 1], mode=mode, batch_devices=batch_devices)


def test_auto_mode_runs_one_member_without_vmap():
  from experiments.runner import resolve_mode

  mlp = ExperimentConfig('permuted_mnist')
  assert resolve_mode(mlp, 'auto', 1) == 'sequential'  # nothing to batch
  assert resolve_mode(mlp, 'auto', 2) == 'vmap'
  assert resolve_mode(mlp, 'vmap', 1) == 'vmap'  # asked for: kept


@pytest.mark.slow
def test_continual_imagenet_uses_every_class_once_per_round():
  # every image shows its class; 10 classes make rounds of 5 tasks with disjoint pairs
  from experiments.runner import _make_task  # pylint: disable=import-outside-toplevel

  classes, per_class = 10, 4
  labels = np.repeat(np.arange(classes), per_class).astype(np.int32)
  data = {
      'images': jnp.asarray(
          np.broadcast_to(labels[:, None, None, None] * 20, (labels.size, 32, 32, 3)).astype(
              np.uint8
          )
      ),
      'labels': jnp.asarray(labels),
  }
  cfg = ExperimentConfig(
      'continual_imagenet', examples_per_task=2 * per_class, batch_size=per_class
  )
  stream_key = jax.random.PRNGKey(5)
  used = []
  for t in range(10):
    lookup, y = _make_task(cfg, data, t, stream_key, classes)
    shown = np.rint(np.asarray(lookup(jnp.arange(2 * per_class)))[:, 0, 0, 0] * 255 / 20)
    assert len(set(shown[np.asarray(y) == 0])) == len(set(shown[np.asarray(y) == 1])) == 1
    used.append(sorted(set(shown.astype(int))))
  for first in (0, 5):
    assert sorted(c for pair in used[first : first + 5] for c in pair) == list(range(classes))
  assert used[:5] != used[5:]  # the next round draws a new ordering


def test_class_pairs_need_enough_images_of_every_class():
  ds = _images('imagenet32', 200, (32, 32, 3), 10)
  fewest = int(np.bincount(ds.labels, minlength=10).min())
  cfg = ExperimentConfig(
      'continual_imagenet', num_tasks=1, examples_per_task=2 * fewest + 2, batch_size=2
  )
  with pytest.raises(
      ValueError,
      match=f'a class of imagenet32 has only {fewest}; lower '
      f'examples_per_task to at most {2 * fewest}',
  ):
    make_run(cfg, ds)


def test_bad_runs_are_refused_before_they_start(mnist, tmp_path):
  from experiments.driver import drive  # pylint: disable=import-outside-toplevel

  with pytest.raises(
      ValueError, match=r'batch_size \(16\) must not exceed examples_per_task \(8\)'
  ):
    ExperimentConfig(examples_per_task=8)
  with pytest.raises(ValueError, match="sweep of 'eta' repeats a value"):
    ExperimentConfig(method='snr', sweep=('eta', (0.1, 0.1)))
  with pytest.raises(ValueError, match='learning_rate is both swept and fixed'):
    ExperimentConfig(method='none', learning_rate=0.5, sweep=('learning_rate', (0.1, 0.01)))
  with pytest.raises(ValueError, match='swept learning rates must be > 0'):
    ExperimentConfig(method='none', sweep=('learning_rate', (-1.0, 0.1)))
  with pytest.raises(ValueError, match='check_finite needs the train step run under checkify'):
    ExperimentConfig(method='snr', hparams={'check_finite': True})
  small = dict(num_tasks=1, examples_per_task=32, batch_size=16)
  # each swept value meets the library's own checks before anything runs
  with pytest.raises(ValueError, match=r'eta \(a tail probability\) must be a number in'):
    drive(
        ExperimentConfig(method='snr', sweep=('eta', (0.08, 2.0)), **small),
        mnist,
        [0],
        tmp_path / 'eta',
        progress=False,
    )
  with pytest.raises(ValueError, match=r'seeds \[0\] are given more than once'):
    drive(
        ExperimentConfig(method='none', **small), mnist, [0, 0], tmp_path / 'seeds', progress=False
    )
  assert not (tmp_path / 'eta').exists() and not (tmp_path / 'seeds').exists()


@pytest.mark.slow
def test_an_interrupt_in_the_last_write_loses_no_results(mnist, tmp_path, monkeypatch):
  from experiments import results  # pylint: disable=import-outside-toplevel
  from experiments.driver import drive  # pylint: disable=import-outside-toplevel

  cfg = ExperimentConfig(method='none', num_tasks=2, examples_per_task=32, batch_size=16)
  real = results.write_metrics

  def cut_short(out, metrics, members, total, **kwargs):
    if metrics['accuracy'].shape[1] == total:  # Ctrl-C before the last chunk is written
      raise KeyboardInterrupt
    return real(out, metrics, members, total, **kwargs)

  monkeypatch.setattr(results, 'write_metrics', cut_short)
  with pytest.raises(KeyboardInterrupt):
    drive(cfg, mnist, [0], tmp_path / 'r', tasks_per_call=1, progress=False)
  monkeypatch.setattr(results, 'write_metrics', real)
  summary = drive(cfg, mnist, [0], tmp_path / 'r', tasks_per_call=1, progress=False)
  assert summary['complete'] and summary['resumed_from'] == 2  # from the handler's checkpoint
  on_disk = json.loads((tmp_path / 'r' / 'summary.json').read_text())
  assert on_disk['complete'] and on_disk['tasks_done'] == 2
  assert len(results.read_metrics(tmp_path / 'r')) == 2


@pytest.mark.slow
@pytest.mark.parametrize('failing_step', [2, 4])  # a periodic save, the final one
def test_a_failed_save_claims_nothing_and_blocks_no_rerun(
    mnist, tmp_path, monkeypatch, failing_step
):
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  from experiments.driver import drive  # pylint: disable=import-outside-toplevel

  cfg = ExperimentConfig(method='snr', num_tasks=4, examples_per_task=32, batch_size=16)
  monkeypatch.chdir(tmp_path)
  out = pathlib.Path('runs/r')  # relative, as users type it (orbax refuses those itself)
  real_save = ocp.CheckpointManager.save

  def failing_save(self, step, *args, **kwargs):
    if step != failing_step:
      return real_save(self, step, *args, **kwargs)
    # what a full disk leaves: orbax's temporary directory, half written
    (pathlib.Path(self.directory) / f'{step}.orbax-checkpoint-tmp-7' / 'carry').mkdir(parents=True)
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(ocp.CheckpointManager, 'save', failing_save)
  with pytest.raises(OSError, match='No space left'):
    drive(cfg, mnist, [0], out, tasks_per_call=2, checkpoint_every=2, progress=False)
  on_disk = json.loads((out / 'summary.json').read_text())
  assert not on_disk['complete']
  assert on_disk['tasks_done'] == failing_step  # the results computed are all kept
  assert on_disk['tasks_checkpointed'] == failing_step - 2
  assert not list((out / 'checkpoint').glob('*tmp*'))
  monkeypatch.setattr(ocp.CheckpointManager, 'save', real_save)

  summary = drive(cfg, mnist, [0], out, tasks_per_call=2, checkpoint_every=2, progress=False)
  assert summary['complete'] and summary['resumed_from'] == failing_step - 2
  on_disk = json.loads((out / 'summary.json').read_text())
  assert on_disk['complete'] and on_disk['tasks_checkpointed'] == 4
  fresh = drive(cfg, mnist, [0], tmp_path / 'fresh', tasks_per_call=2, progress=False)
  assert results_equal(out, tmp_path / 'fresh') and fresh['complete']


def results_equal(a: pathlib.Path, b: pathlib.Path) -> bool:
  from experiments import results  # pylint: disable=import-outside-toplevel

  return results.read_metrics(a) == results.read_metrics(b)
