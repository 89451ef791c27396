"""``python -m experiments.study``: the study's command line (see the package docstring)."""

import sys

from experiments.study import main

if __name__ == '__main__':
  sys.exit(main())
