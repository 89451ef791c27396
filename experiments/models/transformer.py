"""Small pre-LN transformers: a ViT for images and a GPT for next-token prediction.

Both use the same block: ``x + MHA(LN(x))`` then ``x + FFN(LN(x))`` with
``FFN = Dense(ffn) -> relu -> Dense(width)``.  The first FFN Dense (path
``(..., 'block_{i}', 'ffn', 'Dense_0')``) is the block's only neuron group; its consumer
is ``(..., 'block_{i}', 'ffn', 'Dense_1')``.  Attention, embeddings, LayerNorms and the
output head are never neurons (design §1).  No dropout.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp


class FFN(nn.Module):
  """Dense(hidden) -> relu -> Dense(width).  ``Dense_0`` is the neuron group."""

  hidden: int
  width: int

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.hidden, name='Dense_0')(x)
    x = nn.relu(x)
    return nn.Dense(self.width, name='Dense_1')(x)


class Block(nn.Module):
  """Pre-LN transformer block: ``x + attn(ln_attn(x), mask)``, ``x + ffn(ln_ffn(x))``."""

  width: int
  num_heads: int
  ffn_width: int

  @nn.compact
  def __call__(self, x, mask: Optional[Any] = None):
    h = nn.LayerNorm(name='ln_attn')(x)
    h = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=self.width, out_features=self.width, name='attn'
    )(h, mask=mask)
    x = x + h
    h = nn.LayerNorm(name='ln_ffn')(x)
    return x + FFN(self.ffn_width, self.width, name='ffn')(h)


class ViT(nn.Module):
  """Small Vision Transformer on NHWC images.

  Non-overlapping ``patch_size`` x ``patch_size`` patches (H and W must be divisible by
  it), each flattened in (row, column, channel) order and embedded by ``Dense(width)``
  (``patch_embed``), plus a learned position embedding ``pos_embed`` (normal(0.02)).
  ``pool='cls'`` prepends a learned class token (``cls_token``, zeros) and reads it out;
  ``pool='mean'`` (default) averages the tokens.  Then ``num_blocks`` pre-LN blocks
  (``block_{i}``), a final LayerNorm (``ln_final``) and ``Dense(num_outputs)`` (``head``).
  """

  num_outputs: int = 10
  patch_size: int = 4
  width: int = 64
  num_blocks: int = 2
  num_heads: int = 4
  mlp_width: int = 256
  pool: str = 'mean'

  @nn.compact
  def __call__(self, x):
    if self.pool not in ('mean', 'cls'):
      raise ValueError(f"pool must be 'mean' or 'cls', got {self.pool!r}")
    if self.width % self.num_heads:
      raise ValueError(f'width {self.width} not divisible by num_heads {self.num_heads}')
    if x.ndim != 4:
      raise ValueError(f'ViT expects NHWC inputs (B, H, W, C); got shape {x.shape}')
    b, h, w, c = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f'image size {(h, w)} not divisible by patch_size {p}')
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (h // p) * (w // p), p * p * c)
    x = nn.Dense(self.width, name='patch_embed')(x)
    if self.pool == 'cls':
      cls = self.param('cls_token', nn.initializers.zeros_init(), (1, 1, self.width))
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), x], axis=1)
    pos = self.param('pos_embed', nn.initializers.normal(0.02), (1,) + x.shape[1:])
    x = x + pos
    for i in range(self.num_blocks):
      x = Block(self.width, self.num_heads, self.mlp_width, name=f'block_{i}')(x)
    x = nn.LayerNorm(name='ln_final')(x)
    x = x[:, 0] if self.pool == 'cls' else x.mean(axis=1)
    return nn.Dense(self.num_outputs, name='head')(x)

  def neuron_group_paths(self):
    """(producer module path, consumer module path) per neuron group, for cross-checks."""
    return [
        ((f'block_{i}', 'ffn', 'Dense_0'), (f'block_{i}', 'ffn', 'Dense_1'))
        for i in range(self.num_blocks)
    ]


def vit_for(image_shape, num_outputs: int) -> ViT:
  """design §7's small ViT for images of ``image_shape`` (H, W, C): 16 tokens on 28x28
  images (patch 7), 64 on 32x32 (patch 4); width 64, 3 pre-LN blocks, 4 heads, a ReLU
  FFN of 256, mean pooling."""
  h, w = image_shape[:2]
  patch = next((p for p in (7, 4) if h % p == 0 and w % p == 0), None)
  if patch is None:
    raise ValueError(f'vit_for: no patch size (7 or 4) divides images of {h}x{w}.')
  return ViT(
      num_outputs=num_outputs,
      patch_size=patch,
      width=64,
      num_blocks=3,
      num_heads=4,
      mlp_width=256,
      pool='mean',
  )


def gpt_widths(width: int, ffn_width: int, num_heads: int, scale: float) -> tuple[int, int]:
  """The (model width, FFN width) that :class:`GPT` uses at a given ``scale``.

  The paper scales widths by sqrt(scale), so the parameter count of the blocks grows
  about linearly in ``scale``:

  * model width = ``num_heads * max(1, round(width * sqrt(scale) / num_heads))``, i.e.
    ``width * sqrt(scale)`` rounded to the nearest multiple of ``num_heads``;
  * FFN width = ``max(1, round(ffn_width * sqrt(scale)))``.

  Defaults (32, 256, 2 heads): scale 1 -> (32, 256), 4 -> (64, 512), 16 -> (128, 1024).
  (``round`` is Python's, ties to even.)
  """
  if scale <= 0:
    raise ValueError(f'scale must be positive, got {scale}')
  r = math.sqrt(scale)
  w = num_heads * max(1, round(width * r / num_heads))
  f = max(1, round(ffn_width * r))
  return int(w), int(f)


class GPT(nn.Module):
  """1-layer (by default) pre-LN GPT for the Permuted Shakespeare benchmark (design §7).

  tokens ``(B, T)`` int, ``T <= context_length`` -> logits ``(B, T, vocab_size)``.
  ``tok_embed`` (nn.Embed) + ``pos_embed`` (learned nn.Embed over positions) ->
  ``num_layers`` pre-LN blocks ``block_{i}`` with causal self-attention
  (nn.MultiHeadDotProductAttention under ``nn.make_causal_mask``) and a ReLU FFN ->
  ``ln_final`` -> ``head`` (nn.Dense(vocab_size), untied from the embedding).
  Widths at ``scale`` are given by :func:`gpt_widths` (also :attr:`model_width`,
  :attr:`model_ffn_width`).
  """

  vocab_size: int
  context_length: int = 128
  width: int = 32
  num_heads: int = 2
  ffn_width: int = 256
  num_layers: int = 1
  scale: float = 1

  @property
  def model_width(self) -> int:
    return gpt_widths(self.width, self.ffn_width, self.num_heads, self.scale)[0]

  @property
  def model_ffn_width(self) -> int:
    return gpt_widths(self.width, self.ffn_width, self.num_heads, self.scale)[1]

  @nn.compact
  def __call__(self, tokens):
    if tokens.ndim != 2:
      raise ValueError(f'GPT expects int tokens (B, T); got shape {tokens.shape}')
    t = tokens.shape[1]
    if t > self.context_length:
      raise ValueError(f'sequence length {t} exceeds context_length {self.context_length}')
    w, f = gpt_widths(self.width, self.ffn_width, self.num_heads, self.scale)
    x = nn.Embed(self.vocab_size, w, name='tok_embed')(tokens)
    x = x + nn.Embed(self.context_length, w, name='pos_embed')(jnp.arange(t))[None]
    mask = nn.make_causal_mask(tokens)
    for i in range(self.num_layers):
      x = Block(w, self.num_heads, f, name=f'block_{i}')(x, mask=mask)
    x = nn.LayerNorm(name='ln_final')(x)
    return nn.Dense(self.vocab_size, name='head')(x)

  def neuron_group_paths(self):
    """(producer module path, consumer module path) per neuron group, for cross-checks."""
    return [
        ((f'block_{i}', 'ffn', 'Dense_0'), (f'block_{i}', 'ffn', 'Dense_1'))
        for i in range(self.num_layers)
    ]
