"""The standard study: the engine against five NumPy baselines, the RNG floor and RNG rates, time to first result.

K = 16 models on a seeded directed Erdos-Renyi graph (p = 0.2) plus one fresh
data node feeding every other model, alpha = 0.5, linear regression d = 32,
n = m = 128, T = 200 generations, R = 4096 replicates, replace, independent
pool (DESIGN.md "Performance"). Reported, all in one run (issue 13):

* engine: model-updates per second (fits, generation 0 included), its wall
  time without compilation (JAX's compile events are subtracted);
* five NumPy baselines of the same study, each timed on a few replicates
  and scaled to R (their cost is linear in R), each checked against the
  engine: the z-score of the mean final-generation error (averaged over
  the K models) against the engine's, so a fast but wrong baseline shows:

  1. ``numpy lstsq loop``: ``reference.py``'s plain loop (materialized data,
     ``numpy.linalg.lstsq``, float64, one fit at a time);
  2. ``numpy cholesky loop``: the same loop and draws, normal equations solved
     by Cholesky;
  3. ``numpy batched materialized f32``: every data set of a chunk of
     replicates drawn at once (float32), Grams by batched matmul, one matrix
     product to combine them, one batched solve per generation;
  4. ``numpy batched bartlett f32``: the engine's own algorithm in batched
     float32 NumPy (Bartlett factor: chi-square diagonal and normal lower
     triangle; ``X'y = A (A' theta + sigma z)``; no data materialized);
* the Collapse-or-Thrive comparison (5): that study's linear-regression
  inner loop (one model, fixed design X, ``pinv(X) y`` per generation,
  ``reference.cot_loop``) against the engine on the same setting (one model
  reading its own fixed-design output), at d = 32, n = 128, T = 200; checked
  by the z-score of the mean error growth ``err_T - err_0`` (whose
  expectation ``T sigma^2 tr((X'X)^-1)`` does not depend on generation 0);
* RNG floor: one jitted call drawing as many standard normals as the
  engine's sufficient statistics need, ``d(d+1)/2 + d`` per data set, for
  exactly the data sets the engine draws (same PRNG implementation); timed
  on at most ``--floor-max`` normals and scaled linearly;
* where the engine's CPU time goes (:func:`engine_breakdown`): the pieces
  of one step's draw timed apart, against the engine's step in this run;
* RNG rates: normals/s and bits/s of JAX's threefry2x32, rbg and unsafe_rbg
  (jitted, ``--rng-count`` draws) and NumPy's PCG64 (one thread);
* time to first result: a fresh process's first ``cj.simulate`` of the
  standard ecosystem with T = 200 and a small R (``--first-replicates``,
  default 16: the figure measures compile latency, which does not depend on
  R), compile included, the fastest of ``--first-repeat`` processes: cold
  (no persistent compilation cache) and warm (JAX's persistent cache set in
  the benchmark's child processes only, after one process filled it);
  reported from the call and from the process launch (imports included).

Every table prints the machine's load average; the JSON records it too.

Run: ``python benchmarks/standard.py [--smoke] [--replicates R] [--impl threefry2x32 philox4x32 ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (first: it sets OPENBLAS_NUM_THREADS before NumPy loads)
import reference  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

cj = common.cj


def engine_run(eco, task, T, R, batch_size, impl):
    """Steady-state wall/CPU seconds of the engine (compile subtracted) and its errors."""
    key = common.key_for(impl)
    after = {}
    wall, cpu, compile_s, err = common.run_excluding_compile(
        lambda: cj.simulate(eco, task, key, generations=T, replicates=R, batch_size=batch_size).error, after)
    err = np.asarray(err, float)
    return dict(wall_s=wall - compile_s, cpu_s=after["cpu_s"], wall_after_compile_s=after["wall_s"],
                cpu_with_compile_s=cpu, compile_s=compile_s, wall_with_compile_s=wall,
                final_mean=err[:, -1].mean(0).tolist()), err


def baseline_runs(eco, d, T, R, counts, chunk, engine_final):
    """Time every NumPy baseline on ``counts[name]`` replicates, scale to R, check against the engine.

    ``engine_final``: the engine's final-generation error averaged over models, (R_engine,).
    """
    specs = {
        "numpy lstsq loop": lambda r: reference.reference_study(eco, d, 1.0, T, r, seed=11, solver="lstsq"),
        "numpy cholesky loop": lambda r: reference.reference_study(eco, d, 1.0, T, r, seed=12, solver="cholesky"),
        "numpy batched materialized f32": lambda r: reference.batched_study(
            eco, d, 1.0, T, r, seed=13, chunk=chunk, algorithm="materialized"),
        "numpy batched bartlett f32": lambda r: reference.batched_study(
            eco, d, 1.0, T, r, seed=14, chunk=chunk, algorithm="bartlett"),
    }
    out = {}
    for name, fn in specs.items():
        r = counts[name]
        wall, cpu, err = common.timed(lambda: fn(r))
        final = np.asarray(err, float)[:, -1].mean(1)
        out[name] = dict(replicates=r, wall_s=wall, cpu_s=cpu, scaled_wall_s=wall * R / r,
                         scaled_cpu_s=cpu * R / r, final_mean=float(final.mean()),
                         z_vs_engine=common.zscore(final, engine_final),
                         rel_diff_vs_engine=float(final.mean() / engine_final.mean() - 1.0))
        print(f"{name}: {r} replicates in {wall:.2f} s -> {wall * R / r:.0f} s for R={R}; "
              f"final mean error {final.mean():.4f} (z vs engine {out[name]['z_vs_engine']:+.2f})", flush=True)
    return out


def cot_comparison(d, n, T, R_engine, R_loop, batch_size, impl):
    """Collapse-or-Thrive's loop against the engine on one model with a fixed design."""
    X = reference.cot_design(n, d)
    eco = reference.cot_ecosystem(X)
    task = cj.LinearRegression(dim=d)
    eng, err = engine_run(eco, task, T, R_engine, batch_size, impl)
    eng_growth = err[:, -1, 0] - err[:, 0, 0]
    wall, cpu, loop_err = common.timed(lambda: reference.cot_loop(X, 1.0, T, R_loop, seed=15))
    loop_growth = loop_err[:, -1] - loop_err[:, 0]
    expected = T * float(np.trace(np.linalg.inv(X.T @ X)))
    eng_ups = R_engine * (T + 1) / eng["wall_s"]
    loop_ups = R_loop * (T + 1) / wall
    out = dict(d=d, n=n, T=T, engine=dict(eng, replicates=R_engine, batch_size=batch_size,
                                          updates_per_s=eng_ups, growth_mean=float(eng_growth.mean())),
               loop=dict(replicates=R_loop, wall_s=wall, cpu_s=cpu, updates_per_s=loop_ups,
                         growth_mean=float(loop_growth.mean())),
               expected_growth=expected, z_engine_vs_loop=common.zscore(eng_growth, loop_growth),
               engine_rel_diff_vs_expected=float(eng_growth.mean() / expected - 1.0),
               loop_rel_diff_vs_expected=float(loop_growth.mean() / expected - 1.0),
               engine_vs_loop=eng_ups / loop_ups)
    print(f"collapse-or-thrive loop: {loop_ups:,.0f} updates/s; engine {eng_ups:,.0f} updates/s "
          f"({out['engine_vs_loop']:.0f}x); error growth over T: engine {eng_growth.mean():.4f}, "
          f"loop {loop_growth.mean():.4f}, expected {expected:.4f} (z {out['z_engine_vs_loop']:+.2f})", flush=True)
    return out


def engine_breakdown(eco, task, n: int, batch: int, generations: int, engine_cpu_per_step: float) -> list:
    """Where one engine step's CPU time goes: cumulative pieces of the draw, timed apart.

    One "step" is one generation of one chunk: ``batch`` replicates x the data
    sets a generation draws (``E`` items), and ``batch x K`` fits. Each piece
    is a jitted ``fori_loop`` of ``generations`` steps that draws the items
    with per-item keys ``fold_in(key, item)``, as the engine does, and sums
    the result (so nothing is dead code); each row adds work to the one above
    (raw threefry bits, uniforms, normals, the Bartlett factor and ``z``, then
    the statistics ``X'X`` and ``X'y``). Cholesky fits of ``batch x K``
    systems are timed apart. The engine's own step is from the main run
    (``engine_cpu_per_step``); what the pieces do not cover is combining
    statistics, per-generation metrics and the scan. CPU seconds, because
    wall times on a shared machine move with the load.
    """
    import jax.numpy as jnp

    d = task.dim
    items = batch * (len(eco.real_edges) + len(eco.model_edges))
    h = (d + 1) // 2
    count = h * h + (d - h) * h + d + (d - h) + d  # what bartlett_factor_and_normal draws in one call
    law = task.truth_law()
    theta = task.theta_star

    def tsum(tree):
        return sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(tree))

    def keys(k):
        return jax.vmap(jax.random.fold_in, (None, 0))(k, jnp.arange(items, dtype=jnp.uint32))

    def per_item(fn):
        return lambda k: jnp.sum(jax.vmap(fn)(keys(k)))

    def fits(k):
        stats = task.draw(k, law, theta, n, "suffstat")
        gram = jnp.broadcast_to((stats.gram + n * jnp.eye(d))[None], (batch * eco.K, d, d))
        return jnp.sum(jax.vmap(task.fit)(type(stats)(gram, jnp.ones((batch * eco.K, d)))))

    parts = [
        ("threefry bits (uint32)", per_item(lambda k: jnp.sum(jax.random.bits(k, (count,), jnp.uint32)
                                                             .astype(jnp.float32)))),
        ("+ to uniforms", per_item(lambda k: jnp.sum(jax.random.uniform(k, (count,))))),
        ("+ to normals (erfinv)", per_item(lambda k: jnp.sum(jax.random.normal(k, (count,))))),
        ("+ chi-square, Bartlett layout, z", per_item(lambda k: tsum(common.samplers.bartlett_factor_and_normal(
            k, n, d)))),
        ("+ X'X = A A', X'y (task.draw)", per_item(lambda k: tsum(task.draw(k, law, theta, n, "suffstat")))),
        (f"Cholesky fits ({batch} x {eco.K}), apart", fits),
    ]
    rows = []
    for name, body in parts:
        @jax.jit
        def run(key, body=body):
            return jax.lax.fori_loop(0, generations, lambda i, acc: acc + body(jax.random.fold_in(key, i)),
                                     jnp.zeros(()))
        key = jax.random.key(0)
        common.block(run(key))
        wall, cpu = common.best_of(lambda: run(key), 3)
        rows.append(dict(part=name, wall_ms=wall / generations * 1e3, cpu_ms=cpu / generations * 1e3))
    rows.append(dict(part="engine step (main run)", wall_ms=float("nan"), cpu_ms=engine_cpu_per_step * 1e3))
    for r in rows:
        r["of_engine_cpu"] = r["cpu_ms"] / (engine_cpu_per_step * 1e3)
    return rows


def first_result(cfg, T, R, impl, repeat: int, cache_dir: str | None = None) -> dict:
    """Time to first result in fresh processes: the fastest of ``repeat``.

    With ``cache_dir`` the children use the library's default persistent
    compilation cache, moved there by ``COLLAPSE_JAX_CACHE_DIR`` (the directory
    should already hold the study's executables for a warm figure); without,
    ``COLLAPSE_JAX_CACHE=0`` turns it off. The fastest, because other jobs on a shared machine only ever add
    to a latency; every attempt is kept in ``attempts``.
    """
    runs = []
    for _ in range(repeat):
        spec = json.dumps(dict(cfg, T=T, R=R, impl=impl, cache_dir=cache_dir, launched=time.time()))
        cmd = [sys.executable, os.path.abspath(__file__), "--first-result-child", spec]
        env = dict(os.environ)
        if cache_dir:
            env.pop("COLLAPSE_JAX_CACHE", None)
            env["COLLAPSE_JAX_CACHE_DIR"] = cache_dir
        else:
            env["COLLAPSE_JAX_CACHE"] = "0"
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["first_result_s"])
    return dict(best, attempts=[r["first_result_s"] for r in runs],
                process_attempts=[r["from_launch_s"] for r in runs])


def _first_result_child(spec: str) -> None:
    cfg = json.loads(spec)  # the cache is the library's default one, set by first_result's environment
    t0 = time.perf_counter()
    eco = common.standard_ecosystem(cfg["K"], cfg["p"], cfg["seed"], cfg["n"], cfg["m"], cfg["alpha"])
    task = cj.LinearRegression(dim=cfg["d"])
    key = common.key_for(cfg["impl"])
    setup = time.perf_counter() - t0
    wall, cpu, compile_s, _ = common.run_excluding_compile(
        lambda: cj.simulate(eco, task, key, generations=cfg["T"], replicates=cfg["R"]).error)
    print(json.dumps(dict(first_result_s=wall, compile_s=compile_s, setup_s=setup, R=cfg["R"], T=cfg["T"],
                          from_launch_s=time.time() - cfg["launched"], cache=bool(cfg.get("cache_dir")))))


def first_results(cfg, T, R, impl, repeat: int) -> dict:
    """Cold (no persistent cache) and warm (cache filled by one process first) time to first result."""
    cold = first_result(cfg, T, R, impl, repeat)
    cache = tempfile.mkdtemp(prefix="collapse_jax_bench_cache_")
    try:
        fill = first_result(cfg, T, R, impl, 1, cache)
        warm = first_result(cfg, T, R, impl, repeat, cache)
        files = sum(len(f) for _, _, f in os.walk(cache))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return dict(cold=cold, fill=fill, warm=dict(warm, cache_files=files))


def main(argv=None) -> dict:
    ap = common.parser(__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=None, help="R (default 4096; smoke 64)")
    ap.add_argument("--generations", type=int, default=None, help="T (default 200; smoke 5)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="replicates per vectorized batch (default 16 on CPU, all of them on GPU)")
    ap.add_argument("--impl", nargs="+", default=["threefry2x32"],
                    help="PRNG implementations of the engine to time (jax.random.key(..., impl=...)); "
                         "the first is the one the baselines and the first-result latency use")
    ap.add_argument("--reference-replicates", type=int, default=None,
                    help="replicates of the two loops (default 4; smoke 64)")
    ap.add_argument("--batched-replicates", type=int, default=None,
                    help="replicates of the batched materialized baseline (default 64; smoke 64); "
                         "the batched Bartlett baseline runs 4x as many")
    ap.add_argument("--chunk", type=int, default=32, help="replicates per batch of the batched NumPy baselines")
    ap.add_argument("--cot-replicates", type=int, nargs=2, default=None, metavar=("ENGINE", "LOOP"),
                    help="replicates of the Collapse-or-Thrive comparison (default 4096 16; smoke 512 256)")
    ap.add_argument("--rng-count", type=int, default=None, help="draws per RNG-rate call (default 2^24)")
    ap.add_argument("--first-replicates", type=int, default=16, help="R of the time-to-first-result run")
    ap.add_argument("--first-repeat", type=int, default=None, help="fresh processes to time (default 3; smoke 1)")
    ap.add_argument("--floor-max", type=float, default=2.0 ** 32,
                    help="time at most this many normals for the floor and scale linearly "
                         "(drawing is linear in the count; default 2^32, 0 for all)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["baselines", "cot", "breakdown", "rng", "first"],
                    help="parts to leave out")
    ap.add_argument("--threefry-partitionable", choices=["default", "true", "false"], default="default",
                    help="the threefry form of the engine (default: the engine's own, non-partitionable "
                         "since issue 13; 'true' times the earlier stream); the RNG floor and the breakdown "
                         "use the same form")
    ap.add_argument("--first-result-only", action="store_true", help="only measure the time to first result")
    ap.add_argument("--first-result-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.first_result_child:
        _first_result_child(args.first_result_child)
        return {}

    # The engine scopes its threefry form itself (engine.scan._THREEFRY_PARTITIONABLE); the benchmark
    # enters the same form so that the RNG floor and the breakdown draw as the engine does, and restores
    # both on return (the tests call main() in-process: a leaked flag changed their random streams).
    from collapse_jax.engine import scan as _scan
    engine_form = _scan._THREEFRY_PARTITIONABLE
    if args.threefry_partitionable != "default":
        _scan._THREEFRY_PARTITIONABLE = args.threefry_partitionable == "true"
    try:
        with jax.threefry_partitionable(bool(_scan._THREEFRY_PARTITIONABLE)):
            return _measure(args)
    finally:
        _scan._THREEFRY_PARTITIONABLE = engine_form


def _measure(args) -> dict:
    """The body of :func:`main`, under the engine's threefry form."""
    cfg = dict(common.STANDARD)
    if args.smoke:
        cfg.update(K=6, d=4, n=16, m=16, T=5, R=64)
    T = args.generations or cfg["T"]
    R = args.replicates or cfg["R"]
    d = cfg["d"]
    impl0 = args.impl[0]
    repeat = args.first_repeat or (1 if args.smoke else 3)
    R_first = min(args.first_replicates, R)
    if args.first_result_only:
        first = first_results(cfg, T, R_first, impl0, repeat)
        _print_first(first, impl0)
        path = common.write_json(args.json, "standard_first_result", dict(config=cfg, first=first))
        print(f"wrote {path}")
        return dict(first=first)
    bs = args.batch_size or (16 if jax.default_backend() == "cpu" else None)
    eco = common.standard_ecosystem(cfg["K"], cfg["p"], cfg["seed"], cfg["n"], cfg["m"], cfg["alpha"])
    task = cj.LinearRegression(dim=d)
    fits = R * (T + 1) * eco.K
    sets = common.datasets_drawn(eco, T, R, cfg["pool"])
    normals = sets * common.normals_needed(d)
    print(f"standard study: {eco}, d={d}, n=m={cfg['n']}, T={T}, R={R}, batch_size={bs}; "
          f"{sets:,} data sets, {normals:,} normals needed; load average {common.load_average()}", flush=True)

    runs, engine_final = {}, None
    for impl in args.impl:
        eng, err = engine_run(eco, task, T, R, bs, impl)
        if engine_final is None:
            engine_final = err[:, -1].mean(1)
        fwall, fcpu, fscale = common.rng_floor(common.key_for(impl), normals,
                                               max_count=int(args.floor_max) or None)
        runs[impl] = dict(engine=eng, floor=dict(wall_s=fwall, cpu_s=fcpu, scaled_by=fscale),
                          updates_per_s=fits / eng["wall_s"], vs_floor=eng["wall_s"] / fwall)
        print(f"{impl}: engine {eng['wall_s']:.1f} s (+{eng['compile_s']:.1f} s compile, {eng['cpu_s']:.1f} s CPU), "
              f"floor {fwall:.1f} s", flush=True)

    result = dict(config=dict(cfg, T=T, R=R, batch_size=bs,
                              threefry_partitionable=bool(jax.config.jax_threefry_partitionable)), fits=fits, datasets=sets, normals=normals,
                  engine_draws_per_dataset=common.engine_draws(d), normals_per_dataset=common.normals_needed(d),
                  runs=runs)

    if "baselines" not in args.skip:
        R_loop = args.reference_replicates or (64 if args.smoke else 4)
        R_mat = args.batched_replicates or 64
        counts = {"numpy lstsq loop": R_loop, "numpy cholesky loop": R_loop,
                  "numpy batched materialized f32": R_mat,
                  "numpy batched bartlett f32": R_mat if args.smoke else 4 * R_mat}
        base = baseline_runs(eco, d, T, R, counts, args.chunk, engine_final)
        result["baselines"] = base
        # compatibility: the plain loop is also "reference"
        ref = base["numpy lstsq loop"]
        result["reference"] = dict(replicates=ref["replicates"], wall_s=ref["wall_s"], cpu_s=ref["cpu_s"],
                                   scaled_wall_s=ref["scaled_wall_s"], updates_per_s=fits / ref["scaled_wall_s"])
        for r in runs.values():
            r["vs_numpy"] = ref["scaled_wall_s"] / r["engine"]["wall_s"]
            r["vs_baselines"] = {name: b["scaled_wall_s"] / r["engine"]["wall_s"] for name, b in base.items()}
            r["vs_baselines_cpu"] = {name: b["scaled_cpu_s"] / r["engine"]["cpu_s"] for name, b in base.items()}
        e0 = runs[impl0]
        rows = []
        for name, b in base.items():
            rows.append([name, b["replicates"], b["scaled_wall_s"], b["scaled_cpu_s"], fits / b["scaled_wall_s"],
                         e0["vs_baselines"][name], e0["vs_baselines_cpu"][name], b["final_mean"], b["z_vs_engine"]])
        for impl, r in runs.items():
            rows.append([f"engine, {impl}", R, r["engine"]["wall_s"], r["engine"]["cpu_s"], r["updates_per_s"],
                         e0["engine"]["wall_s"] / r["engine"]["wall_s"], e0["engine"]["cpu_s"] / r["engine"]["cpu_s"],
                         float(np.mean(r["engine"]["final_mean"])), "-"])
            rows.append([f"RNG floor, {impl}", "-", r["floor"]["wall_s"], r["floor"]["cpu_s"],
                         fits / r["floor"]["wall_s"], r["floor"]["wall_s"] / e0["engine"]["wall_s"],
                         r["floor"]["cpu_s"] / e0["engine"]["cpu_s"], "-", "-"])
        common.print_table(rows, ["standard study", "replicates timed", f"wall s (R={R})", "CPU s",
                                  "model-updates/s", f"engine ({impl0}) speed-up, wall",
                                  "speed-up, CPU s", "final mean error", "z vs engine"],
                           title=f"Standard study, T={T}, R={R} (baselines timed on fewer replicates, "
                                 f"scaled to R; NumPy on one thread, the engine on all cores)")

    if "cot" not in args.skip:
        Re, Rl = args.cot_replicates or ((512, 256) if args.smoke else (4096, 16))
        cot = cot_comparison(d, cfg["n"], T, Re, Rl, None if jax.default_backend() != "cpu" else min(Re, 1024),
                             impl0)
        result["collapse_or_thrive"] = cot
        common.print_table(
            [["collapse-or-thrive loop (pinv, float64)", Rl, cot["loop"]["updates_per_s"], 1.0,
              cot["loop"]["growth_mean"], cot["loop_rel_diff_vs_expected"]],
             [f"engine, one-model self-loop, design (batch {cot['engine']['batch_size']})", Re,
              cot["engine"]["updates_per_s"], cot["engine_vs_loop"], cot["engine"]["growth_mean"],
              cot["engine_rel_diff_vs_expected"]]],
            ["fixed design, one model", "replicates", "model-updates/s", "x loop", "mean err_T - err_0",
             "rel. diff vs expected"],
            title=f"Collapse-or-Thrive setting: d={d}, n={cfg['n']}, T={T}; expected growth "
                  f"{cot['expected_growth']:.4f}, z engine vs loop {cot['z_engine_vs_loop']:+.2f}")

    if "breakdown" not in args.skip:
        bsz = bs or R
        steps = -(-R // bsz) * (T + 1)
        rows = engine_breakdown(eco, task, cfg["n"], bsz, 10 if args.smoke else 50,
                                runs[impl0]["engine"]["cpu_s"] / steps)
        result["breakdown"] = rows
        common.print_table([[r["part"], r["wall_ms"], r["cpu_ms"], r["of_engine_cpu"]] for r in rows],
                           ["one engine step (cumulative pieces)", "wall ms", "CPU ms", "of the engine step's CPU"],
                           title=f"Where the engine's CPU time goes: one generation of one chunk ({bsz} replicates, "
                                 f"{bsz * (len(eco.real_edges) + len(eco.model_edges))} data sets, "
                                 f"{bsz * eco.K} fits)")

    if "rng" not in args.skip:
        count = args.rng_count or (2 ** 16 if args.smoke else 2 ** 24)
        rates = common.rng_rates(count)
        result["rng_rates"] = rates
        common.print_table([[r["generator"], r["what"], r["count"], r["per_s"], r["bits_per_s"] / 1e9]
                            for r in rates], ["generator", "draw", "count", "per s", "Gbit/s"],
                           title="Random numbers (jitted JAX calls; NumPy one thread)")

    if "first" not in args.skip:
        first = first_results(cfg, T, R_first, impl0, repeat)
        result["first"] = first
        _print_first(first, impl0)

    result["targets"] = _targets(result, impl0)
    if result["targets"]:
        common.print_table([[t["target"], t["goal"], t["measured"], t["met"]] for t in result["targets"]],
                           ["issue 13 target", "goal", "measured", "met"], title="Targets (ratios from this run)")
    path = common.write_json(args.json, "standard", result)
    print(f"wrote {path}")
    return result


def _print_first(first, impl):
    rows = []
    for name in ("cold", "fill", "warm"):
        f = first[name]
        rows.append([f"{name} ({'cache' if f['cache'] else 'no cache'})", f["R"], f["T"], f["compile_s"],
                     f["first_result_s"], f["from_launch_s"], ", ".join(f"{a:.2f}" for a in f["attempts"])])
    common.print_table(rows, ["first result, " + impl, "R", "T", "compile s", "from call s (fastest)",
                              "from launch s", "attempts s"],
                       title="Time to first result in a fresh process (persistent compilation cache: "
                             "cold = off, fill = first process with an empty cache, warm = later processes)")


def _targets(result, impl) -> list:
    out = []
    run = result["runs"][impl]
    if "baselines" in result:
        for name, label, goal in (("numpy batched bartlett f32", "same algorithm, batched f32 NumPy", 4),
                                  ("numpy batched materialized f32", "batched materialized f32 NumPy", 10)):
            for unit, ratios in (("wall", run["vs_baselines"]), ("CPU s", run["vs_baselines_cpu"])):
                out.append(dict(target=f"engine / {label} ({unit})", goal=f">= {goal}x", measured=ratios[name],
                                met=ratios[name] >= goal))
    out.append(dict(target="engine time / RNG floor", goal="<= 1.5x", measured=run["vs_floor"],
                    met=run["vs_floor"] <= 1.5))
    if "first" in result:
        w = result["first"]["warm"]["first_result_s"]
        out.append(dict(target="first result, warm cache (from call)", goal="< 5 s", measured=w, met=w < 5))
    return out


if __name__ == "__main__":
    main()
