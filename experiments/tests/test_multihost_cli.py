"""The command line over two processes for real (jax.distributed on localhost, gloo, 4 CPU
devices each) in --mode mesh: process 0 alone writes the results, which equal one process
with 8 devices and vmap on one device; a run stopped there resumes from its orbax
checkpoint to the same numbers, started the way Slurm's srun starts it (--distributed)."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from experiments import cli, results

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLAGS = [
    'permuted_mnist',
    '--dataset',
    'digits',
    '--source',
    'bundled',
    '--method',
    'snr',
    '--num-tasks',
    '4',
    '--seeds',
    '2',
    '--sweep',
    'eta=0.05,0.1',
    '--examples-per-task',
    '64',
    '--tasks-per-call',
    '2',
    '--checkpoint-every',
    '2',
    '--set',
    'tau_init=32',
    '--set',
    'tau_min=16',
    '--set',
    'tau_max=64',
    '--no-progress',
]

# Runs the CLI, logging every path the process opens for writing, creates, renames to or
# removes (Python's audit events), one per line, to the file named by argv[1].
WRAPPER = """
import os, sys
log = open(sys.argv[1], 'w')
WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT

def hook(event, args):
  if event == 'open' and isinstance(args[0], (str, bytes, os.PathLike)) and (
      (args[1] and any(c in args[1] for c in 'wax+')) or (args[2] or 0) & WRITES):
    log.write(os.fsdecode(args[0]) + '\\n')
  elif event in ('os.mkdir', 'os.remove', 'os.rmdir'):
    log.write(os.fsdecode(args[0]) + '\\n')
  elif event in ('os.rename', 'os.replace'):
    log.write(os.fsdecode(args[1]) + '\\n')
  else:
    return
  log.flush()

sys.addaudithook(hook)
from experiments import cli
sys.exit(cli.main(sys.argv[2:]))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(argv, devices, write_log, env=()):
  # A compilation cache shared by the runs of one test: the resumed run skips compiling.
  cache = pathlib.Path(write_log).parent / 'compilation_cache'
  env = dict(
      os.environ,
      XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
      JAX_PLATFORMS='cpu',
      JAX_COMPILATION_CACHE_DIR=str(cache),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
      **dict(env),
  )
  return subprocess.Popen(
      [sys.executable, '-c', WRAPPER, str(write_log), *argv],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )


def _two_processes(out, logs, *extra):
  address = f'127.0.0.1:{_free_port()}'
  return [
      _launch(
          [
              *FLAGS,
              '--mode',
              'mesh',
              '--out',
              str(out),
              *extra,
              '--coordinator',
              address,
              '--num-processes',
              '2',
              '--process-id',
              str(i),
          ],
          4,
          logs / f'writes{i}.txt',
      )
      for i in range(2)
  ]


def _srun(out, logs):
  """Two processes as Slurm's srun starts them: no flags, --distributed, the step's
  environment (JAX reads the coordinator's node, the task count and this task's rank)."""
  port = str(_free_port())
  return [
      _launch(
          [*FLAGS, '--mode', 'mesh', '--out', str(out), '--distributed'],
          4,
          logs / f'writes{i}.txt',
          {
              'SLURM_JOB_ID': '7',
              'SLURM_STEP_NODELIST': '127.0.0.1',
              'SLURM_STEP_NUM_NODES': '1',
              'SLURM_NTASKS': '2',
              'SLURM_STEP_NUM_TASKS': '2',
              'SLURM_PROCID': str(i),
              'SLURM_LOCALID': str(i),
              'JAX_COORDINATOR_PORT': port,
          },
      )
      for i in range(2)
  ]


def _wait(procs) -> list[str]:
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    assert p.returncode == 0, err[-3000:]
    outs.append(''.join(line for line in out.splitlines(True) if any(m in line for m in CLI_LINES)))
  return outs  # the CLI's own lines of each stdout


# What the CLI prints (gloo also prints connection messages to stdout, at times in pieces).
CLI_LINES = ('stopped after', 'resumed from', 'results in', 'permuted_mnist', 'accuracy')


def _written(log: pathlib.Path, out: pathlib.Path) -> set[pathlib.Path]:
  return {
      pathlib.Path(line)
      for line in log.read_text().splitlines()
      if pathlib.Path(line).is_relative_to(out)
  }


def _columns(rows) -> dict[str, np.ndarray]:
  return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


@pytest.mark.slow
def test_two_processes_write_once_equal_one_process_and_resume(tmp_path):
  multi, one, logs = tmp_path / 'multi', tmp_path / 'one', tmp_path / 'logs'
  logs.mkdir()
  # Two processes stopped after 2 of 4 tasks, beside this process with its 8 devices
  # (the repository's conftest.py) running all 4.
  procs = _two_processes(multi, logs, '--stop-after', '2')
  assert cli.main([*FLAGS, '--mode', 'mesh', '--out', str(one)]) == 0
  stopped = _wait(procs)
  assert 'stopped after 2 of 4 tasks' in stopped[0] and stopped[1] == ''
  written = [_written(logs / f'writes{i}.txt', multi) for i in range(2)]
  assert {multi / n for n in ('config.json', 'metrics.csv', 'summary.json')} <= written[0]
  # process 1 writes nothing but (at most) its part of the orbax checkpoint
  assert all(p.is_relative_to(multi / 'checkpoint') for p in written[1]), written[1]
  reference = results.read_metrics(one)
  assert len(reference) == 4 * 4 and sum(int(r['resets/Dense_0']) for r in reference) > 0
  partial = results.read_metrics(multi)
  assert partial == [r for r in reference if int(r['task']) < 2]
  assert (multi / 'checkpoint' / '2' / 'carry').is_dir()

  resumed = _wait(_srun(multi, logs))
  assert 'resumed from task 2' in resumed[0] and resumed[1] == ''
  assert all(p.is_relative_to(multi / 'checkpoint') for p in _written(logs / 'writes1.txt', multi))
  assert (multi / 'metrics.csv').read_text() == (one / 'metrics.csv').read_text()

  # vmap on one device gives the same numbers
  vmap = tmp_path / 'vmap'
  assert cli.main([*FLAGS, '--mode', 'vmap', '--out', str(vmap)]) == 0
  for k, v in _columns(results.read_metrics(vmap)).items():
    np.testing.assert_allclose(v, _columns(reference)[k], rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_a_batch_spanning_both_processes_gives_the_single_device_run(tmp_path):
  """--batch-devices 8 over 2 processes of 4 devices: every member's batch is split over
  both processes (mesh 1 x 8), and firing, resets and metrics are those of one device."""
  multi, logs = tmp_path / 'multi', tmp_path / 'logs'
  logs.mkdir()
  procs = _two_processes(multi, logs, '--batch-devices', '8')
  vmap = tmp_path / 'vmap'
  assert cli.main([*FLAGS, '--mode', 'vmap', '--out', str(vmap)]) == 0
  _wait(procs)
  spanned, reference = (_columns(results.read_metrics(d)) for d in (multi, vmap))
  assert reference['resets/Dense_0'].sum() > 0
  for k, v in reference.items():
    if k.startswith('resets/'):
      np.testing.assert_array_equal(spanned[k], v, err_msg=k)
    np.testing.assert_allclose(spanned[k], v, rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--coordinator', '127.0.0.1:1234'], 'missing: --num-processes, --process-id'),
        (['--num-processes', '2', '--process-id', '0'], 'missing: --coordinator'),
        (
            ['--coordinator', 'localhost', '--num-processes', '2', '--process-id', '0'],
            '--coordinator takes HOST:PORT',
        ),
        (
            ['--coordinator', 'h:1', '--num-processes', '2', '--process-id', '2'],
            '--process-id must be in 0..1',
        ),
        (['--distributed', '--coordinator', 'h'], '--coordinator takes HOST:PORT'),
        (['--distributed', '--process-id', '-1'], '--process-id must be at least 0'),
    ],
)
def test_incomplete_multihost_flags_are_refused_before_anything_runs(
    flags, message, tmp_path, capsys
):
  out = tmp_path / 'never'
  with pytest.raises(SystemExit) as e:
    cli.main([*FLAGS, '--out', str(out), *flags])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert message in err and 'Traceback' not in err
  assert not out.exists()


def test_modes_across_processes_are_checked_before_anything_runs(monkeypatch):
  from experiments.benchmarks import ExperimentConfig
  from experiments.runner import resolve_mode

  config = ExperimentConfig('permuted_mnist')
  assert resolve_mode(config, 'auto', 4) == 'vmap'
  monkeypatch.setattr('jax.process_count', lambda: 2)
  assert resolve_mode(config, 'auto', 4) == resolve_mode(config, 'mesh', 4) == 'mesh'
  with pytest.raises(ValueError, match="with 2 processes use mode 'mesh'"):
    resolve_mode(config, 'vmap', 4)
  with pytest.raises(ValueError, match='3 members .* do not split evenly over 2 processes'):
    resolve_mode(config, 'mesh', 3)
  # a batch over more devices than a process has spans whole processes
  monkeypatch.setattr('jax.local_device_count', lambda: 4)
  assert resolve_mode(config, 'auto', 3, batch_devices=8) == 'mesh'  # one group: both
  with pytest.raises(ValueError, match='use at most 4, or a multiple of 4 that splits'):
    resolve_mode(config, 'mesh', 4, batch_devices=16)
  monkeypatch.setattr('jax.process_count', lambda: 4)
  with pytest.raises(
      ValueError, match=r'3 members .* over 2 groups of processes ' r'\(batch_devices=8\)'
  ):
    resolve_mode(config, 'mesh', 3, batch_devices=8)


def test_copies_started_by_a_launcher_without_distributed_are_refused(
    tmp_path, capsys, monkeypatch
):
  monkeypatch.setenv('SLURM_NTASKS', '4')  # an sbatch script's allocation: a plain run
  monkeypatch.setenv('SLURM_PROCID', '0')
  assert cli._launched_tasks() is None
  monkeypatch.setenv('SLURM_STEP_NUM_TASKS', '4')  # srun -n 4: four copies
  monkeypatch.setenv('SLURM_PROCID', '1')
  out = tmp_path / 'never'
  with pytest.raises(SystemExit) as e:
    cli.main([*FLAGS, '--out', str(out)])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "Slurm's srun started 4 copies" in err and '--distributed' in err
  assert not out.exists()
  monkeypatch.setenv('SLURM_STEP_NUM_TASKS', '1')  # one task: an ordinary run
  assert cli._launched_tasks() is None


def test_distributed_without_a_launcher_names_the_flags_before_anything_runs(tmp_path):
  env = {
      k: v
      for k, v in os.environ.items()
      if not k.startswith(('SLURM_', 'OMPI_', 'JAX_COORDINATOR', 'KUBERNETES_'))
  }
  out = tmp_path / 'never'
  done = subprocess.run(
      [
          sys.executable,
          '-m',
          'experiments.cli',
          *FLAGS,
          '--out',
          str(out),
          '--distributed',
          '--num-processes',
          '2',
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert done.returncode == 2
  assert (
      'found no cluster launcher' in done.stderr and '--coordinator, --process-id' in done.stderr
  ), done.stderr
  assert 'Traceback' not in done.stderr and not out.exists()
