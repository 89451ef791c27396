"""The ``>>>`` examples in the public docstrings run, and show what they say.

Every public name's docstring (``snr_jax.__all__``) and every public sub-namespace's module
docstring is run with `doctest`, so an example cannot go stale while the code changes.
"""

import doctest

import pytest

import snr_jax
from snr_jax import estimators, reset, rules, schedules

NAMESPACES = (estimators, reset, rules, schedules)
# examples that build and run an optimizer step eagerly (compiles dominate: >8 s here)
SLOW = {'snr', 'with_resets', 'reset_metrics'}


def _examples():
  finder = doctest.DocTestFinder(recurse=False)
  seen = set()
  for name in snr_jax.__all__:
    obj = getattr(snr_jax, name)
    for test in finder.find(obj, f'snr_jax.{name}', globs={'snr_jax': snr_jax}):
      if test.examples and id(obj) not in seen:
        seen.add(id(obj))
        marks = [pytest.mark.slow] if name in SLOW else []
        yield pytest.param(test, id=name, marks=marks)
  for module in NAMESPACES:
    for test in finder.find(module, module.__name__, globs={'snr_jax': snr_jax}):
      if test.examples:
        yield pytest.param(test, id=module.__name__)


EXAMPLES = list(_examples())


def test_the_public_docstrings_have_examples():
  # the constructors a user starts from, and every namespace, show one
  names = {p.id for p in EXAMPLES}
  for name in ('snr', 'with_resets', 'discover_groups', 'reset_metrics'):
    assert name in names
  assert {m.__name__ for m in NAMESPACES} <= names


@pytest.mark.parametrize('test', EXAMPLES)
def test_docstring_example_runs(test):
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f'{result.failed} of {result.attempted} examples failed in {test.name}'
