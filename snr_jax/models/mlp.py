"""Multi-layer perceptron (Permuted / Random-label MNIST, SPEC §7)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn


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
        x = x.reshape((x.shape[0], -1))
        for i, h in enumerate(self.hidden):
            x = nn.Dense(h, name=f"Dense_{i}")(x)
            x = nn.relu(x)
        return nn.Dense(self.num_outputs, name=f"Dense_{len(self.hidden)}")(x)

    def neuron_group_paths(self):
        """(producer module path, consumer module path) per neuron group, for cross-checks."""
        n = len(self.hidden)
        return [((f"Dense_{i}",), (f"Dense_{i + 1}",)) for i in range(n)]
