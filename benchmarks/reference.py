"""The plain NumPy reference: the loop a careful user writes without collapse_jax.

For every replicate, generation and model it materializes each in-edge's data
set (``n x d`` Gaussian covariates and labels; synthetic labels from the
producer's previous fit), stacks them with row weights ``w / n`` (mean loss)
and solves weighted least squares with ``numpy.linalg.lstsq``, in float64.
Nothing is vectorized across replicates or models: that is the point of the
comparison. OpenBLAS runs on one thread (``common`` sets it before NumPy loads),
which is the fastest setting for these small solves on this machine (about
220 us against 270 us with two threads for a 384 x 32 ``lstsq``).

Scope: the standard study's class of ecosystems (fresh data nodes with the
task's identity covariance and theta*, no per-node covariances or designs),
``regime="replace"``, ``pool="independent"``, ``loss_scale="mean"``, no
ridge. It is also an independent implementation of THEORY.md section 1 for
that class, so ``--check`` compares its error distribution with the engine's.

Run: ``python benchmarks/reference.py [--smoke] [--replicates R] [--generations T]``.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (first: it sets OPENBLAS_NUM_THREADS before NumPy loads)

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402


def check_scope(eco) -> None:
    """Raise ``ValueError`` if ``eco`` is outside what the reference loop implements."""
    for s, name in enumerate(eco.data):
        if not eco.fresh[s] or eco.data_attr("cov")[s] is not None or eco.data_attr("design")[s] is not None \
                or eco.data_attr("theta")[s] is not None:
            raise ValueError(f"reference: data node {name!r} must be fresh with default cov and theta")
    for k, name in enumerate(eco.models):
        if eco.model_attr("cov")[k] is not None or eco.model_attr("design")[k] is not None:
            raise ValueError(f"reference: model node {name!r} must use the default synthetic covariates")


def reference_study(eco, dim: int, noise: float, generations: int, replicates: int, seed: int = 0,
                    first_replicate: int = 0, solver: str = "lstsq") -> np.ndarray:
    """Excess risk ``(replicates, generations + 1, K)`` from the plain NumPy loop.

    Args:
        eco: an ecosystem in scope (see :func:`check_scope`).
        dim: parameter dimension d; theta* = ones(d) / sqrt(d), identity covariates.
        noise: label noise sigma.
        generations: T.
        replicates: R.
        seed: replicate r uses ``numpy.random.default_rng([seed, first_replicate + r])``.
        solver: ``"lstsq"`` (stack the weighted rows, ``numpy.linalg.lstsq``: SVD) or
            ``"cholesky"`` (accumulate the weighted Gram and moment, ``scipy.linalg.cho_solve``);
            both see the same draws, so they agree to rounding.
    """
    check_scope(eco)
    K, d = eco.K, dim
    R = np.asarray(eco.R, float)
    W = np.asarray(eco.W, float)
    real_rel = np.asarray(eco.real_weights, float)
    real_rel = real_rel / np.where(real_rel.sum(1, keepdims=True) > 0, real_rel.sum(1, keepdims=True), 1.0)
    reads_data = [[s for kk, s in eco.real_edges if kk == k] for k in range(K)]
    reads_model = [[j for kk, j in eco.model_edges if kk == k] for k in range(K)]
    theta_star = np.ones(d) / np.sqrt(d)
    out = np.empty((replicates, generations + 1, K))

    def fit_lstsq(rng, sources):
        """sources: (theta of the source, sample count, weight of its mean loss)."""
        X, y, sw = [], [], []
        for theta_src, n, w in sources:
            Xs = rng.standard_normal((n, d))
            X.append(Xs)
            y.append(Xs @ theta_src + noise * rng.standard_normal(n))
            sw.append(np.full(n, np.sqrt(w / n)))
        X, y, sw = np.concatenate(X), np.concatenate(y), np.concatenate(sw)
        return np.linalg.lstsq(X * sw[:, None], y * sw, rcond=None)[0]

    def fit_cholesky(rng, sources):
        """The same data (same draws), solved through the weighted normal equations."""
        G, b = np.zeros((d, d)), np.zeros(d)
        for theta_src, n, w in sources:
            Xs = rng.standard_normal((n, d))
            ys = Xs @ theta_src + noise * rng.standard_normal(n)
            G += (w / n) * (Xs.T @ Xs)
            b += (w / n) * (Xs.T @ ys)
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(G, lower=True, check_finite=False), b,
                                      check_finite=False)

    if solver not in ("lstsq", "cholesky"):
        raise ValueError(f"solver must be 'lstsq' or 'cholesky', got {solver!r}")
    fit = fit_lstsq if solver == "lstsq" else fit_cholesky

    for r in range(replicates):
        rng = np.random.default_rng([seed, first_replicate + r])
        theta = np.empty((K, d))
        for k in range(K):
            if reads_data[k]:
                theta[k] = fit(rng, [(theta_star, eco.n[s], real_rel[k, s]) for s in reads_data[k]])
            else:
                theta[k] = fit(rng, [(theta_star, eco.n0[k], 1.0)])
        out[r, 0] = np.sum((theta - theta_star) ** 2, axis=1)
        for t in range(1, generations + 1):
            new = np.empty_like(theta)
            for k in range(K):
                sources = [(theta_star, eco.n[s], R[k, s]) for s in reads_data[k]]
                sources += [(theta[j], eco.n_synthetic[j], W[k, j]) for j in reads_model[k]]
                new[k] = fit(rng, sources)
            theta = new
            out[r, t] = np.sum((theta - theta_star) ** 2, axis=1)
    return out


# ----------------------------------------------------------- batched float32 NumPy
class _Items:
    """The data sets one generation draws, as arrays (same scope as :func:`check_scope`).

    Item e draws ``n[e]`` samples labelled by the parameter ``src[e]`` (a model
    index, or K for theta*) and adds ``coef[e]`` times its statistics to model
    ``consumer[e]``'s normal equations. ``M`` (K, E) holds the coefficients, so
    that combining the items is one matrix product.
    """

    def __init__(self, K, items):
        self.consumer = np.array([k for k, _, _, _ in items], int)
        self.src = np.array([j for _, j, _, _ in items], int)
        self.n = np.array([n for _, _, n, _ in items], int)
        self.coef = np.array([c for _, _, _, c in items], float)
        self.M = np.zeros((K, len(items)), np.float32)
        self.M[self.consumer, np.arange(len(items))] = self.coef


def _generation_items(eco):
    """``(generation 0, generations >= 1)`` items of the engine's semantics (replace, independent, mean)."""
    check_scope(eco)
    K = eco.K
    R = np.asarray(eco.R, float)
    W = np.asarray(eco.W, float)
    real_rel = np.asarray(eco.real_weights, float)
    real_rel = real_rel / np.where(real_rel.sum(1, keepdims=True) > 0, real_rel.sum(1, keepdims=True), 1.0)
    has_real = eco.has_real()
    zero = [(k, K, eco.n[s], real_rel[k, s] / eco.n[s]) for k, s in eco.real_edges]
    zero += [(k, K, eco.n0[k], 1.0 / eco.n0[k]) for k in range(K) if not has_real[k]]
    gen = [(k, K, eco.n[s], R[k, s] / eco.n[s]) for k, s in eco.real_edges]
    gen += [(k, j, eco.n_synthetic[j], W[k, j] / eco.n_synthetic[j]) for k, j in eco.model_edges]
    return _Items(K, zero), _Items(K, gen)


def _solve(P, b):
    """Batched ``P x = b`` for symmetric positive definite ``P`` (..., d, d).

    ``numpy.linalg.solve`` (LAPACK LU in one gufunc loop) is the fastest batched
    solver NumPy offers here: 8 ms for 1024 systems of d = 32 in float32, against
    18 ms for ``numpy.linalg.cholesky`` plus SciPy's batched triangular solves
    (SciPy loops over the batch in Python). Cholesky would halve the flops, but
    at d = 32 the per-matrix overhead dominates.
    """
    return np.linalg.solve(P, b[..., None])[..., 0]


def _draw_materialized(rng, items, params, noise, d, dtype):
    """Statistics of every item, drawing the data: ``(B, E, d, d)`` Grams and ``(B, E, d)`` moments."""
    B, E = params.shape[0], len(items.n)
    G = np.empty((B, E, d, d), dtype)
    b = np.empty((B, E, d), dtype)
    for n in np.unique(items.n):  # items of one sample size are drawn together
        e = np.flatnonzero(items.n == n)
        X = rng.standard_normal((B, len(e), n, d), dtype=dtype)
        theta = params[:, items.src[e]]  # (B, e, d)
        y = (X @ theta[..., None])[..., 0] + dtype(noise) * rng.standard_normal((B, len(e), n), dtype=dtype)
        Xt = X.swapaxes(-1, -2)
        G[:, e] = Xt @ X
        b[:, e] = (Xt @ y[..., None])[..., 0]
    return G, b


def _draw_bartlett(rng, items, params, noise, d, dtype):
    """The engine's algorithm (THEORY 3): ``X'X = A A'`` with ``A`` the Bartlett factor
    (chi-square diagonal, normal strict lower triangle) and ``X'y = A (A' theta + noise z)``;
    no data materialized."""
    B, E = params.shape[0], len(items.n)
    il = np.tril_indices(d, -1)
    A = np.zeros((B, E, d, d), dtype)
    A[..., il[0], il[1]] = rng.standard_normal((B, E, len(il[0])), dtype=dtype)
    df = (items.n[:, None] - np.arange(d)[None, :]).astype(dtype)  # (E, d)
    diag = np.sqrt(2.0 * rng.standard_gamma(np.broadcast_to(df / 2, (B, E, d)), dtype=dtype), dtype=dtype)
    A[..., np.arange(d), np.arange(d)] = diag
    z = rng.standard_normal((B, E, d), dtype=dtype)
    theta = params[:, items.src]
    At = A.swapaxes(-1, -2)
    G = A @ At
    b = (A @ ((At @ theta[..., None])[..., 0] + dtype(noise) * z)[..., None])[..., 0]
    return G, b


def batched_study(eco, dim: int, noise: float, generations: int, replicates: int, seed: int = 0,
                  chunk: int = 32, algorithm: str = "materialized", dtype=np.float32) -> np.ndarray:
    """Excess risk ``(replicates, generations + 1, K)`` from batched NumPy, ``chunk`` replicates at once.

    The study a careful NumPy user vectorizes: per generation, every data set
    of ``chunk`` replicates is drawn in one call per sample size, the
    statistics are combined by one matrix product with the ``(K, E)``
    coefficient matrix and all ``chunk x K`` fits are one batched solve.

    Args:
        algorithm: ``"materialized"`` draws the data (``n x d`` covariates and
            labels, Grams by batched matmul); ``"bartlett"`` is the engine's own
            algorithm (Bartlett factor and ``X'y`` from ``d(d+1)/2 + d`` numbers).
        chunk: replicates per batch; chunk c uses ``numpy.random.default_rng([seed, c])``.
    """
    if algorithm not in ("materialized", "bartlett"):
        raise ValueError(f"algorithm must be 'materialized' or 'bartlett', got {algorithm!r}")
    draw = _draw_materialized if algorithm == "materialized" else _draw_bartlett
    zero, gen = _generation_items(eco)
    K, d = eco.K, dim
    theta_star = (np.ones(d) / np.sqrt(d)).astype(dtype)
    out = np.empty((replicates, generations + 1, K), dtype)
    for c, start in enumerate(range(0, replicates, chunk)):
        B = min(chunk, replicates - start)
        rng = np.random.default_rng([seed, c])
        params = np.empty((B, K + 1, d), dtype)  # models, then theta*
        params[:, K] = theta_star
        for t, items in enumerate([zero] + [gen] * generations):
            G, b = draw(rng, items, params, noise, d, dtype)
            P = (items.M.astype(dtype) @ G.reshape(B, len(items.n), d * d)).reshape(B, K, d, d)
            params[:, :K] = _solve(P, items.M.astype(dtype) @ b)
            out[start:start + B, t] = np.sum((params[:, :K] - theta_star) ** 2, axis=-1)
    return out


# ------------------------------------------------------- Collapse-or-Thrive's loop
def cot_design(n: int, d: int, seed: int = 0) -> np.ndarray:
    """The fixed Gaussian design ``X`` (n, d) of the Collapse-or-Thrive comparison."""
    return np.random.default_rng([seed, 2 ** 31]).standard_normal((n, d))


def cot_loop(X: np.ndarray, noise: float, generations: int, replicates: int, seed: int = 0,
             test_size: int = 1000) -> np.ndarray:
    """Collapse-or-Thrive's linear-regression inner loop (replace setting), one model, fixed design.

    Written here from the paper's and repository's description (Kazdan, Schaeffer
    et al., "Collapse or Thrive?", 2024; github.com/RylanSchaeffer/KoyejoLab-Collapse-or-Thrive),
    not copied: a fixed design ``X`` (n x d); generation 0 fits real labels
    ``y = X theta* + noise``; every generation fits ``theta_t = pinv(X) y``
    (the pseudo-inverse recomputed at every fit, as that loop does), scores it
    on a held-out Gaussian test set of ``test_size`` rows, and draws the next
    labels ``y = X theta_t + noise``. float64, one replicate after the other,
    replicate r seeded ``default_rng([seed, r])``.

    Returns:
        The excess risk ``|theta_t - theta*|^2``, ``(replicates, generations + 1)``
        (the test-set MSE is computed, as in the loop, but only timed).
    """
    n, d = X.shape
    theta_star = np.ones(d) / np.sqrt(d)
    out = np.empty((replicates, generations + 1))
    for r in range(replicates):
        rng = np.random.default_rng([seed, r])
        X_test = rng.standard_normal((test_size, d))
        y_test = X_test @ theta_star
        y = X @ theta_star + noise * rng.standard_normal(n)
        for t in range(generations + 1):
            theta = np.linalg.pinv(X) @ y
            _test_mse = np.mean((y_test - X_test @ theta) ** 2)
            out[r, t] = np.sum((theta - theta_star) ** 2)
            y = X @ theta + noise * rng.standard_normal(n)
    return out


def cot_ecosystem(X: np.ndarray):
    """The engine's version of the Collapse-or-Thrive setting: one model reading its own
    fixed-design output (self-loop, ``design=X``, ``n_synthetic = n``). Generation 0
    follows the engine's semantics (``n0 = n`` fresh Gaussian samples of the truth)."""
    import networkx as nx

    G = nx.DiGraph()
    G.add_node("m0", kind="model", n_synthetic=X.shape[0], n0=X.shape[0], design=np.asarray(X))
    G.add_edge("m0", "m0", weight=1.0)
    return common.cj.Ecosystem.from_networkx(G)


def time_reference(eco, dim: int, noise: float, generations: int, replicates: int, seed: int = 0,
                   solver: str = "lstsq"):
    """Wall and CPU seconds of :func:`reference_study`; returns ``(wall, cpu, errors)``."""
    w0, c0 = time.perf_counter(), time.process_time()
    err = reference_study(eco, dim, noise, generations, replicates, seed, solver=solver)
    return time.perf_counter() - w0, time.process_time() - c0, err


def main(argv=None) -> dict:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=None, help="default 4 (smoke: 2)")
    ap.add_argument("--generations", type=int, default=None, help="default 200 (smoke: 5)")
    ap.add_argument("--check", action="store_true",
                    help="also compare the final-generation error with the engine's (z-score per model)")
    ap.add_argument("--check-replicates", type=int, default=64, help="replicates of each side of --check")
    args = ap.parse_args(argv)
    cfg = dict(common.STANDARD)
    if args.smoke:
        cfg.update(K=6, d=4, n=16, m=16)
    T = args.generations or (5 if args.smoke else cfg["T"])
    R = args.replicates or (2 if args.smoke else 4)
    eco = common.standard_ecosystem(cfg["K"], cfg["p"], cfg["seed"], cfg["n"], cfg["m"], cfg["alpha"])
    wall, cpu, err = time_reference(eco, cfg["d"], 1.0, T, R)
    fits = R * (T + 1) * eco.K
    result = dict(config=dict(cfg, T=T, R=R), wall_s=wall, cpu_s=cpu, fits=fits,
                  updates_per_s=fits / wall, final_mean=err[:, -1].mean(0).tolist())
    rows = [["numpy reference", R, T, eco.K, cfg["d"], wall, fits / wall]]
    common.print_table(rows, ["loop", "R", "T", "K", "d", "wall s", "model-updates/s"])
    if args.check:
        result["check"] = check_against_engine(eco, cfg["d"], T, args.check_replicates)
        print(f"engine vs reference, final generation: max |z| over models = {result['check']['max_abs_z']:.2f}")
    path = common.write_json(args.json, "reference", result)
    print(f"wrote {path}")
    return result


def check_against_engine(eco, d: int, T: int, R: int) -> dict:
    """Two-sample z-scores of the final-generation mean error, engine vs reference, per model."""
    import jax

    ref = reference_study(eco, d, 1.0, T, R, seed=1)[:, -1]
    eng = np.asarray(common.cj.simulate(eco, common.cj.LinearRegression(dim=d), jax.random.key(1),
                                        generations=T, replicates=R, batch_size=min(16, R)).error, float)[:, -1]
    z = (eng.mean(0) - ref.mean(0)) / np.sqrt(eng.var(0, ddof=1) / R + ref.var(0, ddof=1) / R)
    return dict(replicates=R, z=z.tolist(), max_abs_z=float(np.abs(z).max()))


if __name__ == "__main__":
    main()
