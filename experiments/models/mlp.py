"""Multi-layer perceptron (Permuted / Random-label MNIST, design §7)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn


def relu_dense_stack(x, hidden: Sequence[int], num_outputs: int):
  """[Dense -> relu] per width in ``hidden``, then Dense(num_outputs).

  Call it inside a ``@nn.compact`` method: the layers become that module's
  ``Dense_0 .. Dense_{len(hidden)}`` (shared by :class:`MLP` and the CNN's head).
  """
  for i, h in enumerate(hidden):
    x = nn.relu(nn.Dense(h, name=f'Dense_{i}')(x))
  return nn.Dense(num_outputs, name=f'Dense_{len(hidden)}')(x)


class MLP(nn.Module):
  """Flatten -> [Dense -> relu] * len(hidden) -> Dense(num_outputs).

  Parameter names: hidden layers ``Dense_0 .. Dense_{n-1}``, output ``Dense_n``
  (``n = len(hidden)``); all use Flax defaults (lecun_normal kernels, zero biases).
  Each hidden Dense is a neuron group; its consumer is the next Dense.
  Inputs ``(B, ...)`` are flattened to ``(B, -1)``.
  """

  hidden: Sequence[int] = (100, 100)
  num_outputs: int = 10

  @nn.compact
  def __call__(self, x):
    return relu_dense_stack(x.reshape((x.shape[0], -1)), self.hidden, self.num_outputs)

  def neuron_group_paths(self):
    """(producer module path, consumer module path) per neuron group, for cross-checks."""
    n = len(self.hidden)
    return [((f'Dense_{i}',), (f'Dense_{i + 1}',)) for i in range(n)]
