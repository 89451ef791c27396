"""`python -m experiments.permuted_mnist`: the permuted mnist benchmark (see experiments.cli)."""

from experiments.cli import benchmark_main

if __name__ == '__main__':
  benchmark_main('permuted_mnist')
