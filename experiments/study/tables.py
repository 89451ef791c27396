"""The study's markdown: the final cells' table with the chosen hyperparameters, every
setting on the selection seeds, and each method's spread over its grid."""

from __future__ import annotations

import json
from typing import Any, Sequence

from experiments.study.selection import (
    mean_std,
    method_order,
    progress_text,
    selection_runs,
    setting_scores,
)


def hparams_text(hp: Any) -> str:
  """``'k=v, ...'`` for a setting (a dict or the CSV's JSON of one); 'defaults' if empty."""
  hp = json.loads(hp) if isinstance(hp, str) else hp
  return ', '.join(f'{k}={v}' for k, v in hp.items()) or 'defaults'


def make_table(rows: Sequence[dict], title: str = 'Study results') -> str:
  """A markdown table of the final cells: last-10% online accuracy, mean ± std over seeds.

  One row per benchmark × dataset × optimizer, one column per method (the best mean in
  bold); a cell still running shows its progress. A second table gives the chosen
  hyperparameters. Task counts below the protocol's are marked as reduced. Without final
  cells (a sweep, or a study still selecting) it lists every setting on the selection
  seeds instead (:func:`selection_table`).
  """
  from snr_jax._src.methods import METHODS  # pylint: disable=import-outside-toplevel

  final = [r for r in rows if r['phase'] == 'final']
  spread = spread_table(rows)
  if not final:
    return (
        f'# {title}\n\nNo final cells yet.\n'
        + selection_table(rows)
        + (f'\n{spread}' if spread else '')
    )
  order = {m: i for i, m in enumerate(METHODS)}
  methods = sorted({r['method'] for r in final}, key=lambda m: (order.get(m, 99), m))
  lines = [
      f'# {title}',
      '',
      'Online accuracy over the last 10% of tasks, mean ± std over seeds (n = seeds), '
      'at the hyperparameters chosen by total average online accuracy on the selection '
      'seeds. Bold: the best mean in the row.',
      '',
      '| benchmark | optimizer | tasks | ' + ' | '.join(methods) + ' |',
      '|---|---|---|' + '---|' * len(methods),
  ]
  chosen = []
  for key in sorted({(r['benchmark'], r['dataset'], r['optimizer']) for r in final}):
    mine = [r for r in final if (r['benchmark'], r['dataset'], r['optimizer']) == key]
    total, proto = int(mine[0]['tasks_total']), int(mine[0]['protocol_tasks'])
    tasks = f'{total}' if total >= proto else f'{total} (reduced; protocol {proto})'
    cells, means = {}, {}
    for m in methods:
      rs = [r for r in mine if r['method'] == m]
      if not rs:
        cells[m] = '–'
        continue
      progress = progress_text(rs)
      if progress:
        cells[m] = progress
      else:
        mean, std = mean_std([float(r['last10_accuracy']) for r in rs])
        means[m] = mean
        cells[m] = f'{mean:.3f} ± {std:.3f} (n={len(rs)})'
      chosen.append((key, m, rs[0]['hparams'], rs[0]['learning_rate']))
    best = max(means.values()) if means else None
    row = [f'**{cells[m]}**' if m in means and means[m] == best else cells[m] for m in methods]
    lines.append(f'| {key[0]} ({key[1]}) | {key[2]} | {tasks} | ' + ' | '.join(row) + ' |')
  lines += [
      '',
      '| benchmark | optimizer | method | learning rate | chosen hyperparameters |',
      '|---|---|---|---|---|',
  ]
  for (bench, ds, opt), m, hp, lr in chosen:
    lines.append(f'| {bench} ({ds}) | {opt} | {m} | {lr} | {hparams_text(hp)} |')
  layers = layer_table(final)
  return (
      '\n'.join(lines)
      + '\n'
      + (f'\n{spread}' if spread else '')
      + (f'\n{layers}' if layers else '')
  )


def layer_table(final: Sequence[dict]) -> str:
  """Markdown: per final cell and layer, resets per step and the dead fraction at the end,
  means over seeds ('' when no row records them: rows from before the study kept them)."""
  from snr_jax._src.methods import METHODS  # pylint: disable=import-outside-toplevel

  by_cell: dict[tuple, list[dict]] = {}
  for r in final:
    if r.get('layers'):
      key = (r['benchmark'], r['dataset'], r['optimizer'], r['method'])
      by_cell.setdefault(key, []).append(json.loads(r['layers']))
  if not by_cell:
    return ''
  lines = [
      '## Resets and dead units by layer',
      '',
      'Final seeds, means over seeds: resets per step over the whole run, and the fraction '
      "of the layer's units dead after the last task. Each neuron group is one layer "
      "(a convolution's channels, a Dense layer's units).",
      '',
      '| benchmark | optimizer | method | layer | resets per step | dead at the end | seeds |',
      '|---|---|---|---|---|---|---|',
  ]
  order = {m: i for i, m in enumerate(METHODS)}
  for key in sorted(by_cell, key=lambda k: (k[:3], order.get(k[3], 99), k[3])):
    seeds = by_cell[key]
    for group in sorted({g for s in seeds for g in s}):
      resets = [s[group]['resets_per_step'] for s in seeds if 'resets_per_step' in s.get(group, {})]
      dead = [s[group]['dead_last'] for s in seeds if 'dead_last' in s.get(group, {})]
      fmt = lambda xs, spec: format(sum(xs) / len(xs), spec) if xs else '–'
      lines.append(
          f'| {key[0]} ({key[1]}) | {key[2]} | {key[3]} | {group} | {fmt(resets, ".3g")} | '
          f'{fmt(dead, ".3f")} | {len(seeds)} |'
      )
  return '\n'.join(lines) + '\n'


def selection_table(rows: Sequence[dict]) -> str:
  """Markdown: every setting on the selection seeds, last-10% and all-task online
  accuracy, mean ± std over its seeds ('' without selection cells); a setting whose runs
  are not all complete shows its progress."""
  settings = selection_runs(rows)
  if not settings:
    return ''
  lines = [
      '',
      '## Every setting on the selection seeds',
      '',
      'Online accuracy over the last 10% of tasks and over all tasks, mean ± std over '
      'the selection seeds (n = seeds).',
      '',
      '| benchmark | optimizer | method | hyperparameters | last 10% | all tasks | n |',
      '|---|---|---|---|---|---|---|',
  ]
  for key, rs in sorted(settings.items(), key=lambda kv: (method_order(kv[0][:4]), kv[0][4])):
    last = whole = progress_text(rs)
    if not last:
      last = '{:.3f} ± {:.3f}'.format(*mean_std([float(r['last10_accuracy']) for r in rs]))
      whole = '{:.3f} ± {:.3f}'.format(*mean_std([float(r['avg_accuracy']) for r in rs]))
    lines.append(
        f'| {key[0]} ({key[1]}) | {key[2]} | {key[3]} | {hparams_text(key[4])} | '
        f'{last} | {whole} | {len(rs)} |'
    )
  return '\n'.join(lines) + '\n'


def spread_table(rows: Sequence[dict]) -> str:
  """Markdown: per group, best − worst last-10% accuracy over its grid ('' if none)."""
  scores = setting_scores(rows)
  if not scores:
    return ''
  lines = [
      '## Robustness to the hyperparameter',
      '',
      "Last-10% online accuracy of every setting of a method's grid on the selection "
      'seeds; spread = best − worst setting. Seed std: the mean over settings of the '
      'std over seeds, the scale of noise a spread should be read against.',
      '',
      '| benchmark | optimizer | method | settings | best | worst | spread | seed std |',
      '|---|---|---|---|---|---|---|---|',
  ]
  for key in sorted(scores, key=method_order):
    sc = scores[key]
    best = max(sc, key=lambda x: x['mean'])
    worst = min(sc, key=lambda x: x['mean'])
    noise = sum(x['std'] for x in sc) / len(sc)
    lines.append(
        f'| {key[0]} ({key[1]}) | {key[2]} | {key[3]} | {len(sc)} | '
        f"{best['mean']:.3f} ({hparams_text(best['hparams'])}) | "
        f"{worst['mean']:.3f} ({hparams_text(worst['hparams'])}) | "
        f"{best['mean'] - worst['mean']:.3f} | {noise:.3f} |"
    )
  return '\n'.join(lines) + '\n'
