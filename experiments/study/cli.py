"""The study's command line, ``python -m experiments.study``."""

from __future__ import annotations

import argparse
import pathlib
from typing import Optional, Sequence

from experiments.study.cells import stop_on_sigterm
from experiments.study.loop import run_study
from experiments.study.rows import read_csv
from experiments.study.spec import StudyError, load_spec
from experiments.study.tables import make_table


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
  # the package, whose docstring describes the command and the spec
  from experiments import study  # pylint: disable=import-outside-toplevel

  parser = argparse.ArgumentParser(
      prog='python -m experiments.study',
      description=study.__doc__.splitlines()[0],
      epilog='See the module docstring (python -c "import experiments.study as s; '
      'print(s.__doc__)") for the spec format.',
  )
  parser.add_argument('spec', nargs='?', help='study spec (.json or .toml)')
  parser.add_argument('--workers', type=int, help='worker processes (default: spec, else 2)')
  parser.add_argument('--dry-run', action='store_true', help='list cells and their states')
  parser.add_argument(
      '--report',
      action='store_true',
      help='run nothing: rewrite the CSV, table and figures from the cells ' 'on disk',
  )
  parser.add_argument(
      '--stop-after', type=int, help='end each cell after this many tasks ' '(with a checkpoint)'
  )
  parser.add_argument(
      '--table',
      metavar='STUDY_CSV',
      help='only write a markdown table from ' 'a study CSV (to --out)',
  )
  parser.add_argument(
      '--methods',
      metavar='LABEL,...',
      help="run only these methods' cells, in this order (the others wait for a later "
      'run); labels are the keys of the spec\'s "methods"',
  )
  parser.add_argument('--out', help='markdown file for --table (default: stdout)')
  args = parser.parse_args(argv)
  try:
    if args.table:
      text = make_table(
          read_csv(pathlib.Path(args.table)), f'Study results ({pathlib.Path(args.table).stem})'
      )
      if args.out:
        pathlib.Path(args.out).write_text(text)
        print(f'wrote {args.out}')
      else:
        print(text)
      return 0
    if not args.spec:
      parser.error('give a study spec, or --table STUDY_CSV.')
    stop_on_sigterm()
    run_study(
        load_spec(pathlib.Path(args.spec)),
        workers=args.workers,
        dry_run=args.dry_run,
        stop_after=args.stop_after,
        report=args.report,
        methods=args.methods.split(',') if args.methods else None,
        log=lambda s: print(s, flush=True),
    )
  except (StudyError, FileNotFoundError) as e:
    parser.exit(2, f'error: {e}\n')
  except KeyboardInterrupt:
    return 130
  return 0
