"""snr_jax: Self-Normalized Resets and other plasticity methods for JAX/optax."""

import warnings as _warnings
from importlib import metadata as _metadata

from snr_jax._src.activations import (
    ActivationError,
    apply_with_preactivations,
    fire_counts,
    fired,
    mean_activation,
    preactivations_from_intermediates,
)
from snr_jax._src.capture import CaptureError, with_preactivations
from snr_jax._src.cbp import CBPRule, CBPState, continual_backprop
from snr_jax._src.discovery import (
    DiscoveredGroups,
    LeftOut,
    describe_groups,
    discover_groups,
    register_activation,
    register_unit_preserving,
    registration_scope,
    unregister_op,
)
from snr_jax._src.groups import (
    GroupError,
    NeuronGroup,
    ParamSlice,
    Site,
    check_groups,
    dense_group,
    validate_groups,
)
from snr_jax._src.methods import METHODS, make_method, method_hyperparameters, snr_l2
from snr_jax._src.penalties import L2InitState, add_l2, add_l2_init, l2, l2_init
from snr_jax._src.redo import ReDoRule, ReDoState, redo
from snr_jax._src.reset import reset_model_state, reset_neurons, reset_optimizer_state, reset_params
from snr_jax._src.schedules import (
    RefreshSchedule,
    ScheduleState,
    at_random,
    every_n_steps,
    every_n_tasks,
)
from snr_jax._src.shrink_perturb import ShrinkPerturbState, shrink_perturb
from snr_jax._src.snr import SNRRule, SNRState, dead_fraction, self_normalized_resets, snr
from snr_jax._src.thresholds import (
    Estimator,
    GeometricEstimator,
    GeometricState,
    HistogramEstimator,
    HistogramState,
    PerTokenEstimator,
    RateState,
)
from snr_jax._src.training import apply_gradients, reset_metrics, snr_info as _snr_info
from snr_jax._src.transform import (
    NeuronResets,
    NeuronResetsState,
    ResetRule,
    WithResetsState,
    reset_state,
    with_resets,
)

# Sub-namespaces of building blocks by kind (the same objects as above); imported here so
# that `import snr_jax` is enough to use `snr_jax.rules.SNRRule`.
from snr_jax import estimators as estimators
from snr_jax import reset as reset
from snr_jax import rules as rules
from snr_jax import schedules as schedules

try:
  __version__ = _metadata.version('snr_jax')
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
  __version__ = '0.0.0+unknown'

# Deprecated names, kept for one release: old name -> (new name, object). Reading one warns.
_DEPRECATED = {
    'ResetState': ('NeuronResetsState', NeuronResetsState),
    'ResetOptState': ('WithResetsState', WithResetsState),
    'snr_info': ('reset_metrics (with nested=True for the same shape)', _snr_info),
}


def __getattr__(name):
  if name in _DEPRECATED:
    new, obj = _DEPRECATED[name]
    _warnings.warn(
        f'snr_jax.{name} is deprecated and will be removed in the next release: '
        f'use snr_jax.{new}.',
        DeprecationWarning,
        stacklevel=2,
    )
    return obj
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = [
    'ActivationError',
    'CBPRule',
    'CBPState',
    'CaptureError',
    'DiscoveredGroups',
    'Estimator',
    'GeometricEstimator',
    'GeometricState',
    'GroupError',
    'HistogramEstimator',
    'HistogramState',
    'L2InitState',
    'LeftOut',
    'METHODS',
    'NeuronGroup',
    'NeuronResets',
    'NeuronResetsState',
    'ParamSlice',
    'PerTokenEstimator',
    'RateState',
    'ReDoRule',
    'ReDoState',
    'RefreshSchedule',
    'ResetRule',
    'SNRRule',
    'SNRState',
    'ScheduleState',
    'ShrinkPerturbState',
    'Site',
    'WithResetsState',
    'add_l2',
    'add_l2_init',
    'apply_gradients',
    'apply_with_preactivations',
    'at_random',
    'check_groups',
    'continual_backprop',
    'dead_fraction',
    'dense_group',
    'describe_groups',
    'discover_groups',
    'every_n_steps',
    'every_n_tasks',
    'fire_counts',
    'fired',
    'l2',
    'l2_init',
    'make_method',
    'mean_activation',
    'method_hyperparameters',
    'preactivations_from_intermediates',
    'redo',
    'register_activation',
    'register_unit_preserving',
    'registration_scope',
    'reset_metrics',
    'reset_model_state',
    'reset_neurons',
    'reset_optimizer_state',
    'reset_params',
    'reset_state',
    'self_normalized_resets',
    'shrink_perturb',
    'snr',
    'snr_l2',
    'unregister_op',
    'validate_groups',
    'with_preactivations',
    'with_resets',
]
