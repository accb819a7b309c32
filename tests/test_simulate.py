"""The Monte Carlo engine against THEORY.md section 7 and an independent NumPy oracle."""

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
from scipy import stats

import collapse_jax as cj
from oracle import simulate_numpy

Z_MAX = 4.0


def z_one(sample, expected):
    """z-score of a replicate mean against its expected value."""
    sample = np.asarray(sample, float)
    return (sample.mean() - expected) / (sample.std(ddof=1) / np.sqrt(len(sample)))


def z_two(a, b):
    """Two-sample z-score of the difference of means."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return (a.mean() - b.mean()) / se


def delta(d, N, sigma=1.0):
    return sigma**2 * d / (N - d - 1)


# ------------------------------------------------------------ THEORY section 7
def test_chain_stationary_error_is_i_plus_one_delta():
    K, d, N = 4, 4, 40
    eco = cj.graphs.chain(K, n=N, m=N)
    res = cj.simulate(eco, cj.LinearRegression(dim=d), jax.random.key(1), generations=K, replicates=4000)
    final = np.asarray(res.error[:, -1])
    for i in range(K):
        z = z_one(final[:, i], (i + 1) * delta(d, N))
        assert abs(z) < Z_MAX, (i, z)


def test_star_hub_delta_leaves_two_delta():
    K, d, N = 4, 3, 30
    eco = cj.graphs.star(K, n=N, m=N)
    res = cj.simulate(eco, cj.LinearRegression(dim=d), jax.random.key(2), generations=3, replicates=4000)
    final = np.asarray(res.error[:, -1])
    assert abs(z_one(final[:, 0], delta(d, N))) < Z_MAX
    for i in range(1, K):
        assert abs(z_one(final[:, i], 2 * delta(d, N))) < Z_MAX, i


def test_self_loop_grows_by_d_over_m_minus_d_minus_one():
    d, m, T = 4, 30, 12
    eco = cj.graphs.ring(1, real=(), m=m)  # one model on a self-loop, n0 = m
    assert eco.model_edges == ((0, 0),)
    res = cj.simulate(eco, cj.LinearRegression(dim=d), jax.random.key(3), generations=T, replicates=4000)
    err = np.asarray(res.error[:, :, 0])
    slope = delta(d, m)
    for t in (1, T // 2, T):
        assert abs(z_one(err[:, t], (t + 1) * slope)) < Z_MAX, t
    row = res.summary()["m0"]
    assert row["grows"]
    assert abs(row["slope"] - slope) < Z_MAX * row["slope_se"]


def test_complete_graph_slope_is_delta_over_k():
    # Equal weights, self-loops, no data after generation 0: the consensus is a
    # martingale whose variance grows by delta/K per generation, delta for N = K m.
    K, d, m, T = 3, 3, 200, 40
    eco = cj.graphs.complete(K, m=m)
    res = cj.simulate(eco, cj.LinearRegression(dim=d), jax.random.key(4), generations=T, replicates=3000)
    expected = delta(d, K * m) / K
    for row in res.summary().rows:
        assert row["grows"]
        assert abs(row["slope"] - expected) < Z_MAX * row["slope_se"], row


def test_bounded_models_are_not_flagged_as_growing():
    res = cj.simulate(cj.graphs.ring(4, alpha=0.5, real=(0,), n=30, m=30), cj.LinearRegression(dim=3),
                      jax.random.key(5), generations=40, replicates=500)
    assert not any(r["grows"] for r in res.summary().rows)


# ------------------------------------------------------ engines and semantics
def _mixed_graph():
    """Fresh and fixed data, a non-identity covariance, a self-loop and a fixed synthetic design."""
    rng = np.random.default_rng(0)
    G = nx.DiGraph()
    G.add_node("web", kind="data", n=12, cov=np.diag([1.0, 2.0, 0.5]))
    G.add_node("corpus", kind="data", n=9, fresh=False, theta=np.array([0.2, -0.1, 0.4]))
    G.add_node("a", kind="model", n_synthetic=10)
    G.add_node("b", kind="model", n_synthetic=8, cov=np.array([[1.0, 0.3, 0], [0.3, 1.0, 0], [0, 0, 2.0]]))
    G.add_node("c", kind="model", design=rng.normal(size=(7, 3)))
    G.add_edges_from([("web", "a", {"weight": 2.0}), ("corpus", "a", {"weight": 1.0}), ("a", "a", {"weight": 1.0}),
                      ("a", "b", {"weight": 1.0}), ("corpus", "b", {"weight": 1.0}), ("c", "b", {"weight": 1.0}),
                      ("b", "c", {"weight": 1.0}), ("web", "c", {"weight": 1.0})])
    return cj.Ecosystem.from_networkx(G, alpha={"a": 0.4, "b": 0.6, "c": 0.5})


def test_suffstat_and_samples_engines_agree_in_distribution():
    eco, task = _mixed_graph(), cj.LinearRegression(dim=3, noise=0.7)
    kw = dict(generations=4, replicates=3000)
    a = np.asarray(cj.simulate(eco, task, jax.random.key(6), engine="suffstat", **kw).error[:, -1])
    b = np.asarray(cj.simulate(eco, task, jax.random.key(7), engine="samples", **kw).error[:, -1])
    for k in range(eco.K):
        assert stats.ks_2samp(a[:, k], b[:, k]).pvalue > 1e-3, k
        assert abs(z_two(a[:, k], b[:, k])) < Z_MAX, k


@pytest.mark.parametrize("regime,pool,loss_scale", [
    ("replace", "independent", "mean"),
    ("accumulate", "independent", "mean"),
    ("accumulate", "shared", "sum"),
    ("replace", "shared", "sum"),
])
def test_engine_matches_numpy_reference(regime, pool, loss_scale):
    eco, task = _mixed_graph(), cj.LinearRegression(dim=3, noise=0.7)
    T = 3
    ours = np.asarray(cj.simulate(eco, task, jax.random.key(8), generations=T, replicates=4000,
                                  regime=regime, pool=pool, loss_scale=loss_scale).error)
    ref = simulate_numpy(eco, task, np.random.default_rng(9), generations=T, replicates=800,
                         regime=regime, pool=pool, loss_scale=loss_scale)
    for t in (1, T):
        for k in range(eco.K):
            z = z_two(np.log(ours[:, t, k]), np.log(ref[:, t, k]))
            assert abs(z) < Z_MAX, (t, k, z)


def test_ridge_matches_numpy_reference():
    eco = cj.graphs.ring(3, alpha=0.5, real=(0,), n=6, m=5)
    task = cj.LinearRegression(dim=4, ridge=0.3)
    ours = np.asarray(cj.simulate(eco, task, jax.random.key(10), generations=3, replicates=4000).error[:, -1])
    ref = simulate_numpy(eco, task, np.random.default_rng(11), generations=3, replicates=800)[:, -1]
    for k in range(3):
        assert abs(z_two(ours[:, k], ref[:, k])) < Z_MAX, k


# ------------------------------------------------------------- reproducibility
def test_first_replicates_do_not_depend_on_the_number_of_replicates():
    eco, task = cj.graphs.star(3, n=20, m=20), cj.LinearRegression(dim=3)
    key = jax.random.key(12)
    big = cj.simulate(eco, task, key, generations=5, replicates=7)
    small = cj.simulate(eco, task, key, generations=5, replicates=3)
    chunked = cj.simulate(eco, task, key, generations=5, replicates=7, batch_size=2)
    np.testing.assert_array_equal(np.asarray(big.error[:3]), np.asarray(small.error))
    np.testing.assert_array_equal(np.asarray(big.error), np.asarray(chunked.error))
    again = cj.simulate(eco, task, key, generations=5, replicates=7)
    np.testing.assert_array_equal(np.asarray(big.error), np.asarray(again.error))
    other = cj.simulate(eco, task, jax.random.key(13), generations=5, replicates=7)
    assert not np.array_equal(np.asarray(big.error), np.asarray(other.error))


def test_float64_path(x64):
    d, N = 3, 25
    res = cj.simulate(cj.graphs.chain(2, n=N, m=N), cj.LinearRegression(dim=d), jax.random.key(14),
                      generations=2, replicates=3000)
    assert res.error.dtype == jnp.float64
    assert res.metrics["dispersion"].dtype == jnp.float64
    assert abs(z_one(np.asarray(res.error[:, -1, 1]), 2 * delta(d, N))) < Z_MAX


def test_overflow_reports_inf_never_nan():
    task = cj.LinearRegression(dim=3, noise=1e37)
    res = cj.simulate(cj.graphs.ring(1, real=(), m=10), task, jax.random.key(15), generations=6, replicates=20)
    err = np.asarray(res.error)
    assert not np.isnan(err).any()
    assert np.isinf(err).any()
    row = res.summary()["m0"]
    assert row["grows"] and row["overflow_generation"] is not None


def test_metrics_shapes_and_homogenization():
    K, T, R = 4, 30, 200
    eco = cj.graphs.complete(K, m=40)
    res = cj.simulate(eco, cj.LinearRegression(dim=3), jax.random.key(16), generations=T, replicates=R)
    assert res.error.shape == (R, T + 1, K)
    for name in ("dispersion", "cosine"):
        assert res.metrics[name].shape == (R, T + 1)
    # Independent direct recomputation from the parameters is not available, so
    # check the physics: models that share everything homogenize while their
    # error grows; dispersion is bounded and cosine close to 1.
    disp = np.asarray(res.metrics["dispersion"]).mean(0)
    err = res.mean.mean(1)
    assert disp[-1] < 0.2 * err[-1]
    assert np.asarray(res.metrics["cosine"]).mean(0)[-1] > 0.9


def test_bad_options_raise():
    eco, task, key = cj.graphs.chain(2), cj.LinearRegression(dim=3), jax.random.key(0)
    for kw, word in [(dict(regime="forget"), "regime"), (dict(pool="x"), "pool"),
                     (dict(loss_scale="avg"), "loss_scale"), (dict(engine="gpu"), "engine"),
                     (dict(replicates=0), "replicates"), (dict(generations=-1), "generations"),
                     (dict(batch_size=0), "batch_size")]:
        kw.setdefault("generations", 2)
        with pytest.raises(ValueError, match=word):
            cj.simulate(eco, task, key, **kw)
    with pytest.raises(ValueError, match="key"):
        cj.simulate(eco, task, 0, generations=2)
