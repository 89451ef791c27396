"""The command line: each benchmark end to end, resume, bad flags, the quickstart."""

import json
import pathlib

import pytest

from experiments import cli, quickstart, results
from fakes import SHORT_PROTOCOL, write_data_dir


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return write_data_dir(tmp_path_factory.mktemp('data'))


@pytest.mark.parametrize('name', sorted(SHORT_PROTOCOL))
@pytest.mark.slow
def test_each_benchmark_end_to_end(name, data_dir, tmp_path, capsys):
  out = tmp_path / 'run'
  code = cli.main(
      [
          name,
          '--method',
          'snr',
          '--num-tasks',
          '3',
          '--seeds',
          '2',
          '--data-dir',
          str(data_dir),
          '--out',
          str(out),
          '--no-progress',
          '--plot',
          '--set',
          'tau_min=8',
          '--set',
          'tau_max=64',
          *SHORT_PROTOCOL[name],
      ]
  )
  assert code == 0
  record = json.loads((out / 'config.json').read_text())
  assert record['config']['benchmark'] == name and record['seeds'] == [0, 1]
  assert str(data_dir) in record['source']
  rows = results.read_metrics(out)
  assert len(rows) == 2 * 3 and {r['seed'] for r in rows} == {'0', '1'}
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['complete'] and 0 <= summary['by_sweep_value'][0]['mean'] <= 1
  assert (out / 'plot.png').stat().st_size > 10_000
  assert 'last-10% online accuracy' in capsys.readouterr().out


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(data_dir, tmp_path, monkeypatch):
  flags = [
      'permuted_mnist',
      '--method',
      'snr',
      '--num-tasks',
      '6',
      '--seeds',
      '2',
      '--examples-per-task',
      '64',
      '--data-dir',
      str(data_dir),
      '--no-progress',
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
  ]
  assert cli.main([*flags, '--out', str(tmp_path / 'full')]) == 0

  real_write = results.write_metrics
  calls = {'n': 0}

  def interrupting_write(*args, **kwargs):
    out = real_write(*args, **kwargs)
    calls['n'] += 1
    if calls['n'] == 2:  # Ctrl-C after 4 of 6 tasks
      raise KeyboardInterrupt
    return out

  monkeypatch.setattr(results, 'write_metrics', interrupting_write)
  assert cli.main([*flags, '--out', str(tmp_path / 'resumed')]) == 130
  partial = results.read_metrics(tmp_path / 'resumed')
  assert len(partial) == 2 * 4  # results so far survived
  assert (tmp_path / 'resumed' / 'checkpoint' / '4' / 'carry').is_dir()  # orbax, at task 4
  monkeypatch.setattr(results, 'write_metrics', real_write)

  args = cli.build_parser().parse_args([*flags, '--out', str(tmp_path / 'resumed')])
  summary = cli.run_benchmark(args)
  assert summary['resumed_from'] == 4
  full = (tmp_path / 'full' / 'metrics.csv').read_text()
  assert (tmp_path / 'resumed' / 'metrics.csv').read_text() == full


def _snapshot(directory: pathlib.Path) -> dict:
  return {
      p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.rglob('*')) if p.is_file()
  }


@pytest.mark.slow
def test_refused_run_leaves_the_directory_untouched(data_dir, tmp_path, capsys):
  base = [
      'permuted_mnist',
      '--num-tasks',
      '2',
      '--examples-per-task',
      '32',
      '--data-dir',
      str(data_dir),
      '--no-progress',
      '--out',
      str(tmp_path / 'r'),
      '--checkpoint-every',
      '1',
      '--tasks-per-call',
      '1',
  ]
  assert cli.main([*base, '--method', 'none']) == 0
  before = _snapshot(tmp_path / 'r')
  assert (tmp_path / 'r' / 'config.json') in before
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    cli.main([*base, '--method', 'snr'])
  assert e.value.code == 2
  assert 'different config or seeds' in capsys.readouterr().err
  assert _snapshot(tmp_path / 'r') == before  # config.json still names the 'none' run
  record = json.loads((tmp_path / 'r' / 'config.json').read_text())
  assert record['config']['method'] == 'none'


def test_run_that_fails_to_build_creates_no_directory(data_dir, tmp_path, capsys):
  out = tmp_path / 'never'
  with pytest.raises(SystemExit) as e:  # an image benchmark given a text dataset
    cli.main(
        [
            'permuted_mnist',
            '--dataset',
            'shakespeare',
            '--data-dir',
            str(data_dir),
            '--num-tasks',
            '1',
            '--no-progress',
            '--out',
            str(out),
        ]
    )
  assert e.value.code == 2 and 'Traceback' not in capsys.readouterr().err
  assert not out.exists()


def _one_line_error(capsys) -> str:
  err = capsys.readouterr().err
  assert 'Traceback' not in err and err.count('\n') == 1, err
  return err


def test_unknown_dataset_is_one_line_listing_the_valid_ones(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(
        ['permuted_mnist', '--dataset', 'mnistt', '--no-progress', '--out', str(tmp_path / 'r')]
    )
  assert e.value.code == 2
  err = _one_line_error(capsys)
  assert "'mnistt'" in err and all(n in err for n in ('mnist', 'fashion_mnist', 'cifar10'))
  assert not (tmp_path / 'r').exists()


@pytest.mark.parametrize('argv', [['permuted_mnistt'], ['permuted_mnistt', '--help']])
def test_unknown_benchmark_is_one_line_listing_the_valid_ones(argv, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2
  err = _one_line_error(capsys)
  assert "'permuted_mnistt'" in err and all(b in err for b in (*cli.BENCHMARKS, 'plot'))


@pytest.mark.parametrize(
    'name', ['permuted_mnist', 'random_label_mnist', 'random_label_cifar', 'continual_imagenet']
)
def test_scale_is_rejected_where_there_is_no_gpt(name, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main([name, '--scale', '4', '--no-progress', '--out', '/tmp/unused'])
  assert e.value.code == 2 and 'unrecognized arguments: --scale 4' in capsys.readouterr().err
  assert cli.build_parser().parse_args(['permuted_shakespeare', '--scale', '4']).scale == 4


def test_momentum_is_rejected_for_adam(capsys):
  with pytest.raises(SystemExit) as e:  # the Shakespeare protocol trains with Adam
    cli.main(['permuted_shakespeare', '--momentum', '0.9', '--no-progress', '--out', '/tmp/unused'])
  assert e.value.code == 2 and '--momentum applies to SGD only' in capsys.readouterr().err


def test_help_of_a_benchmark_module_shows_its_usage_and_defaults(monkeypatch, capsys):
  monkeypatch.setattr('sys.argv', ['permuted_mnist.py', '--help'])
  with pytest.raises(SystemExit) as e:
    cli.benchmark_main('permuted_mnist')
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith('usage: python -m experiments.permuted_mnist [-h]')
  assert 'experiments.cli' not in out and 'COMMAND' not in out
  text = ' '.join(out.split())  # help lines wrap at the terminal width
  for default in (
      '(default: snr)',
      '(default: 25)',
      '(default: 5)',
      '(default: auto)',
      "(default: the protocol's)",
      '(default: runs/permuted_mnist_<method>)',
  ):
    assert default in text, default
  assert '--scale' not in out
  assert 'hidden width of both MLP layers (default 100)' in text


def test_help_of_the_cli_shows_defaults(capsys):
  with pytest.raises(SystemExit):
    cli.main(['permuted_shakespeare', '--help'])
  out = capsys.readouterr().out
  assert out.startswith('usage: python -m experiments.cli permuted_shakespeare')
  assert 'GPT width scale (1, 4, 16) (default: 1)' in ' '.join(out.split())
  assert '--width' not in out


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--method', 'magic'], "invalid choice: 'magic'"),
        (['--set', 'eta'], '--set expects NAME=VALUE'),
        (['--set', 'etta=0.1'], "unknown hyperparameter(s) ['etta']"),
        (['--seeds', 'many'], '--seeds takes a count'),
        (['--num-tasks', '0'], 'num_tasks must be a positive int'),
        (['--sweep', 'tau_max=1,2'], "cannot sweep 'tau_max'"),
        (['--checkpoint-every', '0'], '--checkpoint-every must be at least 1'),
        (
            ['--dataset', 'mnist', '--source', 'files', '--data-dir', '/nonexistent'],
            'could not be loaded. Sources tried',
        ),
    ],
)
def test_bad_flags_give_clear_errors(flags, message, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(['permuted_mnist', '--no-progress', '--out', '/tmp/unused', *flags])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert message in err and 'Traceback' not in err


def test_plot_command_errors_on_a_directory_without_results(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(['plot', str(tmp_path), '--out', str(tmp_path / 'p.png')])
  assert e.value.code == 2 and 'holds no metrics.csv' in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_runs_with_fewer_tasks(tmp_path):
  assert quickstart.main(['--num-tasks', '4', '--out', str(tmp_path), '--no-progress']) == 0
  assert (tmp_path / 'plot.png').stat().st_size > 10_000
  for method in ('none', 'snr'):
    assert len(results.read_metrics(tmp_path / method)) == 3 * 4


@pytest.mark.parametrize('method', ['snr', 'snr_l2'])
@pytest.mark.slow
def test_per_token_estimator_through_the_cli(method, data_dir, tmp_path):
  out = tmp_path / 'run'
  code = cli.main(
      [
          'permuted_shakespeare',
          '--method',
          method,
          '--num-tasks',
          '2',
          '--data-dir',
          str(data_dir),
          '--out',
          str(out),
          '--no-progress',
          '--set',
          'estimator=per_token',
          '--set',
          'eta=0.05',
          *SHORT_PROTOCOL['permuted_shakespeare'],
      ]
  )
  assert code == 0
  record = json.loads((out / 'config.json').read_text())
  assert record['config']['hparams']['estimator'] == 'per_token'
  assert len(results.read_metrics(out)) == 2


@pytest.mark.slow
def test_per_token_rejects_expansion_through_the_cli(data_dir, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(
        [
            'permuted_shakespeare',
            '--method',
            'snr',
            '--num-tasks',
            '1',
            '--data-dir',
            str(data_dir),
            '--out',
            str(tmp_path / 'r'),
            '--no-progress',
            '--set',
            'estimator=per_token',
            '--set',
            'expansion=2',
            *SHORT_PROTOCOL['permuted_shakespeare'],
        ]
    )
  assert e.value.code == 2 and 'no expansion' in capsys.readouterr().err
