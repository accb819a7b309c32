"""Exact samplers against their distributions (THEORY.md section 3).

Monte Carlo checks use fixed keys and |z| < 4 on moments with known values, plus
Kolmogorov-Smirnov tests against SciPy's chi-square and against an independent
NumPy sampler of the materialized data (X'X, X'y).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st

import collapse_jax as cj
from collapse_jax.tasks.samplers import (BartlettFactor, bartlett, bartlett_and_normal, bartlett_factor_and_normal,
                                   chisquare)
from collapse_jax.tasks.linear_regression import GaussianLaw

Z = 4.0
KS_P = 1e-3


def _z_mean(x, mean, var):
    return (np.mean(x) - mean) / np.sqrt(var / len(x))


@pytest.mark.parametrize("df", [1.0, 2.0, 2.5, 5.0, 33.0, 128.0])
def test_chisquare_moments_and_ks(df):
    # 64 lanes x 500 entries: df = 1, 2 reject 2.7%, 4.8% of proposals, so the exact retry loop
    # runs in nearly every lane; the sample must still be chi2(df).
    draw = jax.jit(jax.vmap(lambda k: chisquare(k, np.full(500, df))))
    x = np.asarray(draw(jax.random.split(jax.random.key(7), 64)), float).ravel()
    assert np.all(np.isfinite(x)) and np.all(x >= 0)
    assert abs(_z_mean(x, df, 2 * df)) < Z
    # variance: Var((x - df)^2) = E(x - df)^4 - (2 df)^2 with E(x - df)^4 = 12 df (df + 4)
    dev2 = (x - df) ** 2
    assert abs(_z_mean(dev2, 2 * df, 12 * df * (df + 4) - 4 * df ** 2)) < Z
    assert st.kstest(x, st.chi2(df).cdf).pvalue > KS_P


def test_chisquare_mixed_df_shape_and_float64(x64):
    df = np.array([[1.0, 3.0], [40.0, 97.0]])
    x = np.asarray(jax.jit(jax.vmap(lambda k: chisquare(k, df)))(jax.random.split(jax.random.key(1), 20000)))
    assert x.shape == (20000, 2, 2) and x.dtype == np.float64
    for i in range(2):
        for j in range(2):
            assert st.kstest(x[:, i, j], st.chi2(df[i, j]).cdf).pvalue > KS_P


def test_chisquare_traced_df():
    # df known only at run time (the boost branch is kept): still exact
    x = jax.jit(jax.vmap(lambda k, df: chisquare(k, df), (0, None)))(
        jax.random.split(jax.random.key(2), 20000), jnp.array([0.7, 6.0]))
    x = np.asarray(x, float)
    assert st.kstest(x[:, 0], st.chi2(0.7).cdf).pvalue > KS_P
    assert st.kstest(x[:, 1], st.chi2(6.0).cdf).pvalue > KS_P


@pytest.mark.parametrize("d,n", [(1, 3), (4, 6), (5, 9), (8, 40)])
def test_bartlett_gram_is_wishart(d, n):
    N = 40000
    A, z = jax.jit(jax.vmap(lambda k: bartlett_and_normal(k, n, d)))(jax.random.split(jax.random.key(d), N))
    A, z = np.asarray(A, float), np.asarray(z, float)
    assert np.all(np.triu(A, 1) == 0) and np.all(np.diagonal(A, axis1=1, axis2=2) > 0)
    G = A @ np.swapaxes(A, 1, 2)
    eye = np.eye(d, dtype=bool)
    # E G = n I; E G_ij^2 = n (i != j), n^2 + 2n (i == j)
    for i in range(d):
        for j in range(i + 1):
            g = G[:, i, j]
            second = n * n + 2 * n if i == j else n
            assert abs(_z_mean(g, n if i == j else 0.0, 2 * n if i == j else n)) < Z, (i, j)
            assert abs(_z_mean(g ** 2, second, np.var(g ** 2))) < Z, (i, j)
    # against materialized data: X'X with X (n, d) standard normal (independent NumPy sampler)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, n, d))
    G_ref = np.einsum("rni,rnj->rij", X, X)
    for i, j in [(0, 0), (d - 1, d - 1), (d - 1, 0)]:
        assert st.ks_2samp(G[:, i, j], G_ref[:, i, j]).pvalue > KS_P, (i, j)
    assert st.ks_2samp(np.trace(G, axis1=1, axis2=2), np.trace(G_ref, axis1=1, axis2=2)).pvalue > KS_P
    # z ~ N(0, I), independent of A
    assert np.all(np.abs(z.mean(0)) * np.sqrt(N) < Z)
    assert np.all(np.abs(np.mean(z ** 2, 0) - 1) / np.sqrt(2.0 / N) < Z)
    tr = np.trace(G, axis1=1, axis2=2)
    corr = np.corrcoef(np.concatenate([z, tr[:, None]], 1).T)[:d, d]
    assert np.all(np.abs(corr) * np.sqrt(N) < Z)


@pytest.mark.parametrize("d", [1, 2, 5, 6])
def test_bartlett_factor_algebra_matches_dense(d, x64):
    A, _ = bartlett_factor_and_normal(jax.random.key(3), d + 4, d)
    assert isinstance(A, BartlettFactor)
    dense = np.asarray(A.dense())
    assert dense.shape == (d, d)
    w = np.arange(1.0, d + 1)
    np.testing.assert_allclose(np.asarray(A.gram()), dense @ dense.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(A.matvec(jnp.asarray(w))), dense @ w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(A.rmatvec(jnp.asarray(w))), dense.T @ w, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(bartlett(jax.random.key(3), d + 4, d)), dense)


@pytest.mark.parametrize("factor", [None, np.array([[1.5, 0.0, 0.0], [0.4, 0.8, 0.0], [-0.3, 0.2, 0.5]])])
def test_regression_suffstat_matches_materialized(factor):
    """(X'X, X'y) from the Bartlett engine and from materialized data agree in distribution."""
    task = cj.LinearRegression(dim=3, noise=0.7)
    law = GaussianLaw(None if factor is None else jnp.asarray(factor, jnp.float32))
    theta = jnp.array([0.5, -1.0, 2.0])
    def draw(engine, seed):  # independent keys for the two samples
        keys = jax.random.split(jax.random.key(seed), 20000)
        return jax.jit(jax.vmap(lambda k: task.draw(k, law, theta, 12, engine)))(keys)

    a, b = draw("suffstat", 11), draw("samples", 12)
    for name in ("gram", "moment"):
        x, y = np.asarray(getattr(a, name), float), np.asarray(getattr(b, name), float)
        x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
        for col in range(x.shape[1]):
            assert st.ks_2samp(x[:, col], y[:, col]).pvalue > KS_P, (name, col)
