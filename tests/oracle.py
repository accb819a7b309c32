"""A plain NumPy reference implementation of THEORY.md sections 1 and 2 (float64).

It materializes every data set and fits each model on its weighted mixture,
one model and one generation at a time: slow, obvious, and independent of the
JAX engine (it shares only the Ecosystem's validated attributes and the
task's public fields). One loop (:func:`simulate_numpy`) runs the graph, the
regimes, pools and loss scales; a :class:`Spec` per task plugs in how data
are drawn and how a mixture is fit:

* ``LinearRegression``: weighted least squares by ``numpy.linalg.lstsq`` on
  the stacked, square-root-weighted data (+ ridge rows).
* ``GaussianFit``: the weighted moment fit about the mixture's mean (so the
  between-source mean differences are in), "unbiased" adding per data set
  ``c_e scatter_e / (n_e - 1) / sum_e c_e n_e`` (the task's documented
  mixture convention); error ``KL(N(mu*, Sigma*) || N(mean, cov))``.
* ``Categorical``: symbols drawn one by one, fit ``sum_e c_e counts_e /
  sum_e c_e n_e``; error ``sum_i (p_i - p*_i)^2``.
* ``LogisticRegression`` / ``PoissonRegression``: undamped-then-halved Newton
  in float64 to ``|step| <= 1e-10 (1 + |theta|)`` (at most 100 steps, else
  failed: NaN, error ``inf``); a failed model's synthetic labels are NaN.

The tests use it as an oracle for regimes, pools, loss scales and fixed/fresh
data; the benchmarks time it.

Example:
    >>> import numpy as np, collapse_jax as cj
    >>> eco = cj.graphs.chain(2, n=20, m=20)
    >>> err = simulate_numpy(eco, cj.LinearRegression(dim=3), np.random.default_rng(0),
    ...                      generations=3, replicates=2)
    >>> err.shape
    (2, 4, 2)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import networkx as nx
import numpy as np
import scipy.special

import collapse_jax as cj
from collapse_jax.tasks.glm import POISSON_MAX_RATE

__all__ = ["simulate_numpy", "Spec", "spec", "engine_vs_oracle", "two_source_chain"]


class Spec(NamedTuple):
    """How one task draws and fits in NumPy. A data set is a tuple of arrays sharing a leading sample axis."""

    real: Callable       # real(s) -> a new draw of data node s
    truth: Callable      # truth(n) -> n samples of the task's truth (generation 0 without real data)
    synthetic: Callable  # synthetic(j, param) -> model j's n_synthetic[j] samples from its param
    fit: Callable        # fit([(coef, data set), ...]) -> param of the weighted mixture
    error: Callable      # error(param) -> float


def _factor(cov):
    lam, U = np.linalg.eigh(np.asarray(cov, float))
    # Covariances are validated PSD; clip only round-off below zero.
    return U * np.sqrt(np.clip(lam, 0.0, None))


def _vec(value, default):
    return default if value is None else np.asarray(value, float)


def _covariates(rng, d, default_cov):
    """``sampler(cov, design, n)``: a fixed design, or fresh ``N(0, cov or default_cov)`` rows."""
    def sampler(cov, design, n):
        if design is not None:
            X = np.asarray(design, float)
            return lambda: X
        cov = cov if cov is not None else default_cov
        L = np.eye(d) if cov is None else _factor(cov)
        return lambda: rng.standard_normal((n, d)) @ L.T
    return sampler


def _regression(eco, task, rng, labels, fit, failed=lambda theta: False) -> Spec:
    """Covariates per node (THEORY 1), ``labels(X, theta)``, error ``e' Sigma e`` (``inf`` when ``failed``)."""
    d = task.dim
    theta_star = np.asarray(task.theta_star, float)
    task_cov = None if task.cov is None else np.asarray(task.cov, float)
    risk_cov = np.eye(d) if task_cov is None else task_cov
    sampler = _covariates(rng, d, task_cov)
    designs = eco.data_attr("design") if "design" in task.data_attributes else (None,) * eco.S
    syn_designs = eco.model_attr("design") if "design" in task.model_attributes else (None,) * eco.K
    data_x = [sampler(c, x, n) for c, x, n in zip(eco.data_attr("cov"), designs, eco.n)]
    data_theta = [_vec(t, theta_star) for t in eco.data_attr("theta")]
    syn_x = [sampler(c, x, m) for c, x, m in zip(eco.model_attr("cov"), syn_designs, eco.n_synthetic)]

    def draw(x, theta):
        X = x()
        return X, labels(X, theta)

    def error(theta):
        if failed(theta):
            return np.inf
        e = theta - theta_star
        return e @ risk_cov @ e

    return Spec(real=lambda s: draw(data_x[s], data_theta[s]),
                truth=lambda n: draw(sampler(None, None, n), theta_star),
                synthetic=lambda j, theta: draw(syn_x[j], theta),
                fit=fit, error=error)


def _linear(eco, task, rng) -> Spec:
    d, sigma, ridge = task.dim, float(task.noise), float(task.ridge)

    def labels(X, theta):
        return X @ theta + sigma * rng.standard_normal(X.shape[0])

    def fit(sets):
        """Weighted least squares (+ ridge) on the stacked, square-root-weighted data."""
        A = [np.sqrt(c) * X for c, (X, _) in sets]
        b = [np.sqrt(c) * y for c, (_, y) in sets]
        if ridge > 0:
            A.append(np.sqrt(ridge) * np.eye(d))
            b.append(np.zeros(d))
        return np.linalg.lstsq(np.vstack(A), np.concatenate(b), rcond=None)[0]

    return _regression(eco, task, rng, labels, fit)


# GLM: (cumulant b, mean b', variance b'', label sampler given eta) per task class.
def _poisson_labels(rng, eta):
    rate = np.exp(np.clip(eta, None, 700.0))
    ok = rate <= POISSON_MAX_RATE  # the task's documented overflow: NaN labels
    return np.where(ok, rng.poisson(np.where(ok, rate, 0.0)).astype(float), np.nan)


_GLMS = {
    "LogisticRegression": (lambda e: np.logaddexp(0.0, e), scipy.special.expit,
                           lambda e: scipy.special.expit(e) * scipy.special.expit(-e),
                           lambda rng, eta: (rng.random(eta.shape) < scipy.special.expit(eta)).astype(float)),
    "PoissonRegression": (np.exp, np.exp, np.exp, _poisson_labels),
}


def newton(X, y, c, ridge, kind, steps=100):
    """Minimize ``sum_i c_i (b(x_i' theta) - y_i x_i' theta) + ridge |theta|^2 / 2`` in float64.

    Newton from 0, halving a step until the objective does not increase (up to its rounding);
    converged when ``|step| <= 1e-10 (1 + |theta|)``. Returns NaN (failed)
    when it has not converged in ``steps`` steps (separation), the Hessian is
    singular, or a label is NaN (a failed producer).
    """
    b, mean, var, _ = _GLMS[kind]
    d = X.shape[1]
    theta = np.zeros(d)
    if np.isnan(y).any():
        return np.full(d, np.nan)

    def f(t):
        eta = X @ t
        with np.errstate(over="ignore"):
            v = np.sum(c * (b(eta) - y * eta)) + 0.5 * ridge * t @ t
        return v if np.isfinite(v) else np.inf

    for _ in range(steps):
        eta = X @ theta
        g = X.T @ (c * (mean(eta) - y)) + ridge * theta
        H = (X * (c * var(eta))[:, None]).T @ X + ridge * np.eye(d)
        try:
            step = np.linalg.solve(H, g)
        except np.linalg.LinAlgError:
            break
        if np.linalg.norm(step) <= 1e-10 * (1 + np.linalg.norm(theta)):
            return theta - step
        s, f0 = 1.0, f(theta)
        # 1e-12 |f0|: the objective's rounding, so near the optimum full steps are taken.
        while f(theta - s * step) > f0 + 1e-12 * abs(f0) and s > 1e-12:
            s /= 2
        theta = theta - s * step
    return np.full(d, np.nan)


def _glm(eco, task, rng) -> Spec:
    kind, ridge = type(task).__name__, float(task.ridge)
    sample_labels = _GLMS[kind][3]

    def labels(X, theta):
        if not np.all(np.isfinite(theta)):
            return np.full(X.shape[0], np.nan)
        return sample_labels(rng, X @ theta)

    def fit(sets):
        X = np.vstack([X for _, (X, _) in sets])
        y = np.concatenate([y for _, (_, y) in sets])
        c = np.concatenate([np.full(len(y), coef) for coef, (_, y) in sets])
        return newton(X, y, c, ridge, kind)

    return _regression(eco, task, rng, labels, fit, failed=lambda theta: not np.all(np.isfinite(theta)))


def gaussian_kl(mu0, S0, mu1, S1) -> float:
    """``KL(N(mu0, S0) || N(mu1, S1))``; ``inf`` when ``S1`` is not positive definite."""
    try:
        np.linalg.cholesky(S1)
    except np.linalg.LinAlgError:
        return np.inf
    d = len(mu0)
    P = np.linalg.inv(S1)
    e = mu1 - mu0
    return 0.5 * (np.trace(P @ S0) + e @ P @ e - d + np.linalg.slogdet(S1)[1] - np.linalg.slogdet(S0)[1])


def _gaussian(eco, task, rng) -> Spec:
    d, unbiased = task.dim, task.estimator == "unbiased"
    mu_star, cov_star = np.asarray(task.mean_star, float), np.asarray(task.cov_star, float)
    data = [(_vec(m, mu_star), _vec(c, cov_star)) for m, c in zip(eco.data_attr("mean"), eco.data_attr("cov"))]

    def draw(param, n):
        mean, cov = param
        return (mean + rng.standard_normal((n, d)) @ _factor(cov).T,)

    def fit(sets):
        """Moment fit of the weighted mixture, centred at its mean (between-source spread included)."""
        s0 = sum(c * len(x) for c, (x,) in sets)
        mean = sum(c * x.sum(0) for c, (x,) in sets) / s0
        cov = sum(c * (x - mean).T @ (x - mean) for c, (x,) in sets) / s0
        if unbiased:  # each data set's own scatter over n_e - 1 instead of n_e
            cov = cov + sum(c * np.cov(x.T, ddof=1).reshape(d, d) for c, (x,) in sets) / s0
        return mean, cov

    return Spec(real=lambda s: draw(data[s], eco.n[s]),
                truth=lambda n: draw((mu_star, cov_star), n),
                synthetic=lambda j, param: draw(param, eco.n_synthetic[j]),
                fit=fit, error=lambda param: gaussian_kl(mu_star, cov_star, *param))


def _categorical(eco, task, rng) -> Spec:
    p_star = np.asarray(task.probs_star, float)
    V = len(p_star)
    data = [_vec(p, p_star) for p in eco.data_attr("probs")]

    def draw(p, n):
        p = np.clip(p, 0.0, None)
        return (rng.choice(V, size=n, p=p / p.sum()),)

    def fit(sets):
        counts = sum(c * np.bincount(x, minlength=V) for c, (x,) in sets)
        return counts / sum(c * len(x) for c, (x,) in sets)

    return Spec(real=lambda s: draw(data[s], eco.n[s]),
                truth=lambda n: draw(p_star, n),
                synthetic=lambda j, p: draw(p, eco.n_synthetic[j]),
                fit=fit, error=lambda p: float(np.sum((p - p_star) ** 2)))


_SPECS = {cj.LinearRegression: _linear, cj.GaussianFit: _gaussian, cj.Categorical: _categorical,
          cj.LogisticRegression: _glm, cj.PoissonRegression: _glm}


def spec(eco, task, rng: np.random.Generator) -> Spec:
    """The :class:`Spec` of ``task`` (one of the library's five) on ``eco``, drawing from ``rng``."""
    for cls, build in _SPECS.items():
        if isinstance(task, cls):
            return build(eco, task, rng)
    raise ValueError(f"task: the NumPy oracle has no spec for {type(task).__name__}")


def simulate_numpy(eco, task, rng: np.random.Generator, *, generations: int, replicates: int = 1,
                   regime: str = "replace", pool: str = "independent",
                   loss_scale: str = "mean") -> np.ndarray:
    """Errors ``(replicates, generations + 1, K)`` of the THEORY section 1 model.

    ``regime``: "replace", "accumulate" or "accumulate_subsample" (every edge
    keeps the pool of its producer's batches since generation 1, its own under
    ``pool="independent"``, the producer's published ones under "shared", and
    fits on ``m_j`` of them drawn uniformly without replacement). Under
    "accumulate" every batch is its own data set.
    """
    sp = spec(eco, task, rng)
    R, W = np.asarray(eco.R, float), np.asarray(eco.W, float)
    rel = np.asarray(eco.real_weights, float)

    def coef(w, count):
        return w / count if loss_scale == "mean" else w

    def size(data):
        return len(data[0])

    out = np.empty((replicates, generations + 1, eco.K))
    for r in range(replicates):
        fixed = {s: sp.real(s) for s in range(eco.S) if not eco.fresh[s]}

        def real(s):
            return fixed[s] if s in fixed else sp.real(s)

        params = []
        for k in range(eco.K):
            edges = [s for kk, s in eco.real_edges if kk == k]
            if edges:
                total = rel[k, edges].sum()
                params.append(sp.fit([(coef(rel[k, s] / total, eco.n[s]), real(s)) for s in edges]))
            else:
                params.append(sp.fit([(coef(1.0, eco.n0[k]), sp.truth(eco.n0[k]))]))
        out[r, 0] = [sp.error(p) for p in params]

        history = {}  # accumulated synthetic batches per edge or producer
        for t in range(1, generations + 1):
            shared = {}
            if pool == "shared":
                for j in sorted({j for _, j in eco.model_edges}):
                    shared[j] = sp.synthetic(j, params[j])
            new = []
            for k in range(eco.K):
                sets = [(coef(R[k, s], eco.n[s]), real(s)) for kk, s in eco.real_edges if kk == k]
                for kk, j in eco.model_edges:
                    if kk != k:
                        continue
                    if pool == "shared":
                        batch, slot = shared[j], ("p", j)
                    else:
                        batch, slot = sp.synthetic(j, params[j]), ("e", k, j)
                    if regime in ("accumulate", "accumulate_subsample"):
                        if pool != "shared" or slot not in history or len(history[slot]) < t:
                            history.setdefault(slot, []).append(batch)
                        batches = history[slot]
                    else:
                        batches = [batch]
                    if regime == "accumulate_subsample":
                        # m_j of the t * m_j pooled samples, uniformly without replacement, per edge.
                        pooled = tuple(np.concatenate(parts) for parts in zip(*batches))
                        pick = rng.choice(size(pooled), size=eco.n_synthetic[j], replace=False)
                        batches = [tuple(a[pick] for a in pooled)]
                    count = sum(size(b) for b in batches)
                    sets += [(coef(W[k, j], count), b) for b in batches]
                new.append(sp.fit(sets))
            params = new
            out[r, t] = [sp.error(p) for p in params]
    return out


def engine_vs_oracle(eco, task, seed: int, *, generations: int, replicates: int, oracle_replicates: int,
                     **config) -> np.ndarray:
    """Two-sample z-scores ``(generations + 1, K)`` of the engine's replicate mean error against the oracle's.

    ``cj.simulate`` with ``jax.random.key(seed)`` and :func:`simulate_numpy`
    with ``numpy.random.default_rng(seed)``, the same ``config`` (regime,
    pool, loss_scale). An infinite or NaN error on either side gives a NaN z.
    """
    import jax

    ours = np.asarray(cj.simulate(eco, task, jax.random.key(seed), generations=generations, replicates=replicates,
                                  **config).error, float)
    ref = simulate_numpy(eco, task, np.random.default_rng(seed), generations=generations,
                         replicates=oracle_replicates, **config)
    se = np.sqrt(ours.var(0, ddof=1) / len(ours) + ref.var(0, ddof=1) / len(ref))
    with np.errstate(invalid="ignore"):
        return (ours.mean(0) - ref.mean(0)) / se


def two_source_chain(n: int, m: int, a: dict, b: dict):
    """Data ``a`` (n samples, weight 0.6) and ``b`` (n // 2, weight 0.4) -> m0 -> m1, m1 also reads itself.

    ``a`` and ``b`` are the data nodes' task attributes (e.g. their own means),
    so model 0 fits a genuine mixture and model 1 collapses on its self-loop.
    """
    G = nx.DiGraph()
    G.add_node("a", kind="data", n=n, **a)
    G.add_node("b", kind="data", n=n // 2, **b)
    G.add_node("m0", kind="model", n_synthetic=m)
    G.add_node("m1", kind="model", n_synthetic=m)
    for u, v, w in (("a", "m0", 0.6), ("b", "m0", 0.4), ("m0", "m1", 0.5), ("m1", "m1", 0.5)):
        G.add_edge(u, v, weight=w)
    return cj.Ecosystem.from_networkx(G)
