"""A plain NumPy reference implementation of THEORY.md section 1 (float64).

It materializes every data set and solves each model's weighted least squares
with ``numpy.linalg.lstsq`` on the stacked, square-root-weighted data, one
model and one generation at a time: slow, obvious, and independent of the JAX
engine (it shares only the Ecosystem's validated attributes). The tests use it
as an oracle for regimes, pools, loss scales and fixed/fresh data; the
benchmarks time it.

Example:
    >>> import numpy as np, collapse_jax as cj
    >>> eco = cj.graphs.chain(2, n=20, m=20)
    >>> err = simulate_numpy(eco, cj.LinearRegression(dim=3), np.random.default_rng(0),
    ...                      generations=3, replicates=2)
    >>> err.shape
    (2, 4, 2)
"""

from __future__ import annotations

import numpy as np

__all__ = ["simulate_numpy"]


def _factor(cov):
    lam, U = np.linalg.eigh(np.asarray(cov, float))
    # Covariances are validated PSD; clip only round-off below zero.
    return U * np.sqrt(np.clip(lam, 0.0, None))


def simulate_numpy(eco, task, rng: np.random.Generator, *, generations: int, replicates: int = 1,
                   regime: str = "replace", pool: str = "independent",
                   loss_scale: str = "mean") -> np.ndarray:
    """Errors ``(replicates, generations + 1, K)`` of the THEORY section 1 model.

    ``regime``: "replace", "accumulate" or "accumulate_subsample" (every edge
    keeps the pool of its producer's batches since generation 1, its own under
    ``pool="independent"``, the producer's published ones under "shared", and
    fits on ``m_j`` of them drawn uniformly without replacement).
    """
    d, sigma, ridge = task.dim, float(task.noise), float(task.ridge)
    theta_star = np.asarray(task.theta_star, float)
    task_cov = None if task.cov is None else np.asarray(task.cov, float)
    risk_cov = np.eye(d) if task_cov is None else task_cov
    R, W = np.asarray(eco.R, float), np.asarray(eco.W, float)
    rel = np.asarray(eco.real_weights, float)

    def sampler(cov, design, n):
        if design is not None:
            X = np.asarray(design, float)
            return lambda: X
        cov = cov if cov is not None else task_cov
        L = np.eye(d) if cov is None else _factor(cov)
        return lambda: rng.standard_normal((n, d)) @ L.T

    data_x = [sampler(c, x, n) for c, x, n in zip(eco.data_attr("cov"), eco.data_attr("design"), eco.n)]
    data_theta = [theta_star if t is None else np.asarray(t, float) for t in eco.data_attr("theta")]
    syn_x = [sampler(c, x, m) for c, x, m in zip(eco.model_attr("cov"), eco.model_attr("design"), eco.n_synthetic)]

    def labels(X, theta):
        return X @ theta + sigma * rng.standard_normal(X.shape[0])

    def fit(sets):
        """sets: list of (coef, X, y); weighted least squares (+ ridge)."""
        A = [np.sqrt(c) * X for c, X, _ in sets]
        b = [np.sqrt(c) * y for c, _, y in sets]
        if ridge > 0:
            A.append(np.sqrt(ridge) * np.eye(d))
            b.append(np.zeros(d))
        return np.linalg.lstsq(np.vstack(A), np.concatenate(b), rcond=None)[0]

    def coef(w, count):
        return w / count if loss_scale == "mean" else w

    out = np.empty((replicates, generations + 1, eco.K))
    for r in range(replicates):
        fixed = {}
        for s in range(eco.S):
            if not eco.fresh[s]:
                X = data_x[s]()
                fixed[s] = (X, labels(X, data_theta[s]))

        def real(s):
            if s in fixed:
                return fixed[s]
            X = data_x[s]()
            return X, labels(X, data_theta[s])

        theta = np.empty((eco.K, d))
        for k in range(eco.K):
            edges = [s for kk, s in eco.real_edges if kk == k]
            if edges:
                total = rel[k, edges].sum()
                theta[k] = fit([(coef(rel[k, s] / total, eco.n[s]), *real(s)) for s in edges])
            else:
                X = sampler(None, None, eco.n0[k])()
                theta[k] = fit([(coef(1.0, eco.n0[k]), X, labels(X, theta_star))])
        out[r, 0] = [(t - theta_star) @ risk_cov @ (t - theta_star) for t in theta]

        history = {}  # accumulated synthetic batches per edge or producer
        for t in range(1, generations + 1):
            shared = {}
            if pool == "shared":
                for j in sorted({j for _, j in eco.model_edges}):
                    X = syn_x[j]()
                    shared[j] = (X, labels(X, theta[j]))
            new = np.empty_like(theta)
            for k in range(eco.K):
                sets = [(coef(R[k, s], eco.n[s]), *real(s)) for kk, s in eco.real_edges if kk == k]
                for kk, j in eco.model_edges:
                    if kk != k:
                        continue
                    if pool == "shared":
                        batch, slot = shared[j], ("p", j)
                    else:
                        X = syn_x[j]()
                        batch, slot = (X, labels(X, theta[j])), ("e", k, j)
                    if regime in ("accumulate", "accumulate_subsample"):
                        if pool != "shared" or slot not in history or len(history[slot]) < t:
                            history.setdefault(slot, []).append(batch)
                        batches = history[slot]
                    else:
                        batches = [batch]
                    if regime == "accumulate_subsample":
                        # m_j of the t * m_j pooled samples, uniformly without replacement, per edge.
                        Xp = np.vstack([X for X, _ in batches])
                        yp = np.concatenate([y for _, y in batches])
                        pick = rng.choice(len(yp), size=eco.n_synthetic[j], replace=False)
                        batches = [(Xp[pick], yp[pick])]
                    count = sum(len(y) for _, y in batches)
                    sets += [(coef(W[k, j], count), X, y) for X, y in batches]
                new[k] = fit(sets)
            theta = new
            out[r, t] = [(th - theta_star) @ risk_cov @ (th - theta_star) for th in theta]
    return out
