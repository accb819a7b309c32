import os

import jax
import pytest

# CLI tests must not write compiled code into the user's ~/.cache (the CLI enables the cache).
os.environ.setdefault("COLLAPSE_JAX_CACHE", "0")

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
