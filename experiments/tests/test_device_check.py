"""The device check's smoke run writes every section of its report, with numbers."""

import json
import numbers

import pytest

from experiments import device_check

pytestmark = pytest.mark.slow  # the device check's every section, on CPU


def _numbers(tree):
  """Every leaf of a JSON tree that is a number (bools excluded)."""
  if isinstance(tree, dict):
    return [n for v in tree.values() for n in _numbers(v)]
  if isinstance(tree, list):
    return [n for v in tree for n in _numbers(v)]
  return [tree] if isinstance(tree, numbers.Number) and not isinstance(tree, bool) else []


def test_smoke_run_reports_every_section(tmp_path, capsys):
  device_check.main(['--smoke', '--out', str(tmp_path)])
  (path,) = tmp_path.glob('device_check_*.json')
  report = json.loads(path.read_text())
  assert path.name == f"device_check_{report['device']['slug']}.json"
  assert report['smoke'] and report['skipped'] == []

  tests = report['tests']
  assert tests['returncode'] == 0, tests['output_tail']
  assert tests['passed'] >= 2 and tests['failed'] == tests['errors'] == 0, tests

  ratios = report['step_ratios']
  assert set(ratios) == {'mlp', 'vit', 'gpt'}
  for key, section in ratios.items():
    assert section['base'] in section['runs'] and len(section['runs']) >= 2, key
    for name, run in section['runs'].items():
      assert run['steps_per_s'] > 0 and run['ratio'] > 0, (key, name, run)
      assert run['ratio_min'] <= run['ratio'] <= run['ratio_max'], (key, name, run)
    assert section['runs'][section['base']]['ratio'] == 1.0

  runs = report['permuted_throughput']['runs']
  assert sorted(r['seeds'] for r in runs) == [1, 2]
  assert all(r['steps_per_s'] > 0 and r['seed_steps_per_s'] >= r['steps_per_s'] for r in runs)

  memory = report['memory']
  assert memory['host_peak_rss_bytes'] > 0
  peak = memory['device_peak_bytes_in_use']
  assert peak is None or peak > 0  # None where the backend reports nothing (CPU)
  assert all(_numbers(report[s]) for s in ('tests', 'step_ratios', 'permuted_throughput', 'memory'))
  assert '| model | batch | run |' in capsys.readouterr().out
