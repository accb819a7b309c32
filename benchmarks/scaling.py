"""Scaling: model-updates per second as K, d, T and R grow, time per flop at d = 128 vs 32, memory in T and R.

Speed: the standard study's family (directed Erdos-Renyi, a fresh data node
feeding every other model, alpha = 0.5, n = m = 128, replace, independent
pool), around a base of K = 16, d = 32, T = 50, R = 256, varying one size
at a time. When K grows, p shrinks so that the mean in-degree stays the
standard study's (0.2 x 15 = 3 model edges); otherwise the work per model
would grow with K. Times exclude compilation (JAX's compile events are
subtracted from the run).

Per flop (issue 13: d = 128 within 3x of d = 32): the standard family with
n = m = 4 d (so that n > d + 1 at every d), time divided by the algorithm's
nominal flop count (:func:`nominal_flops`), also as a fraction of this
machine's jitted float32 matmul rate.

Memory, in a fresh subprocess per measurement, of one simulation with
``batch_size`` replicates per vectorized chunk (d = 8 to keep the runs
short): the compiled executable's buffers as XLA reports them
(``memory_analysis``: temporaries and outputs, exact), and the peak resident
memory (``VmHWM``) the run adds after an ahead-of-time compile (compiling
itself takes a few hundred MB, reported apart). Two kinds of output:
``trajectory`` (``cj.simulate``: the full ``(R, T + 1, K)`` error, so memory
grows with R x T by design) and ``summary`` (only the final generation's
error per replicate, from ``simulate_replicate`` under ``lax.map``: flat in
T, and in R bounded by the chunk).

Run: ``python benchmarks/scaling.py [--smoke] [--skip-speed] [--skip-memory]``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

cj = common.cj
# The engine's module (cj.simulate is the function), wherever the package keeps it.
engine = sys.modules[cj.simulate.__module__]

BASE = dict(K=16, d=32, T=50, R=256)
SWEEPS = dict(K=[4, 16, 64, 256], d=[8, 16, 32, 64], T=[25, 50, 100, 200], R=[64, 256, 1024])
SMOKE_BASE = dict(K=4, d=4, T=4, R=16)
SMOKE_SWEEPS = dict(K=[4], d=[4], T=[4], R=[16])  # one compiled configuration


def ecosystem(K: int) -> cj.Ecosystem:
    p = min(1.0, 0.2 * 15 / max(K - 1, 1))  # mean in-degree of the standard study
    return common.standard_ecosystem(K, p, 0)


def speed(K: int, d: int, T: int, R: int, batch_size: int) -> dict:
    eco = ecosystem(K)
    task = cj.LinearRegression(dim=d)
    wall, cpu, compile_s, _ = common.run_excluding_compile(
        lambda: cj.simulate(eco, task, jax.random.key(0), generations=T, replicates=R,
                            batch_size=min(batch_size, R)).error)
    steady = wall - compile_s
    fits = R * (T + 1) * K
    return dict(K=K, d=d, T=T, R=R, edges=len(eco.real_edges) + len(eco.model_edges),
                wall_s=steady, compile_s=compile_s, updates_per_s=fits / steady)


def nominal_flops(d: int, datasets: int, fits: int, edges_per_fit: float) -> float:
    """Floating-point operations the suffstat algorithm needs, counted at their minimum.

    Per data set: the Gram ``A A'`` of a lower-triangular Bartlett factor
    (``d^3 / 3`` multiply-adds) and ``X'y = A (A' theta + sigma z)`` (two
    triangular matrix-vector products, ``d^2`` multiply-adds). Per fit: adding
    its in-edges' statistics (``d^2 + d`` multiply-adds each), a Cholesky
    factorization (``d^3 / 3`` flops) and two triangular solves (``2 d^2``).
    """
    per_set = 2 * d ** 3 / 3 + 2 * d ** 2
    per_fit = edges_per_fit * 2 * (d * d + d) + d ** 3 / 3 + 2 * d ** 2
    return datasets * per_set + fits * per_fit


def matmul_rate(size: int = 1024, dtype=jnp.float32) -> float:
    """This machine's float32 matrix-multiply rate in flops/s (one jitted ``size^3`` product, all cores)."""
    a = jnp.ones((size, size), dtype)
    f = jax.jit(lambda x: x @ x)
    common.block(f(a))
    wall = common.best_of(lambda: f(a), 3)[0]
    return 2 * size ** 3 / wall


def per_flop(ds, T: int, Rs, batch_size: int) -> dict:
    """Time per nominal flop of the standard study's family at each d (n = m = 4 d, K = 16)."""
    rows = []
    for d, R in zip(ds, Rs):
        eco = common.standard_ecosystem(16, 0.2, 0, n=4 * d, m=4 * d)
        task = cj.LinearRegression(dim=d)
        wall, cpu, compile_s, _ = common.run_excluding_compile(
            lambda: cj.simulate(eco, task, jax.random.key(0), generations=T, replicates=R,
                                batch_size=min(batch_size, R)).error)
        steady = wall - compile_s
        sets = common.datasets_drawn(eco, T, R, "independent")
        fits = R * (T + 1) * eco.K
        edges = (len(eco.real_edges) + len(eco.model_edges)) / eco.K
        flops = nominal_flops(d, sets, fits, edges)
        rows.append(dict(d=d, n=4 * d, T=T, R=R, wall_s=steady, compile_s=compile_s, datasets=sets, fits=fits,
                         nominal_flops=flops, flops_per_s=flops / steady, updates_per_s=fits / steady,
                         s_per_flop=steady / flops))
    peak = matmul_rate()
    for r in rows:
        r["fraction_of_matmul_rate"] = r["flops_per_s"] / peak
    base = rows[0]["s_per_flop"]
    for r in rows:
        r["time_per_flop_vs_first"] = r["s_per_flop"] / base
    return dict(rows=rows, matmul_flops_per_s=peak)


def _final_errors(eco, task, key, cfg, R: int, batch_size: int):
    def one(i):
        return engine.simulate_replicate(eco, task, jax.random.fold_in(key, i), cfg).error[-1]
    return jax.lax.map(one, jnp.arange(R, dtype=jnp.uint32), batch_size=batch_size)


_final_errors_jit = jax.jit(_final_errors, static_argnums=(3, 4, 5))


def final_errors(eco, task, key, T: int, R: int, batch_size: int):
    """``(R, K)`` final-generation error, chunked: the summary output whose memory is flat in T."""
    cfg = engine.make_config(eco, task, T, "replace", "independent", "mean", "auto")
    return _final_errors_jit(eco, task, key, cfg, R, batch_size)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process image.

    Linux's ``VmHWM``: ``getrusage``'s ``ru_maxrss`` would carry over the
    parent's peak across fork + exec and hide a child smaller than its parent.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs``); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _memory_child(specs: str) -> None:
    """Measure each spec in turn: compile ahead of time, reset the peak, run once."""
    for s in json.loads(specs):
        eco = ecosystem(s["K"])
        task = cj.LinearRegression(dim=s["d"])
        key = jax.random.key(0)
        cfg = engine.make_config(eco, task, s["T"], "replace", "independent", "mean", "auto")
        # the executables behind final_errors and cj.simulate (same arguments, same static options)
        jitted = _final_errors_jit if s["mode"] == "summary" else engine._simulate_jit
        baseline = _peak_rss_mb()
        compiled = jitted.lower(eco, task, key, cfg, s["R"], s["batch_size"]).compile()
        xla = compiled.memory_analysis()
        after_compile = _peak_rss_mb()
        reset = _reset_peak()
        before_run = _peak_rss_mb()
        out = jax.block_until_ready(compiled(eco, task, key))
        out = jax.tree_util.tree_leaves(out)
        print(json.dumps(dict(s, baseline_mb=baseline, peak_after_compile_mb=after_compile, peak_reset=reset,
                              before_run_mb=before_run, peak_mb=_peak_rss_mb(),
                              output_mb=sum(x.nbytes for x in out) / 2 ** 20,
                              xla_temp_mb=xla.temp_size_in_bytes / 2 ** 20,
                              xla_output_mb=xla.output_size_in_bytes / 2 ** 20)))


def memory(specs) -> list:
    """Run ``specs`` in one fresh subprocess (each measured after a peak reset); one process
    per spec gives the cleanest baseline, one for all saves the start-up."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", json.dumps(specs)],
                         capture_output=True, text=True, check=True)
    runs = [json.loads(line) for line in out.stdout.strip().splitlines() if line.startswith("{")]
    for r in runs:
        r["run_mb"] = r["peak_mb"] - r["before_run_mb"]  # what the compiled run adds
    return runs


def main(argv=None) -> dict:
    import argparse

    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-flops", action="store_true", help="skip the d = 32 vs d = 128 time per flop")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        _memory_child(args.memory_child)
        return {}
    base, sweeps = (SMOKE_BASE, SMOKE_SWEEPS) if args.smoke else (BASE, SWEEPS)
    result = dict(base=base, batch_size=args.batch_size)

    if not args.skip_speed:
        rows, runs = [], []
        for name, values in sweeps.items():
            for v in values:
                cfg = dict(base, **{name: v})
                if name == "K" and not args.smoke:
                    cfg["R"] = 64  # bound the run time of the largest graphs
                r = speed(cfg["K"], cfg["d"], cfg["T"], cfg["R"], args.batch_size)
                r["varied"] = name
                runs.append(r)
                rows.append([name, r["K"], r["d"], r["T"], r["R"], r["edges"], r["wall_s"], r["compile_s"],
                             r["updates_per_s"]])
                print(f"{name}={v}: {r['updates_per_s']:,.0f} updates/s", flush=True)
        common.print_table(rows, ["varied", "K", "d", "T", "R", "edges", "wall s", "compile s",
                                  "model-updates/s"])
        result["speed"] = runs

    if not args.skip_flops:
        ds, Rs, T = ([4, 8], [16, 16], 4) if args.smoke else ([32, 128], [256, 32], 20)
        pf = per_flop(ds, T, Rs, args.batch_size)
        rows = [[r["d"], r["n"], r["T"], r["R"], r["wall_s"], r["updates_per_s"], r["flops_per_s"] / 1e9,
                 r["fraction_of_matmul_rate"], r["time_per_flop_vs_first"]] for r in pf["rows"]]
        common.print_table(rows, ["d", "n = m", "T", "R", "wall s", "model-updates/s", "nominal GFLOP/s",
                                  "of f32 matmul rate", f"time per flop vs d={ds[0]}"],
                           title=f"Per-flop cost as d grows (K = 16, standard family; f32 matmul rate of this "
                                 f"machine: {pf['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s)")
        result["per_flop"] = pf

    if not args.skip_memory:
        m = dict(K=4, d=2, bs=4) if args.smoke else dict(K=16, d=8, bs=args.batch_size)
        Ts = [4] if args.smoke else [50, 200, 800]
        Rs = [8] if args.smoke else [256, 1024, 4096]
        R0, T0 = Rs[0], Ts[0]
        specs = [dict(mode=mode, K=m["K"], d=m["d"], T=T, R=R, batch_size=m["bs"])
                 for mode in ("summary", "trajectory")
                 for T, R in [(T, R0) for T in Ts] + [(T0, R) for R in Rs[1:]]]
        if args.smoke:
            runs = memory(specs)
        else:
            runs = [r for spec in specs for r in memory([spec])]
        rows = []
        for r in runs:
            rows.append([r["mode"], r["T"], r["R"], r["batch_size"], r["xla_output_mb"], r["xla_temp_mb"],
                         r["baseline_mb"], r["peak_after_compile_mb"], r["run_mb"]])
            print(f"{r['mode']} T={r['T']} R={r['R']}: XLA temp {r['xla_temp_mb']:.2f} MB, "
                  f"run adds {r['run_mb']:.1f} MB RSS", flush=True)
        common.print_table(rows, ["output", "T", "R", "batch", "output MB", "XLA temp MB", "baseline RSS MB",
                                  "peak RSS after compile MB", "run: peak - start RSS MB"])
        result["memory"] = dict(K=m["K"], d=m["d"], runs=runs)

    path = common.write_json(args.json, "scaling", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
