"""Every method's train step lowers for the accelerators, with no host callback (design §10).

``jax.export.export(jax.jit(step), platforms=('cuda', 'tpu'))`` traces and lowers a step
for those platforms on this CPU-only machine, without the hardware. A step that calls
back into Python (``jax.pure_callback``, ``jax.debug.callback``, ``io_callback``) either
fails to lower for two platforms or leaves a host-callback ``custom_call`` in the module;
either way it would stall a GPU step, so both fail here, naming what was found.

The steps are built as the README shows a user would: ``discover_groups``,
``with_preactivations`` and ``opt.update(..., activations=acts, end_of_task=...)`` inside
one jitted function (NNX: ``nnx.split``/``nnx.merge`` around an ``nnx.Optimizer`` step).
Widths are tiny where the model allows, since only tracing and lowering are timed.

``control_flow_ops`` counts the ``stablehlo.case``/``while``/``if`` ops of a module, which
XLA:GPU evaluates with a device-to-host synchronisation; the last test reports the counts
in each method's update (the step outside the model) as traced here, where the default
``control_flow='auto'`` is the branching step; ``tests/test_control_flow.py`` requires none
for ``control_flow='select'``.
"""

from __future__ import annotations

import functools
import re
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import snr_jax
from conftest import TinyCNN, TinyGPT
from experiments.models import CNN, GPT, vit_for
from test_discovery_patterns import NNXDropoutCNN

pytestmark = pytest.mark.device  # about running on an accelerator: device_check runs it there

PLATFORMS = ('cuda', 'tpu')

HOST_CALLBACK_TARGETS = (
    'xla_python_cpu_callback',
    'xla_ffi_python_cpu_callback',
    'xla_python_gpu_callback',
    'xla_ffi_python_gpu_callback',
    'xla_ffi_partitioned_python_cpu_callback',
    'xla_ffi_partitioned_python_gpu_callback',
)
"""``custom_call`` targets through which JAX runs Python on the host."""

CONTROL_FLOW_OPS = ('case', 'while', 'if')

# pretty form `stablehlo.custom_call @target(` and generic form `call_target_name = "target"`
_CUSTOM_CALL = re.compile(r'stablehlo\.custom_call\s+@([\w.$-]+)|call_target_name\s*=\s*"([^"]+)"')
# TPU runs host callbacks as send/recv pairs tagged as host transfers
_HOST_TRANSFER = re.compile(r'_xla_host_transfer_handler_name\s*=\s*"([^"]*)"')


def host_callbacks(module_text: str) -> list[str]:
  """The host callbacks in a lowered module's text, one entry per occurrence.

  Args:
    module_text: StableHLO text, e.g. ``exported.mlir_module()`` or ``lowered.as_text()``.

  Returns:
    ``'custom_call @<target>'`` for every custom call whose target is a known host
    callback or names a callback, and ``'host transfer <handler>'`` for every send/recv
    to the host; empty when the module never leaves the device.
  """
  found = []
  for match in _CUSTOM_CALL.finditer(module_text):
    target = match.group(1) or match.group(2)
    if target in HOST_CALLBACK_TARGETS or 'callback' in target.lower():
      found.append(f'custom_call @{target}')
  found += [f'host transfer {name}' for name in _HOST_TRANSFER.findall(module_text)]
  return found


def control_flow_ops(module_text: str) -> dict[str, int]:
  """How many ``stablehlo.case``, ``stablehlo.while`` and ``stablehlo.if`` ops a module has.

  XLA:GPU evaluates these ops' predicates on the host (a device-to-host synchronisation
  each), so a step meant to run asynchronously on a GPU should have none.

  Args:
    module_text: StableHLO text (pretty or generic form).

  Returns:
    ``{'case': n, 'while': n, 'if': n}``.
  """
  return {op: len(re.findall(rf'\bstablehlo\.{op}\b', module_text)) for op in CONTROL_FLOW_OPS}


def lower(fn, *args, platforms=PLATFORMS) -> str:
  """The StableHLO text of ``jax.jit(fn)`` exported for ``platforms`` at ``args``."""
  return jax.export.export(jax.jit(fn), platforms=platforms)(*args).mlir_module()


def assert_no_host_callbacks(module_text: str, what: str) -> None:
  found = host_callbacks(module_text)
  assert not found, f'{what} calls back to the host: {sorted(set(found))} ({len(found)} in all)'


# --- models ----------------------------------------------------------------------------------


class ReadmeMLP(nn.Module):
  """The README's linen MLP, at tiny widths."""

  @nn.compact
  def __call__(self, x):
    for h in (8, 8):
      x = nn.relu(nn.Dense(h)(x))
    return nn.Dense(3)(x)


class ScannedBlock(nn.Module):
  """A residual ReLU FFN block; under ``nn.scan`` its ``fc1`` is one (layer, unit) group."""

  @nn.compact
  def __call__(self, x, _):
    return x + nn.Dense(x.shape[-1], name='fc2')(nn.relu(nn.Dense(8, name='fc1')(x))), None


class ScannedStack(nn.Module):

  @nn.compact
  def __call__(self, x):
    stack = nn.scan(
        ScannedBlock, variable_axes={'params': 0}, split_rngs={'params': True}, length=3
    )
    x, _ = stack(name='stack')(nn.Dense(4, name='inp')(x), None)
    return nn.Dense(3, name='head')(x)


class NNXMLP(nnx.Module):
  """The README's NNX MLP, at tiny widths."""

  def __init__(self, rngs):
    self.layers = nnx.List([nnx.Linear(12, 8, rngs=rngs), nnx.Linear(8, 8, rngs=rngs)])
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    for layer in self.layers:
      x = nnx.relu(layer(x))
    return self.head(x)


def _images(shape, classes=3):
  # numpy, not jax.random: an eager op compiles, and compiling is all this file avoids
  rng = np.random.default_rng(1)
  return rng.standard_normal(shape).astype(np.float32), np.arange(shape[0]) % classes


def _tokens(batch, length, vocab):
  toks = np.random.default_rng(1).integers(0, vocab, (batch, length)).astype(np.int32)
  return toks, np.roll(toks, -1, axis=1)


def concrete(tree):
  """Arrays of ``tree``'s shapes (from ``eval_shape``) as numpy values: params for
  discovery and lowering without compiling the model's init (seconds per model on CPU)."""
  rng = np.random.default_rng(0)

  def one(leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(np.zeros((*leaf.shape, 2), np.uint32))
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      return (0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
    return np.zeros(leaf.shape, leaf.dtype)

  return jax.tree.map(one, tree)


LINEN_MODELS = {
    # name: () -> (model, x, y)
    'mlp': lambda: (ReadmeMLP(), *_images((4, 12))),
    'cnn-im2col': lambda: (
        CNN(
            num_outputs=3,
            conv_features=(4, 4),
            kernel_size=3,
            dense_features=(8,),
            conv_impl='im2col',
        ),
        *_images((2, 12, 12, 1)),
    ),
    'cnn-xla': lambda: (
        CNN(
            num_outputs=3, conv_features=(4, 4), kernel_size=3, dense_features=(8,), conv_impl='xla'
        ),
        *_images((2, 12, 12, 1)),
    ),
    'gpt': lambda: (GPT(vocab_size=50, context_length=16), *_tokens(2, 16, 50)),
    'vit': lambda: (vit_for((28, 28, 1), 2), *_images((2, 28, 28, 1), 2)),
    'tiny-cnn': lambda: (TinyCNN(), *_images((2, 10, 10, 2), 2)),
    'tiny-gpt': lambda: (TinyGPT(), *_tokens(2, 6, 11)),
    'scanned-stack': lambda: (ScannedStack(), *_images((4, 6))),
}

NNX_MODELS = {
    # name: (key -> model, (x, y))
    'nnx-mlp': (lambda key=0: NNXMLP(nnx.Rngs(key)), _images((4, 12))),
    'nnx-dropout-cnn': (lambda key=0: NNXDropoutCNN(nnx.Rngs(key)), _images((2, 8, 8, 2), 2)),
}

METHODS = {
    # name: (inner, groups, init_fn) -> the optimizer a user would build
    'snr-histogram': lambda inner, groups, init_fn: snr_jax.snr(
        inner, groups, estimator='histogram'
    ),
    'snr-geometric': lambda inner, groups, init_fn: snr_jax.snr(
        inner, groups, estimator='geometric'
    ),
    'snr-per_token': lambda inner, groups, init_fn: snr_jax.snr(
        inner, groups, estimator='per_token'
    ),
    'redo': lambda inner, groups, init_fn: snr_jax.redo(inner, groups, period=10),
    'cbp': lambda inner, groups, init_fn: snr_jax.continual_backprop(inner, groups),
    'shrink_perturb': lambda inner, groups, init_fn: snr_jax.shrink_perturb(inner, init_fn),
}

# Every method on the models that differ in how units are read (dense, conv, tokens, a
# scanned stack, NNX); the SNR histogram and the baselines elsewhere, to keep the file fast.
FULL = ('mlp', 'cnn-im2col', 'gpt', 'vit', 'scanned-stack', 'nnx-mlp')
CASES = [
    (m, k)
    for m in [*LINEN_MODELS, *NNX_MODELS]
    for k in METHODS
    if m in FULL or k in ('snr-histogram', 'redo', 'cbp')
]


def loss(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@functools.lru_cache(maxsize=None)
def linen_setup(name):
  """``(model, params, x, y, groups, forward)`` of a linen model, discovered once."""
  model, x, y = LINEN_MODELS[name]()
  params = concrete(jax.eval_shape(model.init, jax.random.PRNGKey(0), x)['params'])
  groups = snr_jax.discover_groups(model, params, x)
  assert len(groups) > 0, f'{name}: no neuron groups discovered'
  return model, params, x, y, groups, snr_jax.with_preactivations(model, groups)


def linen_step(name, method):
  """The README's train step (``lower`` jits it) and the arguments to export it at."""
  model, params, x, y, groups, forward = linen_setup(name)
  init_fn = lambda key: model.init(key, x)['params']
  opt = METHODS[method](optax.adam(1e-3), groups, init_fn)

  def train_step(params, opt_state, x, y, end_of_task):
    def loss_fn(p):
      logits, acts = forward({'params': p}, x)
      return loss(logits, y), acts

    (value, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(
        grads, opt_state, params, activations=acts, end_of_task=end_of_task
    )
    return optax.apply_updates(params, updates), opt_state, value

  # shapes are all that lowering needs: no histogram buffers are allocated
  opt_state = jax.eval_shape(opt.init, params)
  return train_step, (params, opt_state, x, y, jnp.bool_(False))


def nnx_step(name, method):
  """The README's NNX step, as a pure function of ``nnx.split``'s state."""
  make, (x, y) = NNX_MODELS[name]
  graphdef, state = nnx.split(nnx.eval_shape(make))
  model = nnx.merge(graphdef, concrete(state))
  groups = snr_jax.discover_groups(model, x)
  assert len(groups) > 0, f'{name}: no neuron groups discovered'
  forward = snr_jax.with_preactivations(model, groups)
  init_fn = lambda key: nnx.state(make(key), nnx.Param)
  tx = METHODS[method](optax.adam(1e-3), groups, init_fn)
  # abstract, like the linen steps' optimizer state
  optimizer = nnx.eval_shape(lambda m: nnx.Optimizer(m, tx, wrt=nnx.Param), model)
  graphdef, state = nnx.split((model, optimizer))

  def train_step(state, x, y):
    model, optimizer = nnx.merge(graphdef, state)

    def loss_fn(model):
      logits, acts = forward(model, x)
      return loss(logits, y), acts

    (value, acts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads, activations=acts)
    return nnx.state((model, optimizer)), value

  return train_step, (state, x, y)


@pytest.mark.parametrize('model_name, method', CASES, ids=[f'{m}-{k}' for m, k in CASES])
def test_train_step_lowers_for_gpu_and_tpu_without_host_callbacks(model_name, method):
  if model_name in NNX_MODELS:
    step, args = nnx_step(model_name, method)
  else:
    step, args = linen_step(model_name, method)
  text = lower(step, *args)
  assert_no_host_callbacks(text, f'the {method} train step of {model_name}')


# --- the checks themselves -------------------------------------------------------------------


def _with_cond(x):
  return jax.lax.cond(x.sum() > 0, lambda v: v + 1, lambda v: v - 1, x)


def _with_loop(x):
  return jax.lax.fori_loop(0, x.shape[0], lambda i, v: v.at[i].add(v[i - 1]), x)


def _straight(x):
  return jnp.where(x.sum() > 0, x + 1, x - 1)


def test_control_flow_ops_counts_conditionals_and_loops():
  x = np.ones(3, np.float32)
  assert control_flow_ops(lower(_straight, x, platforms=('cuda',))) == {
      'case': 0,
      'while': 0,
      'if': 0,
  }
  with_cond = control_flow_ops(lower(_with_cond, x, platforms=('cuda',)))
  assert with_cond['case'] + with_cond['if'] == 1 and with_cond['while'] == 0, with_cond
  with_loop = control_flow_ops(lower(_with_loop, np.ones(3, np.int32), platforms=('cuda',)))
  assert with_loop['while'] == 1, with_loop
  # the generic (quoted) form counts alike
  assert control_flow_ops('%0 = "stablehlo.case"(%p) ({ ... }) : ...')['case'] == 1


def test_host_callbacks_names_what_it_finds():
  x = np.ones(3, np.float32)

  # host callbacks cannot be exported for cuda and tpu from a CPU machine (that failure is
  # itself a failing lowering above), so the finder is checked on the CPU lowering
  def calls_back(v):
    return jax.pure_callback(lambda a: np.asarray(a) * 2, jax.ShapeDtypeStruct(v.shape, v.dtype), v)

  # on this backend: a python_cpu_callback here, python_gpu_callback on a GPU (device_check)
  found = host_callbacks(jax.jit(calls_back).lower(x).as_text())
  assert found and all('callback' in f or 'host transfer' in f for f in found), found
  assert host_callbacks(jax.jit(_straight).lower(x).as_text()) == []
  assert host_callbacks('stablehlo.custom_call @xla_ffi_python_gpu_callback(%0)') == [
      'custom_call @xla_ffi_python_gpu_callback'
  ]
  assert host_callbacks('"stablehlo.custom_call"(%0) {call_target_name = "cublas_gemm"}') == []
  with pytest.raises(AssertionError, match='xla_ffi_python_gpu_callback'):
    assert_no_host_callbacks('stablehlo.custom_call @xla_ffi_python_gpu_callback(%0)', 'a step')


def test_a_host_callback_in_a_step_fails_its_lowering():
  def step(v):
    return jax.pure_callback(lambda a: np.asarray(a), jax.ShapeDtypeStruct(v.shape, v.dtype), v)

  with pytest.raises(Exception, match='callback'):
    lower(step, np.ones(3, np.float32))


# --- control flow outside the model ----------------------------------------------------------


def update_control_flow(method: str, model_name: str = 'mlp') -> dict[str, int]:
  """``control_flow_ops`` of ``method``'s ``opt.update`` alone (the step outside the model),
  lowered for cuda at the README MLP's shapes, with a traced ``end_of_task``."""
  model, params, x, y, groups, forward = linen_setup(model_name)
  init_fn = lambda key: model.init(key, x)['params']
  opt = METHODS[method](optax.adam(1e-3), groups, init_fn)
  _, acts = jax.eval_shape(forward, {'params': params}, x)

  def update(grads, opt_state, params, acts, end_of_task):
    return opt.update(grads, opt_state, params, activations=acts, end_of_task=end_of_task)

  return control_flow_ops(
      lower(
          update,
          params,
          jax.eval_shape(opt.init, params),
          params,
          acts,
          jnp.bool_(False),
          platforms=('cuda',),
      )
  )


def control_flow_report(model_name: str = 'mlp') -> dict[str, dict[str, int]]:
  """``update_control_flow`` of every method, plus plain Adam for reference."""
  params = linen_setup(model_name)[1]
  adam = optax.adam(1e-3)
  report = {
      'adam': control_flow_ops(
          lower(adam.update, params, jax.eval_shape(adam.init, params), params, platforms=('cuda',))
      )
  }
  report.update({method: update_control_flow(method, model_name) for method in METHODS})
  return report


def test_control_flow_in_each_methods_update_is_reported():
  report = control_flow_report()
  listing = '; '.join(
      f'{name}: ' + ', '.join(f'{op} {n}' for op, n in ops.items()) for name, ops in report.items()
  )
  # Reported, not asserted: traced on CPU, 'auto' is the branching step, whose conditionals
  # are its point; tests/test_control_flow.py asserts that the 'select' step has none.
  warnings.warn(f'control flow in opt.update on cuda (README MLP): {listing}', UserWarning)
  print(listing)
  assert report['adam'] == {'case': 0, 'while': 0, 'if': 0}, listing
  assert all(n >= 0 for ops in report.values() for n in ops.values()), listing
