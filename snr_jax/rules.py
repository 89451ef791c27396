"""Reset rules and the wrapper that runs one after the inner optimizer (design §4, §5).

A rule decides which units to reset; `with_resets` (or the bare `NeuronResets`) applies
the decision to params and the optimizer state. Each name is also exported from `snr_jax`
itself; this namespace gathers the building blocks for ``from snr_jax import rules``.

Examples:
  >>> from snr_jax import rules
  >>> rules.ResetRule in rules.SNRRule.__mro__  # a rule of your own subclasses ResetRule
  True
"""

from snr_jax._src.cbp import CBPRule, CBPState
from snr_jax._src.redo import ReDoRule, ReDoState
from snr_jax._src.snr import SNRRule, SNRState
from snr_jax._src.transform import (
    NeuronResets,
    NeuronResetsState,
    ResetRule,
    WithResetsState,
    reset_state,
    with_resets,
)

__all__ = [
    'CBPRule',
    'CBPState',
    'NeuronResets',
    'NeuronResetsState',
    'ReDoRule',
    'ReDoState',
    'ResetRule',
    'SNRRule',
    'SNRState',
    'WithResetsState',
    'reset_state',
    'with_resets',
]
