"""The README's usage example runs as written."""

import pathlib
import re


def test_readme_usage_example_runs(capsys):
  readme = (pathlib.Path(__file__).resolve().parents[1] / 'README.md').read_text()
  block = re.findall(r'```python\n(.*?)```', readme, re.S)[0]
  namespace = {}
  exec(compile(block, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert 'resets' in capsys.readouterr().out
  assert namespace['opt_state'].resets.rule.ages['Dense_0'].shape == (100,)


def test_readme_nnx_example_runs():
  readme = (pathlib.Path(__file__).resolve().parents[1] / 'README.md').read_text()
  block = re.findall(r'```python\n(.*?)```', readme, re.S)[1]
  assert 'nnx.Optimizer' in block
  namespace = {}
  exec(compile(block, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  ages = namespace['optimizer'].opt_state.resets.rule.ages
  assert sorted(ages) == ['layers/0', 'layers/1']
  assert int(ages['layers/0'][...].max()) <= 16   # one batch of examples at most
