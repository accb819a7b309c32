"""Large-sample theory (THEORY section 6) of the Gaussian, categorical and GLM tasks through the tools.

For every task: ``cj.moments(eco, task, exact=False)`` against an independent NumPy float64
recursion and against ``cj.simulate`` at large n (z-scores of replicate means, fixed keys), and
``cj.diagnose``'s per-model verdicts, slopes and stationary errors against the same formulas.

The per-sample error scale ``tr(A C)`` (A the risk metric, C the asymptotic covariance) is written
here from THEORY 6, not read from the task:

* Gaussian fitting: ``p / 2`` with ``p = d + d (d + 1) / 2`` (KL is half the squared Fisher error);
* categorical: ``tr(diag(p) - p p') = 1 - sum p^2`` (the Brier metric is the identity);
* logistic / Poisson: ``tr(Sigma I^-1)`` with the Fisher information ``I`` from a NumPy 2-D
  quadrature (``test_glm.quadrature_information``).

The ecosystem: a fresh data node feeds A (alpha 0.5, A also reads itself), B reads only A (a
chain data -> A -> B), C reads only itself (a collapsing self-loop, generation 0 on n0 truth
samples). With ``R = [[.5], [0], [0]]``, ``W = [[.5, 0, 0], [1, 0, 0], [0, 0, 1]]``:
``V_0 = s / n I``, ``V_t = W V_{t-1} W' + s diag(.25 / n + .25 / m, 1 / m, 1 / m)``.
"""

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest
import scipy.linalg

import collapse_jax as cj
from test_glm import quadrature_information

Z_MAX = 4.0
MODELS = ("A", "B", "C")


def ecosystem(n, m=None):
    m = n if m is None else m
    G = nx.DiGraph()
    G.add_node("data", kind="data", n=n)
    for name in MODELS:
        G.add_node(name, kind="model", n_synthetic=m, n0=n)
    for u, v in (("data", "A"), ("A", "A"), ("A", "B"), ("C", "C")):
        G.add_edge(u, v, weight=1.0)
    return cj.Ecosystem.from_networkx(G, alpha={"A": 0.5})


GAUSS_COV = np.array([[2.0, 0.5], [0.5, 1.0]])
GLM_COV = np.array([[1.0, 0.3], [0.3, 1.0]])
CAT_P = np.array([0.5, 0.3, 0.15, 0.05])
LOGIT_THETA = np.array([0.8, -0.5])
POIS_THETA = np.array([0.4, -0.3])


def make_task(name, **glm):
    """The task under test (non-trivial truths, so that C is not a multiple of the identity)."""
    if name == "gaussian":
        return cj.GaussianFit(dim=2, mean=jnp.array([1.0, -1.0]), cov=jnp.asarray(GAUSS_COV))
    if name == "gaussian_unbiased":
        return cj.GaussianFit(dim=2, mean=jnp.array([1.0, -1.0]), cov=jnp.asarray(GAUSS_COV), estimator="unbiased")
    if name == "categorical":
        return cj.Categorical(jnp.asarray(CAT_P))
    if name == "logistic":
        return cj.LogisticRegression(dim=2, theta=jnp.asarray(LOGIT_THETA), cov=jnp.asarray(GLM_COV), **glm)
    if name == "poisson":
        return cj.PoissonRegression(dim=2, theta=jnp.asarray(POIS_THETA), cov=jnp.asarray(GLM_COV), **glm)
    raise KeyError(name)


def scale(name):
    """``tr(A C)`` from THEORY 6, computed independently of the task's methods."""
    if name.startswith("gaussian"):
        d = 2
        return (d + d * (d + 1) / 2) / 2
    if name == "categorical":
        return 1.0 - np.sum(CAT_P ** 2)
    cls, theta = {"logistic": (cj.LogisticRegression, LOGIT_THETA),
                  "poisson": (cj.PoissonRegression, POIS_THETA)}[name]
    I = quadrature_information(cls, theta, GLM_COV)
    return float(np.trace(GLM_COV @ np.linalg.inv(I)))


def reference(s, n, m, T):
    """``(T + 1, 3)`` expected errors and the ``(3,)`` stationary errors of :func:`ecosystem` (NumPy)."""
    W = np.array([[0.5, 0, 0], [1, 0, 0], [0, 0, 1.0]])
    D = s * np.diag([0.25 / n + 0.25 / m, 1 / m, 1 / m])
    V = s / n * np.eye(3)
    out = [np.diag(V)]
    for _ in range(T):
        V = W @ V @ W.T + D
        out.append(np.diag(V))
    Wb, Db = W[:2, :2], D[:2, :2]  # A and B read from no closed class; C collapses
    stat = np.r_[np.diag(scipy.linalg.solve_discrete_lyapunov(Wb, Db)), np.inf]
    return np.array(out), stat


# ---------------------------------------------------------------- moments vs Monte Carlo
# name, n, replicates, generations, task options. The GLMs run the samples engine (Newton fits
# on materialized data): smaller n and replicates keep them to seconds (10 Newton steps converge
# here); the slow variants use n = 2000 (measured |z| < 2.1 there, 1000 replicates, 3 generations).
CASES = [
    pytest.param("gaussian", 2000, 1000, 2, {}, id="gaussian"),
    pytest.param("gaussian_unbiased", 2000, 1000, 2, {}, id="gaussian-unbiased", marks=pytest.mark.slow),
    pytest.param("categorical", 2000, 1000, 2, {}, id="categorical"),
    pytest.param("logistic", 300, 300, 2, dict(newton_steps=10), id="logistic"),
    # Slow (10 s): the recursion is task-generic, checked by default against Monte Carlo for the logistic
    # GLM here; Poisson's tr(A C) is checked against one-fit Monte Carlo in
    # test_glm.py::test_fit_error_matches_asymptotic_covariance and its self-loop slope by test_self_loop_slope_by_hand.
    pytest.param("poisson", 300, 300, 2, dict(newton_steps=10), id="poisson", marks=pytest.mark.slow),
    pytest.param("logistic", 2000, 1000, 3, {}, id="logistic-large", marks=pytest.mark.slow),
    pytest.param("poisson", 2000, 1000, 3, {}, id="poisson-large", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,n,R,T,glm", CASES)
def test_large_sample_moments_match_monte_carlo(name, n, R, T, glm):
    task, eco = make_task(name, **glm), ecosystem(n)
    expected, stat = reference(scale(name), n, n, T)
    mom = cj.moments(eco, task, T, exact=False)
    assert not mom.exact and mom.models == MODELS
    # The dispatcher's recursion is THEORY 6's, with the scale tr(A C) written out above.
    np.testing.assert_allclose(mom.error, expected, rtol=1e-7)
    np.testing.assert_allclose(np.diag(mom.stationary), stat, rtol=1e-7)

    res = cj.simulate(eco, task, jax.random.key(1), generations=T, replicates=R)
    err = np.asarray(res.error, np.float64)  # (R, T + 1, K)
    assert np.isfinite(err).all(), "failed fits at large n"
    sem = err.std(0, ddof=1) / np.sqrt(R)
    z = (err.mean(0) - expected) / sem
    assert np.abs(z).max() < Z_MAX, np.round(z, 2)
    # The test can fail: a theory 30% too high is rejected.
    z_wrong = (err.mean(0) - 1.3 * expected) / sem
    assert np.abs(z_wrong).max() > Z_MAX, np.round(z_wrong, 2)
    print(f"{name}: max |z| = {np.abs(z).max():.2f}; 1.3 x theory: max |z| = {np.abs(z_wrong).max():.2f}")


# ---------------------------------------------------------------- diagnose
@pytest.mark.parametrize("name", ["gaussian", "categorical", "logistic", "poisson"])
def test_diagnose_uses_the_same_theory(name):
    n = 500
    task, eco = make_task(name), ecosystem(n)
    s = scale(name)
    _, stat = reference(s, n, n, 0)
    diag = cj.diagnose(eco, task)
    mom = cj.moments(eco, task, 1, exact=False)
    assert diag.stationary_kind == "large-sample" and not diag.bounded
    got = np.array([diag[k].stationary_error for k in MODELS], float)
    np.testing.assert_allclose(got[:2], np.diag(mom.stationary)[:2], rtol=1e-10)
    np.testing.assert_allclose(got[:2], stat[:2], rtol=1e-7)
    # C reads only itself: it collapses, its error growing by tr(A C) / m per generation (THEORY 4.3).
    assert diag["C"].collapses and diag["C"].diverges
    assert not diag["A"].collapses and not diag["B"].collapses and diag["A"].slope == diag["B"].slope == 0
    assert np.isinf(np.diag(mom.stationary)[2])
    np.testing.assert_allclose(diag["C"].slope, s / n, rtol=1e-7)
    # No exact theory for these tasks: rho(L) is "n/a", never a number.
    assert diag.rho_L is None and "rho(L) = n/a" in str(diag)
    exact = cj.diagnose(eco, task, exact=True)
    if name == "categorical":  # the exact theory below: rho(L) = 1 - 1/m on the self-loop, a bounded fixation level
        assert exact.stationary_kind == "exact"
        np.testing.assert_allclose(exact.rho_L, 1 - 1 / n, rtol=1e-10)
        _, V_inf = numpy_categorical_exact(n, n, 1)
        np.testing.assert_allclose([exact[k].stationary_error for k in MODELS], np.diag(V_inf), rtol=1e-6)
        # C lost its real data (it collapses: it fixates) but its Brier error stays bounded
        assert exact["C"].collapses and not exact["C"].diverges and "bounded" in exact["C"].reason
        return
    assert exact.rho_L is None and any(note.startswith("rho(L) n/a") for note in exact.notes), exact.notes
    assert exact.stationary_kind == "large-sample"
    np.testing.assert_allclose([exact[k].stationary_error for k in MODELS], got, rtol=1e-12)


def test_glm_tree_structures_name_their_class():
    """Logistic and Poisson regression have the same fields; their tree structures (the jit cache
    keys) must still differ, or one task's compiled theory is served to the other."""
    a = jax.tree_util.tree_structure(cj.LogisticRegression(dim=2))
    b = jax.tree_util.tree_structure(cj.PoissonRegression(dim=2))
    assert a != b
    task = make_task("poisson", ridge=0.5)
    back = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(task), jax.tree_util.tree_leaves(task))
    assert type(back) is cj.PoissonRegression and back.dim == 2 and float(back.ridge) == 0.5


# ---------------------------------------------------------------- categorical: exact second moments
def numpy_categorical_exact(n, m, T, shared=False, alpha=0.5, probs=CAT_P):
    """The exact categorical recursion written out with loops (NumPy float64), for :func:`ecosystem`.

    Given generation t - 1, a batch of m draws from p_j adds to every reader k the noise
    W_kj^2 (1 - |p_j|^2) / m, with E (1 - |p_j|^2) = s0 - V[j, j] (unbiased fits); a shared batch
    also correlates two readers k, l by W_kj W_lj (s0 - V[j, j]) / m. Returns (T + 1, 3) errors and
    the fixed point (3, 3).
    """
    s0 = 1 - np.sum(np.asarray(probs, float) ** 2)
    W = np.array([[alpha, 0, 0], [1, 0, 0], [0, 0, 1.0]])
    real = np.array([(1 - alpha) ** 2 / n, 0, 0])
    V = s0 / n * np.eye(3)
    out = [np.diag(V).copy()]

    def step(V):
        new = W @ V @ W.T + s0 * np.diag(real)
        for j in range(3):
            for k in range(3):
                for l in range(3):
                    if k == l or shared:
                        new[k, l] += W[k, j] * W[l, j] * (s0 - V[j, j]) / m
        return new

    for _ in range(T):
        V = step(V)
        out.append(np.diag(V).copy())
    # Fixed point: the map is affine, V -> A vec(V) + b; read A off basis matrices and solve.
    b = step(np.zeros((3, 3))).ravel()
    A = np.stack([step(e.reshape(3, 3)).ravel() - b for e in np.eye(9)], 1)
    V_inf = np.linalg.solve(np.eye(9) - A, b).reshape(3, 3)
    return np.array(out), V_inf


@pytest.mark.parametrize("pool", ["independent", "shared"])
def test_categorical_exact_moments_at_small_n(pool):
    """n = m = 20: the exact map matches Monte Carlo, the large-sample recursion does not."""
    n, T, R = 20, 6, 4000
    task, eco = make_task("categorical"), ecosystem(n)
    expected, V_inf = numpy_categorical_exact(n, n, T, shared=pool == "shared")
    mom = cj.moments(eco, task, T, pool=pool)          # exact by default: the task has an exact theory
    assert mom.exact
    # (rtol 1e-6: the task holds p* in float32)
    np.testing.assert_allclose(mom.error, expected, rtol=1e-6)
    np.testing.assert_allclose(mom.stationary, V_inf, rtol=1e-6, atol=1e-12)
    # The collapsing self-loop saturates at the fixation level s0 = 1 - |p*|^2 (bounded Brier risk).
    np.testing.assert_allclose(mom.stationary[2, 2], 1 - np.sum(CAT_P ** 2), rtol=1e-6)
    res = cj.simulate(eco, task, jax.random.key(3), generations=T, replicates=R, pool=pool)
    err = np.asarray(res.error, np.float64)
    sem = err.std(0, ddof=1) / np.sqrt(R)
    z = (err.mean(0) - expected) / sem
    assert np.abs(z).max() < Z_MAX, np.round(z, 2)
    large = cj.moments(eco, task, T, pool=pool, exact=False).error
    z_large = (err.mean(0) - large) / sem
    assert np.abs(z_large).max() > Z_MAX, np.round(z_large, 2)   # finite samples matter here
    print(f"categorical exact ({pool}): max |z| = {np.abs(z).max():.2f}, large-sample max |z| = "
          f"{np.abs(z_large).max():.2f}")


def test_categorical_exact_diversity_and_scope():
    """THEORY 7: a self-loop has E[1 - sum p_hat^2] = (1 - 1/n)^(t+1) (1 - sum p*^2); refusals name the culprit."""
    n, T = 7, 9
    task = make_task("categorical")
    eco = cj.graphs.from_edges(1, [(0, 0)], real=(), n=n, m=n, n0=n)
    mom = cj.moments(eco, task, T)
    s0 = 1 - np.sum(CAT_P ** 2)
    # E |p_hat - p*|^2 = E sum p_hat^2 - |p*|^2 (unbiased), so the error is s0 minus the diversity.
    # (rtol 1e-6: the task holds p* in float32)
    np.testing.assert_allclose(mom.error[:, 0], s0 - (1 - 1 / n) ** (np.arange(T + 1) + 1) * s0, rtol=1e-6)
    with pytest.raises(ValueError, match="accumulate"):
        cj.moments(eco, task, T, regime="accumulate", exact=True)
    G = nx.DiGraph()
    G.add_node("web", kind="data", n=30, fresh=False)
    G.add_node("m", kind="model", n_synthetic=30)
    G.add_edge("web", "m", weight=1.0)
    with pytest.raises(ValueError, match="data node 'web' is fixed"):
        cj.moments(cj.Ecosystem.from_networkx(G), task, 3)
    G.nodes["web"].update(fresh=True, probs=np.full(4, 0.25))
    with pytest.raises(ValueError, match="data node 'web' has probs of its own"):
        cj.moments(cj.Ecosystem.from_networkx(G), task, 3)
    cj.moments(cj.Ecosystem.from_networkx(G), task, 3, exact=False)  # the large-sample theory still answers


def test_categorical_exact_long_run_error_and_alpha_gradient(x64):
    """long_run_error(exact=True): the exact fixed point, and d/d alpha_A against central differences."""
    from collapse_jax.objectives import edge_weights, with_edge_weights

    n = 30
    task, eco = make_task("categorical"), ecosystem(n)
    p0 = edge_weights(eco)
    value = cj.long_run_error(eco, task, exact=True, reduce="none")
    np.testing.assert_allclose(np.asarray(value), np.diag(numpy_categorical_exact(n, n, 0)[1]), rtol=1e-12)
    f = lambda p: cj.long_run_error(with_edge_weights(eco, p), task, exact=True, reduce="mean")  # noqa: E731
    grad = jax.grad(f)(p0)
    ref = lambda a: np.diag(numpy_categorical_exact(n, n, 0, alpha=a)[1]).mean()  # noqa: E731
    h = 1e-6
    fd = (ref(0.5 + h) - ref(0.5 - h)) / (2 * h)
    np.testing.assert_allclose(float(grad.alpha[0]), fd, rtol=1e-6)
    assert abs(fd) > 1e-4
    # one model edge per consumer and forced alphas (B, C): no gradient
    np.testing.assert_allclose(np.asarray(grad.model), 0.0, atol=1e-14)
    np.testing.assert_allclose(np.asarray(grad.alpha[1:]), 0.0, atol=1e-14)
