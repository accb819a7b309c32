"""GaussianFit: statistics and fit against NumPy, KL against the closed form, the exact
sufficient-statistic sampler against SciPy, the local theory (tr(A C) = p / 2, A = Hessian / 2),
and THEORY section 7's variance cases through ``collapse_jax.simulate`` on a self-loop."""


import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
import scipy.special
import scipy.stats

import collapse_jax as cj
from collapse_jax.tasks import GaussianFit, GaussianParams, task_dataclass
from collapse_jax.tasks.gaussian import gaussian_kl
from oracle import engine_vs_oracle, two_source_chain
from oracle import gaussian_kl as np_kl

Z_MAX = 4.0


def zscore(x, expected):
    x = np.asarray(x, float)
    return (x.mean() - expected) / (x.std(ddof=1) / np.sqrt(len(x)))


def two_sample_z(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


def random_spd(rng, d):
    B = rng.normal(size=(d, d))
    return B @ B.T / d + 0.5 * np.eye(d)


def self_loop(n):
    """One model; generation 0 fits on n truth samples, then on its own n samples."""
    return cj.graphs.from_edges(1, [(0, 0)], real=(), n=n, m=n, n0=n)


# Report a fitted quantity as the per-generation "error" (the engine returns risks only).
def _reporting(fn):
    @task_dataclass(data_fields=["mean", "cov"], meta_fields=["dim", "estimator"])
    class Reporting(GaussianFit):
        def risk(self, param):
            return fn(param)

    return Reporting


Variance = _reporting(lambda p: p.cov[0, 0])
LogVariance = _reporting(lambda p: jnp.log(p.cov[0, 0]))


# ------------------------------------------------------------------ numerics
def test_kl_matches_closed_form(x64):
    rng = np.random.default_rng(0)
    for d in (1, 2, 5):
        mu0, mu1 = rng.normal(size=d), rng.normal(size=d)
        S0, S1 = random_spd(rng, d), random_spd(rng, d)
        got = float(gaussian_kl(jnp.asarray(mu0), jnp.asarray(S0), jnp.asarray(mu1), jnp.asarray(S1)))
        np.testing.assert_allclose(got, np_kl(mu0, S0, mu1, S1), rtol=1e-10)
        task = GaussianFit(dim=d, mean=jnp.asarray(mu0), cov=jnp.asarray(S0))
        np.testing.assert_allclose(float(task.risk(GaussianParams(jnp.asarray(mu1), jnp.asarray(S1)))),
                                   np_kl(mu0, S0, mu1, S1), rtol=1e-10)
        assert float(task.risk(task.truth_param())) == pytest.approx(0.0, abs=1e-12)


def test_kl_is_inf_never_nan_on_bad_covariances():
    task = GaussianFit(dim=2)
    mean = jnp.zeros(2)
    for cov in (jnp.zeros((2, 2)), jnp.diag(jnp.array([1.0, 0.0])), -jnp.eye(2),
                jnp.array([[1.0, 2.0], [2.0, 1.0]]), jnp.full((2, 2), jnp.nan), jnp.full((2, 2), jnp.inf)):
        assert float(task.risk(GaussianParams(mean, cov))) == np.inf
        assert float(jax.jit(task.risk)(GaussianParams(mean, cov))) == np.inf
    assert float(task.risk(GaussianParams(jnp.full(2, jnp.nan), jnp.eye(2)))) == np.inf
    # Tiny but PD: large and finite.
    r = float(task.risk(GaussianParams(mean, 1e-20 * jnp.eye(2))))
    assert np.isfinite(r) and r > 1e10


def test_statistics_and_fit_match_numpy(x64):
    rng = np.random.default_rng(1)
    d, n = 3, 40
    x = rng.normal(size=(n, d)) @ random_spd(rng, d) + rng.normal(size=d)
    w = rng.uniform(0.1, 2.0, size=n)
    for est, ddof in (("mle", 0), ("unbiased", 1)):
        task = GaussianFit(dim=d, estimator=est)
        fit = task.fit(task.statistics(jnp.asarray(x)))
        np.testing.assert_allclose(fit.mean, x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(fit.cov, np.cov(x.T, ddof=ddof), rtol=1e-10, atol=1e-12)
        # Per-sample weights: numpy's aweights, ddof=1 is the reliability-weights covariance.
        fit = task.fit(task.statistics(jnp.asarray(x), jnp.asarray(w)))
        np.testing.assert_allclose(fit.mean, np.average(x, axis=0, weights=w), rtol=1e-12)
        np.testing.assert_allclose(fit.cov, np.cov(x.T, aweights=w, ddof=ddof), rtol=1e-10, atol=1e-12)
        # Scaling every weight (a source's loss weight) does not change its fit.
        scaled = task.fit(task.combine(jax.tree_util.tree_map(lambda a: a[None], task.statistics(jnp.asarray(x))),
                                       jnp.array([0.37])))
        np.testing.assert_allclose(scaled.cov, np.cov(x.T, ddof=ddof), rtol=1e-10, atol=1e-12)
    # Zero weights remove samples (padding).
    task = GaussianFit(dim=d, estimator="unbiased")
    pad = np.concatenate([x, 1e6 * np.ones((5, d))])
    fit = task.fit(task.statistics(jnp.asarray(pad), jnp.asarray(np.r_[np.ones(n), np.zeros(5)])))
    np.testing.assert_allclose(fit.cov, np.cov(x.T, ddof=1), rtol=1e-9)


def test_mixture_fit_includes_between_source_spread(x64):
    """Two sources combined with coefficients c_e = w_e / n_e ("mean" loss)."""
    rng = np.random.default_rng(2)
    d, sizes, weights = 2, (30, 70), np.array([0.25, 0.75])
    xs = [rng.normal(size=(n, d)) + 3.0 * s for s, n in enumerate(sizes)]
    for est in ("mle", "unbiased"):
        task = GaussianFit(dim=d, estimator=est)
        stats = [task.statistics(jnp.asarray(x)) for x in xs]
        stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *stats)
        fit = task.fit(task.combine(stacked, jnp.asarray(weights / np.array(sizes))))
        # Independent: the moment fit of the weighted mixture (per-sample weights w_e / n_e) ...
        x = np.concatenate(xs)
        pw = np.concatenate([np.full(n, w / n) for w, n in zip(weights, sizes)])
        mean = np.average(x, axis=0, weights=pw)
        cov = np.cov(x.T, aweights=pw, ddof=0)
        if est == "unbiased":
            # ... plus each source's own n_e - 1 correction of its within-source scatter.
            cov = cov + sum(w * np.cov(xe.T, ddof=0) / (n - 1) for w, n, xe in zip(weights, sizes, xs))
        np.testing.assert_allclose(fit.mean, mean, rtol=1e-12)
        np.testing.assert_allclose(fit.cov, cov, rtol=1e-10)
        # The between-source spread (means 3 apart) is in the fit.
        assert float(fit.cov[0, 0]) > 1.5


# --------------------------------------------------------------- local theory
def test_trace_ac_is_half_the_parameter_count(x64):
    rng = np.random.default_rng(3)
    for d in (1, 2, 4):
        task = GaussianFit(dim=d, mean=jnp.asarray(rng.normal(size=d)), cov=jnp.asarray(random_spd(rng, d)))
        p = d + d * (d + 1) // 2
        A, C = task.risk_metric(), task.asymptotic_covariance()
        assert A.shape == C.shape == (p, p)
        np.testing.assert_allclose(float(jnp.trace(A @ C)), p / 2, rtol=1e-10)


def test_asymptotic_covariance_against_duplication_matrix(x64):
    """Independent: vech block = 2 D+ (S kron S) D+' with the duplication matrix D (column-major vec)."""
    rng = np.random.default_rng(4)
    d = 3
    S = random_spd(rng, d)
    task = GaussianFit(dim=d, cov=jnp.asarray(S))
    i, j = np.tril_indices(d)
    D = np.zeros((d * d, len(i)))
    for a, (r, c) in enumerate(zip(i, j)):
        D[r + d * c, a] = 1.0
        D[c + d * r, a] = 1.0
    Dp = np.linalg.pinv(D)
    expected = np.block([[S, np.zeros((d, len(i)))], [np.zeros((len(i), d)), 2 * Dp @ np.kron(S, S) @ Dp.T]])
    np.testing.assert_allclose(task.asymptotic_covariance(), expected, rtol=1e-10, atol=1e-12)


def test_asymptotic_covariance_by_monte_carlo():
    """The per-sample covariance of (x, vech(x x')) for x ~ N(0, S), 200000 samples, z-scores."""
    rng = np.random.default_rng(5)
    d = 2
    S = random_spd(rng, d)
    task = GaussianFit(dim=d, cov=jnp.asarray(S, jnp.float32))
    x = rng.multivariate_normal(np.zeros(d), S, size=200_000)
    i, j = np.tril_indices(d)
    feats = np.concatenate([x, x[:, i] * x[:, j]], axis=1)
    centred = feats - feats.mean(0)
    prods = centred[:, :, None] * centred[:, None, :]
    C = np.asarray(task.asymptotic_covariance(), float)
    z = (prods.mean(0) - C) / (prods.std(0, ddof=1) / np.sqrt(len(x)))
    assert np.abs(z).max() < Z_MAX


def test_risk_metric_is_half_the_kl_hessian(x64):
    rng = np.random.default_rng(6)
    d = 2
    mu, S = rng.normal(size=d), random_spd(rng, d)
    task = GaussianFit(dim=d, mean=jnp.asarray(mu), cov=jnp.asarray(S))
    i, j = np.tril_indices(d)
    theta0 = np.concatenate([mu, S[i, j]])

    def kl(theta):
        C = np.zeros((d, d))
        C[i, j] = theta[d:]
        C[j, i] = theta[d:]
        return np_kl(mu, S, theta[:d], C)

    p, h = len(theta0), 1e-4
    H = np.zeros((p, p))
    for a in range(p):
        for b in range(p):
            ea, eb = np.eye(p)[a] * h, np.eye(p)[b] * h
            H[a, b] = (kl(theta0 + ea + eb) - kl(theta0 + ea - eb) - kl(theta0 - ea + eb) + kl(theta0 - ea - eb)) / (4 * h * h)
    np.testing.assert_allclose(np.asarray(task.risk_metric()), H / 2, atol=1e-6)
    # and param_vector is the parametrization used
    np.testing.assert_allclose(task.param_vector(task.truth_param()), theta0)


# ------------------------------------------------------------ exact sampler
def _draws(task, param, n, engine, R, seed):
    keys = jax.random.split(jax.random.key(seed), R)
    stats = jax.jit(jax.vmap(lambda k: task.draw(k, (), param, n, engine)))(keys)
    return stats


def test_suffstat_draw_against_scipy():
    """Sample mean ~ N(mu, S / n), scatter ~ Wishart(S, n - 1), independent."""
    rng = np.random.default_rng(7)
    d, n, R = 2, 8, 20_000
    mu, S = rng.normal(size=d), random_spd(rng, d)
    task = GaussianFit(dim=d)
    param = GaussianParams(jnp.asarray(mu, jnp.float32), jnp.asarray(S, jnp.float32))
    st = _draws(task, param, n, "suffstat", R, 0)
    w = np.asarray(st.weight, float)
    assert np.all(w == n)
    xbar = np.asarray(st.first, float) / n
    scatter = np.asarray(st.second, float) - n * xbar[:, :, None] * xbar[:, None, :]
    np.testing.assert_allclose(np.asarray(st.correction, float), scatter / (n - 1), rtol=2e-4, atol=2e-4)
    for a in range(d):
        z01 = (xbar[:, a] - mu[a]) / np.sqrt(S[a, a] / n)
        assert scipy.stats.kstest(z01, "norm").pvalue > 1e-4
        assert scipy.stats.kstest(scatter[:, a, a] / S[a, a], scipy.stats.chi2(n - 1).cdf).pvalue > 1e-4
    wish = scipy.stats.wishart(df=n - 1, scale=S)
    assert abs(zscore(scatter[:, 0, 1], wish.mean()[0, 1])) < Z_MAX
    # Var of a Wishart entry: (n - 1) (S_ij^2 + S_ii S_jj).
    v01 = (n - 1) * (S[0, 1] ** 2 + S[0, 0] * S[1, 1])
    assert abs(zscore((scatter[:, 0, 1] - (n - 1) * S[0, 1]) ** 2, v01)) < Z_MAX
    # Independence of mean and scatter (Gaussian): zero correlation.
    assert abs(zscore((xbar[:, 0] - mu[0]) * (scatter[:, 0, 0] - (n - 1) * S[0, 0]), 0.0)) < Z_MAX


@pytest.mark.parametrize("n", [2, 9])   # n = 2 < d + 1 falls back to materializing
def test_suffstat_and_samples_draws_agree(n):
    rng = np.random.default_rng(8)
    d, R = 2, 20_000
    S = random_spd(rng, d)
    task = GaussianFit(dim=d, estimator="unbiased")
    param = GaussianParams(jnp.asarray([1.0, -2.0]), jnp.asarray(S, jnp.float32))
    fits = {e: jax.vmap(task.fit)(_draws(task, param, n, e, R, 1 if e == "suffstat" else 2))
            for e in ("suffstat", "samples")}
    for f in (lambda p: p.mean[:, 0], lambda p: p.cov[:, 0, 0], lambda p: p.cov[:, 0, 1]):
        a, b = np.asarray(f(fits["suffstat"])), np.asarray(f(fits["samples"]))
        assert abs(two_sample_z(a, b)) < Z_MAX
        assert scipy.stats.ks_2samp(a, b).pvalue > 1e-4


# --------------------------------------------------------- public cases (THEORY 7)
@pytest.mark.parametrize("engine", ["suffstat", "samples"])
def test_mle_variance_shrinks_geometrically(engine):
    n, T, R = 10, 8, 4000
    res = cj.simulate(self_loop(n), Variance(dim=1), jax.random.key(10), generations=T, replicates=R, engine=engine)
    var = np.asarray(res.error[:, :, 0], float)
    for t in range(T + 1):
        assert abs(zscore(var[:, t], ((n - 1) / n) ** (t + 1))) < Z_MAX, t


def test_unbiased_variance_mean_constant_median_falls():
    n, T, R = 10, 8, 4000
    eco = self_loop(n)
    res = cj.simulate(eco, Variance(dim=1, estimator="unbiased"), jax.random.key(11), generations=T, replicates=R)
    var = np.asarray(res.error[:, :, 0], float)
    # The mean stays 1 (its spread grows, so test early and late generations).
    for t in (0, 1, T // 2, T):
        assert abs(zscore(var[:, t], 1.0)) < Z_MAX, t
    res = cj.simulate(eco, LogVariance(dim=1, estimator="unbiased"), jax.random.key(12), generations=T, replicates=R)
    logv = np.asarray(res.error[:, :, 0], float)
    step = scipy.special.digamma((n - 1) / 2) + np.log(2 / (n - 1))
    for t in range(T + 1):
        assert abs(zscore(logv[:, t], (t + 1) * step)) < Z_MAX, t
    assert np.median(var[:, T]) < 0.75  # the median falls while the mean stays at 1


def test_engines_agree_on_final_kl():
    n, T, R = 12, 4, 2000
    eco = cj.graphs.ring(2, n=n, m=n, alpha=0.5, real=(0,))
    task = GaussianFit(dim=2, estimator="unbiased")
    a = cj.simulate(eco, task, jax.random.key(20), generations=T, replicates=R, engine="suffstat").error[:, -1, :]
    b = cj.simulate(eco, task, jax.random.key(21), generations=T, replicates=R, engine="samples").error[:, -1, :]
    for k in range(2):
        assert abs(two_sample_z(a[:, k], b[:, k])) < Z_MAX
        assert scipy.stats.ks_2samp(np.asarray(a[:, k]), np.asarray(b[:, k])).pvalue > 1e-4


def test_large_sample_kl_is_p_over_2n():
    """Generation 0 on n truth samples: E KL ~ p / (2 n) (THEORY 6, kappa = 1 / n)."""
    d, n, R = 2, 4000, 4000
    res = cj.simulate(self_loop(n), GaussianFit(dim=d), jax.random.key(13), generations=0, replicates=R)
    kl = np.asarray(res.error[:, 0, 0], float)
    p = d + d * (d + 1) // 2
    # O(1/n^2) bias: about p^2 / n^2 relative to the O(1/n) mean, far below the tolerance.
    assert abs(zscore(kl, p / (2 * n))) < Z_MAX


# --------------------------------------------------------------------- checks
def test_float64_fit_and_risk(x64):
    task = GaussianFit(dim=2)
    st = task.draw(jax.random.key(0), (), task.truth_param(), 50, "suffstat")
    fit = task.fit(st)
    assert fit.cov.dtype == jnp.float64 and task.risk(fit).dtype == jnp.float64


FAR = np.array([1e3, -1e3])  # a mean far from 0: S2 / S0 - mean mean' would cancel 6 digits in float32
FAR_COV = np.array([[1.0, 0.3], [0.3, 0.5]])


def test_float32_fit_far_from_zero_matches_float64():
    """Samples path: float32 statistics of data at mean 1e3 give the float64 moment fit of the same data."""
    x = np.random.default_rng(40).normal(size=(2000, 2)) @ np.linalg.cholesky(FAR_COV).T + FAR
    x32 = x.astype(np.float32)
    w = np.random.default_rng(41).uniform(0.5, 1.5, size=2000)
    ref = np.asarray(x32, float)
    for est, ddof in (("mle", 0), ("unbiased", 1)):
        task = GaussianFit(dim=2, mean=jnp.asarray(FAR, jnp.float32), cov=jnp.asarray(FAR_COV, jnp.float32),
                           estimator=est)
        fit = jax.jit(lambda a, b: task.fit(task.statistics(a, b)))(jnp.asarray(x32), jnp.asarray(w, jnp.float32))
        assert fit.cov.dtype == jnp.float32
        np.testing.assert_allclose(fit.mean, np.average(ref, axis=0, weights=w), rtol=1e-6)
        np.testing.assert_allclose(fit.cov, np.cov(ref.T, aweights=w, ddof=ddof), rtol=2e-4, atol=2e-5)


def test_float32_suffstat_fit_does_not_depend_on_where_the_mean_is():
    """Suffstat path: the same key at mean 0 and at mean 1e3 draws the same centred scatter and mean noise,
    so the fitted covariances (and the KL errors of a run) agree to float32 rounding."""
    near = GaussianFit(dim=2, cov=jnp.asarray(FAR_COV, jnp.float32))
    far = GaussianFit(dim=2, mean=jnp.asarray(FAR, jnp.float32), cov=jnp.asarray(FAR_COV, jnp.float32))
    for task in (near, far):
        assert task.cov_star.dtype == jnp.float32
    fits = [jax.jit(lambda k, t=t: t.fit(t.draw(k, (), t.truth_param(), 500, "suffstat")))(jax.random.key(42))
            for t in (near, far)]
    np.testing.assert_allclose(fits[1].cov, fits[0].cov, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fits[1].mean - FAR, fits[0].mean, atol=1e-4)
    errs = [np.asarray(cj.simulate(self_loop(200), t, jax.random.key(43), generations=4, replicates=4).error)
            for t in (near, far)]
    np.testing.assert_allclose(errs[1], errs[0], rtol=0.02)


def test_check_refuses_bad_input():
    eco = self_loop(10)
    GaussianFit(dim=2).check(eco)
    with pytest.raises(ValueError, match="dim"):
        GaussianFit(dim=0).check(eco)
    with pytest.raises(ValueError, match="estimator"):
        GaussianFit(dim=1, estimator="map").check(eco)
    with pytest.raises(ValueError, match="mean must have shape"):
        GaussianFit(dim=2, mean=jnp.zeros(3)).check(eco)
    with pytest.raises(ValueError, match="non-finite"):
        GaussianFit(dim=2, mean=jnp.array([0.0, np.nan])).check(eco)
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianFit(dim=2, cov=-jnp.eye(2)).check(eco)
    with pytest.raises(ValueError, match="positive definite"):
        GaussianFit(dim=2, cov=jnp.diag(jnp.array([1.0, 0.0]))).check(eco)
    with pytest.raises(ValueError, match="symmetric"):
        GaussianFit(dim=2, cov=jnp.array([[1.0, 0.5], [0.0, 1.0]])).check(eco)
    with pytest.raises(ValueError, match="n0 = 1"):
        GaussianFit(dim=1, estimator="unbiased").check(cj.graphs.from_edges(1, [(0, 0)], real=(), m=5, n0=1))


def test_check_refuses_attributes_it_does_not_read():
    G = nx.DiGraph()
    G.add_node("d", kind="data", n=10, theta=np.zeros(2))
    G.add_node("m", kind="model", n_synthetic=10)
    G.add_edge("d", "m", weight=1.0)
    with pytest.raises(ValueError, match="data node 'd': attribute 'theta' is not read by GaussianFit"):
        GaussianFit(dim=2).check(cj.Ecosystem.from_networkx(G))
    G = nx.DiGraph()
    G.add_node("d", kind="data", n=10)
    G.add_node("m", kind="model", n_synthetic=10, cov=np.eye(2))
    G.add_edge("d", "m", weight=1.0)
    with pytest.raises(ValueError, match="model node 'm': attribute 'cov' is not read"):
        GaussianFit(dim=2).check(cj.Ecosystem.from_networkx(G))


# ------------------------------------------------------ per-node attributes
class WithAttributes:
    """An ecosystem whose nodes carry extra task attributes, through the ``data_attr`` API.

    Stand-in until ``Ecosystem.from_networkx`` stores task attributes itself.
    """

    def __init__(self, eco, data=None, model=None):
        self._eco, self._data, self._model = eco, data or {}, model or {}

    def __getattr__(self, name):
        return getattr(self._eco, name)

    def data_attr(self, name):
        return tuple(self._data[name]) if name in self._data else self._eco.data_attr(name)

    def model_attr(self, name):
        return tuple(self._model[name]) if name in self._model else self._eco.model_attr(name)

    def data_attribute_names(self):
        return set(self._data)

    def model_attribute_names(self):
        return set(self._model)


def two_sources():
    G = nx.DiGraph()
    G.add_node("a", kind="data", n=20)
    G.add_node("b", kind="data", n=20)
    G.add_node("m", kind="model", n_synthetic=20)
    G.add_edge("a", "m", weight=0.5)
    G.add_edge("b", "m", weight=0.5)
    return cj.Ecosystem.from_networkx(G)


def test_data_nodes_carry_their_own_mean_and_cov():
    eco = WithAttributes(two_sources(), data={"mean": (np.array([1.0, 2.0]), None),
                                              "cov": (None, 2.0 * np.eye(2))})
    task = GaussianFit(dim=2, mean=jnp.array([-1.0, 0.0]))
    task.check(eco)
    params = task.data_params(eco)
    np.testing.assert_allclose(params.mean, [[1.0, 2.0], [-1.0, 0.0]])
    np.testing.assert_allclose(params.cov, [np.eye(2), 2 * np.eye(2)])
    assert task.data_laws(eco) == [(), ()]
    for data, match in (({"mean": (np.zeros(3), None)}, "data node 'a': mean must have shape"),
                        ({"mean": (None, np.array([np.nan, 0.0]))}, "data node 'b': mean has non-finite"),
                        ({"cov": (None, -np.eye(2))}, "data node 'b': cov is not positive semi-definite"),
                        ({"cov": (np.eye(3), None)}, r"data node 'a': cov must have shape \(2, 2\)"),
                        ({"probs": (np.ones(2) / 2, None)}, "data node 'a': attribute 'probs' is not read")):
        with pytest.raises(ValueError, match=match):
            task.check(WithAttributes(two_sources(), data=data))
    with pytest.raises(ValueError, match="model node 'm': attribute 'mean' is not read"):
        task.check(WithAttributes(two_sources(), model={"mean": (np.zeros(2),)}))


# ------------------------------------------------------------ NumPy oracle
@pytest.mark.parametrize("estimator,regime", [
    ("mle", "replace"), ("unbiased", "accumulate"),
    pytest.param("unbiased", "replace", marks=pytest.mark.slow),
    pytest.param("mle", "accumulate", marks=pytest.mark.slow),
])
def test_engine_matches_numpy_oracle(estimator, regime):
    """Mean KL per model and generation: engine (2,000 replicates) vs tests/oracle.py (400), two sources
    with different means and covariances feeding model 0 (the between-source spread), model 1 on a self-loop."""
    eco = two_source_chain(40, 40, dict(mean=np.array([1.0, -1.0])), dict(mean=np.array([-0.5, 1.0]), cov=np.diag([2.0, 0.5])))
    task = cj.GaussianFit(dim=2, mean=jnp.array([0.4, -0.2]), cov=jnp.array([[1.0, 0.3], [0.3, 0.5]]), estimator=estimator)
    z = engine_vs_oracle(eco, task, 31, generations=5, replicates=2000, oracle_replicates=400, regime=regime)
    assert np.all(np.abs(z) < Z_MAX), z
