"""The names of JAX internals that change between JAX releases, in one place.

Discovery and capture read the jaxpr of a model's forward pass, so they name primitives
and eqn parameters that JAX renames from time to time (``jax.jit`` traced to ``'pjit'``,
now ``'jit'``; ``custom_vjp_call_jaxpr`` became ``custom_vjp_call``; sharding and varying-type
marks came and went). Every such name the library uses is defined here and imported
from here; the stable ``jax.lax`` names (``'add'``, ``'dot_general'``, ...) are keys of
the discovery table (`snr_jax._src.discovery.rules`).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.extend import core as jex_core

# -- call primitives ---------------------------------------------------------------
# jax.jit: 'pjit' in older releases, 'jit' in newer ones; its 'name' param names the
# function (e.g. 'gelu'), which reports use.
JIT = ('jit', 'pjit')
CLOSED_CALLS = ('closed_call', 'core_call')
CHECKPOINT = ('checkpoint', 'remat', 'remat2')
# calls whose body discovery inlines into the calling scope
INLINED = JIT + CLOSED_CALLS + CHECKPOINT
# the eqn parameter holding a call's body, by release and primitive
CALL_JAXPR_KEYS = ('jaxpr', 'call_jaxpr')
SCAN = 'scan'
CUSTOM_JVP_CALL = 'custom_jvp_call'

# -- type-only and layout no-op eqns -----------------------------------------------
# Marks that tracing inserts in some contexts and not in others (shard_map marks
# replicated values as varying): locations do not count them.
UNCOUNTED = ('pvary', 'pcast')
SHARDING_CONSTRAINT = 'sharding_constraint'
# sharding constraints, mesh casts and varying-type marks: values pass through unchanged
LAYOUT_NO_OPS = (SHARDING_CONSTRAINT, 'mesh_cast', 'reshard') + UNCOUNTED
CONVERT_ELEMENT_TYPE = 'convert_element_type'
# casts and copies: values pass through, up to dtype
CASTS = (CONVERT_ELEMENT_TYPE, 'copy', 'copy_p', 'reduce_precision')
# ops that take several values at once and return result k from operand k
PER_OPERAND = ('optimization_barrier', 'device_put')
# collectives over a mapped axis (elementwise across devices)
COLLECTIVES = ('psum', 'psum_invariant', 'pmax', 'pmin')
# ops that make random values from constants (a key): their output is data
RANDOM = ('random_bits', 'random_wrap', 'rng_uniform')

Literal = jex_core.Literal
Primitive = jex_core.Primitive
Tracer = jax.core.Tracer


def is_custom_call(name: str) -> bool:
  """Whether a primitive is a custom-derivative call (``custom_jvp_call``,
  ``custom_vjp_call``, or ``custom_vjp_call_jaxpr`` in older releases)."""
  return name.startswith('custom_')


def sub_jaxpr(eqn) -> Any:
  """The body of a call eqn (a ``ClosedJaxpr`` or a ``Jaxpr``), or None."""
  for key in CALL_JAXPR_KEYS:
    if key in eqn.params:
      return eqn.params[key]
  return None


def has_sub_jaxpr(eqn) -> bool:
  return any(key in eqn.params for key in CALL_JAXPR_KEYS)


def summarize_source(eqn) -> str:
  """Where an eqn was traced from (``file:line (function)``), from JAX's private
  ``source_info_util``, which moves between releases; raises if it is not there."""
  from jax._src import source_info_util  # pylint: disable=import-outside-toplevel

  return source_info_util.summarize(eqn.source_info)
