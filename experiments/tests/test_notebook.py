"""The walkthrough notebook runs from top to bottom (its code cells, in order)."""

import json
import pathlib

import matplotlib
import pytest

pytestmark = pytest.mark.slow  # executes the walkthrough notebook

NOTEBOOK = pathlib.Path(__file__).resolve().parents[2] / 'docs' / 'tutorials' / 'walkthrough.ipynb'


def test_walkthrough_notebook_executes(tmp_path, monkeypatch):
  matplotlib.use('Agg')
  monkeypatch.chdir(tmp_path)
  cells = json.loads(NOTEBOOK.read_text())['cells']
  namespace = {}
  for i, cell in enumerate(c for c in cells if c['cell_type'] == 'code'):
    exec(compile(''.join(cell['source']), f'{NOTEBOOK.name} cell {i}', 'exec'), namespace)
  plain_acc, plain_dead = namespace['plain'][:2]
  snr_acc, snr_dead, taus, _ = namespace['with_snr']
  assert len(snr_acc) == namespace['NUM_TASKS'] and taus.shape == (namespace['NUM_TASKS'], 100)
  # what the notebook shows: without SNR units die over the stream, with SNR they do not
  assert plain_dead[-5:].mean() > snr_dead[-5:].mean()
