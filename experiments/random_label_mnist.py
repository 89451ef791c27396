"""`python -m experiments.random_label_mnist`: the random label mnist benchmark (see experiments.cli)."""

from experiments.cli import benchmark_main

if __name__ == '__main__':
  benchmark_main('random_label_mnist')
