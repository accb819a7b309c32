import jax
import pytest

# Follow diffrax/equinox: implicit rank promotion is a bug in library code.
jax.config.update("jax_numpy_rank_promotion", "raise")
# Seen here (three times in about ten full runs): a CPU computation dispatched
# asynchronously never became ready and the next host read waited for ever, every
# thread asleep (the upstream XLA CPU async-dispatch hang, jax-ml/jax#25861).
# Synchronous CPU dispatch avoids it. (Not settable by environment variable.)
jax.config.update("jax_cpu_enable_async_dispatch", False)


@pytest.fixture
def x64():
    """Run a test in float64, restoring the previous setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)
