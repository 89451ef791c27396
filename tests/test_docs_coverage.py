"""Every public name is in the API reference, and the reference names only public names.

The reference pages render ``::: snr_jax.<name>`` blocks (mkdocstrings); the site build
(``make docs``, strict) fails on a block it cannot render, and this test fails on a public
name that no page renders.
"""

import pathlib
import re

import snr_jax

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
  extra = sorted(RENDERED - set(snr_jax.__all__))
  assert not extra, f'docs/ renders names that are not in snr_jax.__all__: {extra}'
