import os

# Seen here under heavy CPU load: an XLA CPU computation occasionally wedged the
# intra-op (Eigen) thread pool and the next eager op waited for ever (a known
# upstream failure mode of vmap-heavy CPU graphs). Single-threaded Eigen avoids
# it; set before JAX starts, inherited by the notebook kernels and subprocesses.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# Follow diffrax/equinox: implicit rank promotion is a bug in library code.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Run a test in float64, restoring the previous setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)
