"""`python -m experiments.continual_imagenet`: that benchmark's command line (experiments.cli)."""

from experiments.cli import benchmark_main

if __name__ == '__main__':
  benchmark_main('continual_imagenet')
