"""The study runner (experiments.study): cells, selection, skip and resume, the table."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from experiments import study


def _spec(tmp_path, **over):
  spec = {
      'name': 'tiny',
      'runs_dir': str(tmp_path / 'runs'),
      'csv': str(tmp_path / 'study.csv'),
      'table': str(tmp_path / 'study.md'),
      'selection_seeds': [0, 1],
      'final_seeds': [2, 3],
      'checkpoint_every': 1,
      'tasks_per_call': 1,
      'benchmarks': [
          {
              'benchmark': 'permuted_mnist',
              'dataset': 'digits',
              'num_tasks': 4,
              'examples_per_task': 64,
              'optimizers': {'sgd': {'learning_rate': 0.05}},
          }
      ],
      'methods': {'none': {}, 'l2': {'strength': [1e-4, 0.5]}},
  }
  spec.update(over)
  return spec


def test_grids_expand_to_cartesian_or_explicit_settings():
  assert study.method_settings('x', {}) == [{}]
  assert study.method_settings('snr', {'eta': [0.1, 0.2], 'tau_max': 50}) == [
      {'eta': 0.1, 'tau_max': 50},
      {'eta': 0.2, 'tau_max': 50},
  ]
  assert len(study.method_settings('redo', {'threshold': [0, 0.1], 'period': [10, 100, 1000]})) == 6
  grid = [{'shrink': 0.9, 'sigma': 0.1}, {'shrink': 0.99, 'sigma': 0.01}]
  assert study.method_settings('shrink_perturb', {'grid': grid}) == grid
  # scalars beside an explicit grid are fixed in each of its settings
  assert study.method_settings(
      'snr_pt', {'method': 'snr', 'estimator': 'per_token', 'grid': [{'eta': 0.01}, {'eta': 0.05}]}
  ) == [{'estimator': 'per_token', 'eta': 0.01}, {'estimator': 'per_token', 'eta': 0.05}]
  with pytest.raises(study.StudyError, match='unknown hyperparameter'):
    study.build_groups(_spec(pathlib.Path('/tmp'), methods={'l2': {'strenght': [1.0, 2.0]}}))


@pytest.mark.parametrize(
    'grid, message',
    [
        ({'eta': []}, r"\['eta'\] list no values"),
        ({'grid': [{'eta': 0.1}], 'tau_max': [10, 20]}, r"\['tau_max'\] are lists beside 'grid'"),
        ({'grid': [{'eta': 0.1}], 'eta': 0.2}, r"\['eta'\] are fixed and also in 'grid'"),
    ],
)
def test_grid_mistakes_are_study_errors(grid, message):
  with pytest.raises(study.StudyError, match=message):
    study.method_settings('snr', grid)


def test_a_setting_given_twice_in_a_benchmark_entry_is_a_study_error():
  spec = _spec(pathlib.Path('/tmp'))
  spec['benchmarks'][0]['optimizers'] = {'sgd': {'learning_rate': 0.1, 'num_tasks': 3}}
  spec['benchmarks'][0]['num_tasks'] = 4
  with pytest.raises(
      study.StudyError,
      match=r"\['num_tasks'\] given both in the benchmark " "entry and in its optimizer's settings",
  ):
    study.build_groups(spec)


@pytest.mark.slow
def test_study_end_to_end_selects_runs_final_skips_done_and_resumes(tmp_path):
  spec = _spec(tmp_path)
  logs = []
  # a study killed after 2 of 4 tasks in every cell (two worker processes)
  first = study.run_study(spec, workers=2, stop_after=2, log=logs.append)
  assert len(first['ran']) == 3  # l2's two selection cells and none's final cell
  rows = study.read_csv(tmp_path / 'study.csv')
  assert {int(r['tasks_done']) for r in rows} == {2}
  cell_dirs = sorted(p.parent for p in (tmp_path / 'runs').rglob('checkpoint'))
  assert len(cell_dirs) == 3
  # started again: each cell resumes from its checkpoint, then l2's final runs
  logs.clear()
  second = study.run_study(spec, workers=0, log=logs.append)
  assert len(second['ran']) == 4
  assert sum('resumed from task 2' in line for line in logs) == 3
  sel = second['selection']['permuted_mnist/digits/sgd/l2']
  scores = {s['hparams']['strength']: s['score'] for s in sel['scores']}
  assert sel['chosen']['strength'] == max(scores, key=scores.get)
  assert all(s['seeds'] == 2 for s in sel['scores'])
  rows = study.read_csv(tmp_path / 'study.csv')
  finals = [r for r in rows if r['phase'] == 'final']
  assert {(r['method'], int(r['seed'])) for r in finals} == {
      (m, s) for m in ('none', 'l2') for s in (2, 3)
  }
  assert all(int(r['tasks_done']) == 4 for r in rows)
  chosen = [r for r in finals if r['method'] == 'l2']
  assert {json.loads(r['hparams'])['strength'] for r in chosen} == {sel['chosen']['strength']}
  # each cell kept its usual results
  for r in rows:
    out = pathlib.Path(r['run_dir'])
    assert json.loads((out / 'summary.json').read_text())['complete']
    assert (out / 'config.json').exists() and (out / 'metrics.csv').exists()
  table = (tmp_path / 'study.md').read_text()
  assert 'reduced; protocol 500' in table and '(n=2)' in table
  # each row keeps its layers' resets and dead fractions, and the table shows them
  for r in rows:
    layers = json.loads(r['layers'])
    assert layers and all(set(v) == {'resets_per_step', 'dead_last'} for v in layers.values())
  assert '## Resets and dead units by layer' in table
  # a third run has nothing to do
  mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / 'runs').rglob('metrics.csv')}
  third = study.run_study(spec, workers=0, log=logs.append)
  assert third['ran'] == [] and len(third['skipped']) == 4
  assert mtimes == {p: p.stat().st_mtime_ns for p in (tmp_path / 'runs').rglob('metrics.csv')}
  # a spec that changed under existing results is refused, naming the directory
  changed = _spec(tmp_path)
  changed['benchmarks'][0]['optimizers']['sgd']['learning_rate'] = 0.01
  with pytest.raises(study.StudyError, match='another config or seeds'):
    study.run_study(changed, workers=0, log=logs.append)


@pytest.mark.slow
def test_a_fresh_clone_resumes_from_the_committed_csv_without_the_runs_directory(tmp_path):
  import shutil

  spec = _spec(
      tmp_path,
      methods={'none': {}, 'l2': {'strength': [1e-4, 0.5]}},
      figures=str(tmp_path / 'figures'),
  )
  logs = []
  study.run_study(spec, workers=0, log=logs.append)
  before = study.read_csv(tmp_path / 'study.csv')
  selection = json.loads((tmp_path / 'study_selection.json').read_text())
  # the final cells' per-task curves are kept beside the CSV, as their metrics say
  curves = json.loads((tmp_path / 'study_curves.json').read_text())
  assert len(curves) == 2 and all(k.endswith(' final') for k in curves)
  for r in (r for r in before if r['phase'] == 'final'):
    kept = curves[f"permuted_mnist/digits/sgd/{r['method']} {r['hparams']} final"][r['seed']]
    assert len(kept['accuracy']) == len(kept['dead_fraction']) == 4
    assert sum(kept['accuracy']) / 4 == pytest.approx(float(r['avg_accuracy']), abs=1e-4)
  shutil.rmtree(tmp_path / 'runs')  # a new machine: only results/ came with the clone
  shutil.rmtree(tmp_path / 'figures')
  logs.clear()
  study.run_study(spec, workers=0, report=True, log=logs.append)  # figures from the file
  assert (tmp_path / 'figures' / 'tiny_permuted_mnist-digits_curves.png').exists()
  assert not any('no curves kept' in line for line in logs)
  assert json.loads((tmp_path / 'study_curves.json').read_text()) == curves
  # a final cell kept nowhere is left out of the figure, and the log says so
  (tmp_path / 'study_curves.json').write_text(
      json.dumps({k: v for k, v in curves.items() if '/none ' in k})
  )
  study.run_study(spec, workers=0, report=True, log=logs.append)
  assert any('no curves kept for sgd/l2' in line for line in logs)
  (tmp_path / 'study_curves.json').write_text(json.dumps(curves))
  # one recorded seed of l2's final cell is incomplete: that cell alone runs again
  edited = [
      dict(r, tasks_done='3')
      if r['phase'] == 'final' and r['method'] == 'l2' and r['seed'] == '3'
      else r
      for r in before
  ]
  study.write_csv(tmp_path / 'study.csv', edited)
  again = study.run_study(spec, workers=0, log=logs.append)
  assert again['ran'] == [
      'permuted_mnist/digits/sgd/l2 strength='
      + str(selection['permuted_mnist/digits/sgd/l2']['chosen']['strength'])
      + ' [final]'
  ]
  assert len(again['skipped']) == 3
  assert again['selection'] == selection  # chosen from the recorded rows
  after = study.read_csv(tmp_path / 'study.csv')
  key = lambda r: (r['method'], r['hparams'], r['phase'], r['seed'])
  assert sorted(map(key, after)) == sorted(map(key, before))
  assert all(int(r['tasks_done']) == 4 for r in after)
  # the rerun is the same pure function of config and seed
  for a, b in zip(sorted(after, key=key), sorted(before, key=key)):
    assert float(a['avg_accuracy']) == pytest.approx(float(b['avg_accuracy']), abs=1e-6)


@pytest.mark.slow
def test_methods_runs_only_those_groups_in_that_order_and_keeps_the_others_rows(tmp_path):
  spec = _spec(tmp_path)
  logs = []
  first = study.run_study(spec, workers=0, methods=['l2'], log=logs.append)
  assert [c.split(' ')[0] for c in first['ran']] == ['permuted_mnist/digits/sgd/l2'] * 3
  assert list(first['selection']) == ['permuted_mnist/digits/sgd/l2']
  assert {r['method'] for r in study.read_csv(tmp_path / 'study.csv')} == {'l2'}
  # the held-back method runs later; l2's rows and selection stay, in the spec's order
  second = study.run_study(spec, workers=0, methods=['none'], log=logs.append)
  assert second['ran'] == ['permuted_mnist/digits/sgd/none default [final]']
  assert second['selection'] == first['selection']
  rows = study.read_csv(tmp_path / 'study.csv')
  assert [r['method'] for r in rows] == ['none'] * 2 + ['l2'] * 6
  # nothing is left for a call without --methods
  assert study.run_study(spec, workers=0, log=logs.append)['ran'] == []
  # the order given is the order run
  spec = _spec(tmp_path / 'again')
  order = study.run_study(spec, workers=0, methods=['none', 'l2'], log=logs.append)['ran']
  assert [c.split(' ')[0].rsplit('/', 1)[1] for c in order] == ['none', 'l2', 'l2', 'l2']
  with pytest.raises(study.StudyError, match=r"--methods names \['snr'\].*\['l2', 'none'\]"):
    study.run_study(spec, workers=0, methods=['snr'], log=logs.append)


def _row(method, opt, seed, last10, hp='{}', phase='final', done=10, total=10):
  return {
      'study': 's',
      'benchmark': 'permuted_mnist',
      'dataset': 'fashion_mnist',
      'optimizer': opt,
      'learning_rate': '0.01',
      'method': method,
      'hparams': hp,
      'phase': phase,
      'seed': str(seed),
      'tasks_done': str(done),
      'tasks_total': str(total),
      'protocol_tasks': '500',
      'avg_accuracy': '0.5',
      'last10_accuracy': str(last10),
      'dead_fraction_last': '0',
      'wall_s': '1',
      'run_dir': 'x',
  }


def test_table_from_fixture_csv(tmp_path):
  rows = [
      _row('none', 'sgd', 0, 0.70),
      _row('none', 'sgd', 1, 0.72),
      _row('snr', 'sgd', 0, 0.75, '{"eta": 0.08}'),
      _row('snr', 'sgd', 1, 0.77, '{"eta": 0.08}'),
      _row('snr', 'sgd', 0, 0.99, '{"eta": 0.3}', phase='select'),  # not reported
      _row('none', 'adam', 0, 0.60, done=4),
      _row('none', 'adam', 1, 0.61, done=4),
  ]
  path = tmp_path / 'fixture.csv'
  study.write_csv(path, rows)
  assert study.main(['--table', str(path), '--out', str(tmp_path / 't.md')]) == 0
  text = (tmp_path / 't.md').read_text()
  lines = text.splitlines()
  header = next(row for row in lines if row.startswith('| benchmark | optimizer | tasks |'))
  assert header.split('|')[4:6] == [' none ', ' snr ']  # registry order
  sgd = next(row for row in lines if '| sgd | 10 (reduced; protocol 500) |' in row)
  assert '0.710 ± 0.010 (n=2)' in sgd and '**0.760 ± 0.010 (n=2)**' in sgd
  assert '0.99' not in text
  adam = next(row for row in lines if '| adam |' in row and 'running' in row)
  assert 'running (4/10 tasks)' in adam
  assert '| permuted_mnist (fashion_mnist) | sgd | snr | 0.01 | eta=0.08 |' in text


def test_selection_picks_the_best_total_average_and_breaks_ties_by_order():
  rows = [
      dict(_row('l2', 'sgd', s, 0, json.dumps({'strength': v}), 'select'), avg_accuracy=str(a))
      for v, s, a in [
          (1, 0, 0.5),
          (1, 1, 0.75),
          (2, 0, 0.875),
          (2, 1, 0.375),
          (3, 0, 0.625),
          (3, 1, 0.625),
      ]
  ]
  chosen, scores = study.select_setting(rows, [{'strength': 1}, {'strength': 2}, {'strength': 3}])
  assert chosen == {'strength': 1}  # 0.625 each: the first listed wins
  rows[0]['avg_accuracy'] = '0.25'
  chosen, scores = study.select_setting(rows, [{'strength': 1}, {'strength': 2}, {'strength': 3}])
  assert chosen == {'strength': 2}
  assert [s['score'] for s in scores] == pytest.approx([0.5, 0.625, 0.625])


@pytest.mark.slow
def test_a_sweep_with_labels_runs_only_selection_seeds_and_reports_spread(tmp_path):
  spec = _spec(
      tmp_path,
      final=False,
      figures=str(tmp_path / 'figures'),
      methods={
          'l2': {'strength': [1e-4, 0.5]},
          'snr_short': {'method': 'snr', 'eta': [0.05, 0.3], 'tau_min': 8, 'tau_max': 64},
      },
  )
  result = study.run_study(spec, workers=0, log=lambda s: None)
  assert len(result['ran']) == 4  # 2 settings × 2 methods, no finals
  rows = study.read_csv(tmp_path / 'study.csv')
  assert {r['phase'] for r in rows} == {'select'}
  assert {(r['method'], int(r['seed'])) for r in rows} == {
      (m, s) for m in ('l2', 'snr_short') for s in (0, 1)
  }
  labelled = next(r for r in rows if r['method'] == 'snr_short')
  record = json.loads((pathlib.Path(labelled['run_dir']) / 'config.json').read_text())
  assert record['config']['method'] == 'snr' and 'method' not in record['config']['hparams']
  assert set(result['selection']) == {
      'permuted_mnist/digits/sgd/l2',
      'permuted_mnist/digits/sgd/snr_short',
  }
  table = (tmp_path / 'study.md').read_text()
  assert 'No final cells yet' in table and '## Robustness to the hyperparameter' in table
  robustness = table.split('## Robustness')[1].splitlines()
  spread = next(row for row in robustness if '| snr_short |' in row)
  means = sorted(
      sum(
          float(r['last10_accuracy'])
          for r in rows
          if r['method'] == 'snr_short' and json.loads(r['hparams'])['eta'] == eta
      )
      / 2
      for eta in (0.05, 0.3)
  )
  assert spread.split('|')[7].strip() == f'{means[1] - means[0]:.3f}'
  figures = sorted(p.name for p in (tmp_path / 'figures').iterdir())
  assert figures == ['tiny_permuted_mnist-digits_spread.png']  # no finals: no curves


def test_a_label_that_is_no_method_must_name_one():
  with pytest.raises(study.StudyError, match='to use .snr_fast. as a label, name the method'):
    study.build_groups(_spec(pathlib.Path('/tmp'), methods={'snr_fast': {'eta': [0.1, 0.2]}}))


def test_without_final_cells_the_table_lists_every_selection_setting():
  rows = [
      dict(
          _row('snr', 'sgd', s, a, json.dumps({'eta': 0.2, 'schedule': 'tasks:1'}), 'select'),
          avg_accuracy=str(w),
      )
      for s, a, w in [(0, 0.92, 0.90), (1, 0.94, 0.92)]
  ]
  rows.append(_row('l2', 'sgd', 0, 0.5, json.dumps({'strength': 1}), 'select', done=3))
  rows.append(_row('l2', 'sgd', 1, 0.5, json.dumps({'strength': 1}), 'select'))
  text = study.make_table(rows, 'sweep')
  assert 'No final cells yet' in text
  table = [row for row in text.splitlines() if row.startswith('| permuted_mnist')]
  assert table == [
      '| permuted_mnist (fashion_mnist) | sgd | l2 | strength=1 | running (3/10 tasks) | '
      'running (3/10 tasks) | 2 |',
      '| permuted_mnist (fashion_mnist) | sgd | snr | eta=0.2, schedule=tasks:1 | '
      '0.930 ± 0.010 | 0.910 ± 0.010 | 2 |',
  ]
  assert study.selection_table([r for r in rows if r['phase'] == 'final']) == ''


def test_spread_table_from_fixture_csv():
  rows = [
      _row('snr', 'sgd', s, a, json.dumps({'eta': e}), 'select')
      for e, s, a in [
          (0.01, 0, 0.70),
          (0.01, 1, 0.72),
          (0.1, 0, 0.74),
          (0.1, 1, 0.74),
          (0.3, 0, 0.60),
          (0.3, 1, 0.62),
      ]
  ]
  rows.append(_row('snr', 'sgd', 0, 0.10, json.dumps({'eta': 0.9}), 'select', done=3))  # running
  rows.append(_row('l2', 'sgd', 0, 0.5, json.dumps({'strength': 1}), 'select'))  # one setting
  text = study.spread_table(rows)
  (line,) = [row for row in text.splitlines() if row.startswith('| permuted_mnist')]
  cols = [c.strip() for c in line.split('|')[1:-1]]
  assert cols == [
      'permuted_mnist (fashion_mnist)',
      'sgd',
      'snr',
      '3',
      '0.740 (eta=0.1)',
      '0.610 (eta=0.3)',
      '0.130',
      '0.007',
  ]
  assert study.spread_table([r for r in rows if r['method'] == 'l2']) == ''


def test_benchmark_labels_keep_entries_of_one_benchmark_apart(tmp_path):
  entry = {'benchmark': 'permuted_mnist', 'dataset': 'digits', 'num_tasks': 2}
  spec = _spec(
      tmp_path,
      methods={'none': {}},
      benchmarks=[dict(entry, label='pm_w8', width=8), dict(entry, label='pm_w16', width=16)],
  )
  groups = study.build_groups(spec)
  assert [g['key'][0] for g in groups] == ['pm_w8', 'pm_w16']
  assert [g['base']['width'] for g in groups] == [8, 16]
  assert len({str(g['where']) for g in groups}) == 2
  spec['benchmarks'] = [dict(entry, width=8), dict(entry, width=16)]
  with pytest.raises(study.StudyError, match="give each a distinct 'label'"):
    study.build_groups(spec)


@pytest.mark.parametrize(
    'signame, to_group', [('SIGINT', True), ('SIGTERM', True), ('SIGTERM', False)]
)
@pytest.mark.slow
def test_ctrl_c_stops_the_study_running_cells_checkpoint_queued_cells_never_start(
    tmp_path, signame, to_group
):
  """Ctrl-C (SIGINT to the study's process group), or SIGTERM to the group or to the
  study's process alone (`kill <pid>`): the running cell checkpoints, the cell the pool
  had already queued does not start, the study exits with 130; run again, it resumes."""
  spec = _spec(
      tmp_path,
      final_seeds=[0],
      workers=1,
      checkpoint_every=1,
      methods={'none': {}, 'l2': {'strength': 1e-4}},
  )
  spec['benchmarks'][0]['num_tasks'] = 400
  path = tmp_path / 'spec.json'
  path.write_text(json.dumps(spec))
  root = pathlib.Path(study.__file__).resolve().parents[2]
  # Ctrl-C as in a terminal, though a background job (CI started from a script) ignores it
  as_in_a_terminal = (
      'import runpy, signal; '
      'signal.signal(signal.SIGINT, signal.default_int_handler); '
      "runpy.run_module('experiments.study', run_name='__main__', alter_sys=True)"
  )
  proc = subprocess.Popen(
      [sys.executable, '-c', as_in_a_terminal, str(path)],
      cwd=root,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      start_new_session=True,
  )
  runs = tmp_path / 'runs' / 'permuted_mnist-digits' / 'sgd'
  first = runs / 'none' / 'default-final'
  # complete checkpoints are named by their task count (orbax writes into a *-tmp first)
  saved = lambda: [int(p.name) for p in first.glob('checkpoint/*') if p.name.isdigit()]
  deadline = time.time() + 240
  while not saved() and time.time() < deadline:
    time.sleep(0.5)
  assert proc.poll() is None, proc.communicate()[0]
  (os.killpg if to_group else os.kill)(proc.pid, getattr(signal, signame))
  try:
    out, _ = proc.communicate(timeout=300)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f'the study did not stop within 300 s of {signame}:\n{proc.communicate()[0]}')
  assert proc.returncode == 130, out
  assert 'interrupted: running cells keep their checkpoints' in out
  assert not (runs / 'l2').exists()  # queued before Ctrl-C, never started
  done = max(saved())
  assert 0 < done < 400
  assert json.loads((first / 'study_cell.json').read_text())['wall_s'] > 0  # time counted
  logs = []  # run again (for a few more tasks): it resumes, and starts the other cell
  study.run_study(spec, workers=0, stop_after=done + 2, log=logs.append)
  assert any(f'resumed from task {done}' in line for line in logs), logs
  rows = study.read_csv(tmp_path / 'study.csv')
  assert {(r['method'], int(r['tasks_done'])) for r in rows} == {
      ('none', done + 2),
      ('l2', done + 2),
  }


def test_layer_figures_and_table_report_each_layer_apart():
  from experiments.study.rows import layer_figures
  from experiments.study.tables import layer_table

  metrics = [  # one seed, three tasks of 10 steps: a conv layer and a dense layer
      {'task': '0', 'resets/Conv_0': '3', 'dead_fraction/Conv_0': '0.5', 'resets/Dense_0': '0',
       'dead_fraction/Dense_0': '0.0'},
      {'task': '1', 'resets/Conv_0': '6', 'dead_fraction/Conv_0': '0.25', 'resets/Dense_0': '1',
       'dead_fraction/Dense_0': '0.0'},
      {'task': '2', 'resets/Conv_0': '0', 'dead_fraction/Conv_0': '0.125', 'resets/Dense_0': '2',
       'dead_fraction/Dense_0': '0.75'},
  ]  # fmt: skip
  figures = layer_figures(metrics, steps_per_task=10)
  assert figures == {
      'Conv_0': {'resets_per_step': 9 / 30, 'dead_last': 0.125},
      'Dense_0': {'resets_per_step': 3 / 30, 'dead_last': 0.75},
  }
  other = {'Conv_0': {'resets_per_step': 0.1, 'dead_last': 0.375}, 'Dense_0': figures['Dense_0']}
  row = {'benchmark': 'b', 'dataset': 'd', 'optimizer': 'sgd', 'method': 'snr'}
  table = layer_table(
      [{**row, 'layers': json.dumps(figures)}, {**row, 'layers': json.dumps(other)}]
      + [{**row, 'method': 'none', 'layers': ''}]  # a row recorded before layers were kept
  )
  lines = [line for line in table.splitlines() if line.startswith('| b (d)')]
  assert lines == [
      '| b (d) | sgd | snr | Conv_0 | 0.2 | 0.250 | 2 |',
      '| b (d) | sgd | snr | Dense_0 | 0.1 | 0.750 | 2 |',
  ]
  assert layer_table([{**row, 'layers': ''}]) == ''
