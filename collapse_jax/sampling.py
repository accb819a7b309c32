"""Exact samplers for sufficient statistics (THEORY.md section 3).

For ``n`` Gaussian samples with covariance ``Sigma = L L'`` the Gram matrix
``X'X`` is Wishart(Sigma, n) and equals ``L A A' L'`` in distribution, with
``A`` the lower-triangular Bartlett factor. Given ``X'X``, the noise moment
``X'eps`` is ``N(0, sigma^2 X'X)``, i.e. ``sigma * L A z``. Both need
``d (d + 1) / 2 + d`` random numbers instead of ``n (d + 1)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["bartlett", "chisquare", "psd_factor"]


def chisquare(key: jax.Array, df: jax.Array, dtype=None) -> jax.Array:
    """Chi-square draws with (possibly array-valued) degrees of freedom ``df``.

    Exact: ``chi2(k) = 2 * Gamma(k / 2)``.

    Args:
        key: a PRNG key.
        df: array of positive degrees of freedom; the output has its shape.
        dtype: float dtype (default: JAX's default float).
    """
    dtype = dtype or jnp.result_type(float)
    df = jnp.asarray(df, dtype)
    return 2.0 * jax.random.gamma(key, df / 2.0, dtype=dtype)


def bartlett(key: jax.Array, n: int | jax.Array, d: int, dtype=None) -> jax.Array:
    """Bartlett factor ``A`` (d, d) with ``A A' ~ Wishart(I_d, n)``; needs ``n >= d``.

    ``A[i, i] = sqrt(chi2(n - i))`` for ``i = 0..d-1`` and ``A[i, j] ~ N(0, 1)``
    for ``i > j``.

    Example:
        >>> A = bartlett(jax.random.key(0), 50, 3)
        >>> A.shape
        (3, 3)
    """
    dtype = dtype or jnp.result_type(float)
    k_diag, k_off = jax.random.split(key)
    diag = jnp.sqrt(chisquare(k_diag, n - jnp.arange(d), dtype))
    off = jnp.tril(jax.random.normal(k_off, (d, d), dtype), -1)
    return off + jnp.diag(diag)


def psd_factor(S: jax.Array) -> jax.Array:
    """A square factor ``F`` with ``F F' = S`` for a PSD (possibly singular) ``S``.

    Uses the eigendecomposition so that rank-deficient covariances and Gram
    matrices of low-rank designs are handled exactly (zero columns).
    """
    lam, U = jnp.linalg.eigh(S)
    return U * jnp.sqrt(jnp.clip(lam, 0.0))[None, :]
