"""Multi-host for real (design §8, §9): two processes on localhost under jax.distributed, 4
CPU devices each with gloo collectives, each feeding only its own part of every batch,
make the same resets and reach the same params as one process with 8 devices (this one,
conftest.py)."""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from multihost_run import train

pytestmark = pytest.mark.slow  # two processes beside this one with eight devices

HERE = pathlib.Path(__file__).resolve().parent
STEPS = 200


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(num_processes, out, port=0):
  env = dict(os.environ, PYTHONPATH=str(HERE.parent))
  return [
      subprocess.Popen(
          [
              sys.executable,
              str(HERE / 'multihost_run.py'),
              str(num_processes),
              str(pid),
              str(port),
              str(STEPS),
              str(out),
          ],
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for pid in range(num_processes)
  ]


def _wait(procs):
  for p in procs:
    try:
      _, err = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    assert p.returncode == 0, err[-3000:]


def test_two_processes_equal_one_process_with_eight_devices(tmp_path):
  if jax.device_count() != 8:  # on an accelerator jax_num_cpu_devices adds no devices
    pytest.skip(f'needs 8 devices; the {jax.default_backend()} backend has {jax.device_count()}')
  multi = tmp_path / 'two.npz'
  procs = _launch(2, multi, _free_port())
  try:
    a = train(STEPS)  # in this process, while the two run
  except BaseException:
    for p in procs:
      p.kill()
    raise
  _wait(procs)
  b = np.load(multi)
  assert sorted(a) == sorted(b.files)
  for form in ('jit', 'shard_map'):
    assert a[f'{form}_masks'].sum() > 0, 'the setup must reset something'
    np.testing.assert_array_equal(a[f'{form}_masks'], b[f'{form}_masks'])
  for k in a:
    np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0)
