"""Convolutional network of Kumar et al. 2023 (Random-label CIFAR, Continual ImageNet)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from .conv import Im2colConv, max_pool_2x2
from .mlp import relu_dense_stack

CONV_IMPLS = ('im2col', 'xla')
POOL_IMPLS = ('reshape', 'xla')


class CNN(nn.Module):
  """[Conv(k x k) -> relu -> maxpool 2] * len(conv_features) -> flatten
  -> [Dense -> relu] * len(dense_features) -> Dense(num_outputs).

  Defaults give the paper's network: conv5x5x16, maxpool 2, conv5x5x16, maxpool 2,
  Dense 100, Dense 100, output.

  Padding: ``'VALID'`` by default (no padding), as in Kumar et al.'s PyTorch
  ``nn.Conv2d`` with its default ``padding=0``.  32x32 inputs go 32 -> 28 -> 14 -> 10 -> 5,
  so the first Dense reads 5*5*16 = 400 features (28x28 inputs: 4*4*16 = 256).
  Max pooling is 2x2, stride 2, 'VALID' (odd sizes are floored, like PyTorch).

  ``conv_impl``: ``'im2col'`` (:class:`Im2colConv`, default; fast inside ``lax.scan`` on
  CPU) or ``'xla'`` (``nn.Conv``).  ``pool_impl``: ``'reshape'`` (:func:`max_pool_2x2`,
  default) or ``'xla'`` (``nn.max_pool``).  Both choices produce identical parameter
  trees and the same function of the parameters.

  Parameter names: ``Conv_0 .. Conv_{c-1}``, ``Dense_0 .. Dense_{d-1}`` (hidden) and
  ``Dense_d`` (output).  Every conv and hidden Dense is a neuron group; a conv's
  consumer is the next conv, the last conv's consumer is ``Dense_0`` (through pool and
  a row-major (H, W, C) flatten, so channel c occupies rows ``c, c + C, c + 2C, ...``).
  """

  num_outputs: int = 10
  conv_features: Sequence[int] = (16, 16)
  kernel_size: int = 5
  dense_features: Sequence[int] = (100, 100)
  conv_impl: str = 'im2col'
  pool_impl: str = 'reshape'
  padding: str = 'VALID'

  @nn.compact
  def __call__(self, x):
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(f'conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}')
    if self.pool_impl not in POOL_IMPLS:
      raise ValueError(f'pool_impl must be one of {POOL_IMPLS}, got {self.pool_impl!r}')
    if x.ndim != 4:
      raise ValueError(f'CNN expects NHWC inputs (B, H, W, C); got shape {x.shape}')
    k = (self.kernel_size, self.kernel_size)
    for i, f in enumerate(self.conv_features):
      if self.conv_impl == 'im2col':
        x = Im2colConv(f, k, padding=self.padding, name=f'Conv_{i}')(x)
      else:
        x = nn.Conv(f, k, padding=self.padding, name=f'Conv_{i}')(x)
      x = nn.relu(x)
      if self.pool_impl == 'reshape':
        x = max_pool_2x2(x)
      else:
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
    x = x.reshape((x.shape[0], -1))
    return relu_dense_stack(x, self.dense_features, self.num_outputs)

  def neuron_group_paths(self):
    """(producer module path, consumer module path) per neuron group, for cross-checks."""
    names = [f'Conv_{i}' for i in range(len(self.conv_features))]
    names += [f'Dense_{i}' for i in range(len(self.dense_features) + 1)]
    return [((a,), (b,)) for a, b in zip(names[:-1], names[1:])]
