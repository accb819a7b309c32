"""Model-updates/s per task on the standard ecosystem (issue 10 item 6), all in one run.

The standard ecosystem of DESIGN.md (K = 16 models, Erdos-Renyi p = 0.2, seed 0, one fresh data node
feeding the 8 even models, alpha = 0.5, n = m = 128, replace, independent pool), T = 20, R = 64,
``batch_size=16``, ``metrics=()``; each task at its standard size:

* linear regression, d = 32, through the sufficient-statistic engine and through materialized samples;
* Gaussian fit (mean and covariance), d = 8;
* categorical, V = 32 symbols (Zipf probabilities);
* logistic and Poisson regression, d = 8 (Newton fits on materialized samples).

A model-update is one fit (generation 0 included): R (T + 1) K. Each row is timed on a second
call, after the compile (first call) that is reported apart.

Run: ``python benchmarks/tasks.py`` (T = 20, R = 64; ``--smoke`` for seconds; ``--only NAME ...``).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from common import load_average, parser, print_table, standard_ecosystem, write_json

import collapse_jax as cj


def tasks():
    zipf = 1.0 / np.arange(1, 33)
    return [
        ("linear, suffstat", "d = 32", lambda: cj.LinearRegression(dim=32), "suffstat"),
        ("linear, samples", "d = 32", lambda: cj.LinearRegression(dim=32), "samples"),
        ("gaussian", "d = 8", lambda: cj.GaussianFit(dim=8), "auto"),
        ("categorical", "V = 32", lambda: cj.Categorical(jnp.asarray(zipf / zipf.sum(), jnp.float32)), "auto"),
        ("logistic", "d = 8", lambda: cj.LogisticRegression(dim=8), "auto"),
        ("poisson", "d = 8", lambda: cj.PoissonRegression(dim=8), "auto"),
    ]


def main(argv=None):
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=None, help="R (default 64; smoke 4)")
    ap.add_argument("--generations", type=int, default=None, help="T (default 20; smoke 2)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--only", nargs="*", default=None, help="task names to run (default: all)")
    args = ap.parse_args(argv)
    R = args.replicates or (4 if args.smoke else 64)
    T = args.generations or (2 if args.smoke else 20)
    eco = standard_ecosystem()
    key = jax.random.key(0)
    rows, out = [], {}
    for name, size, make, engine in tasks():
        if args.only and name not in args.only:
            continue
        task = make()

        def run():
            res = cj.simulate(eco, task, key, generations=T, replicates=R, engine=engine,
                              batch_size=args.batch_size, metrics=())
            return res, jax.block_until_ready(res.error)

        w0 = time.perf_counter()
        res, _ = run()
        first = time.perf_counter() - w0
        w0, c0 = time.perf_counter(), time.process_time()
        _, err = run()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        updates = R * (T + 1) * eco.K
        err = np.asarray(err)[:, -1]
        out[name] = dict(size=size, engine=res.config["engine"], first_call_s=first, wall_s=wall, cpu_s=cpu,
                         updates=updates, updates_per_s=updates / wall, updates_per_cpu_s=updates / cpu,
                         final_mean_error=float(np.mean(err[np.isfinite(err)])) if np.isfinite(err).any() else None,
                         nonfinite=int((~np.isfinite(err)).sum()))
        r = out[name]
        rows.append([name, size, r["engine"], r["updates_per_s"], r["updates_per_cpu_s"], first, r["nonfinite"]])
        print(f"{name}: {r['updates_per_s']:,.0f} model-updates/s ({r['updates_per_cpu_s']:,.0f} per CPU s), "
              f"first call {first:.1f} s, load {load_average()}", flush=True)
    print_table(rows, ["task", "size", "engine", "model-updates/s", "per CPU s", "first call s", "non-finite"],
                title=f"standard ecosystem (K = {eco.K}, n = m = 128), T = {T}, R = {R}, batch {args.batch_size}")
    path = write_json(args.json, "tasks", dict(config=dict(R=R, T=T, batch_size=args.batch_size, K=eco.K),
                                               tasks=out, load_average_at_end=load_average()))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
