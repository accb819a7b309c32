"""Analytic engine: stationary error and its gradient for K = 512 models (d = 16).

The large-sample recursion of THEORY.md section 4, ``V = W V W' + D`` with
``D = diag(delta)``, ``delta_k = sigma^2 d (sum_s r_ks^2 / n_s + sum_j
w_kj^2 / m_j)``, solved by ``collapse_jax.theory.lyapunov.solve_discrete_lyapunov``
(doubling forward, implicit-differentiation backward). The objective is the
mean stationary error over models; its gradient is taken with respect to
every relative edge weight (real and model) and every alpha, through the
ecosystem's effective weights ``eco.R`` and ``eco.W``.

The ecosystem is the standard study's family at K = 512 (seeded directed
Erdos-Renyi, p = 0.2 unless ``--p``; a fresh data node feeds every other
model; alpha = 0.5; n = m = 128). The table also times K = 64 .. 1024.

``D`` is built inline here; once ``cj.moments`` is merged this script should
call it instead (same formula).

Run: ``python benchmarks/analytic.py [--smoke] [--K 512] [--p 0.2]``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from collapse_jax.theory.lyapunov import solve_discrete_lyapunov  # noqa: E402

cj = common.cj


def stationary_error(eco: cj.Ecosystem, dim: int, noise: float = 1.0) -> jax.Array:
    """``(K,)`` large-sample stationary excess risk of every model (THEORY 4)."""
    R, W = eco.R, eco.W
    n = jnp.asarray(eco.n, W.dtype)
    m = jnp.asarray(eco.n_synthetic, W.dtype)
    delta = noise ** 2 * dim * (jnp.sum(R ** 2 / n[None, :], axis=1) + jnp.sum(W ** 2 / m[None, :], axis=1))
    return jnp.diag(solve_discrete_lyapunov(W, jnp.diag(delta)))


def objective(eco: cj.Ecosystem, dim: int) -> jax.Array:
    return jnp.mean(stationary_error(eco, dim))


_value_and_grad = jax.jit(jax.value_and_grad(objective), static_argnums=1)


def time_one(K: int, p: float, d: int, repeat: int = 3) -> dict:
    eco = common.standard_ecosystem(K, p, 0)
    wall_first, _, (value, grads) = common.timed(lambda: _value_and_grad(eco, d))
    wall, cpu = common.best_of(lambda: _value_and_grad(eco, d), repeat)
    g = [np.asarray(grads.real_weights), np.asarray(grads.model_weights), np.asarray(grads.alpha)]
    return dict(K=K, p=p, d=d, edges=len(eco.real_edges) + len(eco.model_edges), value=float(value),
                first_call_s=wall_first, wall_s=wall, cpu_s=cpu,
                grad_finite=bool(all(np.all(np.isfinite(x)) for x in g)),
                grad_norm=float(np.sqrt(sum(np.sum(x ** 2) for x in g))))


def main(argv=None) -> dict:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--K", type=int, nargs="+", default=None, help="default 64 128 256 512 1024 (smoke 16 32)")
    ap.add_argument("--p", type=float, default=0.2)
    ap.add_argument("--d", type=int, default=16)
    args = ap.parse_args(argv)
    Ks = args.K or ([16, 32] if args.smoke else [64, 128, 256, 512, 1024])
    rows, results = [], []
    for K in Ks:
        r = time_one(K, args.p, args.d)
        results.append(r)
        rows.append([K, r["edges"], r["value"], r["first_call_s"], r["wall_s"], r["grad_finite"]])
        print(f"K={K}: {r['wall_s']:.3f} s", flush=True)
    common.print_table(rows, ["K", "edges", "mean stationary error", "first call s (compile)",
                              "value+grad s", "grad finite"])
    path = common.write_json(args.json, "analytic", dict(d=args.d, p=args.p, results=results))
    print(f"wrote {path}")
    return dict(results=results)


if __name__ == "__main__":
    main()
