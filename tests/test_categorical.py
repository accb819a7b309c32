"""Categorical: the exact multinomial sampler against SciPy, fit/risk/metrics against NumPy,
suffstat vs samples draws, and THEORY section 7's diversity case on a self-loop."""

import itertools

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
import scipy.stats

import collapse_jax as cj
from collapse_jax.tasks import Categorical, task_dataclass
from collapse_jax.tasks.categorical import multinomial
from oracle import engine_vs_oracle, two_source_chain

Z_MAX = 4.0
P = np.array([0.4, 0.3, 0.15, 0.1, 0.05])


def zscore(x, expected):
    x = np.asarray(x, float)
    return (x.mean() - expected) / (x.std(ddof=1) / np.sqrt(len(x)))


def two_sample_z(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


def self_loop(n):
    return cj.graphs.from_edges(1, [(0, 0)], real=(), n=n, m=n, n0=n)


def draws(fn, R, seed):
    return np.asarray(jax.jit(jax.vmap(fn))(jax.random.split(jax.random.key(seed), R)), float)


# ------------------------------------------------------------------ sampler
def test_multinomial_small_n_matches_scipy_pmf():
    """Every outcome of 6 draws over 3 symbols (one with probability 0): chi-square vs scipy's pmf."""
    p, n, R = np.array([0.5, 0.0, 0.3, 0.2]), 6, 40_000
    counts = draws(lambda k: multinomial(k, n, jnp.asarray(p, jnp.float32)), R, 0)
    assert np.all(counts.sum(1) == n) and np.all(counts[:, 1] == 0) and np.all(counts >= 0)
    outcomes = [c for c in itertools.product(range(n + 1), repeat=3) if sum(c) == n]
    observed = np.array([np.sum(np.all(counts[:, [0, 2, 3]] == c, axis=1)) for c in outcomes])
    assert observed.sum() == R
    expected = R * scipy.stats.multinomial(n, p[[0, 2, 3]]).pmf(np.array(outcomes))
    assert scipy.stats.chisquare(observed, expected).pvalue > 1e-4


def test_multinomial_large_n_moments_and_marginals():
    """n = 10^5 (the BTRS rejection path): means, variances, covariances and marginal KS vs scipy."""
    n, R = 100_000, 20_000
    counts = draws(lambda k: multinomial(k, n, jnp.asarray(P, jnp.float32)), R, 1)
    assert np.all(counts.sum(1) == n)
    rng = np.random.default_rng(0)
    for i in range(len(P)):
        assert abs(zscore(counts[:, i], n * P[i])) < Z_MAX
        var = n * P[i] * (1 - P[i])
        assert abs(zscore((counts[:, i] - n * P[i]) ** 2, var)) < Z_MAX
        # Randomized probability integral transform of the Binomial(n, p_i) marginal: exactly uniform.
        marginal = scipy.stats.binom(n, P[i])
        u = marginal.cdf(counts[:, i] - 1) + rng.uniform(size=R) * marginal.pmf(counts[:, i])
        assert scipy.stats.kstest(u, "uniform").pvalue > 1e-4
    cov01 = -n * P[0] * P[1]
    assert abs(zscore((counts[:, 0] - n * P[0]) * (counts[:, 1] - n * P[1]), cov01)) < Z_MAX


def test_multinomial_tolerates_rounding_in_fitted_probs():
    p = jnp.array([0.2, 0.3, 0.5000001, -1e-9])
    c = multinomial(jax.random.key(3), 1000, p)
    assert float(c.sum()) == 1000.0 and float(c[3]) == 0.0


def test_suffstat_and_samples_draws_agree():
    task = Categorical(jnp.asarray(P, jnp.float32))
    n, R = 30, 20_000
    a = draws(lambda k: task.draw(k, (), task.truth_param(), n, "suffstat"), R, 4)
    b = draws(lambda k: task.draw(k, (), task.truth_param(), n, "samples"), R, 5)
    assert np.all(b.sum(1) == n)
    for i in range(len(P)):
        assert abs(two_sample_z(a[:, i], b[:, i])) < Z_MAX
        assert scipy.stats.ks_2samp(a[:, i], b[:, i]).pvalue > 1e-4
    # Whole-vector check: chi-square homogeneity of the counts of symbol 0.
    vals = np.arange(n + 1)
    table = np.array([[np.sum(a[:, 0] == v) for v in vals], [np.sum(b[:, 0] == v) for v in vals]])
    table = table[:, table.sum(0) > 0]
    assert scipy.stats.chi2_contingency(table).pvalue > 1e-4


# ---------------------------------------------------------- fit, risk, metrics
def test_fit_risk_metrics_match_numpy(x64):
    task = Categorical(jnp.asarray(P))
    counts = np.array([3.0, 0.0, 5.0, 0.0, 2.0])
    fit = task.fit(jnp.asarray(counts))
    q = counts / counts.sum()
    np.testing.assert_allclose(fit, q, rtol=1e-15)
    np.testing.assert_allclose(float(task.risk(fit)), np.sum((q - P) ** 2), rtol=1e-12)
    m = task.metrics(fit)
    assert float(m["support"]) == 3.0
    np.testing.assert_allclose(float(m["tail_mass"]), P[1] + P[3], rtol=1e-12)
    np.testing.assert_allclose(float(m["entropy"]), scipy.stats.entropy(q), rtol=1e-12)
    np.testing.assert_allclose(float(task.metrics(task.truth_param())["entropy"]), scipy.stats.entropy(P), rtol=1e-12)
    assert float(task.metrics(jnp.eye(5)[2])["entropy"]) == 0.0
    assert float(task.risk(jnp.full(5, jnp.nan))) == np.inf
    # Weighted statistics of symbol indices, and the engine's weighted combination of two sources.
    data = jnp.array([0, 2, 2, 4])
    np.testing.assert_allclose(task.statistics(data, jnp.array([1.0, 0.5, 0.5, 2.0])), [1, 0, 1, 0, 2])
    mix = task.fit(task.combine(jnp.stack([jnp.asarray(counts), jnp.array([0.0, 4, 0, 0, 0])]),
                                jnp.array([0.5 / 10, 0.5 / 4])))
    np.testing.assert_allclose(mix, 0.5 * q + 0.5 * np.eye(5)[1], rtol=1e-12)


def test_asymptotic_theory():
    task = Categorical(jnp.asarray(P, jnp.float32))
    C, A = np.asarray(task.asymptotic_covariance(), float), np.asarray(task.risk_metric(), float)
    np.testing.assert_allclose(C, np.diag(P) - np.outer(P, P), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(A, np.eye(5))
    # Exact at generation 0: E risk = (1 - sum p^2) / n = tr(A C) / n.
    n, R = 50, 20_000
    risks = draws(lambda k: task.risk(task.fit(task.draw(k, (), task.truth_param(), n, "suffstat"))), R, 6)
    assert abs(zscore(risks, np.trace(A @ C) / n)) < Z_MAX


# -------------------------------------------------------- public case (THEORY 7)
@task_dataclass(data_fields=["probs"], meta_fields=[])
class FirstProb(Categorical):
    """Reports p_hat_0 as the per-generation "error" (the engine returns risks only)."""

    def risk(self, probs):
        return probs[0]


@pytest.mark.parametrize("engine", ["suffstat", "samples"])
def test_diversity_falls_and_mean_is_unbiased(engine):
    """E p_hat_t = p*; E[1 - sum p_hat^2] = (1 - 1/n)^(t+1) (1 - sum p*^2), i.e. the Brier risk
    E sum (p_hat - p*)^2 = (1 - sum p*^2) (1 - (1 - 1/n)^(t+1))."""
    n, T, R = 20, 10, 4000
    eco = self_loop(n)
    gini = 1 - np.sum(P ** 2)
    res = cj.simulate(eco, Categorical(jnp.asarray(P, jnp.float32)), jax.random.key(7),
                      generations=T, replicates=R, engine=engine)
    risk = np.asarray(res.error[:, :, 0], float)
    for t in range(T + 1):
        assert abs(zscore(risk[:, t], gini * (1 - (1 - 1 / n) ** (t + 1)))) < Z_MAX, t
    res = cj.simulate(eco, FirstProb(jnp.asarray(P, jnp.float32)), jax.random.key(8),
                      generations=T, replicates=R, engine=engine)
    p0 = np.asarray(res.error[:, :, 0], float)
    for t in range(T + 1):
        assert abs(zscore(p0[:, t], P[0])) < Z_MAX, t


def test_tails_vanish_and_stay_lost_without_real_data():
    """A symbol lost on a real-free self-loop never comes back; tail mass only grows."""
    n, T, R = 10, 15, 500
    task = Categorical(jnp.asarray(P, jnp.float32))
    keys = jax.random.split(jax.random.key(9), R)

    def run(key):
        def step(p, k):
            q = task.fit(task.draw(k, (), p, n, "suffstat"))
            return q, task.metrics(q)["tail_mass"]
        return jax.lax.scan(step, task.truth_param(), jax.random.split(key, T))[1]

    tail = np.asarray(jax.jit(jax.vmap(run))(keys), float)
    assert np.all(np.diff(tail, axis=1) >= 0)
    assert tail[:, -1].mean() > 0.05


# --------------------------------------------------------------------- checks
def test_check_refuses_bad_input():
    eco = self_loop(10)
    Categorical(jnp.asarray(P)).check(eco)
    for probs, match in (([0.5, 0.6], "sum to 1"), ([1.2, -0.2], "negative"), ([np.nan, 1.0], "non-finite"),
                         (np.eye(2) / 2, "non-empty"), ([], "non-empty")):
        with pytest.raises(ValueError, match=match):
            Categorical(jnp.asarray(probs)).check(eco)
    G = nx.DiGraph()
    G.add_node("web", kind="data", n=10, cov=np.eye(2))
    G.add_node("m", kind="model", n_synthetic=10)
    G.add_edge("web", "m", weight=1.0)
    with pytest.raises(ValueError, match="data node 'web': attribute 'cov' is not read by Categorical"):
        Categorical(jnp.asarray(P)).check(cj.Ecosystem.from_networkx(G))


def test_data_nodes_carry_their_own_probs():
    from test_gaussian import WithAttributes, two_sources

    task = Categorical(jnp.asarray(P))
    own = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    eco = WithAttributes(two_sources(), data={"probs": (own, None)})
    task.check(eco)
    np.testing.assert_allclose(task.data_params(eco), [own, P])
    for probs, match in ((np.ones(4) / 4, r"data node 'a': probs must have shape \(5,\)"),
                         (np.array([0.5, 0.5, 0.5, -0.5, 0.0]), "data node 'a': probs has negative"),
                         (np.full(5, 0.3), "data node 'a': probs must sum to 1")):
        with pytest.raises(ValueError, match=match):
            task.check(WithAttributes(two_sources(), data={"probs": (probs, None)}))


@pytest.mark.parametrize("regime", ["replace", "accumulate"])
def test_self_loop_mean_is_a_martingale(regime):
    """E p_hat_t = p* under both regimes (accumulate adds the statistics of every batch)."""
    n, T, R = 20, 10, 4000  # replace: the program of test_diversity_falls_and_mean_is_unbiased[suffstat]
    res = cj.simulate(self_loop(n), FirstProb(jnp.asarray(P, jnp.float32)), jax.random.key(10),
                      generations=T, replicates=R, regime=regime)
    p0 = np.asarray(res.error[:, :, 0], float)
    for t in range(T + 1):
        assert abs(zscore(p0[:, t], P[0])) < Z_MAX, t


# ------------------------------------------------------------ NumPy oracle
@pytest.mark.parametrize("regime", ["replace", pytest.param("accumulate", marks=pytest.mark.slow)])
def test_engine_matches_numpy_oracle(regime):
    """Mean Brier error per model and generation: engine (2,000 replicates) vs tests/oracle.py (400); two
    sources with different probs feed model 0, model 1 on a self-loop loses rare symbols."""
    eco = two_source_chain(40, 40, dict(probs=np.array([0.1, 0.2, 0.3, 0.2, 0.2])), {})
    task = cj.Categorical(jnp.array([0.5, 0.25, 0.15, 0.07, 0.03]))
    z = engine_vs_oracle(eco, task, 32, generations=5, replicates=2000, oracle_replicates=400, regime=regime)
    assert np.all(np.abs(z) < Z_MAX), z
