"""Convolution and pooling layers that stay fast inside ``lax.scan`` on XLA:CPU.

XLA:CPU runs the backward pass of ``nn.Conv`` (``lax.conv_general_dilated``) inside
``lax.scan`` on a slow path, far slower than the same step from a Python loop (design §9
gives the figure).  :class:`Im2colConv` computes the same 2-D convolution as ``nn.Conv`` by
extracting patches with plain strided slices and doing one matmul, which XLA:CPU handles
well in every context.  :func:`max_pool_2x2` does 2x2 / stride-2 max pooling with a
reshape and elementwise maxima instead of ``lax.reduce_window`` (whose gradient,
``select_and_scatter_add``, is also slow on CPU inside scan).
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

Array = Any
PaddingLike = Union[str, int, Sequence[Union[int, Sequence[int]]]]


def _pair(v: Union[int, Sequence[int]], what: str) -> tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  v = tuple(int(a) for a in v)
  if len(v) != 2:
    raise ValueError(f'Im2colConv is 2-D only: {what} must be an int or a pair, got {v}')
  return v  # type: ignore[return-value]


def _resolve_padding(
    padding: PaddingLike, in_hw: Sequence[int], kernel: Sequence[int], strides: Sequence[int]
) -> list[tuple[int, int]]:
  """Explicit (low, high) pads per spatial dim, with nn.Conv / lax semantics."""
  if isinstance(padding, str):
    p = padding.upper()
    if p == 'VALID':
      return [(0, 0), (0, 0)]
    if p == 'SAME':
      pads = []
      for n, k, s in zip(in_hw, kernel, strides):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
      return pads
    raise ValueError(
        f"Im2colConv supports padding 'VALID', 'SAME', an int or explicit "
        f'pairs; got {padding!r}'
    )
  if isinstance(padding, int):
    return [(padding, padding)] * 2
  padding = list(padding)
  if len(padding) != 2:
    raise ValueError(f'padding needs one entry per spatial dim (2), got {padding!r}')
  out = []
  for p in padding:
    if isinstance(p, int):
      out.append((p, p))
    else:
      lo, hi = p
      out.append((int(lo), int(hi)))
  return out


class Im2colConv(nn.Module):
  """2-D convolution computed as im2col (strided slices) + one matmul.

  A drop-in replacement for ``nn.Conv(features, (kh, kw), strides, padding)`` on NHWC
  inputs: same parameter names, shapes, dtypes and default initializers
  (``kernel`` of shape ``(kh, kw, in_features, features)`` drawn from
  ``lecun_normal()``; ``bias`` of shape ``(features,)``, zeros), and the same output for
  the same parameters (up to float rounding).  Parameters trained with one can be used
  with the other.

  Differences from ``nn.Conv``: 2-D only, and an int ``kernel_size`` means a *square*
  kernel ``(k, k)`` (``nn.Conv`` reads an int as a 1-D kernel).  No dilation, feature
  groups, masks or 'CIRCULAR'/'CAUSAL' padding.  Inputs are ``(..., H, W, C)``; any
  number of leading batch dims (including none) is accepted, as in ``nn.Conv``.

  The patch vector of an output position is ordered (kernel row, kernel column,
  input channel), matching ``kernel.reshape(kh * kw * in_features, features)``.
  """

  features: int
  kernel_size: Union[int, Sequence[int]]
  strides: Union[int, Sequence[int]] = 1
  padding: PaddingLike = 'VALID'
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    kh, kw = _pair(self.kernel_size, 'kernel_size')
    sh, sw = _pair(self.strides, 'strides')
    if inputs.ndim < 3:
      raise ValueError(f'Im2colConv expects inputs (..., H, W, C); got shape {inputs.shape}')
    batch_shape = inputs.shape[:-3]
    x = inputs.reshape((-1,) + inputs.shape[-3:])
    in_features = x.shape[-1]

    kernel = self.param(
        'kernel', self.kernel_init, (kh, kw, in_features, self.features), self.param_dtype
    )
    bias = (
        self.param('bias', self.bias_init, (self.features,), self.param_dtype)
        if self.use_bias
        else None
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)

    pads = _resolve_padding(self.padding, x.shape[1:3], (kh, kw), (sh, sw))
    if any(p != (0, 0) for p in pads):
      x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    h, w = x.shape[1], x.shape[2]
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    if ho <= 0 or wo <= 0:
      raise ValueError(f'Im2colConv: kernel {(kh, kw)} larger than padded input {(h, w)}')

    cols = [
        lax.slice(
            x,
            (0, i, j, 0),
            (x.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, in_features),
            (1, sh, sw, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    y = jnp.matmul(
        patches, kernel.reshape(kh * kw * in_features, self.features), precision=self.precision
    )
    if bias is not None:
      y = y + bias
    return y.reshape(batch_shape + y.shape[1:])


def max_pool_2x2(x: Array) -> Array:
  """2x2 max pooling with stride 2 and 'VALID' padding on ``(..., H, W, C)`` inputs.

  Same result as ``nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')`` (an odd
  trailing row/column is dropped), computed by a reshape and two elementwise
  ``jnp.maximum`` so that its gradient is cheap on XLA:CPU inside ``lax.scan``
  (measured faster there than both ``nn.max_pool`` and a ``jnp.max`` reduction).
  With tied maxima in a window the gradient is shared between the tied entries
  (``nn.max_pool`` sends it all to one of them); forward values are identical.
  """
  h, w, c = x.shape[-3:]
  h2, w2 = h // 2, w // 2
  if h2 == 0 or w2 == 0:
    raise ValueError(f'max_pool_2x2 needs H, W >= 2; got {x.shape}')
  x = x[..., : 2 * h2, : 2 * w2, :]
  x = x.reshape(x.shape[:-3] + (h2, 2, w2, 2, c))
  x = jnp.maximum(x[..., 0, :, :, :], x[..., 1, :, :, :])  # over row pairs
  return jnp.maximum(x[..., 0, :], x[..., 1, :])  # over column pairs
