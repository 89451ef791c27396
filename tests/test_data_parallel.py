"""Data parallelism has one global semantics (SPEC §8): jit with a sharded batch, shard_map
and pmap (with ``data_axis``) make the single-device resets at every step, for every
resetting method, and pmap replicas never diverge."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import optax
import pytest

import snr_jax

HERE = pathlib.Path(__file__).resolve().parent


def test_every_parallel_form_matches_one_device():
  env = dict(os.environ, PYTHONPATH=str(HERE.parent))
  proc = subprocess.run([sys.executable, str(HERE / 'data_parallel_run.py'), '200'], env=env,
                        capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  assert sorted(results) == ['cbp', 'redo', 'snr', 'snr_per_token']
  for method, r in results.items():
    assert r['resets'] > 0, f'{method}: the setup must reset something'
    for form in ('jit_sharded', 'shard_map', 'pmap'):
      assert r[f'{form}_mask_mismatches'] == 0, (method, form, r)
      assert r[f'{form}_param_diff'] <= 1e-6, (method, form, r)
    assert r['pmap_spread'] == 0.0, (method, r)


def test_axis_names_without_an_enclosing_axis_are_clear_errors():
  group = snr_jax.dense_group('h', 3, layer='a', consumer='b')
  params = {'a': {'kernel': jax.numpy.ones((2, 3)), 'bias': jax.numpy.zeros(3)},
            'b': {'kernel': jax.numpy.ones((3, 1)), 'bias': jax.numpy.zeros(1)}}
  for kw in (dict(data_axis='data'), dict(axis_name='seeds')):
    tx = snr_jax.snr(optax.sgd(0.1), [group], **kw)
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"{name}='{kw[name]}' names no enclosing mapped axis"):
      tx.update(jax.tree.map(jax.numpy.zeros_like, params), tx.init(params), params,
                activations={'h': jax.numpy.ones((4, 3))})
