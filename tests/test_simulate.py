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


# The Monte Carlo tests on _mixed_graph share T = 3 and R = 4000 where they can: simulate compiles one
# program per set of options, which the first test that runs them pays for the others.
MIXED_T, MIXED_R = 3, 4000


def test_suffstat_and_samples_engines_agree_in_distribution():
    eco, task = _mixed_graph(), cj.LinearRegression(dim=3, noise=0.7)
    kw = dict(generations=MIXED_T, replicates=MIXED_R)
    a = np.asarray(cj.simulate(eco, task, jax.random.key(6), engine="suffstat", **kw).error[:, -1])
    b = np.asarray(cj.simulate(eco, task, jax.random.key(7), engine="samples", **kw).error[:, -1])
    for k in range(eco.K):
        assert stats.ks_2samp(a[:, k], b[:, k]).pvalue > 1e-3, k
        assert abs(z_two(a[:, k], b[:, k])) < Z_MAX, k


# Shared pools and loss_scale="sum" meet NumPy by default in test_accumulate_subsample_matches_numpy_reference
# [shared-sum], and the suffstat engine's shared pools meet the statistics-free samples path on the same keys in
# test_regression_through_the_samples_path_matches_the_statistics_path[replace-shared]: the two other
# combinations here are slow (about 8 s each).
@pytest.mark.parametrize("regime,pool,loss_scale", [
    ("replace", "independent", "mean"),
    ("accumulate", "independent", "mean"),
    pytest.param("accumulate", "shared", "sum", marks=pytest.mark.slow),
    pytest.param("replace", "shared", "sum", marks=pytest.mark.slow),
])
def test_engine_matches_numpy_reference(regime, pool, loss_scale):
    eco, task = _mixed_graph(), cj.LinearRegression(dim=3, noise=0.7)
    T = MIXED_T
    ours = np.asarray(cj.simulate(eco, task, jax.random.key(8), generations=T, replicates=MIXED_R,
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
@pytest.mark.default_compiler
def test_first_replicates_do_not_depend_on_the_number_of_replicates():
    eco, task = cj.graphs.star(3, n=20, m=20), cj.LinearRegression(dim=3)
    key = jax.random.key(12)
    big = cj.simulate(eco, task, key, generations=5, replicates=7)
    small = cj.simulate(eco, task, key, generations=5, replicates=3)
    chunked = cj.simulate(eco, task, key, generations=5, replicates=7, batch_size=2)
    np.testing.assert_array_equal(np.asarray(big.error[:3]), np.asarray(small.error))
    np.testing.assert_array_equal(np.asarray(big.error), np.asarray(chunked.error))
    # Batches of 14 (3 of them), as cpu_batch_size chooses for a large replicate.
    many = cj.simulate(eco, task, key, generations=5, replicates=40, batch_size=14)
    np.testing.assert_array_equal(np.asarray(many.error[:7]), np.asarray(big.error))
    again = cj.simulate(eco, task, key, generations=5, replicates=7)
    np.testing.assert_array_equal(np.asarray(big.error), np.asarray(again.error))
    other = cj.simulate(eco, task, jax.random.key(13), generations=5, replicates=7)
    assert not np.array_equal(np.asarray(big.error), np.asarray(other.error))


def test_default_batch_size_keeps_a_batch_in_cache_on_cpu():
    from collapse_jax.engine.simulate import CPU_BATCH_FLOATS, cpu_batch_size, default_batch_size, replicate_footprint

    # The footprint by hand: 1 real edge, 3 model edges, 2 models; p = d = 5.
    eco = cj.graphs.from_edges(2, [(0, 1), (1, 0), (1, 1)], real=(0,), n=40, m=30)
    task = cj.LinearRegression(dim=5)
    assert replicate_footprint(eco, task) == (1 + 3 + 2) * (25 + 5)
    assert default_batch_size(100, 7, eco, task) == 7 and default_batch_size(100, 500, eco, task) == 500  # the caller's
    if jax.default_backend() != "cpu":
        assert default_batch_size(1000, None, eco, task) is None  # accelerators: all replicates at once
        return
    assert default_batch_size(1000, None, eco, task) == 1000  # 180 numbers a replicate: one batch
    assert CPU_BATCH_FLOATS == 2**20
    # The standard study: 8 + 41 edges and 16 models, p = d = 32.
    standard = (8 + 41 + 16) * (32 * 32 + 32)
    for R, footprint, width in [(1024, standard, 16), (4096, standard, 16), (17, standard, 9),
                                (4000, 84, 4000), (2000, 880, 1000), (10, 10**9, 10)]:
        assert cpu_batch_size(R, footprint) == width, (R, footprint)
    for R in range(1, 300):  # even batches of at most 16 (when a replicate is large), no more batches than needed
        w = cpu_batch_size(R, 10**9)
        batches = -(-R // w)
        assert w <= 16 and batches == -(-R // 16) and batches * w - R < batches, R


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


# ------------------------------------------------- the protocol's two paths
from typing import NamedTuple

from collapse_jax.tasks.base import Task, task_dataclass
from collapse_jax.tasks.linear_regression import LinearRegression


class MeanStats(NamedTuple):
    count: jax.Array  # ()
    total: jax.Array  # (d,)


@task_dataclass(data_fields=["mean"], meta_fields=["dim"])
class GaussianMean(Task):
    """Toy estimator: x ~ N(mu, I_d); a model is the weighted sample mean (additive statistics)."""

    dim: int
    mean: float = 0.5

    def check(self, eco):
        pass

    def truth_param(self):
        return jnp.full((self.dim,), self.mean, jnp.result_type(float))

    def data_params(self, eco):
        return jnp.stack([self.truth_param()] * eco.S) if eco.S else jnp.zeros((0, self.dim))

    def data_laws(self, eco):
        return [None] * eco.S

    def synthetic_laws(self, eco):
        return [None] * eco.K

    def truth_law(self):
        return None

    def sample(self, key, law, mu, n):
        return mu[None, :] + jax.random.normal(key, (n, self.dim), mu.dtype)

    def statistics(self, data, weights=None):
        w = jnp.ones(data.shape[0], data.dtype) if weights is None else weights.astype(data.dtype)
        return MeanStats(w.sum(), w @ data)

    def fit(self, stats):
        return stats.total / stats.count

    def risk(self, mu):
        e = mu - self.truth_param().astype(mu.dtype)
        return e @ e

    def metrics(self, mu):
        return {"norm": jnp.linalg.norm(mu)}


@task_dataclass(data_fields=["mean"], meta_fields=["dim"])
class GaussianMeanFromSamples(GaussianMean):
    """The same estimator without finite statistics: fit from weighted samples."""

    additive = False

    def fit_samples(self, data, weights):
        w = weights.astype(data.dtype)
        return (w @ data) / w.sum()


@task_dataclass(data_fields=["noise", "theta", "cov", "ridge"], meta_fields=["dim", "solver"])
class RegressionFromSamples(LinearRegression):
    """Linear regression forced through the samples path (fit_samples = fit(statistics(data, w)))."""

    additive = False
    supports_suffstat = False


def _toy_graph():
    G = nx.DiGraph()
    G.add_node("web", kind="data", n=7)
    G.add_node("corpus", kind="data", n=5, fresh=False)
    G.add_node("a", kind="model", n_synthetic=6)
    G.add_node("b", kind="model", n_synthetic=4)
    G.add_node("c", kind="model", n_synthetic=9, n0=3)
    G.add_edges_from([("web", "a", {"weight": 2.0}), ("corpus", "a", {"weight": 1.0}), ("a", "a", {"weight": 1.0}),
                      ("a", "b", {"weight": 1.0}), ("corpus", "b", {"weight": 1.0}), ("c", "b", {"weight": 1.0}),
                      ("b", "c", {"weight": 1.0}), ("c", "c", {"weight": 2.0})])
    return cj.Ecosystem.from_networkx(G, alpha={"a": 0.4, "b": 0.6})


# Every regime, both pools and both loss scales in the default suite; the two other combinations are
# slow: accumulate with independent pools through the non-additive path is also
# test_regression_through_the_samples_path_matches_the_statistics_path[accumulate-independent], and
# accumulate_subsample with independent pools test_accumulate_subsample_matches_numpy_reference[independent-mean].
@pytest.mark.parametrize("regime,pool,loss_scale", [
    ("replace", "independent", "mean"),
    ("accumulate", "shared", "mean"),
    pytest.param("accumulate", "independent", "sum", marks=pytest.mark.slow),
    ("accumulate_subsample", "shared", "sum"),
    pytest.param("accumulate_subsample", "independent", "mean", marks=pytest.mark.slow),
])
def test_non_additive_path_fits_the_same_samples_as_the_additive_path(regime, pool, loss_scale):
    # Same keys, same items: the samples path (padded per-model gather, fit_samples)
    # must fit exactly the data sets the statistics path summarizes.
    eco, T = _toy_graph(), 4
    kw = dict(generations=T, replicates=50, regime=regime, pool=pool, loss_scale=loss_scale, engine="samples")
    a = cj.simulate(eco, GaussianMean(dim=2), jax.random.key(20), return_params=True, **kw)
    b = cj.simulate(eco, GaussianMeanFromSamples(dim=2), jax.random.key(20), return_params=True, **kw)
    np.testing.assert_allclose(np.asarray(b.params), np.asarray(a.params), rtol=2e-4, atol=1e-5)
    assert np.asarray(b.metrics["norm"]).shape == (50, T + 1, 3)
    other = cj.simulate(eco, GaussianMeanFromSamples(dim=2), jax.random.key(21), **kw)
    assert not np.allclose(np.asarray(other.error), np.asarray(b.error))


@pytest.mark.parametrize("regime,pool", [("replace", "shared"), ("accumulate", "independent"),
                                         ("accumulate_subsample", "shared")])
def test_regression_through_the_samples_path_matches_the_statistics_path(regime, pool):
    eco = _mixed_graph()
    kw = dict(generations=3, replicates=20, regime=regime, pool=pool, engine="samples", return_params=True)
    a = cj.simulate(eco, cj.LinearRegression(dim=3, noise=0.7), jax.random.key(22), **kw)
    b = cj.simulate(eco, RegressionFromSamples(dim=3, noise=0.7), jax.random.key(22), **kw)
    np.testing.assert_allclose(np.asarray(b.params), np.asarray(a.params), rtol=1e-3, atol=1e-4)


def test_toy_mean_estimator_matches_theory_on_a_chain():
    # Model 0 reads n fresh samples, model 1 reads model 0's m samples:
    # E||mu_1 - mu*||^2 = d/n + d/m at every generation t >= 1.
    d, n, m = 3, 8, 5
    eco = cj.graphs.chain(2, n=n, m=m)
    res = cj.simulate(eco, GaussianMeanFromSamples(dim=d), jax.random.key(23), generations=2, replicates=4000)
    final = np.asarray(res.error[:, -1])
    assert abs(z_one(final[:, 0], d / n)) < Z_MAX
    assert abs(z_one(final[:, 1], d / n + d / m)) < Z_MAX


# ------------------------------------------------ parameters and task metrics
def _fixed_design_graph():
    rng = np.random.default_rng(3)
    G = nx.DiGraph()
    G.add_node("web", kind="data", n=12, cov=np.diag([1.0, 2.0, 0.5]))
    G.add_node("crawl", kind="data", fresh=False, design=rng.normal(size=(9, 3)), theta=np.array([0.3, -0.2, 0.1]))
    G.add_node("a", kind="model", n_synthetic=10)
    G.add_node("b", kind="model", n_synthetic=8)
    G.add_edges_from([("web", "a", {"weight": 1.0}), ("a", "a", {"weight": 1.0}), ("crawl", "b", {"weight": 1.0}),
                      ("a", "b", {"weight": 1.0}), ("b", "b", {"weight": 1.0})])
    return cj.Ecosystem.from_networkx(G, alpha=0.5)


@pytest.mark.parametrize("engine", ["suffstat", "samples"])
def test_params_and_cross_task_error_against_numpy(engine):
    eco, task = _fixed_design_graph(), cj.LinearRegression(dim=3, noise=0.8)
    R, T = 6, 3
    res = cj.simulate(eco, task, jax.random.key(24), generations=T, replicates=R, engine=engine,
                      return_params=True, metrics=("task_error",))
    theta = np.asarray(res.params, float)
    assert theta.shape == (R, T + 1, eco.K, 3)
    e = theta - np.asarray(task.theta_star, float)
    np.testing.assert_allclose(np.asarray(res.error), np.einsum("rtki,rtki->rtk", e, e), rtol=1e-4, atol=1e-6)
    X = eco.data_attr("design")[1]
    covs = [eco.data_attr("cov")[0], X.T @ X / X.shape[0]]
    thetas = [np.asarray(task.theta_star, float), eco.data_attr("theta")[1]]
    expected = np.stack([np.einsum("rtki,ij,rtkj->rtk", theta - th, c, theta - th)
                         for c, th in zip(covs, thetas)], axis=-1)
    assert res.metrics["task_error"].shape == (R, T + 1, eco.K, eco.S)
    np.testing.assert_allclose(np.asarray(res.metrics["task_error"]), expected, rtol=1e-4, atol=1e-6)


def test_metrics_argument_restricts_and_validates():
    eco, task, key = _fixed_design_graph(), cj.LinearRegression(dim=3), jax.random.key(25)
    res = cj.simulate(eco, task, key, generations=2, metrics=())
    assert set(res.metrics) == {"dispersion", "cosine"} and res.params is None
    assert "task_error" not in cj.simulate(eco, task, key, generations=2).metrics  # only on request
    with pytest.raises(ValueError, match=r"metrics: 'support' is not offered by LinearRegression"):
        cj.simulate(eco, task, key, generations=2, metrics=("support",))
    with pytest.raises(ValueError, match=r"metrics must be a sequence"):
        cj.simulate(eco, task, key, generations=2, metrics="task_error")


# ------------------------------------------------------ accumulate_subsample
@pytest.mark.parametrize("pool,loss_scale", [("independent", "mean"), ("shared", "sum")])
def test_accumulate_subsample_matches_numpy_reference(pool, loss_scale):
    eco, task = _mixed_graph(), cj.LinearRegression(dim=3, noise=0.7)
    T = MIXED_T
    ours = np.asarray(cj.simulate(eco, task, jax.random.key(26), generations=T, replicates=MIXED_R,
                                  regime="accumulate_subsample", pool=pool, loss_scale=loss_scale).error)
    ref = simulate_numpy(eco, task, np.random.default_rng(27), generations=T, replicates=800,
                         regime="accumulate_subsample", pool=pool, loss_scale=loss_scale)
    for k in range(eco.K):
        z = z_two(np.log(ours[:, T, k]), np.log(ref[:, T, k]))
        assert abs(z) < Z_MAX, (k, z)
    if pool == "shared":  # the regime's identity once (its accumulate program is test_engine_matches_numpy_reference's)
        return
    # and it is neither replace nor accumulate: a self-consuming model degrades differently
    acc = np.asarray(cj.simulate(eco, task, jax.random.key(26), generations=T, replicates=MIXED_R,
                                 regime="accumulate", pool=pool, loss_scale=loss_scale).error)
    assert max(abs(z_two(np.log(ours[:, T, k]), np.log(acc[:, T, k]))) for k in range(eco.K)) > Z_MAX


def test_accumulate_subsample_equals_replace_at_the_first_generation():
    eco, task = _mixed_graph(), cj.LinearRegression(dim=3, noise=0.7)
    kw = dict(generations=2, replicates=30, engine="samples", return_params=True)
    sub = cj.simulate(eco, task, jax.random.key(28), regime="accumulate_subsample", **kw)
    rep = cj.simulate(eco, task, jax.random.key(28), regime="replace", **kw)
    np.testing.assert_allclose(np.asarray(sub.params[:, :2]), np.asarray(rep.params[:, :2]), rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(sub.params[:, 2]), np.asarray(rep.params[:, 2]))
    with pytest.raises(ValueError, match=r"engine='suffstat'.*accumulate_subsample"):
        cj.simulate(eco, task, jax.random.key(28), generations=2, regime="accumulate_subsample", engine="suffstat")


# --------------------------------------------------------------- bad input
def test_bad_arguments_name_the_culprit():
    eco, task, key = cj.graphs.chain(2), cj.LinearRegression(dim=3), jax.random.key(0)
    with pytest.raises(ValueError, match=r"key is required"):
        cj.simulate(eco, task, None, generations=1)
    with pytest.raises(ValueError, match=r"task is required"):
        cj.simulate(eco, None, key, generations=1)
    with pytest.raises(ValueError, match=r"task must be an estimator.*lacks"):
        cj.simulate(eco, object(), key, generations=1)
    with pytest.raises(ValueError, match=r"diagnostics must be True or False, got 'yes'"):
        cj.simulate(eco, task, key, generations=1, diagnostics="yes")
    with pytest.raises(ValueError, match=r"return_params must be True or False"):
        cj.simulate(eco, task, key, generations=1, return_params=1)
    with pytest.raises(ValueError, match=r"replicates must be at most 2\*\*32"):
        cj.simulate(eco, task, key, generations=1, replicates=2**32 + 1)


@pytest.mark.default_compiler
@pytest.mark.parametrize("task,engine,pool,regime", [
    (cj.LinearRegression(dim=3), "samples", "independent", "replace"),
    (cj.LinearRegression(dim=3), "suffstat", "shared", "accumulate"),
    # Slow (16 s with the default flags): map_replicates pads and maps the same way for every task and regime;
    # the two cases above cover both engines and both pools.
    pytest.param(GaussianMeanFromSamples(dim=2), "samples", "shared", "accumulate_subsample", marks=pytest.mark.slow),
])
def test_bit_identical_whatever_batch_size_and_replicate_count(task, engine, pool, regime):
    # XLA compiles a width-1 vmap differently (a batched dot of batch 1 becomes an
    # unbatched dot that sums in another order); map_replicates never uses width 1.
    eco, key = cj.graphs.star(3, n=20, m=20), jax.random.key(12)
    kw = dict(generations=3, engine=engine, pool=pool, regime=regime, metrics=())
    big = np.asarray(cj.simulate(eco, task, key, replicates=7, **kw).error)
    np.testing.assert_array_equal(np.asarray(cj.simulate(eco, task, key, replicates=1, **kw).error), big[:1])
    for b in (1, 3):
        np.testing.assert_array_equal(
            np.asarray(cj.simulate(eco, task, key, replicates=7, batch_size=b, **kw).error), big, err_msg=str(b))


def test_engine_stream_ignores_and_restores_the_callers_threefry_setting():
    """The engine scopes jax.threefry_partitionable itself: its result does not depend on the caller's
    setting, the setting is as it was after the call, and the caller's own draws keep their stream."""
    eco, task = cj.graphs.chain(2, n=11, m=11), cj.LinearRegression(dim=3)
    key = jax.random.key(3)
    runs = {}
    for setting in (True, False):
        with jax.threefry_partitionable(setting):
            runs[setting] = np.asarray(cj.simulate(eco, task, key, generations=3, replicates=4).error)
            assert jax.config.jax_threefry_partitionable is setting
            mine = np.asarray(jax.random.normal(key, (64,)))
            with jax.threefry_partitionable(not setting):
                assert not np.array_equal(mine, np.asarray(jax.random.normal(key, (64,))))  # the flag matters
    np.testing.assert_array_equal(runs[True], runs[False])
