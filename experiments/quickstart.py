"""Offline quickstart: Permuted digits, SNR vs no intervention, and a plot.

    python -m experiments.quickstart [--num-tasks 300] [--out runs/quickstart]

Runs the Permuted benchmark protocol on scikit-learn's bundled 8x8 digits (no download
needed) for both methods, 3 seeds each, then writes ``OUT/plot.png``: online accuracy
and dead-unit fraction per task, one line per method with a band over seeds.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from experiments import cli
from experiments.plots import plot_runs

# Permuted digits: 1,000 of the 1,797 images per task, 1 epoch of batches of 16; a high
# learning rate makes units die quickly without intervention.
PROTOCOL = [
    '--dataset',
    'digits',
    '--examples-per-task',
    '1000',
    '--lr',
    '0.1',
    '--seeds',
    '3',
    '--tasks-per-call',
    '25',
    '--checkpoint-every',
    '100',
]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.quickstart',
      description=__doc__.splitlines()[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument('--num-tasks', type=int, default=300, help='tasks per run')
  parser.add_argument('--out', default='runs/quickstart', help='output directory')
  parser.add_argument('--no-progress', action='store_true', help='no progress bar')
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  runs = []
  for method in ('none', 'snr'):
    run_dir = out / method
    flags = [
        'permuted_mnist',
        '--method',
        method,
        '--num-tasks',
        str(args.num_tasks),
        '--out',
        str(run_dir),
        *PROTOCOL,
    ]
    if args.no_progress:
      flags.append('--no-progress')
    code = cli.main(flags)
    if code:
      return code
    runs.append(run_dir)
  path = plot_runs(runs, out / 'plot.png', title='Permuted digits: SNR vs no intervention')
  print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
