"""`python -m experiments.random_label_cifar`: that benchmark's command line (experiments.cli)."""

from experiments.cli import benchmark_main

if __name__ == '__main__':
  benchmark_main('random_label_cifar')
