"""The code on the README and the docs pages runs as written.

Blocks are found by what they hold, not by their position, so pages can be reordered: a
block that imports ``snr_jax`` runs on its own; a block that does not (a fragment)
continues the README's linen example and runs in its namespace.
"""

import pathlib
import re

import pytest

# the docs show the current API: a deprecated name in them fails here
pytestmark = pytest.mark.filterwarnings('error::DeprecationWarning')

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]
BLOCKS = [
    (page.relative_to(ROOT).as_posix(), block)
    for page in PAGES
    for block in re.findall(r'```python\n(.*?)```', page.read_text(), re.S)
]
SELF_CONTAINED = [(page, b) for page, b in BLOCKS if 'import snr_jax' in b]
FRAGMENTS = [(page, b) for page, b in BLOCKS if 'import ' not in b]
README = (ROOT / 'README.md').read_text()
# blocks the tests below run and check by name; every other self-contained block just runs
CHECKED = [
    ('README.md', '@nn.compact'),
    ('README.md', 'nnx.Optimizer'),
    ('docs/guides/models.md', 'import equinox'),
    ('docs/guides/models.md', 'import haiku'),
]
UNCHECKED = [
    (page, b)
    for page, b in SELF_CONTAINED
    if not any(page == p and marker in b for p, marker in CHECKED)
]


def _block(marker: str, page: str = 'README.md') -> str:
  found = [b for p, b in SELF_CONTAINED if marker in b and p == page]
  assert len(found) == 1, f'{page}: {len(found)} self-contained python blocks hold {marker!r}'
  return found[0]


def _run(block: str, namespace: dict, name: str = 'README.md') -> dict:
  exec(compile(block, name, 'exec'), namespace)  # pylint: disable=exec-used
  return namespace


def test_the_pages_have_code():
  pages = {p for p, _ in BLOCKS}
  assert {'README.md', 'docs/guides/models.md', 'docs/guides/custom_rule.md'} <= pages
  assert FRAGMENTS, 'no fragment found: the fragment test would test nothing'
  assert len(SELF_CONTAINED) - len(UNCHECKED) == len(CHECKED), 'a checked block is missing'


@pytest.fixture(scope='module')
def linen_namespace():
  """The README's linen example, run once, with one step's pre-activations as ``acts``."""
  namespace = _run(_block('@nn.compact'), {})
  _, namespace['acts'] = namespace['forward']({'params': namespace['params']}, namespace['x'])
  return namespace


@pytest.mark.slow
def test_readme_linen_example_runs(capsys):
  namespace = _run(_block('@nn.compact'), {})
  assert 'resets' in capsys.readouterr().out
  assert namespace['opt_state'].resets.rule.ages['Dense_0'].shape == (100,)


def test_readme_nnx_example_runs():
  namespace = _run(_block('nnx.Optimizer'), {})
  ages = namespace['optimizer'].opt_state.resets.rule.ages
  assert sorted(ages) == ['layers/0', 'layers/1']
  assert int(ages['layers/0'][...].max()) <= 16  # one batch of examples at most


@pytest.mark.slow
@pytest.mark.parametrize(
    'library,groups',
    [('equinox', ['layers/0', 'layers/1']), ('haiku', ['mlp/~/linear_0', 'mlp/~/linear_1'])],
)
def test_guide_equinox_and_haiku_examples_run(library, groups, capsys):
  namespace = _run(_block(f'import {library}', 'docs/guides/models.md'), {})
  assert f"/{groups[0]}'" in capsys.readouterr().out  # per-group figures printed
  assert sorted(namespace['opt_state'].resets.rule.ages) == groups
  assert float(namespace['loss']) > 0


@pytest.mark.parametrize(
    'page,block', UNCHECKED, ids=[f'{p}:{i}' for i, (p, _) in enumerate(UNCHECKED)]
)
def test_every_other_self_contained_block_runs(page, block, capsys):
  _run(block, {}, page)
  capsys.readouterr()


@pytest.mark.slow
@pytest.mark.parametrize(
    'page,block', FRAGMENTS, ids=[f'{p}:{i}' for i, (p, _) in enumerate(FRAGMENTS)]
)
def test_fragments_run_after_the_linen_example(page, block, linen_namespace, capsys):
  capsys.readouterr()
  _run(block, dict(linen_namespace), page)  # a copy: a fragment never sees another's names


def test_readme_links_work_on_a_package_index():
  # the README is the package's long description: a relative link or image breaks there
  targets = re.findall(r'\]\(([^)\s]+)\)', README)
  assert targets
  relative = [t for t in targets if not t.startswith(('https://', 'http://', '#'))]
  assert not relative, f'README: relative links {relative}; use absolute URLs'


def test_readme_is_a_landing_page():
  assert len(README.splitlines()) <= 220, 'README: keep it a landing page (~200 lines)'
