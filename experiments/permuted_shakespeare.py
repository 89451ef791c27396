"""`python -m experiments.permuted_shakespeare`: that benchmark's command line (experiments.cli)."""

from experiments.cli import benchmark_main

if __name__ == '__main__':
  benchmark_main('permuted_shakespeare')
