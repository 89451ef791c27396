"""The test processes' devices (for tests/ and experiments/tests/ alike)."""

import jax

# Every test process has 8 virtual CPU devices, so that the data-parallel and mesh tests
# run in-process. Set here, as pytest starts (it loads this file before the test folders'
# conftests and modules), before any JAX operation starts the backend, which fixes the
# device count. A test needing several devices takes them with jax.devices()[:n] and
# skips where the backend has fewer (an accelerator: this adds CPU devices only).
jax.config.update('jax_num_cpu_devices', 8)
