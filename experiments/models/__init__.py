"""Flax linen models for the SNR benchmarks (design §7).

Conventions (used by generic neuron-group discovery, design §1): every hidden layer whose
output feeds a ReLU is an ``nn.Dense`` / ``nn.Conv`` / :class:`Im2colConv` module with a
``kernel`` param whose last axis indexes output units and a ``bias`` param, called once per
forward pass; its own output is the pre-activation (visible through
``capture_intermediates``); the ReLU output feeds (possibly through max-pool / flatten)
directly into the next such layer.  Each model's ``neuron_group_paths()`` lists the
expected (producer, consumer) module paths, for cross-checking.
"""

from __future__ import annotations

from .cnn import CNN
from .conv import Im2colConv, max_pool_2x2
from .mlp import MLP
from .transformer import FFN, GPT, Block, ViT, gpt_widths, vit_for

MODELS = {'mlp': MLP, 'cnn': CNN, 'vit': ViT, 'gpt': GPT}


def model_for(name: str, **kwargs):
  """Build a model by name: 'mlp', 'cnn', 'vit' or 'gpt' (case-insensitive).

  Keyword arguments go to the model's constructor (``GPT`` needs ``vocab_size``).
  """
  key = str(name).lower()
  if key not in MODELS:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
  return MODELS[key](**kwargs)


__all__ = [
    'MLP',
    'CNN',
    'ViT',
    'GPT',
    'Block',
    'FFN',
    'Im2colConv',
    'max_pool_2x2',
    'gpt_widths',
    'model_for',
    'vit_for',
    'MODELS',
]
