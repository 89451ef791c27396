"""The prepared device check (design §10): run it first whenever an accelerator is at hand.

    python -m experiments.device_check [--smoke] [--out results] [--budget-s 400]

On whatever backend JAX finds (GPU, TPU or CPU), in order:

1. ``tests``: a subprocess ``pytest -q -p no:benchmark`` over :data:`TEST_FILES` on this
   backend (the step-lowering checks and the core transform, reset and estimator tests),
   with pass/fail/error/skip counts and the failing tests' names;
2. ``step_ratios``: steps/s of a jitted run of steps in ``lax.scan`` (blocked with
   ``block_until_ready``) with plain optax against the same optimizer wrapped with SNR
   (histogram and geometric estimators; per-token too on the GPT), timed interleaved,
   with the median over repetitions of each round's time ratio to plain optax: the
   784-100-100-10 MLP at batch 16 with SGD (``bench_overhead``'s run), design §7's ViT
   (``vit_for((28, 28, 1), 10)``) at batch 100 with Adam, and the Permuted-Shakespeare
   GPT at batch 8 × 128 tokens, vocabulary 2,000, with Adam (``bench_per_token``'s run);
3. ``permuted_throughput``: steps/s of the experiment runner on the Permuted protocol
   (MLP, batch 16, 625 steps per task) with 1, 8 and 64 seeds, no intervention and SNR,
   each in the runner's default mode for that many seeds (``bench_runner``'s timing);
4. ``memory``: the device's peak bytes in use after each section where the backend
   reports it (``memory_stats()`` is None on CPU), and this process's peak host RSS.

It writes ``OUT/device_check_<device kind>.json`` and prints the figures as markdown.

Sizing of the full run (no accelerator was at hand when this was written, so these are
estimates; the ``--budget-s`` guard, 400 s by default, skips whatever would start after
it and says so in the report, and no single measurement should take a minute, so the whole
run stays within 8 minutes on one GPU):

* tests: under 3 minutes (the subprocess is stopped at ``min(180 s, what is left)``);
* step ratios: 10 compiles of a few seconds each; MLP 2,000 steps × 7 rounds, ViT and
  GPT 300 steps × 5 rounds, each a fraction of a second to a few seconds on a GPU;
* throughput: 6 compiles; 2 tasks (1,250 steps) per timed call × 3 repetitions.

``--smoke`` shrinks everything (two fast lowering tests, a few steps of smaller models,
one SNR estimator on the transformers, tasks of 64 examples, 1 and 2 seeds, 2 tasks, SNR
only) so that it runs on a CPU in about a minute (9 compiles; several minutes when the
machine's two cores are busy); its figures only show that every section runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from typing import Any, Callable, Optional

import jax
import optax

import snr_jax
from experiments import bench_overhead, bench_per_token, runner
from experiments._bench import interleaved_times, round_ratios, timed
from experiments.bench_runner import _generated, _mnist_like, steps_per_second
from experiments.benchmarks import ExperimentConfig
from experiments.models import GPT, ViT, vit_for

REPO = pathlib.Path(__file__).resolve().parents[1]

TEST_FILES = (
    'tests/test_lowering.py',
    'tests/test_transform.py',
    'tests/test_reset.py',
    'tests/test_firing_ages_thresholds.py',
)
"""The library tests run on the device: the step's lowering, the transform, the reset
and the estimators. About 3 CPU-minutes here (2 shared cores); the per-token and baseline
files would double that, and the data-parallel and multi-host tests start CPU-device
subprocesses of their own that say nothing about the accelerator."""

SMOKE_TESTS = (
    'tests/test_lowering.py',
    '-k',
    'test_control_flow_ops_counts or test_host_callbacks_names',
)

FULL = dict(
    test_timeout_s=180,
    mlp_steps=2_000,
    mlp_reps=7,
    vit_batch=100,
    vit_steps=300,
    vit_reps=5,
    gpt_batch=8,
    gpt_tokens=128,
    gpt_vocab=2_000,
    gpt_steps=300,
    gpt_reps=5,
    mlp_estimators=('histogram', 'geometric'),
    vit_estimators=('histogram', 'geometric'),
    gpt_estimators=('histogram', 'geometric', 'per_token'),
    runner_seeds=(1, 8, 64),
    runner_tasks=2,
    runner_reps=3,
    runner_methods=('none', 'snr'),
    examples_per_task=None,
)
SMOKE = dict(
    test_timeout_s=120,
    mlp_steps=20,
    mlp_reps=2,
    vit_batch=8,
    vit_steps=4,
    vit_reps=2,
    gpt_batch=2,
    gpt_tokens=16,
    gpt_vocab=50,
    gpt_steps=4,
    gpt_reps=2,
    # compiling dominates a smoke run on CPU: one estimator on the transformers
    mlp_estimators=('histogram', 'geometric'),
    vit_estimators=('geometric',),
    gpt_estimators=('geometric',),
    runner_seeds=(1, 2),
    runner_tasks=2,
    runner_reps=1,
    runner_methods=('snr',),
    examples_per_task=64,
)


class Budget:
  """Wall-clock budget of the whole check: a section that would start after it is skipped."""

  def __init__(self, seconds: float):
    self.start, self.seconds = time.perf_counter(), seconds
    self.skipped: list[str] = []

  def left(self) -> float:
    return self.seconds - (time.perf_counter() - self.start)

  def allows(self, what: str) -> bool:
    if self.left() > 0:
      return True
    self.skipped.append(what)
    print(f'[device_check] budget spent: skipping {what}', flush=True)
    return False


def slug(text: str) -> str:
  """``'NVIDIA H200'`` -> ``'nvidia_h200'``: a device kind as a file-name part."""
  return re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_') or 'unknown'


# --- 1. tests ---------------------------------------------------------------------------------


def junit_counts(path: pathlib.Path) -> dict[str, Any]:
  """Counts and failing test ids from a pytest ``--junitxml`` report."""
  root = ET.parse(path).getroot()
  suites = [root] if root.tag == 'testsuite' else list(root.iter('testsuite'))
  total = sum(int(s.get('tests', 0)) for s in suites)
  failed = sum(int(s.get('failures', 0)) for s in suites)
  errors = sum(int(s.get('errors', 0)) for s in suites)
  skipped = sum(int(s.get('skipped', 0)) for s in suites)
  failing = [
      f"{case.get('classname')}::{case.get('name')}"
      for case in root.iter('testcase')
      if case.find('failure') is not None or case.find('error') is not None
  ]
  return dict(
      total=total,
      passed=total - failed - errors - skipped,
      failed=failed,
      errors=errors,
      skipped=skipped,
      failing=failing,
  )


def run_tests(args: list[str], timeout_s: float) -> dict[str, Any]:
  """Runs pytest over ``args`` in a subprocess on this backend; its counts and wall time."""
  env = dict(os.environ)
  # JAX preallocates most of a GPU per process: the tests' process must leave room for ours
  env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  with tempfile.TemporaryDirectory() as tmp:
    report = pathlib.Path(tmp) / 'junit.xml'
    command = [
        sys.executable,
        '-m',
        'pytest',
        '-q',
        '-p',
        'no:benchmark',
        '-p',
        'no:cacheprovider',
        f'--junitxml={report}',
        *args,
    ]
    start = time.perf_counter()
    try:
      proc = subprocess.run(
          command, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(timeout_s, 1)
      )
      returncode, tail = proc.returncode, (proc.stdout + proc.stderr)[-2_000:]
    except subprocess.TimeoutExpired as stopped:
      returncode = None
      tail = f'stopped after {timeout_s:.0f} s: ' + str(stopped.stdout or '')[-1_500:]
    wall = time.perf_counter() - start
    counts = (
        junit_counts(report)
        if report.exists()
        else dict(total=0, passed=0, failed=0, errors=1, skipped=0, failing=['(no report)'])
    )
  return dict(args=args, returncode=returncode, wall_s=wall, **counts, output_tail=tail)


# --- 2. SNR / plain optax step-time ratios ----------------------------------------------------


def time_runs(calls: dict[str, Callable[[], Any]], reps: int, steps: int, base: str):
  """Compiles each call, times them interleaved; per call: steps/s of the median time,
  the median and range over rounds of its time ratio to ``base``, and its compile time."""
  compile_s = {name: timed(call)[0] for name, call in calls.items()}
  times = interleaved_times(calls, reps)
  ratios = round_ratios(times, base)
  return {
      name: dict(
          steps_per_s=steps / statistics.median(ts),
          ratio=statistics.median(ratios[name]),
          ratio_min=min(ratios[name]),
          ratio_max=max(ratios[name]),
          compile_s=compile_s[name],
      )
      for name, ts in times.items()
  }


def _snr_against_plain(
    model,
    params,
    groups,
    data,
    inner,
    base: str,
    snr_options: dict,
    steps: int,
    batch: int,
    reps: int,
) -> dict[str, Any]:
  """Times ``inner`` alone (as ``base``) and SNR around it with each of ``snr_options``
  (``{estimator: snr kwargs}``) on ``bench_overhead``'s run of a linen model."""
  capture = snr_jax.with_preactivations(model, groups)
  plain = lambda p, x: (model.apply({'params': p}, x), None)
  with_acts = lambda p, x: capture({'params': p}, x)
  runs = {base: bench_overhead.make_run(inner, plain, steps, batch)}
  for estimator, kwargs in snr_options.items():
    runs[f'snr-{estimator}'] = bench_overhead.make_run(
        snr_jax.snr(inner, groups, **kwargs), with_acts, steps, batch
    )
  calls = {name: (lambda run=run: run(params, *data)) for name, run in runs.items()}
  return time_runs(calls, reps, steps, base)


def mlp_ratios(cfg: dict) -> dict[str, Any]:
  """The README's overhead benchmark (``bench_overhead``): MLP, batch 16, SGD."""
  batch, steps = 16, cfg['mlp_steps']
  model = bench_overhead.MLP()
  data = bench_overhead.task_data()
  params = jax.jit(model.init)(jax.random.PRNGKey(0), data[0][:batch])['params']
  groups = snr_jax.discover_groups(model, params, data[0][:batch])
  opts = {e: dict(estimator=e, tau_max=20_000) for e in cfg['mlp_estimators']}
  return dict(
      model='MLP 784-100-100-10',
      optimizer='sgd(1e-2)',
      batch=batch,
      steps=steps,
      reps=cfg['mlp_reps'],
      base='sgd',
      runs=_snr_against_plain(
          model, params, groups, data, optax.sgd(1e-2), 'sgd', opts, steps, batch, cfg['mlp_reps']
      ),
  )


def vit_ratios(cfg: dict, smoke: bool) -> dict[str, Any]:
  """design §7's ViT on 28×28 images, Adam, through ``bench_overhead``'s run."""
  batch, steps = cfg['vit_batch'], cfg['vit_steps']
  model = (
      ViT(num_outputs=10, patch_size=7, width=16, num_blocks=1, num_heads=2, mlp_width=32)
      if smoke
      else vit_for((28, 28, 1), 10)
  )
  kx, ky = jax.random.split(jax.random.PRNGKey(0))
  n = 10 * batch  # a task of 10 batches: end_of_task every 10 steps
  data = (jax.random.uniform(kx, (n, 28, 28, 1)), jax.random.randint(ky, (n,), 0, 10))
  params = jax.jit(model.init)(jax.random.PRNGKey(1), data[0][:batch])['params']
  groups = snr_jax.discover_groups(model, params, data[0][:batch])
  opts = {e: dict(estimator=e, tau_init=16 * batch, tau_min=batch) for e in cfg['vit_estimators']}
  return dict(
      model='tiny ViT (smoke)' if smoke else 'vit_for((28, 28, 1), 10)',
      optimizer='adam(1e-3)',
      batch=batch,
      steps=steps,
      reps=cfg['vit_reps'],
      base='adam',
      runs=_snr_against_plain(
          model, params, groups, data, optax.adam(1e-3), 'adam', opts, steps, batch, cfg['vit_reps']
      ),
  )


def gpt_ratios(cfg: dict) -> dict[str, Any]:
  """The Permuted-Shakespeare GPT, Adam, through ``bench_per_token``'s run."""
  batch, tokens, vocab, steps = (
      cfg['gpt_batch'],
      cfg['gpt_tokens'],
      cfg['gpt_vocab'],
      cfg['gpt_steps'],
  )
  model = GPT(vocab_size=vocab, context_length=tokens)
  data = jax.random.randint(jax.random.PRNGKey(0), (32 * batch, tokens + 1), 0, vocab)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), data[:batch, :-1])['params']
  groups = snr_jax.discover_groups(model, params, data[:batch, :-1])
  adam = optax.adam(1e-3)
  # bench_per_token's settings: a random refresh, so that the refresh branch runs now and then
  schedule = snr_jax.at_random(1e-3)
  configs = {'adam': (adam, False)}
  for estimator in cfg['gpt_estimators']:
    # batch-level estimators count ages in sequences, the per-token one in positions
    ages = {} if estimator == 'per_token' else dict(tau_init=16 * batch, tau_min=batch)
    configs[f'snr-{estimator}'] = (
        snr_jax.snr(adam, groups, estimator=estimator, eta=0.05, schedule=schedule, **ages),
        True,
    )
  runs = {
      name: bench_per_token.make_run(opt, groups, model, steps, batch, with_snr)
      for name, (opt, with_snr) in configs.items()
  }
  calls = {name: (lambda run=run: run(params, data)) for name, run in runs.items()}
  return dict(
      model=f'GPT(vocab_size={vocab}, context_length={tokens})',
      optimizer='adam(1e-3)',
      batch=f'{batch}x{tokens}',
      steps=steps,
      reps=cfg['gpt_reps'],
      base='adam',
      runs=time_runs(calls, cfg['gpt_reps'], steps, 'adam'),
  )


# --- 3. runner throughput ---------------------------------------------------------------------


def permuted_throughput(cfg: dict, smoke: bool, budget: Budget) -> dict[str, Any]:
  """Steps/s of the runner on the Permuted protocol per method and seed count
  (``bench_runner.steps_per_second``: compiled, then the median of repetitions)."""
  if smoke:
    dataset, name = _generated('mnist', 1_000, (28, 28, 1), 10), None
  else:
    dataset, name = _mnist_like()
  tasks = cfg['runner_tasks']
  rows = []
  for method in cfg['runner_methods']:
    config = ExperimentConfig(
        'permuted_mnist',
        method=method,
        dataset=name,
        examples_per_task=cfg['examples_per_task'],
        num_tasks=tasks if smoke else None,
    )
    for seeds in cfg['runner_seeds']:
      if not budget.allows(f'permuted_throughput {method} {seeds} seeds'):
        continue
      start = time.perf_counter()
      sps = steps_per_second(config, dataset, list(range(seeds)), tasks, cfg['runner_reps'])
      rows.append(
          dict(
              method=method,
              seeds=seeds,
              mode=runner.default_mode(config, seeds),
              steps_per_s=sps,
              seed_steps_per_s=sps * seeds,
              wall_s=time.perf_counter() - start,
          )
      )
  return dict(
      dataset=f'{dataset.name} ({dataset.source})',
      tasks_per_call=tasks,
      steps_per_task=config.steps_per_task,
      reps=cfg['runner_reps'],
      runs=rows,
  )


# --- 4. memory --------------------------------------------------------------------------------


def device_memory() -> dict[str, Optional[int]]:
  """Peak and limit of the first device's memory where the backend reports them."""
  stats = jax.devices()[0].memory_stats() or {}
  return dict(
      peak_bytes_in_use=stats.get('peak_bytes_in_use'),
      bytes_in_use=stats.get('bytes_in_use'),
      bytes_limit=stats.get('bytes_limit'),
  )


def host_peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# --- report -----------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
  """The report's figures as markdown tables."""
  dev = report['device']
  lines = [
      f"## Device check: {dev['device_kind']} ({dev['platform']}, jax {dev['jax']})"
      f"{' (smoke)' if report['smoke'] else ''}",
      '',
  ]
  tests = report.get('tests')
  if tests:
    lines += [
        '| tests | passed | failed | errors | skipped | wall s |',
        '|---|---|---|---|---|---|',
        f"| {' '.join(tests['args'])} | {tests['passed']} | {tests['failed']} | "
        f"{tests['errors']} | {tests['skipped']} | {tests['wall_s']:.0f} |",
        '',
    ]
    lines += [f'- failing: `{name}`' for name in tests['failing']]
  if report.get('step_ratios'):
    lines += [
        '',
        '| model | batch | run | steps/s | time / plain: median (range) | compile s |',
        '|---|---|---|---|---|---|',
    ]
    for key, sec in report['step_ratios'].items():
      for name, r in sec['runs'].items():
        lines.append(
            f"| {key} | {sec['batch']} | {name} | {r['steps_per_s']:,.1f} | "
            f"{r['ratio']:.2f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | "
            f"{r['compile_s']:.1f} |"
        )
  thr = report.get('permuted_throughput')
  if thr:
    lines += [
        '',
        f"Permuted protocol in the runner ({thr['dataset']}, {thr['tasks_per_call']} "
        f"tasks of {thr['steps_per_task']} steps per call, median of {thr['reps']}):",
        '',
        '| method | seeds | mode | steps/s | seed-steps/s |',
        '|---|---|---|---|---|',
    ]
    lines += [
        f"| {r['method']} | {r['seeds']} | {r['mode']} | {r['steps_per_s']:,.0f} | "
        f"{r['seed_steps_per_s']:,.0f} |"
        for r in thr['runs']
    ]
  mem = report['memory']
  peak = mem['device_peak_bytes_in_use']
  shown = 'not reported by this backend' if peak is None else f'{peak / 2**20:,.1f} MiB'
  lines += [
      '',
      f'Peak device memory: {shown}; peak host RSS '
      f"{mem['host_peak_rss_bytes'] / 2**20:,.0f} MiB.",
  ]
  if report['skipped']:
    lines += ['', f"Skipped (budget spent): {', '.join(report['skipped'])}."]
  return '\n'.join(lines)


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--smoke', action='store_true', help='tiny sizes: every section, fast')
  parser.add_argument('--out', default='results', help='folder for the JSON report')
  parser.add_argument(
      '--budget-s', type=float, default=400.0, help='skip what would start after this many seconds'
  )
  args = parser.parse_args(argv)
  cfg = SMOKE if args.smoke else FULL
  budget = Budget(args.budget_s)
  # before JAX starts a backend in this process (importing it starts none): leave GPU
  # memory for the tests' process
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

  report: dict[str, Any] = dict(
      smoke=args.smoke, started=time.strftime('%Y-%m-%dT%H:%M:%S'), skipped=budget.skipped
  )
  # the tests first, while this process holds no device memory
  tests = list(SMOKE_TESTS if args.smoke else TEST_FILES)
  report['tests'] = run_tests(tests, min(cfg['test_timeout_s'], budget.left()))

  device = jax.devices()[0]
  report['device'] = dict(
      platform=device.platform,
      device_kind=device.device_kind,
      slug=slug(device.device_kind),
      device_count=jax.device_count(),
      jax=jax.__version__,
  )
  memory: dict[str, Any] = dict(after={})
  report['memory'] = memory

  report['step_ratios'] = {}
  for key, measure in (
      ('mlp', lambda: mlp_ratios(cfg)),
      ('vit', lambda: vit_ratios(cfg, args.smoke)),
      ('gpt', lambda: gpt_ratios(cfg)),
  ):
    if budget.allows(f'step_ratios {key}'):
      report['step_ratios'][key] = measure()
      memory['after'][f'step_ratios {key}'] = device_memory()['peak_bytes_in_use']
  report['permuted_throughput'] = permuted_throughput(cfg, args.smoke, budget)
  memory['after']['permuted_throughput'] = device_memory()['peak_bytes_in_use']

  final = device_memory()
  memory.update(
      device_peak_bytes_in_use=final['peak_bytes_in_use'],
      device_bytes_limit=final['bytes_limit'],
      host_peak_rss_bytes=host_peak_rss_bytes(),
  )
  report['wall_s'] = time.perf_counter() - budget.start

  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"device_check_{report['device']['slug']}.json"
  path.write_text(json.dumps(report, indent=1) + '\n')
  print(markdown(report))
  print(f'\nwrote {path} ({report["wall_s"]:.0f} s)')
  return report


if __name__ == '__main__':
  main()
