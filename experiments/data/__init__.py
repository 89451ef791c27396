"""Datasets and task streams for the paper's continual-learning benchmarks.

Loaders (host side, numpy): :func:`load_dataset` and one ``load_*`` per dataset, each
returning a :class:`Dataset` or raising :class:`DatasetNotFoundError`.
Streams (device side, pure JAX, jit-friendly): :func:`permuted_task`,
:func:`random_label_task`, :func:`class_pair_task`, :func:`permuted_vocab_task`,
:func:`batches` / :func:`batch_indices`.
"""

from experiments.data.dataset import DATA_DIR_ENV, Dataset, DatasetNotFoundError
from experiments.data.loaders import (
    DEBIAN_FASHION_MNIST_DIR,
    LOADERS,
    canonical_name,
    load_cifar10,
    load_dataset,
    load_digits,
    load_generated_cifar10,
    load_fashion_mnist,
    load_imagenet32,
    load_mnist,
    load_shakespeare,
)
from experiments.data.streams import (
    batch_indices,
    batches,
    class_pair,
    class_pair_indices,
    class_pair_task,
    permuted_task,
    permuted_task_indices,
    permuted_vocab_task,
    pixel_permutation,
    random_label_task,
    to_float,
    vocab_permutation,
)
from experiments.data.text import UNK, build_vocab, fetch_shakespeare_text, tokenize

DATASET_NAMES = tuple(sorted(LOADERS))

__all__ = [
    'DATASET_NAMES',
    'DATA_DIR_ENV',
    'DEBIAN_FASHION_MNIST_DIR',
    'Dataset',
    'DatasetNotFoundError',
    'UNK',
    'batch_indices',
    'batches',
    'build_vocab',
    'canonical_name',
    'class_pair',
    'class_pair_indices',
    'class_pair_task',
    'fetch_shakespeare_text',
    'load_cifar10',
    'load_dataset',
    'load_digits',
    'load_generated_cifar10',
    'load_fashion_mnist',
    'load_imagenet32',
    'load_mnist',
    'load_shakespeare',
    'permuted_task',
    'permuted_task_indices',
    'permuted_vocab_task',
    'pixel_permutation',
    'random_label_task',
    'to_float',
    'tokenize',
    'vocab_permutation',
]
