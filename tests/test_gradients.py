"""Gradients of long-run error: analytic vs finite differences, Monte Carlo vs analytic, analyze."""

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
import scipy.linalg

import collapse_jax as cj
from collapse_jax.objectives import EdgeWeights, edge_weights, with_edge_weights
from test_task_theory import make_task
from test_task_theory import scale as task_scale


def _graph(dtype_note=None):
    """3 models, 2 fresh data nodes; m2 has no real data (alpha forced 1), several non-edges."""
    G = nx.DiGraph()
    G.add_node("d1", kind="data", n=80)
    G.add_node("d2", kind="data", n=120)
    for name, m in (("m0", 60), ("m1", 90), ("m2", 70)):
        G.add_node(name, kind="model", n_synthetic=m)
    for u, v, w in (("d1", "m0", 1.0), ("d2", "m0", 3.0), ("d1", "m1", 1.0),
                    ("m1", "m0", 2.0), ("m2", "m0", 1.0), ("m0", "m1", 1.0), ("m1", "m1", 0.5),
                    ("m0", "m2", 1.0), ("m1", "m2", 2.0)):
        G.add_edge(u, v, weight=w)
    return cj.Ecosystem.from_networkx(G, alpha={"m0": 0.6, "m1": 0.3})


def _reference_stationary(eco, p, scale):
    """Independent NumPy/SciPy float64 large-sample stationary error per model (THEORY 4 and 6).

    ``scale`` is ``tr(A C)``: ``sigma^2 d`` for linear regression (THEORY 6 for the others).
    """
    real = np.zeros((eco.K, eco.S))
    model = np.zeros((eco.K, eco.K))
    for (k, s), w in zip(eco.real_edges, p.real):
        real[k, s] = w
    for (k, j), w in zip(eco.model_edges, p.model):
        model[k, j] = w
    alpha = np.where(eco.has_real(), p.alpha, 1.0)
    R = (1 - alpha)[:, None] * real / np.where(real.sum(1) > 0, real.sum(1), 1.0)[:, None]
    W = alpha[:, None] * model / model.sum(1)[:, None]
    n, m = np.asarray(eco.n, float), np.asarray(eco.n_synthetic, float)
    delta = scale * ((R ** 2 / n).sum(1) + (W ** 2 / m).sum(1))
    return np.diag(scipy.linalg.solve_discrete_lyapunov(W, np.diag(delta)))


def _flat(p):
    return np.concatenate([np.asarray(x, float).ravel() for x in p])


def _unflat(x, like):
    sizes = np.cumsum([0] + [np.size(a) for a in like])
    return EdgeWeights(*(x[a:b] for a, b in zip(sizes[:-1], sizes[1:])))


def _central_fd(f, x, h):
    out = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        out[i] = (f(x + e) - f(x - e)) / (2 * h)
    return out


# Every task with a large-sample theory: its stationary error is the same Lyapunov solve scaled
# by tr(A C) (test_task_theory.scale writes it from THEORY 6), so its gradient must be too.
GRADIENT_CASES = [("linear", r) for r in ("mean", "max", "weights")] + [
    (name, "weights") for name in ("gaussian", "categorical", "logistic", "poisson")]


@pytest.mark.parametrize("name,reduce", GRADIENT_CASES)
def test_stationary_gradient_matches_float64_finite_differences(x64, name, reduce):
    if name == "linear":
        task, scale = cj.LinearRegression(dim=5, noise=1.3), 1.3 ** 2 * 5
    else:
        task, scale = make_task(name), task_scale(name)
    eco = _graph()
    p0 = edge_weights(eco)
    weights = np.array([0.2, 0.5, 0.3])
    red = weights if reduce == "weights" else reduce

    def ref(x):
        per_model = _reference_stationary(eco, _unflat(x, p0), scale)
        return {"mean": per_model.mean(), "max": per_model.max(), "weights": weights @ per_model}[reduce]

    grad = jax.jit(jax.grad(lambda p: cj.long_run_error(with_edge_weights(eco, p), task, reduce=red)))(p0)
    value = cj.long_run_error(eco, task, reduce=red)
    x0 = _flat(p0)
    # The GLM references integrate the Fisher information numerically (rtol 1e-9).
    np.testing.assert_allclose(float(value), ref(x0), rtol=1e-10 if name in ("linear", "gaussian", "categorical") else 1e-8)
    h = 1e-6
    fd = _central_fd(ref, x0, h)
    # A zero derivative comes out of the differences as rounding, about eps |f| / h (1.4e-11 seen).
    np.testing.assert_allclose(_flat(grad), fd, rtol=1e-6, atol=10 * np.finfo(float).eps * abs(ref(x0)) / h)
    assert np.abs(fd).max() > 1e-4 * abs(ref(x0))  # the check is not vacuous
    # alpha of m2 is forced (no real data): no gradient, whatever the objective.
    assert float(grad.alpha[2]) == 0.0
    real, model = grad.dense(eco)
    assert real.shape == (3, 2) and float(real[2].sum()) == 0.0 and float(model[2, 2]) == 0.0


@pytest.mark.default_compiler
def test_monte_carlo_pathwise_gradient_matches_finite_differences(x64):
    """analyze (checkpointed scan) vs central differences of cj.simulate with the same key (common random numbers)."""
    eco = cj.graphs.from_edges(2, [(0, 1), (1, 0), (1, 1)], real=(0, 1), alpha=0.4, n=40, m=30)
    eco = eco.replace(model_weights=eco.model_weights.at[1, 0].set(2.0))
    task = cj.LinearRegression(dim=3)
    key, T, R, window = jax.random.key(3), 12, 8, 5
    # The materializing engine compiles faster; the suffstat engine is differentiated below.
    opts = dict(generations=T, replicates=R, engine="samples")
    out = cj.analyze(eco, task, key, window=window, **opts)
    p0 = edge_weights(eco)

    def ref(x):
        e = with_edge_weights(eco, jax.tree.map(jnp.asarray, _unflat(x, p0)))
        return float(cj.simulate(e, task, key, **opts).error[:, -window:].mean())

    sim = cj.simulate(eco, task, key, **opts)
    np.testing.assert_array_equal(np.asarray(out.trajectories.error), np.asarray(sim.error))
    np.testing.assert_allclose(float(out.value), ref(_flat(p0)), rtol=1e-12)
    fd = _central_fd(ref, _flat(p0), 1e-6)
    np.testing.assert_allclose(_flat(out.grads), fd, rtol=1e-6, atol=1e-10)
    assert np.abs(fd).max() > 1e-3  # the check is not vacuous
    # spectral diagnostics of W = [[0, .4], [.4 * 2/3, .4 / 3]] against NumPy
    mod = np.sort(np.abs(np.linalg.eigvals(np.asarray(eco.W, float))))[::-1]
    np.testing.assert_allclose([float(out.spectral["rho_W"]), float(out.spectral["slem_W"])], mod, rtol=1e-10)
    # kind="stationary": analytic value and gradient, the same trajectories
    st = cj.analyze(eco, task, key, kind="stationary", reduce="max", **opts)
    np.testing.assert_array_equal(np.asarray(st.trajectories.error), np.asarray(sim.error))
    grad = jax.grad(lambda p: cj.long_run_error(with_edge_weights(eco, p), task, reduce="max"))(p0)
    np.testing.assert_allclose(_flat(st.grads), _flat(grad), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(float(st.value), float(st.spectral["stationary_error"].max()), rtol=1e-12)


def test_monte_carlo_gradient_mean_matches_analytic_gradient():
    """Per-replicate pathwise gradients: their mean is the gradient of the expected long-run error.

    n = m = 4000 >> d = 2, so the large-sample stationary formula is exact to
    O(d / n) ~ 0.1%, far below the Monte Carlo standard error.
    """
    eco = cj.graphs.from_edges(2, [(0, 1), (1, 0), (1, 1)], real=(0, 1), alpha=0.8, n=4000, m=4000)
    eco = eco.replace(model_weights=eco.model_weights.at[1, 0].set(4.0))
    task = cj.LinearRegression(dim=2)
    p0 = edge_weights(eco)
    R = 4000

    def one(p, key):
        return cj.long_run_error(with_edge_weights(eco, p), task, "monte_carlo", key=key,
                                 generations=40, replicates=1, window=25)

    keys = jax.random.split(jax.random.key(11), R)
    grads = jax.jit(jax.vmap(jax.grad(one), in_axes=(None, 0)))(p0, keys)
    analytic = jax.grad(lambda p: cj.long_run_error(with_edge_weights(eco, p), task))(p0)
    for name in ("model", "alpha"):
        g = np.asarray(getattr(grads, name), float)
        a = np.asarray(getattr(analytic, name), float)
        for i in range(g.shape[1]):
            if a[i] == 0.0:  # a single edge of its kind: the relative weight does not matter
                assert np.abs(g[:, i]).max() < 1e-6 * np.abs(a).max()  # float32 round-off only
                continue
            z = (g[:, i].mean() - a[i]) / (g[:, i].std(ddof=1) / np.sqrt(R))
            assert abs(z) < 4, (name, i, g[:, i].mean(), a[i], z)
            assert abs(a[i]) > 8 * g[:, i].std(ddof=1) / np.sqrt(R)  # power: a zero gradient would fail


def test_checkpoint_bounds_reverse_mode_memory():
    """The sqrt(T) checkpointed scan needs far less temporary memory for the gradient."""
    eco = cj.graphs.from_edges(1, [(0, 0)], alpha=0.5, n=20, m=20)
    task = cj.LinearRegression(dim=2)
    p0 = edge_weights(eco)
    temp = {}
    for ck in (False, True):
        f = lambda p: cj.long_run_error(with_edge_weights(eco, p), task, "monte_carlo",  # noqa: E731
                                        key=jax.random.key(0), generations=1024, replicates=2,
                                        engine="samples", checkpoint=ck)
        temp[ck] = jax.jit(jax.grad(f)).lower(p0).compile().memory_analysis().temp_size_in_bytes
    # T = 1024 generations: ~2 sqrt(T) = 64 carries instead of 1024 generations of residuals.
    assert temp[True] * 8 < temp[False], temp


def test_bad_arguments_raise_value_errors():
    eco, task = cj.graphs.ring(2, n=50, m=50), cj.LinearRegression(dim=3)
    with pytest.raises(ValueError, match="kind"):
        cj.long_run_error(eco, task, "asymptotic")
    with pytest.raises(ValueError, match="reduce"):
        cj.long_run_error(eco, task, reduce="median")
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        cj.long_run_error(eco, task, reduce=np.ones(3))
    with pytest.raises(ValueError, match="key"):
        cj.long_run_error(eco, task, "monte_carlo", generations=5, replicates=2)
    with pytest.raises(ValueError, match="generations"):
        cj.long_run_error(eco, task, "monte_carlo", key=jax.random.key(0))
    with pytest.raises(ValueError, match="window"):
        cj.long_run_error(eco, task, "monte_carlo", key=jax.random.key(0), generations=5, replicates=2, window=7)
    with pytest.raises(ValueError, match="kind"):
        cj.analyze(eco, task, jax.random.key(0), generations=5, replicates=2, kind="exact")
