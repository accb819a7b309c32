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
    pytest.param("gaussian_unbiased", 2000, 1000, 2, {}, id="gaussian-unbiased"),
    pytest.param("categorical", 2000, 1000, 2, {}, id="categorical"),
    pytest.param("logistic", 300, 300, 2, dict(newton_steps=10), id="logistic"),
    pytest.param("poisson", 300, 300, 2, dict(newton_steps=10), id="poisson"),
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
