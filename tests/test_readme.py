"""The README's code runs as written. Blocks are found by what they hold, not by their
position, so the README can be reordered; a block that does not import what it uses
continues the linen example and runs in its namespace."""

import pathlib
import re

import pytest

README = (pathlib.Path(__file__).resolve().parents[1] / 'README.md').read_text()
BLOCKS = re.findall(r'```python\n(.*?)```', README, re.S)


def _block(marker: str) -> str:
  found = [b for b in BLOCKS if marker in b and 'import snr_jax' in b]
  assert len(found) == 1, f'README: {len(found)} self-contained python blocks hold {marker!r}'
  return found[0]


def _run(block: str, namespace: dict) -> dict:
  exec(compile(block, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


def test_readme_linen_example_runs(capsys):
  namespace = _run(_block('@nn.compact'), {})
  assert 'resets' in capsys.readouterr().out
  assert namespace['opt_state'].resets.rule.ages['Dense_0'].shape == (100,)


def test_readme_nnx_example_runs():
  namespace = _run(_block('nnx.Optimizer'), {})
  ages = namespace['optimizer'].opt_state.resets.rule.ages
  assert sorted(ages) == ['layers/0', 'layers/1']
  assert int(ages['layers/0'][...].max()) <= 16   # one batch of examples at most


@pytest.mark.parametrize('library,groups', [
    ('equinox', ['layers/0', 'layers/1']), ('haiku', ['mlp/~/linear_0', 'mlp/~/linear_1'])])
def test_readme_equinox_and_haiku_examples_run(library, groups, capsys):
  namespace = _run(_block(f'import {library}'), {})
  assert f"'resets/{groups[0]}'" in capsys.readouterr().out   # reset_metrics printed
  assert sorted(namespace['opt_state'].resets.rule.ages) == groups
  assert float(namespace['loss']) > 0


@pytest.mark.parametrize('index', [i for i, b in enumerate(BLOCKS) if 'import ' not in b])
def test_readme_fragments_run_after_the_linen_example(index, capsys):
  namespace = _run(_block('@nn.compact'), {})
  _, namespace['acts'] = namespace['forward']({'params': namespace['params']}, namespace['x'])
  capsys.readouterr()
  _run(BLOCKS[index], namespace)
