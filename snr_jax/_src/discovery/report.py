"""What discovery decided, in words: the left-out layers and their reasons, and
[`describe_groups`][snr_jax.describe_groups]."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from snr_jax._src.groups import NeuronGroup, path_str


def describe_nonlin(name: str) -> str:
  """The reason for a layer whose pre-activation passes through a nonlinearity ``name``."""
  known = {
      'tanh': 'tanh (or a tanh-approximated GELU)',
      'erf': 'an erf (exact GELU)',
      'logistic': 'a sigmoid (or SiLU)',
      'select_n': 'a piecewise function (leaky ReLU, ' 'ELU, ...)',
      'exp': 'an exponential',
      'expm1': 'an exponential (ELU?)',
      'log1p': 'log1p (softplus?)',
      'logaddexp': 'softplus (logaddexp)',
  }
  what = known.get(name, f"'{name}'")
  return f'its output passes through {what}, which has no silent state (not a ReLU)'


@dataclasses.dataclass(frozen=True)
class LeftOut:
  """A layer discovery looked at and did not make a neuron group.

  Attributes:
    layer: the layer's name (its kernel's path without the leaf name).
    reason: why it is not a group.
  """

  layer: str
  reason: str


class DiscoveredGroups(tuple):
  """The groups found by [`discover_groups`][snr_jax.discover_groups] (a tuple) plus what was left
  out."""

  left_out: tuple[LeftOut, ...]

  def __new__(cls, groups, left_out=()):
    obj = super().__new__(cls, groups)
    obj.left_out = tuple(left_out)
    return obj

  def __repr__(self):
    return describe_groups(self)


def describe_groups(groups: Sequence[NeuronGroup]) -> str:
  """A readable account of neuron groups and, for discovered ones, what was left out.

  Each group: where its firing is read (the ReLU's input, with a leading layer axis for
  scanned groups), its incoming slices (re-drawn on a reset), every consumer's outgoing
  slice (zeroed), and model-state slices. Then every layer looked at and left out, with
  the reason.
  """
  lines = [f'{len(groups)} neuron group(s):']
  for g in groups:
    layers = f' x {g.layers} layers (units indexed (layer, unit))' if g.layers > 1 else ''
    lines.append(f'- {g.name}: {g.size // g.layers} units{layers}')
    if g.site is not None:
      lines.append(f'    firing read on: the ReLU input (axis {g.site.unit_axis} = units)')
    elif g.activation is not None:
      lines.append(f"    firing read on: intermediates '{path_str(g.activation)}'")
    if g.firing is not None:
      lines.append('    firing predicate: user-declared (outside the paper)')
    for s in g.incoming:
      lines.append(
          f'    incoming: {path_str(s.path)} [axis {s.axis}'
          + (f', layer axis {s.layer_axis}' if s.layer_axis is not None else '')
          + ']'
      )
    for s in g.outgoing:
      how = '' if s.unit_of is None else ' (rows mapped to units by the layout between)'
      lines.append(
          f'    outgoing: {path_str(s.path)} [axis {s.axis}'
          + (f', layer axis {s.layer_axis}' if s.layer_axis is not None else '')
          + f']{how}'
      )
    for s in g.state:
      lines.append(f'    model state: {path_str(s.path)} [axis {s.axis}]')
  left_out = getattr(groups, 'left_out', ())
  if left_out:
    lines.append('left out:')
    for x in left_out:
      lines.append(f'- {x.layer}: {x.reason}')
  return '\n'.join(lines)
