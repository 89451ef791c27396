"""`python -m experiments.random_label_cifar`: the random label cifar benchmark (see experiments.cli)."""

from experiments.cli import benchmark_main

if __name__ == '__main__':
  benchmark_main('random_label_cifar')
