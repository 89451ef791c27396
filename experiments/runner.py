"""One compiled function per experiment: ``make_run(config, dataset)`` (purejaxrl style).

A run is a pure function of its config, its data and its seed. Each task is built from
the data by a pure task stream, its steps run inside ``lax.scan``, and tasks are scanned
too, so a chunk of tasks (or the whole run) is one compiled call. Seeds, and optionally
one hyperparameter axis, are batched with ``vmap`` (or run one after another with the
same compiled function where vmap is slow, as for convolutions on CPU).

Per task we record: online accuracy (the accuracy on each training batch computed from
the forward pass that also gives the gradient, i.e. *before* the update on that batch,
averaged over the task's batches), loss, resets per group, dead fraction per group (no
firing over the last ``dead_after`` examples) and mean absolute weight.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from experiments import data as snr_data
from experiments import models
from snr_jax._src.activations import apply_with_preactivations, fired
from experiments.benchmarks import ExperimentConfig, method_hparams
from snr_jax._src.discovery import discover_groups
from snr_jax._src.groups import NeuronGroup
from snr_jax._src.methods import make_method
from snr_jax._src.ages import batch_ages
from snr_jax._src.transform import find_reset_state


class Carry(NamedTuple):
  """Everything a run carries from one task to the next (one seed)."""

  params: Any
  opt_state: Any
  ages: dict[str, jax.Array]  # examples since each unit last fired (for dead fraction)
  stream_key: jax.Array  # the task stream's key
  sweep_value: jax.Array  # the swept hyperparameter's value (0 if no sweep)


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A compiled-once experiment: pure ``init`` and ``run_tasks`` plus what they need.

  Attributes:
    config: the experiment's configuration.
    dataset_name, dataset_source: which dataset and source served the data.
    groups: the model's neuron groups.
    data: the device arrays the task stream reads (pass them to ``run_tasks``).
    init: ``(key, sweep_value) -> Carry``.
    run_tasks: ``(carry, data, first_task, num_tasks) -> (carry, metrics)``; metrics
      are arrays with a leading task axis. ``num_tasks`` is static.
    train_step: ``train_step(sweep_value)`` gives the step ``run_tasks`` takes on each
      batch, ``(params, opt_state, x, y, end_of_task) -> (params, opt_state, (loss,
      accuracy, pre-activations))``, without the task stream around it (for
      benchmarks).
    model: the Flax module it trains.
  """

  config: ExperimentConfig
  dataset_name: str
  dataset_source: str
  groups: tuple[NeuronGroup, ...]
  data: dict[str, jax.Array]
  init: Callable[..., Carry]
  run_tasks: Callable[..., tuple[Carry, dict]]
  axis_name: Optional[str] = None
  train_step: Optional[Callable[..., Callable]] = None
  model: Any = None


def _host_data(config: ExperimentConfig, dataset: snr_data.Dataset) -> dict[str, np.ndarray]:
  task = config.protocol.task
  if task == 'permuted_vocab':
    if dataset.tokens is None:
      raise ValueError(
          f'benchmark {config.benchmark!r} needs a text dataset, got ' f'{dataset.name!r}.'
      )
    tokens = np.asarray(dataset.tokens, np.int32)
    if config.vocab_size is not None:
      # ids are frequency ranks (the loader's vocabulary is sorted by frequency), so the
      # K - 1 most frequent words keep theirs and every other word becomes id K - 1
      tokens = np.minimum(tokens, config.vocab_size - 1)
    return {'tokens': tokens}
  if dataset.images is None:
    raise ValueError(
        f'benchmark {config.benchmark!r} needs an image dataset, got ' f'{dataset.name!r}.'
    )
  n = config.resolved('examples_per_task')
  if task != 'class_pair' and n > len(dataset):
    raise ValueError(
        f'examples_per_task={n} but {dataset.name} has only {len(dataset)} '
        'images; lower examples_per_task.'
    )
  if task == 'class_pair':
    # checked here: under jit a missing image would silently be image 0, mislabelled
    fewest = int(
        np.bincount(
            np.asarray(dataset.labels).reshape(-1), minlength=max(dataset.num_classes, 1)
        ).min()
    )
    if n // 2 > fewest:
      raise ValueError(
          f'examples_per_task={n} takes {n // 2} images of each class of a '
          f'pair, but a class of {dataset.name} has only {fewest}; lower '
          f'examples_per_task to at most {2 * fewest}.'
      )
  return {'images': np.asarray(dataset.images), 'labels': np.asarray(dataset.labels, np.int32)}


def task_key(stream_key: jax.Array, task_index) -> jax.Array:
  """The key of task ``task_index``: its data and its batch order derive from it."""
  return jax.random.fold_in(stream_key, task_index)


def _make_task(
    config: ExperimentConfig,
    data: dict,
    task_index,
    stream_key,
    num_classes: int,
    axis_name: Optional[str] = None,
):
  """Task ``task_index`` of the stream as ``(lookup, labels)``: ``lookup(batch_indices)``
  gives a batch's inputs.

  A task draws from :func:`task_key`, except class pairs, which come
  from one ordering of the classes per round of the whole stream (every class once per
  round), so they take the stream's key.

  Permuted and class-pair tasks are gathered a batch at a time from the dataset (with
  the indices of ``permuted_task_indices`` / ``class_pair_indices``) instead of being
  materialised: permuting 10,000 images at every task boundary cost more than the
  task's 625 training steps.
  """
  p = config.protocol
  n = config.resolved('examples_per_task')
  key = task_key(stream_key, task_index)
  if p.task == 'permuted':
    images = data['images']
    idx, perm = snr_data.permuted_task_indices(
        key, images.shape[0], int(np.prod(images.shape[1:])), n, axis_name
    )
    lookup = lambda b: snr_data.to_float(images[idx[b]].reshape(b.shape[0], -1)[:, perm])
    return lookup, data['labels'][idx]
  if p.task == 'class_pair':
    idx, y = snr_data.class_pair_indices(
        data['labels'], stream_key, task_index, n // 2, num_classes
    )
    return lambda b: snr_data.to_float(data['images'][idx[b]]), y
  if p.task == 'random_label':
    x, y = snr_data.random_label_task(
        data['images'], data['labels'], key, n, num_classes=num_classes, flatten=p.model == 'mlp'
    )
  else:
    x, y = snr_data.permuted_vocab_task(data['tokens'], num_classes, key, p.seq_len, n)
  return lambda b: x[b], y


def _model(config: ExperimentConfig, num_outputs: int, image_shape=None):
  p = config.protocol
  if p.model == 'gpt':
    return models.GPT(vocab_size=num_outputs, context_length=p.seq_len, scale=config.model_scale)
  if config.model_name == 'vit':
    return models.vit_for(image_shape, num_outputs)
  if p.model == 'cnn':
    return models.CNN(num_outputs=num_outputs)
  if config.width is not None:
    return models.MLP(num_outputs=num_outputs, hidden=(config.width, config.width))
  return models.MLP(num_outputs=num_outputs)


def _optimizer(config: ExperimentConfig, learning_rate):
  if config.resolved('optimizer') == 'adam':
    return optax.adam(learning_rate)
  return optax.sgd(learning_rate, momentum=config.momentum or None)


def _reset_counts(opt_state, groups) -> dict[str, jax.Array]:
  rs = find_reset_state(opt_state)
  if rs is None:
    return {g.name: jnp.zeros((), jnp.int32) for g in groups}
  return {g.name: jnp.sum(rs.last_resets[g.name]).astype(jnp.int32) for g in groups}


def check_discovered_groups(model, groups: Sequence[NeuronGroup]) -> Sequence[NeuronGroup]:
  """``groups`` when they are the model's declared ``neuron_group_paths()``, else ValueError.

  A benchmark model declares its neuron groups as (producer, consumer) module paths; a run
  whose discovery found other ones (a conv left out, say) would reset other units than
  the results claim, so it is refused before it starts.
  """
  declared = {(tuple(prod), tuple(cons)) for prod, cons in model.neuron_group_paths()}
  found = set()
  for g in groups:
    producers = {s.path[:-1] for s in g.incoming if s.path[-1] == 'kernel'}
    consumers = {s.path[:-1] for s in g.outgoing if s.path[-1] == 'kernel'}
    found |= {(a, b) for a in producers for b in consumers}
  if found != declared:
    fmt = lambda pairs: ', '.join(f"{'/'.join(a)} -> {'/'.join(b)}" for a, b in sorted(pairs))
    missing, extra = declared - found, found - declared
    raise ValueError(
        f'{type(model).__name__}: discovered neuron groups differ from its '
        f'neuron_group_paths(): '
        + '; '.join(
            part
            for part in (
                missing and f'not found: {fmt(missing)}',
                extra and f'not declared: {fmt(extra)}',
            )
            if part
        )
        + '. Run snr_jax.describe_groups on the model to see why, and fix the model or '
        'its declaration; a run would not reset the units its results claim.'
    )
  return groups


def make_run(
    config: ExperimentConfig,
    dataset: snr_data.Dataset,
    axis_name: Optional[str] = None,
    batch_sharding: Optional[NamedSharding] = None,
) -> Experiment:
  """Builds the experiment's pure functions for one config and one dataset.

  Args:
    config: the experiment.
    dataset: the loaded dataset (its name and source are recorded).
    axis_name: the vmap axis name the functions will be batched under, if any (lets
      resetting methods branch only when some member resets).
    batch_sharding: where each step's batch goes (a sharding constraint, e.g. over a
      mesh's 'batch' axis); firing and ages stay those of the whole batch (jit's
      global semantics).

  Returns:
    An :class:`Experiment`. ``run_experiment`` drives it; or call
    ``exp.init(key, value)`` and ``exp.run_tasks(carry, exp.data, first, n)`` yourself.
  """
  host = _host_data(config, dataset)
  # num_outputs: the model's; stream_classes: the classes (words) the stream draws from.
  if config.protocol.task == 'permuted_vocab':
    num_outputs = stream_classes = min(dataset.vocab_size, config.vocab_size or math.inf)
  elif config.protocol.task == 'class_pair':
    num_outputs, stream_classes = 2, dataset.num_classes
  else:
    num_outputs = stream_classes = max(dataset.num_classes, config.protocol.num_outputs)
  data = {k: jnp.asarray(v) for k, v in host.items()}
  model = _model(config, num_outputs, host['images'].shape[1:] if 'images' in host else None)
  batch = config.resolved('batch_size')
  epochs = config.resolved('epochs')
  n = config.resolved('examples_per_task')
  steps = config.steps_per_task

  def task(d, t, key, axis=axis_name):
    return _make_task(config, d, t, key, stream_classes, axis)

  # One concrete batch for shapes and for discovering the neuron groups.
  sample = jax.jit(lambda d: task(d, 0, jax.random.PRNGKey(0), None)[0](jnp.arange(batch)))(data)
  params0 = model.init(jax.random.PRNGKey(0), sample)['params']
  groups = check_discovered_groups(model, discover_groups(model, params0, sample))
  init_fn = lambda k: model.init(k, sample)['params']
  sweep_name = config.sweep[0] if config.sweep else None

  def build_tx(method_key, sweep_value):
    hp = method_hparams(config.hparams)
    lr = config.resolved('learning_rate')
    if sweep_name == 'learning_rate':
      lr = sweep_value
    elif sweep_name is not None:
      hp[sweep_name] = sweep_value
    return make_method(
        config.method,
        _optimizer(config, lr),
        groups=groups,
        init_fn=init_fn,
        key=method_key,
        axis_name=axis_name,
        **hp,
    )

  for value in (config.sweep[1] if config.sweep else ()):
    # traced inside the run, the values would pass the library's checks unseen
    build_tx(jax.random.PRNGKey(0), float(value))

  def init(key, sweep_value=0.0) -> Carry:
    k_params, k_method, k_stream = jax.random.split(key, 3)
    params = init_fn(k_params)
    opt_state = build_tx(k_method, sweep_value).init(params)
    ages = {g.name: jnp.zeros((g.size,), jnp.int32) for g in groups}
    return Carry(params, opt_state, ages, k_stream, jnp.asarray(sweep_value, jnp.float32))

  def loss_fn(params, xb, yb):
    logits, acts = apply_with_preactivations(model, {'params': params}, xb, groups=groups)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    acc = jnp.mean(jnp.argmax(logits, -1) == yb)
    return loss, (acc, acts)

  def train_step(sweep_value):
    # the method's key lives in its state; build_tx's key only seeds init.
    tx = build_tx(jax.random.PRNGKey(0), sweep_value)

    def step(params, opt_state, xb, yb, end_of_task):
      (loss, (acc, acts)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, xb, yb)
      updates, opt_state = tx.update(
          grads, opt_state, params, activations=acts, end_of_task=end_of_task
      )
      return optax.apply_updates(params, updates), opt_state, (loss, acc, acts)

    return step

  def run_tasks(carry: Carry, d: dict, first_task, num_tasks: int):
    train = train_step(carry.sweep_value)

    def one_task(carry: Carry, t):
      lookup, y = task(d, t, carry.stream_key)
      order = snr_data.batch_indices(
          n, batch, epochs, jax.random.fold_in(task_key(carry.stream_key, t), 1)
      )
      last = jnp.arange(steps) == steps - 1

      def step(c, inputs):
        params, opt_state, ages = c
        idx, end_of_task = inputs
        xb, yb = lookup(idx), y[idx]
        if batch_sharding is not None:
          xb, yb = jax.lax.with_sharding_constraint((xb, yb), batch_sharding)
        params, opt_state, (loss, acc, acts) = train(params, opt_state, xb, yb, end_of_task)
        ages = {g.name: batch_ages(ages[g.name], fired(acts[g.name]), batch) for g in groups}
        return (params, opt_state, ages), (loss, acc, _reset_counts(opt_state, groups))

      (params, opt_state, ages), (loss, acc, resets) = jax.lax.scan(
          step, (carry.params, carry.opt_state, carry.ages), (order, last)
      )
      leaves = jax.tree.leaves(params)
      metrics = {
          'accuracy': jnp.mean(acc),
          'loss': jnp.mean(loss),
          'resets': {k: jnp.sum(v) for k, v in resets.items()},
          'dead_fraction': {k: jnp.mean(a >= config.dead_after) for k, a in ages.items()},
          'weight_magnitude': sum(jnp.sum(jnp.abs(leaf)) for leaf in leaves)
          / sum(leaf.size for leaf in leaves),
      }
      return carry._replace(params=params, opt_state=opt_state, ages=ages), metrics

    return jax.lax.scan(one_task, carry, first_task + jnp.arange(num_tasks))

  return Experiment(
      config,
      dataset.name,
      dataset.source,
      groups,
      data,
      init,
      run_tasks,
      axis_name,
      train_step,
      model,
  )


def last_fraction_summary(accuracy: np.ndarray, fraction: float = 0.1) -> dict[str, float]:
  """The headline figure: mean online accuracy over the last ``fraction`` of tasks,
  then mean ± std over seeds (``accuracy`` is (seeds, tasks))."""
  accuracy = np.asarray(accuracy)
  k = max(1, int(math.ceil(accuracy.shape[-1] * fraction)))
  per_seed = accuracy[..., -k:].mean(axis=-1)
  return {
      'mean': float(per_seed.mean()),
      'std': float(per_seed.std()),
      'per_seed': per_seed.tolist(),
      'last_tasks': k,
  }


def seed_keys(seeds: Sequence[int]) -> jax.Array:
  return jnp.stack([jax.random.PRNGKey(s) for s in seeds])


def compile_batched(exp: Experiment, mode: str, chunk: int, mesh: Optional[Mesh] = None):
  """The batched (over seeds × sweep values) init and chunk runner.

  ``mode``: ``'vmap'`` batches in one computation; ``'mesh'`` is the same computation
  jitted over a device mesh whose axis places the members (one GPU, several, or
  virtual CPU devices alike); ``'sequential'`` runs one member at a time through the
  same compiled function. ``mesh``: the mesh for ``'mesh'`` (default: one axis,
  ``'members'``, over :func:`member_mesh`'s devices), e.g. ``member_mesh(n, b)``
  with a ``'batch'`` axis that ``exp`` shards its batches over.
  """
  if mode == 'vmap':
    init = jax.jit(jax.vmap(exp.init))
    run = jax.jit(
        jax.vmap(exp.run_tasks, in_axes=(0, None, None, None), axis_name=exp.axis_name),
        static_argnums=3,
    )
    return init, lambda carry, first, n: run(carry, exp.data, first, n)
  if mode == 'mesh':
    # jit over a Mesh whose one axis places the members (seeds x sweep values); the
    # task data is replicated. GSPMD turns the vmapped axis_name reductions into
    # cross-device ones, so the members stay independent runs. Under several processes
    # the mesh spans them all (every process runs this same program).
    batch_axis = mesh is not None and 'batch' in mesh.axis_names
    vinit = jax.jit(jax.vmap(exp.init))
    local_run = jax.vmap(
        exp.run_tasks,
        in_axes=(0, None, None, None),
        axis_name=exp.axis_name,
        spmd_axis_name='members' if batch_axis else None,
    )
    if batch_axis:
      vrun = jax.jit(local_run, static_argnums=3)
    else:
      # Each device runs its own members (shard_map), so a reduction over the vmap axis
      # (e.g. "does any member reset this step?", which keeps the reset a real branch)
      # stays on the device instead of becoming a cross-device all-reduce every step.
      def vrun(carry, data, first, n):
        m = jax.tree.leaves(carry)[0].sharding.mesh
        return _sharded_members(m, n)(carry, data, jnp.asarray(first))

      @functools.lru_cache(maxsize=None)
      def _sharded_members(m, n):
        # The same devices under another axis name: 'members' names the vmap axis inside.
        devices = Mesh(m.devices, ('member_devices',))
        return jax.jit(
            jax.shard_map(
                lambda c, d, f: local_run(c, d, f, n),
                mesh=devices,
                in_specs=(P('member_devices'), P(), P()),
                out_specs=P('member_devices'),
                check_vma=False,
            )
        )

    placed = {}

    def shardings(members):
      if members not in placed:
        m = mesh if mesh is not None else member_mesh(members)
        split, whole = NamedSharding(m, P('members')), NamedSharding(m, P())
        placed[members] = split, _place(exp.data, whole)
      return placed[members]

    def init(keys, values):
      split, _ = shardings(keys.shape[0])
      return vinit(_place(keys, split), _place(values, split))

    def run(carry, first, n):
      split, data = shardings(jax.tree.leaves(carry)[0].shape[0])
      return vrun(_place(carry, split), data, first, n)

    return init, run
  if mode == 'sequential':
    init1 = jax.jit(exp.init)
    run1 = jax.jit(exp.run_tasks, static_argnums=3)

    def init(keys, values):
      outs = [init1(k, v) for k, v in zip(keys, values)]
      return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    def run(carry, first, n):
      size = jax.tree.leaves(carry)[0].shape[0]
      outs = [
          run1(jax.tree.map(lambda x, i=i: x[i], carry), exp.data, first, n) for i in range(size)
      ]
      return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return init, run
  raise ValueError(f"mode must be 'vmap', 'mesh', 'sequential' or 'auto', got {mode!r}.")


def member_mesh(members: int, batch_devices: int = 1) -> Mesh:
  """The mesh that places the members: axis ``'members'`` over the most devices (at most
  one per member) that split them evenly, the same number from every process; with
  ``batch_devices`` > 1, a second axis ``'batch'`` of that many devices per member for
  each member's batch: within one process, or, when it exceeds a process's devices, over
  ``batch_devices // jax.local_device_count()`` whole processes (:func:`resolve_mode`
  checks that these split)."""
  processes, local = jax.process_count(), jax.local_device_count()
  if batch_devices > local:  # each member's batch spans whole processes: all devices
    taken = local
  else:
    taken = batch_devices * max(
        k
        for k in range(1, min(members // processes, local // batch_devices) + 1)
        if members % (k * processes) == 0
    )
  devices = [
      d
      for p in range(processes)
      for d in sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)[
          :taken
      ]
  ]
  if batch_devices == 1:
    return Mesh(np.array(devices), ('members',))
  return Mesh(np.array(devices).reshape(-1, batch_devices), ('members', 'batch'))


def _place(tree, sharding: NamedSharding):
  """``tree`` on ``sharding``; under several processes from host values that every
  process holds alike (arrays already spread over processes are left as they are)."""
  if sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  return jax.tree.map(put, tree)


def to_host(tree):
  """Numpy copies of ``tree``'s arrays, gathered from every process where they are spread
  over several."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  return jax.tree.map(
      lambda x: np.asarray(x)
      if x.is_fully_addressable
      else multihost_utils.process_allgather(x, tiled=True),
      tree,
  )


def resolve_mode(
    config: ExperimentConfig, mode: str, num_members: int, batch_devices: int = 1
) -> str:
  """The mode to run: ``mode`` checked against the number of processes and
  ``batch_devices``, ``'auto'`` resolved (:func:`default_mode` in one process, ``'mesh'``
  across several or with ``batch_devices`` > 1).

  Raises:
    ValueError: an unknown mode; ``batch_devices`` > 1 outside ``'mesh'``, not dividing
      the batch size, or more than a process's devices without spanning whole processes;
      or, under several processes, a mode other than ``'mesh'``, or members that do not
      split evenly over the processes (or the groups of processes that share a batch).
  """
  if mode not in ('auto', 'vmap', 'mesh', 'sequential'):
    raise ValueError(f"mode must be 'vmap', 'mesh', 'sequential' or 'auto', got {mode!r}.")
  if batch_devices != 1:
    batch = config.resolved('batch_size')
    if not isinstance(batch_devices, int) or batch_devices < 1:
      raise ValueError(f'batch_devices must be a positive int, got {batch_devices!r}.')
    if mode not in ('auto', 'mesh'):
      raise ValueError(
          f'batch_devices={batch_devices} shards batches over a mesh; use '
          f"mode 'mesh' (or 'auto'), not {mode!r}."
      )
    if batch % batch_devices:
      raise ValueError(
          f'batch_devices={batch_devices} does not divide the batch size '
          f'{batch}; use a divisor of it.'
      )
  processes, local = jax.process_count(), jax.local_device_count()
  # members split over groups of processes: one process each, or, when a member's batch
  # spans several processes, the processes that share it
  groups = processes
  if batch_devices > local:
    if processes == 1:
      raise ValueError(
          f'batch_devices={batch_devices} but this process has {local} '
          'device(s); use at most that many.'
      )
    span = batch_devices // local
    if batch_devices % local or processes % span:
      raise ValueError(
          f'batch_devices={batch_devices} spans processes of {local} devices '
          f'each: use at most {local}, or a multiple of {local} that splits '
          f'the {processes} processes (e.g. {local * processes}).'
      )
    groups = processes // span
  if processes == 1:
    if batch_devices != 1:
      return 'mesh'
    return default_mode(config, num_members) if mode == 'auto' else mode
  if mode not in ('auto', 'mesh'):
    raise ValueError(
        f"mode {mode!r} runs on one process's devices; with {processes} "
        "processes use mode 'mesh' (or 'auto')."
    )
  if num_members % groups:
    where = (
        f'{processes} processes'
        if groups == processes
        else f'{groups} groups of processes (batch_devices={batch_devices})'
    )
    raise ValueError(
        f'{num_members} members (seeds x sweep values) do not split evenly '
        f'over {where}; use a multiple of {groups} seeds.'
    )
  return 'mesh'


def default_mode(config: ExperimentConfig, num_members: int) -> str:
  """vmap, except for one member (nothing to batch, and a vmap over one member lays the
  gradient dots out batched: about 1.25x the step on CPU) and for convolutional models
  on CPU (slow under vmap, design §8), which run sequentially."""
  if num_members == 1 or (config.model_name == 'cnn' and jax.default_backend() == 'cpu'):
    return 'sequential'
  return 'vmap'


def run_experiment(
    config: ExperimentConfig,
    dataset: snr_data.Dataset,
    seeds: Sequence[int],
    *,
    mode: str = 'auto',
    chunk_tasks: Optional[int] = None,
    on_chunk: Optional[Callable[[int, dict], None]] = None,
    restore: Optional[Callable[[Carry], Optional[dict]]] = None,
    batch_devices: int = 1,
) -> dict[str, Any]:
  """Runs an experiment for several seeds (and sweep values), compiled once.

  Args:
    config: the experiment.
    dataset: its data.
    seeds: integer seeds.
    mode: ``'vmap'``, ``'mesh'``, ``'sequential'`` or ``'auto'`` (:func:`resolve_mode`);
      under several processes (``jax.distributed``) ``'mesh'`` only, over every
      process's devices, with the members splitting evenly over the processes.
    chunk_tasks: tasks per compiled call (default: all); between chunks ``on_chunk``
      sees the progress, e.g. for a progress bar or a checkpoint.
    on_chunk: ``on_chunk(tasks_done, state)`` with ``state = {'done', 'carry', 'metrics'}``
      (``metrics``: the list of per-chunk metrics so far).
    restore: ``restore(fresh_carry)`` returns such a state to resume from (e.g. read
      from a checkpoint, using the fresh carry as its template), or None.
    batch_devices: in ``'mesh'`` mode, shard each member's batches over this many
      devices (a second mesh axis); firing and ages stay those of the whole batch.

  Returns:
    ``{'metrics': {name: array (members, tasks) or {group: array}}, 'members':
    [{'seed', 'sweep_value'}], 'groups', 'dataset', 'source'}``; members are
    seeds × sweep values, seed-major.
  """
  seeds = list(seeds)
  if not seeds:
    raise ValueError('give at least one seed.')
  repeated = sorted({s for s in seeds if seeds.count(s) > 1})
  if repeated:
    raise ValueError(
        f'seeds {repeated} are given more than once: a repeated seed is the '
        'same run, not another sample; give each seed once.'
    )
  values = list(config.sweep[1]) if config.sweep else [0.0]
  members = [{'seed': s, 'sweep_value': v} for s in seeds for v in values]
  mode = resolve_mode(config, mode, len(members), batch_devices)
  mesh = member_mesh(len(members), batch_devices) if mode == 'mesh' else None
  exp = make_run(
      config,
      dataset,
      axis_name='members' if mode in ('vmap', 'mesh') else None,
      batch_sharding=NamedSharding(mesh, P('batch')) if batch_devices > 1 else None,
  )
  keys = seed_keys([m['seed'] for m in members])
  vals = jnp.asarray([m['sweep_value'] for m in members], jnp.float32)
  total = config.resolved('num_tasks')
  chunk = min(chunk_tasks or total, total)
  init, run = compile_batched(exp, mode, chunk, mesh)
  done, carry, chunks = 0, init(keys, vals), []
  start = restore(carry) if restore is not None else None
  if start is not None:
    done, carry, chunks = start['done'], start['carry'], list(start['metrics'])
  while done < total:
    n = min(chunk, total - done)
    carry, metrics = run(carry, done, n)
    chunks.append(to_host(metrics))
    done += n
    if on_chunk is not None:
      on_chunk(done, {'done': done, 'carry': carry, 'metrics': chunks})
  metrics = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *chunks) if chunks else {}
  return {
      'metrics': metrics,
      'members': members,
      'groups': [g.name for g in exp.groups],
      'dataset': exp.dataset_name,
      'source': exp.dataset_source,
      'carry': carry,
      'resumed_from': start['done'] if start is not None else 0,
  }
