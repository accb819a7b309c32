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
                    first_replicate: int = 0) -> np.ndarray:
    """Excess risk ``(replicates, generations + 1, K)`` from the plain NumPy loop.

    Args:
        eco: an ecosystem in scope (see :func:`check_scope`).
        dim: parameter dimension d; theta* = ones(d) / sqrt(d), identity covariates.
        noise: label noise sigma.
        generations: T.
        replicates: R.
        seed: replicate r uses ``numpy.random.default_rng([seed, first_replicate + r])``.
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

    def fit(rng, sources):
        """sources: (theta of the source, sample count, weight of its mean loss)."""
        X, y, sw = [], [], []
        for theta_src, n, w in sources:
            Xs = rng.standard_normal((n, d))
            X.append(Xs)
            y.append(Xs @ theta_src + noise * rng.standard_normal(n))
            sw.append(np.full(n, np.sqrt(w / n)))
        X, y, sw = np.concatenate(X), np.concatenate(y), np.concatenate(sw)
        return np.linalg.lstsq(X * sw[:, None], y * sw, rcond=None)[0]

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


def time_reference(eco, dim: int, noise: float, generations: int, replicates: int, seed: int = 0):
    """Wall and CPU seconds of :func:`reference_study`; returns ``(wall, cpu, errors)``."""
    w0, c0 = time.perf_counter(), time.process_time()
    err = reference_study(eco, dim, noise, generations, replicates, seed)
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
    print(common.table(rows, ["loop", "R", "T", "K", "d", "wall s", "model-updates/s"]))
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
