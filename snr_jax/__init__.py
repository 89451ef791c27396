"""snr_jax: Self-Normalized Resets and other plasticity methods for JAX/optax."""

from snr_jax.activations import (ActivationError, apply_with_preactivations, check_activations,
                                 fired, preactivations_from_intermediates)
from snr_jax.groups import (GroupError, NeuronGroup, ParamSlice, dense_group, discover_groups,
                            validate_groups)
from snr_jax.reset import keep_masks, reset_neurons, reset_optimizer_state, reset_params
from snr_jax.schedules import RefreshSchedule, at_random, every_n_steps, every_n_tasks
from snr_jax.snr import (SNRRule, SNRState, dead_fraction, saturating_add,
                         self_normalized_resets, snr, snr_info)
from snr_jax.thresholds import (GeometricEstimator, GeometricState, HistogramEstimator,
                                HistogramState)
from snr_jax.transform import (NeuronResets, ResetOptState, ResetRule, ResetState,
                               apply_resets, find_reset_state, with_resets)

__version__ = '0.1.0'

from snr_jax.activations import mean_activation
from snr_jax.cbp import CBPRule, CBPState, continual_backprop, lowest_k
from snr_jax.methods import METHODS, ignoring_reset_args, make_method, method_hyperparameters, snr_l2
from snr_jax.penalties import add_l2, add_l2_init, l2, l2_init
from snr_jax.redo import ReDoRule, ReDoState, redo, redo_scores
from snr_jax.reset import outgoing_magnitude
from snr_jax.shrink_perturb import shrink_perturb
from snr_jax.activations import fire_counts
from snr_jax.thresholds import PerTokenEstimator, RateState
