"""mkdocs hooks.

* The executed notebooks import ``snr_jax`` and the harness (``experiments``) from this
  checkout, whatever folder their kernel starts in.
* The results pages show the studies' figures, which live in the repository's
  ``results/figures/`` (where the studies write them), served as ``figures/``.
* The contributing page is the repository's ``CONTRIBUTING.md``, so the two never differ.
"""

import os
import pathlib

from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIGURES = ROOT / 'results' / 'figures'
CONTRIBUTING = ROOT / 'CONTRIBUTING.md'


def on_config(config, **kwargs):
  del kwargs
  paths = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
  if str(ROOT) not in paths:
    os.environ['PYTHONPATH'] = os.pathsep.join([str(ROOT), *paths])
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ.setdefault('MPLBACKEND', 'Agg')
  return config


def on_files(files, config, **kwargs):
  del kwargs
  for png in sorted(FIGURES.glob('*.png')):
    files.append(File.generated(config, f'figures/{png.name}', abs_src_path=str(png)))
  files.append(File.generated(config, 'contributing.md', content=CONTRIBUTING.read_text()))
  return files
