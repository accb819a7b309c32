"""A toy estimator defined here runs through every tool, through the protocol only (issue 9).

``GaussianMean``: one parameter (the mean of N(mu, sigma^2), sigma known), additive
statistics (count, sum), ``asymptotic_covariance = sigma^2``, ``risk_metric = 1``. No
library file knows it. For this task the large-sample recursion is exact (the weighted
mean of unbiased estimates is linear), so its moments must match the Monte Carlo mean by
z-score, and its stationary error must equal an independent NumPy float64 Lyapunov solve.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import collapse_jax as cj
from collapse_jax import objectives
from collapse_jax.objectives import edge_weights, with_edge_weights
from collapse_jax.tasks.base import Task, Unsupported, task_dataclass


@task_dataclass(data_fields=["mu", "sigma"], meta_fields=[])
class GaussianMean(Task):
    """y ~ N(mu, sigma^2); a model is its estimate of mu (a scalar)."""

    mu: float = 1.0
    sigma: float = 2.0

    supports_suffstat = True

    def check(self, eco):
        for name, n in zip(eco.data, eco.n):
            if n < 1:
                raise ValueError(f"data node {name!r}: n must be >= 1")

    def truth_param(self):
        return jnp.asarray(self.mu, jnp.result_type(float))

    def data_params(self, eco):
        return jnp.full((eco.S,), self.mu, jnp.result_type(float))

    def data_laws(self, eco):
        return [()] * eco.S

    def synthetic_laws(self, eco):
        return [()] * eco.K

    def truth_law(self):
        return ()

    def sample(self, key, law, param, n):
        return param + self.sigma * jax.random.normal(key, (n,), jnp.result_type(param))

    def statistics(self, data, weights=None):
        w = jnp.ones_like(data) if weights is None else weights
        return (jnp.sum(w), jnp.sum(w * data))

    def draw(self, key, law, param, n, engine):
        if engine == "suffstat":  # sum of n normals, exactly
            z = jax.random.normal(key, (), jnp.result_type(param))
            return (jnp.asarray(n, param.dtype), n * param + self.sigma * jnp.sqrt(n * 1.0) * z)
        return self.statistics(self.sample(key, law, param, n))

    def fit(self, stats):
        count, total = stats
        return total / count

    def risk(self, param):
        return (param - jnp.asarray(self.mu, param.dtype)) ** 2

    def asymptotic_covariance(self):
        return jnp.asarray(self.sigma, jnp.result_type(float)) ** 2 * jnp.ones((1, 1))

    def risk_metric(self):
        return jnp.ones((1, 1), jnp.result_type(float))


TOY = GaussianMean(mu=1.0, sigma=2.0)
optimize_mod = importlib.import_module("collapse_jax.optimize")  # cj.optimize is the function


def _eco():
    # 3 models; m2 has no real data; m0 and m1 read data and each other.
    return cj.graphs.from_edges(3, [(0, 1), (1, 0), (1, 1), (0, 2), (1, 2)], real=(0, 1), alpha=0.5,
                                n=40, m=60)


def _numpy_stationary(eco, sigma2):
    W, R = np.asarray(eco.W, float), np.asarray(eco.R, float)
    n, m = np.asarray(eco.n, float), np.asarray(eco.n_synthetic, float)
    D = np.diag(sigma2 * ((R ** 2 / n).sum(1) + (W ** 2 / m).sum(1)))
    return W, D, scipy.linalg.solve_discrete_lyapunov(W, D)


def test_toy_task_stationary_and_moments_against_numpy(x64):
    eco = _eco()
    W, D, V = _numpy_stationary(eco, 4.0)
    mom = cj.moments(eco, TOY, 30)            # no exact theory: large-sample by default
    assert not mom.exact and mom.mean.shape == (31, 3, 1)
    np.testing.assert_allclose(mom.stationary, V, rtol=1e-10)
    np.testing.assert_allclose(mom.V_inf, V, rtol=1e-10)
    # generation 0: real data / n0 truth samples; then V_t = W V W' + D
    V0 = np.diag([4.0 / 40, 4.0 / 40, 4.0 / 60])
    for _ in range(30):
        V0 = W @ V0 @ W.T + D
    np.testing.assert_allclose(mom.second[-1], V0, rtol=1e-10)
    val = cj.long_run_error(eco, TOY, reduce="none")
    np.testing.assert_allclose(np.asarray(val), np.diag(V), rtol=1e-10)
    with pytest.raises(ValueError, match="no exact theory"):
        cj.moments(eco, TOY, 3, exact=True)


@pytest.mark.parametrize("engine", ["suffstat", "samples"])
def test_toy_task_moments_match_monte_carlo_by_z_score(engine):
    eco = _eco()
    T, R = 12, 4000
    res = cj.simulate(eco, TOY, jax.random.key(7), generations=T, replicates=R, engine=engine)
    err = np.asarray(res.error, np.float64)  # (R, T + 1, K)
    mom = cj.moments(eco, TOY, T, exact=False)
    for t in (0, 1, T):
        mean = err[:, t].mean(0)
        se = err[:, t].std(0, ddof=1) / np.sqrt(R)
        z = (mean - mom.error[t]) / se
        assert np.all(np.abs(z) < 4.5), (t, z)
    # The test can fail: a 20% wrong theory is rejected.
    assert np.any(np.abs((err[:, T].mean(0) - 1.2 * mom.error[T]) / (err[:, T].std(0, ddof=1) / np.sqrt(R))) > 4.5)


def test_toy_task_diagnose_long_run_optimize_sweep(x64):
    eco = _eco()
    diag = cj.diagnose(eco, TOY)
    assert diag.bounded and diag.rho_Q is None and diag.rho_L is None
    assert diag.stationary_kind == "large-sample" and "n/a" in str(diag)
    _, _, V = _numpy_stationary(eco, 4.0)
    np.testing.assert_allclose([m.stationary_error for m in diag.models], np.diag(V), rtol=1e-10)
    assert cj.diagnose(eco, TOY, exact=True).rho_L is None  # no exact theory: "n/a", no error
    collapsing = cj.graphs.ring(3, real=(), m=50)
    d2 = cj.diagnose(collapsing, TOY)
    assert not d2.bounded and all(m.collapses for m in d2.models)
    np.testing.assert_allclose([m.slope for m in d2.models], 4.0 / 50, rtol=1e-10)  # ring: sigma^2 / m

    mc = cj.long_run_error(eco, TOY, "monte_carlo", key=jax.random.key(0), generations=20, replicates=256)
    assert np.isfinite(float(mc))
    g = jax.grad(lambda p: cj.long_run_error(with_edge_weights(eco, p), TOY))(edge_weights(eco))
    assert np.all(np.isfinite(np.asarray(g.alpha)))

    an = cj.analyze(eco, TOY, jax.random.key(2), generations=5, replicates=16, kind="stationary")
    np.testing.assert_allclose(np.asarray(an.per_model), np.diag(V), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(an.grads.alpha), np.asarray(g.alpha), rtol=1e-8)
    np.testing.assert_allclose(np.asarray(an.spectral["stationary_error"]), np.diag(V), rtol=1e-10)
    assert "rho_Q" not in an.spectral  # the toy task has no mean operator

    out = cj.optimize(eco, TOY, optimizer=optax.adam(0.05), steps=60)
    assert out.history.min() < out.history[0] and out.diagnostics.bounded
    assert float(cj.long_run_error(out.eco, TOY)) <= out.history[0]

    def build(alpha):
        return cj.graphs.ring(3, alpha=alpha, n=40, m=40), TOY, dict(generations=5)

    study = cj.sweep(build, grid={"alpha": [0.3, 0.6]}, key=jax.random.key(1), replicates=32, chunk=32,
                     progress=False)
    assert study is not None


@task_dataclass(data_fields=["mu", "sigma"], meta_fields=[])
class BareMean(GaussianMean):
    """The same task without the optional large-sample capability."""

    def asymptotic_covariance(self):
        raise Unsupported("BareMean has no asymptotic covariance")


def test_tools_say_what_a_task_lacks():
    bare = BareMean()
    eco = _eco()
    diag = cj.diagnose(eco, bare)  # never raises: "n/a" lines
    assert diag.models[0].slope is None and diag.models[0].stationary_error is None
    assert "n/a" in str(diag)
    with pytest.raises(ValueError, match="asymptotic covariance"):
        cj.moments(eco, bare, 3)
    with pytest.raises(ValueError, match="asymptotic covariance"):
        cj.long_run_error(eco, bare)


@task_dataclass(data_fields=["mu", "sigma"], meta_fields=[])
class DoubledRisk(GaussianMean):
    """Same fields as GaussianMean, another risk: a jit cache must not mix the two up."""

    def risk(self, param):
        return 2.0 * super().risk(param)


def test_subclass_with_the_same_fields_is_its_own_tree_structure():
    """``register_dataclass`` (JAX 0.10) lets the structures of two classes with equal fields compare
    equal; ``task_dataclass`` must not, and one jitted function must give each class its own answer."""
    base, doubled = GaussianMean(), DoubledRisk()
    assert jax.tree_util.tree_structure(base) != jax.tree_util.tree_structure(doubled)
    risk = jax.jit(lambda task, p: task.risk(p))
    p = jnp.asarray(0.5)
    r_base, r_doubled = float(risk(base, p)), float(risk(doubled, p))
    assert r_doubled == pytest.approx(2.0 * r_base) and r_base > 0
    back = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(doubled), jax.tree_util.tree_leaves(doubled))
    assert type(back) is DoubledRisk


# ----------------------------------------------------- no hidden recompilation
def test_optimize_and_long_run_error_compile_once(x64):
    eco = cj.graphs.ring(3, alpha=0.5, n=50, m=50)
    task = cj.LinearRegression(dim=3)
    opt = optax.adam(0.05)
    before = optimize_mod.TRACES["step"]
    a = cj.optimize(eco, task, optimizer=opt, steps=5)
    b = cj.optimize(eco.replace(alpha=eco.alpha.at[0].set(0.4)), cj.LinearRegression(dim=3, noise=2.0),
                    optimizer=opt, steps=7)
    assert optimize_mod.TRACES["step"] - before == 1
    assert a.history.shape == (6,) and b.history.shape == (8,)

    before = objectives.TRACES["long_run_error"]
    for alpha in (0.3, 0.6):
        cj.long_run_error(eco.replace(alpha=eco.alpha.at[0].set(alpha)), task, "monte_carlo",
                          key=jax.random.key(0), generations=4, replicates=8)
    assert objectives.TRACES["long_run_error"] - before == 1
    before = objectives.TRACES["long_run_error"]
    for alpha in (0.3, 0.6):
        cj.long_run_error(eco.replace(alpha=eco.alpha.at[0].set(alpha)), task)
    assert objectives.TRACES["long_run_error"] - before == 1


# ----------------------------------------------- issue 12: forced alpha, budget
def test_gradient_wrt_forced_alpha_is_zero_and_free_alpha_matches_fd(x64):
    # m0: real + model in-edges (free); m1: no real in-edge (alpha = 1); m2: no model in-edge (alpha = 0).
    eco = cj.graphs.from_edges(3, [(0, 0), (1, 0), (1, 1), (0, 1)], real=(0, 2), alpha=0.5, n=60, m=40)
    eco = eco.replace(alpha=jnp.asarray(eco.alpha, jnp.float64))
    assert list(np.asarray(eco.alpha)) == [0.5, 1.0, 0.0]
    task = cj.LinearRegression(dim=3)

    def f(alpha, kind="stationary"):
        kw = {} if kind == "stationary" else dict(key=jax.random.key(3), generations=6, replicates=16)
        return cj.long_run_error(eco.replace(alpha=alpha), task, kind, **kw)

    for kind in ("stationary", "monte_carlo"):
        g = np.asarray(jax.grad(f)(eco.alpha, kind))
        assert g[1] == 0.0 and g[2] == 0.0, (kind, g)
        h = 1e-6
        e = np.array([h, 0.0, 0.0])
        fd = (float(f(eco.alpha + e, kind)) - float(f(eco.alpha - e, kind))) / (2 * h)
        np.testing.assert_allclose(g[0], fd, rtol=1e-5)
        assert g[0] != 0.0


def test_real_budget_binding_at_start_is_said_and_readme_example_improves():
    # README example: a ring of 4, m3 without real data (its share counts 0 in the mean):
    # real shares 0.5, 0.5, 0.5, 0, mean 0.375 > 0.3, so the budget binds at the start.
    eco = cj.graphs.ring(4, alpha=0.5, real=(0, 1, 2), n=100, m=100)
    task = cj.LinearRegression(dim=10)
    with pytest.warns(UserWarning, match="binds at the start"):
        out = cj.optimize(eco, task, optimizer=optax.adam(0.05), steps=150, alpha_bounds=(0.1, 0.9),
                          real_budget=0.3)
    assert out.start_projected and np.isfinite(out.start_value)
    assert np.mean(1 - np.asarray(out.eco.alpha)) <= 0.3 + 1e-5
    best = float(cj.long_run_error(out.eco, task))
    assert best == pytest.approx(out.history.min(), rel=1e-5) and best <= out.history[0]  # best point seen
    assert out.start_value < out.history[0]  # the infeasible start was better: said, not hidden
    # A feasible start: no warning, and the result improves on it.
    out = cj.optimize(eco, task, optimizer=optax.adam(0.05), steps=150, alpha_bounds=(0.1, 0.9),
                      real_budget=0.6)
    assert not out.start_projected
    assert float(cj.long_run_error(out.eco, task)) < float(cj.long_run_error(eco, task))
