"""The README's commands as a user types them: subprocesses, a fresh working directory,
relative paths (an absolute ``tmp_path`` would hide a command that fails on the relative
paths a user types), and a failed save that must not leave a run claiming success."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from experiments import cli
from fakes import SHORT_PROTOCOL, write_data_dir

pytestmark = pytest.mark.slow  # the README's commands, each in a fresh process

ROOT = pathlib.Path(__file__).resolve().parents[2]

# The README's timed benchmarks (bench_*) are run by hand; everything else it names runs here.
RUN_HERE = {'quickstart', 'cli', 'study', *SHORT_PROTOCOL}
# run elsewhere: the device check's smoke run is experiments/tests/test_device_check.py
RUN_ELSEWHERE = {'device_check'}


def _run(args, cwd, **env):
  # the harness is run from the repository (it is not installed); the paths are the cwd's
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu', **env)
  return subprocess.run(
      [sys.executable, '-m', *args],
      cwd=cwd,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
      stdin=subprocess.DEVNULL,
  )


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A working directory outside the repository, with small data under ``data/``."""
  d = tmp_path_factory.mktemp('user')
  write_data_dir(d / 'data')
  return d


def test_every_command_the_docs_name_is_run_here():
  # the README names `make quickstart` (run by .ci/run); the harness's commands are on the
  # docs pages
  pages = [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]
  text = '\n'.join(p.read_text() for p in pages)
  named = {
      n for n in re.findall(r'python -m experiments\.(\w+)', text) if not n.startswith('bench_')
  }
  untested = named - RUN_HERE - RUN_ELSEWHERE
  assert not untested, f'documented commands without a subprocess test: {untested}'
  assert named >= set(cli.BENCHMARKS)
  assert 'make quickstart' in (ROOT / 'README.md').read_text()


def test_quickstart_as_typed(workdir):
  r = _run(['experiments.quickstart', '--num-tasks', '20', '--no-progress'], workdir)
  assert r.returncode == 0, r.stderr[-3000:]
  run = workdir / 'runs' / 'quickstart'
  assert (run / 'plot.png').stat().st_size > 10_000
  for method in ('none', 'snr'):
    summary = json.loads((run / method / 'summary.json').read_text())
    assert summary['complete'] and summary['tasks_checkpointed'] == 20
    assert (run / method / 'checkpoint' / '20').is_dir()
    assert not list((run / method / 'checkpoint').glob('*tmp*'))


@pytest.mark.parametrize('name', sorted(SHORT_PROTOCOL))
def test_each_benchmark_as_typed_with_relative_paths(name, workdir):
  out = f'runs/{name}'
  args = [
      f'experiments.{name}',
      '--method',
      'snr',
      '--num-tasks',
      '3',
      '--data-dir',
      'data',
      '--no-progress',
      '--checkpoint-every',
      '2',
      '--out',
      out,
      '--set',
      'tau_min=8',
      '--set',
      'tau_max=64',
      *SHORT_PROTOCOL[name],
  ]
  r = _run(args, workdir)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'last-10% online accuracy' in r.stdout
  assert json.loads((workdir / out / 'summary.json').read_text())['complete']


def test_benchmark_default_out_and_missing_data(workdir):
  # the default --out is relative (runs/<benchmark>_<method>)
  args = [
      'experiments.permuted_mnist',
      '--method',
      'none',
      '--data-dir',
      'data',
      '--num-tasks',
      '2',
      '--examples-per-task',
      '32',
      '--no-progress',
  ]
  r = _run(args, workdir)
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads((workdir / 'runs' / 'permuted_mnist_none' / 'summary.json').read_text())[
      'complete'
  ]
  again = _run(args, workdir)  # the same command again resumes at the run's end
  assert again.returncode == 0 and 'resumed from task 2' in again.stdout, again.stderr[-3000:]
  # the defaults as typed, where MNIST cannot be had: one clear line, exit 2, no directory
  r = _run(['experiments.permuted_mnist', '--method', 'snr', '--data-dir', 'nowhere'], workdir)
  assert r.returncode == 2 and 'Traceback' not in r.stderr and 'mnist' in r.stderr.lower()
  assert not (workdir / 'runs' / 'permuted_mnist_snr').exists()


def test_plot_and_study_as_typed(workdir):
  spec = {
      'name': 'tiny',
      'runs_dir': 'study_runs/tiny',
      'data_dir': 'data',
      'csv': 'out/tiny.csv',
      'table': 'out/tiny.md',
      'figures': 'out/figures',
      'selection_seeds': [0],
      'final_seeds': [1],
      'workers': 1,
      'checkpoint_every': 1,
      'tasks_per_call': 1,
      'benchmarks': [
          {
              'benchmark': 'permuted_mnist',
              'dataset': 'mnist',
              'num_tasks': 2,
              'optimizers': {'sgd': {'learning_rate': 0.01}},
              'config': {'examples_per_task': 32},
          }
      ],
      'methods': {'none': {}, 'snr': {'eta': [0.01, 0.08]}},
  }
  (workdir / 'tiny.json').write_text(json.dumps(spec))
  r = _run(['experiments.study', 'tiny.json'], workdir)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = (workdir / 'out' / 'tiny.csv').read_text().splitlines()
  assert len(rows) == 1 + 4  # none's final, snr's two settings and its final, a seed each
  assert (workdir / 'out' / 'tiny.md').exists()
  runs = sorted(p.parent for p in (workdir / 'study_runs' / 'tiny').rglob('summary.json'))
  assert runs and all(json.loads((p / 'summary.json').read_text())['complete'] for p in runs)
  r = _run(
      [
          'experiments.cli',
          'plot',
          *map(str, (p.relative_to(workdir) for p in runs[:2])),
          '--out',
          'out/plot.png',
      ],
      workdir,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert (workdir / 'out' / 'plot.png').stat().st_size > 10_000
