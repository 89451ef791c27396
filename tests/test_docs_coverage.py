"""Every public name is in the API reference, and the reference names only public names.

The reference pages render ``::: snr_jax.<name>`` blocks (mkdocstrings); the site build
(``make docs``, strict) fails on a block it cannot render, and this test fails on a public
name that no page renders.
"""

import pathlib
import re

import snr_jax
from snr_jax import estimators, reset, rules, schedules

NAMESPACES = {m.__name__.split('.')[-1]: m for m in (estimators, reset, rules, schedules)}

DOCS = pathlib.Path(__file__).resolve().parents[1] / 'docs'
RENDERED = {
    m
    for page in DOCS.rglob('*.md')
    for m in re.findall(r'^::: snr_jax\.(\w+)\s*$', page.read_text(), re.M)
}


def test_every_public_name_is_documented():
  missing = sorted(set(snr_jax.__all__) - RENDERED)
  assert not missing, f'public names with no "::: snr_jax.<name>" block under docs/: {missing}'


def test_the_reference_documents_only_public_names():
  extra = sorted(RENDERED - set(snr_jax.__all__) - set(NAMESPACES))
  assert not extra, f'docs/ renders names that are not in snr_jax.__all__: {extra}'


def test_every_sub_namespace_has_its_page_entry_and_only_documented_names():
  assert not set(NAMESPACES) - RENDERED, 'a sub-namespace has no "::: snr_jax.<module>" block'
  for name, module in NAMESPACES.items():
    undocumented = sorted(set(module.__all__) - RENDERED)
    assert not undocumented, f'snr_jax.{name} exports names no page documents: {undocumented}'
