"""The low-level reset shared by every resetting method (design §4).

Given boolean masks per neuron group, these re-initialise the units' incoming weights and
biases, zero their outgoing weights, and reset the matching optimizer and model-state
slices. Each name is also exported from `snr_jax` itself; this namespace gathers them for
``from snr_jax import reset``.

Examples:
  >>> from snr_jax import reset
  >>> callable(reset.reset_neurons)
  True
"""

from snr_jax._src.reset import (
    reset_model_state,
    reset_neurons,
    reset_optimizer_state,
    reset_params,
)

__all__ = [
    'reset_model_state',
    'reset_neurons',
    'reset_optimizer_state',
    'reset_params',
]
