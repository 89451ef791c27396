"""Neuron discovery from the computation itself (design §1).

[`discover_groups`][snr_jax.discover_groups] traces the model's forward pass to a jaxpr, whatever
built it
(Flax linen, Flax NNX or a plain function of a params tree), and reads the neurons off
the graph, in the manner of kfac-jax's automatic layer registration:

1. every contraction (``dot_general``, ``conv_general_dilated``) of data with a
   parameter whose output has one unit axis is a candidate *producer*;
2. from its output the engine walks forward through ops that keep units apart and
   treat them alike: bias adds, per-unit scale and shift, normalisation (a LayerNorm's
   statistics over the units, a GroupNorm's over groups of them, a BatchNorm's over the
   batch, its running statistics a model state or an argument that reaches no
   contraction directly, as haiku's state passed into the step), layout ops, casts and
   sharding constraints, dropout (a product with a mask made from booleans, or a select
   against zero), windows and elementwise maxima of the same units (pooling). The walk must
   reach exactly one ReLU (``jax.nn.relu``, ``relu6`` or ``max(x, 0)``) and nothing
   else: a residual add, a second consumer of the pre-activation, a non-ReLU
   nonlinearity (GELU, SiLU, tanh, sigmoid, softplus, ELU, leaky ReLU), a contraction
   without a ReLU in between, or the model's output disqualify the layer, and the
   reason is recorded. The per-unit parameters met on the way (bias, a norm's scale and
   offset) are the unit's *incoming* slices besides the kernel's;
3. from the ReLU's output the engine walks forward through ops that keep units apart
   (pooling, also hand-written as a max, min or sum of slices that hold the same unit at
   each position; reshape, transpose, concatenation, casts, sharding constraints,
   dropout, global pooling) to **every** consumer. Each must be a contraction of the
   units with a parameter; the engine keeps, for each row of each consumer's kernel,
   which unit it reads (channel-last and channel-first flattens alike, and back through
   a reshaped kernel such as an im2col conv's). A sum with another branch, a reduction
   over units, an attention product or the model's output disqualify the layer.

A kernel may be computed from its parameter by statistics of that parameter along other
axes (a weight-standardised StdConv): the unit is its output channel, the incoming slice
the raw parameter's; a consumer standardised across the units it reads cannot be cut off
by zeroing rows, and its producer is left out. A kernel made from several parameters is
left out with that reason. A layer whose output reaches the model's output with no ReLU
and no other layer after it is reported as an output layer.

The body of a ``scan`` over stacked parameters (``nn.scan``, ``nnx.scan``, ``lax.scan``)
is read the same way; its groups have units indexed (layer, unit). Layers whose kernel is
used by several contractions (shared weights) are refused with an error.

What was decided is visible: the result is a tuple of groups with a ``left_out`` list,
and [`describe_groups`][snr_jax.describe_groups] prints both.

What discovery knows about each primitive is one table (`.rules`), which users
extend with [`register_activation`][snr_jax.register_activation] and
[`register_unit_preserving`][snr_jax.register_unit_preserving]. The
package's modules, in the order a reader meets them:

- `.api`: [`discover_groups`][snr_jax.discover_groups];
- `.graph`: the traced forward pass as scopes, and what each input is;
- `.values` and `.origins`: what each value is made of (constants, parameter
  leaves with their axes, data) and which values are dropout masks;
- `.rules`: the table, keyed by primitive name, and the registration functions;
- `.walker`, with the table's handlers in `.pre` (kernel to ReLU) and
  `.post` (ReLU to consumers), and `.layout` (how layout ops move axes);
- `.producers` (which contractions are layers), `.find` (groups from walks),
  `.initializers` (what re-draws a group's incoming slices);
- `.report` ([`LeftOut`][snr_jax.LeftOut], [`describe_groups`][snr_jax.describe_groups]) and
`.sites` (the
  groups' sites in a new trace, for capture).
"""

from snr_jax._src.discovery.api import discover_groups
from snr_jax._src.discovery.report import DiscoveredGroups, LeftOut, describe_groups
from snr_jax._src.discovery.rules import (
    register_activation,
    register_unit_preserving,
    registration_scope,
    unregister_op,
)
from snr_jax._src.discovery.sites import locate_sites

__all__ = [
    'DiscoveredGroups',
    'LeftOut',
    'describe_groups',
    'discover_groups',
    'locate_sites',
    'register_activation',
    'register_unit_preserving',
    'registration_scope',
    'unregister_op',
]
