"""The study's figures: per benchmark and dataset, the final cells' curves and the spread."""

from __future__ import annotations

import pathlib
from typing import Optional, Sequence

from experiments.study.selection import method_order, setting_scores


def draw_figures(
    rows: Sequence[dict],
    out_dir: pathlib.Path,
    name: str,
    log=print,
    curves: Optional[dict] = None,
) -> list:
  """The study's PNGs: per benchmark × dataset, curves of the final cells and the spread.

  ``curves`` is the study's curves file (``experiments.study.rows.read_curves``); a final
  cell missing there is drawn from its run directory, or left out of the curves if that
  is gone too (a bare machine), which the log says.
  """
  from experiments import plots  # pylint: disable=import-outside-toplevel

  written = []
  for bench, ds in sorted({(r['benchmark'], r['dataset']) for r in rows}):
    mine = [r for r in rows if (r['benchmark'], r['dataset']) == (bench, ds)]
    stem = out_dir / f'{name}_{bench}-{ds}'
    if any(r['phase'] == 'final' for r in mine):
      path, missing = plots.plot_study_curves(
          mine,
          stem.with_name(stem.name + '_curves.png'),
          title=f'{bench} ({ds}), final cells',
          curves=curves,
      )
      if missing:
        log(f"no curves kept for {', '.join(missing)}: left out of {stem.name}_curves.png")
      if path is not None:
        written.append(path)
    scores = setting_scores(mine)
    scores = {k: scores[k] for k in sorted(scores, key=method_order)}
    if scores:
      written.append(
          plots.plot_spread(
              scores,
              stem.with_name(stem.name + '_spread.png'),
              title=f'{bench} ({ds}): last-10% accuracy per setting',
          )
      )
  for path in written:
    log(f'wrote    {path}')
  return written
