"""Engine levers, before against after, in one run: the standard study in fresh child processes.

Each lever is a module constant of the engine; a child process sets it to its
"before" or "after" value before the first trace, runs the standard study
once to compile, then times a second run (wall and process CPU seconds).
Children alternate before, after, before, after ... so that the ratio of
each pair is taken at the same load; the table gives the median ratio.

Run: ``python benchmarks/levers.py --lever threefry --replicates 256 --generations 50 --pairs 3``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from common import ROOT, STANDARD, load_average, parser, print_table, standard_ecosystem, write_json

import numpy as np

# lever name -> (module, attribute, before, after)
LEVERS = {
    "threefry": ("collapse_jax.engine.scan", "_THREEFRY_PARTITIONABLE", True, False),
}


def child(lever: str, which: str, R: int, T: int, batch_size: int) -> dict:
    import importlib

    import jax
    import collapse_jax as cj

    module, attr, before, after = LEVERS[lever]
    setattr(importlib.import_module(module), attr, before if which == "before" else after)
    eco, task = standard_ecosystem(), cj.LinearRegression(dim=STANDARD["d"])
    key = jax.random.key(0)

    def run():
        return jax.block_until_ready(cj.simulate(eco, task, key, generations=T, replicates=R,
                                                 batch_size=batch_size).error)

    w0 = time.perf_counter()
    run()
    first = time.perf_counter() - w0
    w0, c0 = time.perf_counter(), time.process_time()
    err = run()
    return dict(first_s=first, wall_s=time.perf_counter() - w0, cpu_s=time.process_time() - c0,
                final_error=float(np.mean(np.asarray(err)[:, -1])))


def main(argv=None):
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--lever", choices=sorted(LEVERS), default="threefry")
    ap.add_argument("--replicates", type=int, default=None, help="R (default 256; smoke 16)")
    ap.add_argument("--generations", type=int, default=None, help="T (default 50; smoke 3)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=None, help="before/after pairs (default 3; smoke 1)")
    ap.add_argument("--child", choices=["before", "after"], default=None, help=argparse_suppress())
    args = ap.parse_args(argv)
    R = args.replicates or (16 if args.smoke else 256)
    T = args.generations or (3 if args.smoke else 50)
    pairs = args.pairs or (1 if args.smoke else 3)
    if args.child:
        print(json.dumps(child(args.lever, args.child, R, T, args.batch_size)))
        return None

    here = os.path.abspath(__file__)
    runs = {"before": [], "after": []}
    for _ in range(pairs):
        for which in ("before", "after"):
            out = subprocess.run([sys.executable, here, "--lever", args.lever, "--child", which,
                                  "--replicates", str(R), "--generations", str(T),
                                  "--batch-size", str(args.batch_size)],
                                 check=True, capture_output=True, text=True)
            runs[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
    ratio = {k: float(np.median([b[k] / a[k] for b, a in zip(runs["before"], runs["after"])]))
             for k in ("wall_s", "cpu_s", "first_s")}
    rows = [[which] + [float(np.median([r[k] for r in runs[which]])) for k in ("wall_s", "cpu_s", "first_s",
                                                                                "final_error")]
            for which in ("before", "after")]
    rows.append(["before / after (median of pairs)", ratio["wall_s"], ratio["cpu_s"], ratio["first_s"], "-"])
    module, attr, before, after = LEVERS[args.lever]
    print_table(rows, ["run", "wall s", "CPU s", "first call s", "final mean error"],
                title=f"lever {args.lever}: {module}.{attr} {before} -> {after}; standard study R = {R}, "
                      f"T = {T}, batch {args.batch_size}, {pairs} pairs")
    path = write_json(args.json or os.path.join(ROOT, "benchmarks", "results", f"levers_{args.lever}.json"), "levers", dict(
        lever=args.lever, setting=[module, attr, before, after], config=dict(R=R, T=T, batch_size=args.batch_size),
        runs=runs, ratio=ratio, load_average_at_end=load_average()))
    print(f"wrote {path}")
    return ratio


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
