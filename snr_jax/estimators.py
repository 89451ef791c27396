"""SNR's threshold estimators (design §3), for building or configuring a rule by hand.

Each is also exported from `snr_jax` itself; this namespace gathers them for
``from snr_jax import estimators``.

Examples:
  >>> from snr_jax import estimators
  >>> est = estimators.GeometricEstimator(eta=0.01, tau_min=1, tau_max=10_000)
  >>> state = est.init(3)  # three units
  >>> type(state).__name__
  'GeometricState'
"""

from snr_jax._src.thresholds import (
    Estimator,
    GeometricEstimator,
    GeometricState,
    HistogramEstimator,
    HistogramState,
    PerTokenEstimator,
    RateState,
)

__all__ = [
    'Estimator',
    'GeometricEstimator',
    'GeometricState',
    'HistogramEstimator',
    'HistogramState',
    'PerTokenEstimator',
    'RateState',
]
