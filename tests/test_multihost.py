"""Multi-host for real (design §8, §9): two processes on localhost under jax.distributed, 4
CPU devices each with gloo collectives, each feeding only its own part of every batch,
make the same resets and reach the same params as one process with 8 devices."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # two processes against one with eight devices

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
  ref, multi = tmp_path / 'one.npz', tmp_path / 'two.npz'
  _wait(_launch(1, ref))
  _wait(_launch(2, multi, _free_port()))
  a, b = np.load(ref), np.load(multi)
  assert sorted(a.files) == sorted(b.files)
  for form in ('jit', 'shard_map'):
    assert a[f'{form}_masks'].sum() > 0, 'the setup must reset something'
    np.testing.assert_array_equal(a[f'{form}_masks'], b[f'{form}_masks'])
  for k in a.files:
    np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0)
