"""The ``collapse-jax`` command line.

Each subcommand is a pair: ``_parser_NAME(subparsers)`` registers its
arguments and ``cmd_NAME(args) -> int`` runs it. ``main`` wires them up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["main", "load_graph", "save_graph", "sweep_config"]


# ------------------------------------------------------------------- graphs
def load_graph(spec: str, *, n: int = 100, m: int = 100, alpha: float = 0.5):
    """An Ecosystem from a file (GraphML, GML, node-link JSON, edge list) or a family spec.

    Family specs: ``ring:K``, ``chain:K``, ``star:K``, ``complete:K``,
    ``erdos_renyi:K:p:seed``; ``n``, ``m`` and ``alpha`` apply to families
    only (a file carries its own attributes).
    """
    import networkx as nx

    from collapse_jax import graphs
    from collapse_jax.ecosystem import Ecosystem

    if os.path.exists(spec):
        ext = os.path.splitext(spec)[1].lower()
        if ext == ".graphml":
            G = nx.read_graphml(spec)
        elif ext == ".gml":
            G = nx.read_gml(spec)
        elif ext == ".json":
            with open(spec) as f:
                G = nx.node_link_graph(json.load(f), directed=True, edges="links")
        else:
            G = nx.read_edgelist(spec, create_using=nx.DiGraph, data=(("weight", float),))
        if not isinstance(G, nx.DiGraph):
            G = nx.DiGraph(G)
        return Ecosystem.from_networkx(G, normalize=True)
    family, _, rest = spec.partition(":")
    builders = {"ring": graphs.ring, "chain": graphs.chain, "star": graphs.star,
                "complete": graphs.complete, "erdos_renyi": graphs.erdos_renyi}
    if family not in builders:
        raise ValueError(
            f"GRAPH {spec!r} is neither an existing file nor a family spec "
            f"({', '.join(k + ':K' for k in builders)})"
        )
    parts = rest.split(":") if rest else []
    try:
        K = int(parts[0])
        if family == "erdos_renyi":
            return graphs.erdos_renyi(K, float(parts[1]), seed=int(parts[2]), n=n, m=m, alpha=alpha)
        if len(parts) != 1:
            raise IndexError
    except (IndexError, ValueError):
        form = "erdos_renyi:K:p:seed" if family == "erdos_renyi" else f"{family}:K"
        raise ValueError(f"GRAPH {spec!r}: expected {form}") from None
    return builders[family](K, n=n, m=m, alpha=alpha)


# --------------------------------------------------------------------- demo
def _parser_demo(sub):
    p = sub.add_parser("demo", help="a small study: per-model table, plot and results")
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--replicates", type=int, default=1000)
    p.add_argument("--generations", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    import jax

    import collapse_jax as cj
    from collapse_jax import plotting

    task = cj.LinearRegression(dim=10, noise=1.0)
    d, n = task.dim, 50
    studies = {
        "ring6_real_at_m0": cj.graphs.ring(6, alpha=0.5, real=(0,), n=n, m=n),
        "ring6_no_real": cj.graphs.ring(6, real=(), n=n, m=n),
        "star6": cj.graphs.star(6, real=(0,), n=n, m=n),
    }
    os.makedirs(args.out, exist_ok=True)
    key = jax.random.key(args.seed)
    print(f"collapse-jax demo: linear regression d={d}, n=m={n}, sigma=1, "
          f"T={args.generations}, R={args.replicates}, replace regime, independent pool")
    print(f"reference: one OLS fit on {n} samples has excess risk d/(n-d-1) = {d / (n - d - 1):.4f}\n")
    results, summaries = {}, {}
    for i, (name, eco) in enumerate(studies.items()):
        t0 = time.perf_counter()
        res = cj.simulate(eco, task, jax.random.fold_in(key, i), generations=args.generations,
                          replicates=args.replicates)
        res.error.block_until_ready()
        dt = time.perf_counter() - t0
        s = res.summary()
        print(f"== {name}  ({dt:.1f} s)")
        print(s, "\n")
        results[name] = res
        summaries[name] = s.to_dict()
        res.save(os.path.join(args.out, f"{name}.npz"))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summaries, f, indent=2)
    png = os.path.join(args.out, "error_vs_generation.png")
    plotting.plot_error(results, png)
    print(f"wrote {png}, summary.json and one .npz per study to {os.path.abspath(args.out)}")
    return 0


# ----------------------------------------------------------------- simulate
def _parser_simulate(sub):
    p = sub.add_parser("simulate", help="simulate one ecosystem and print the per-model table")
    p.add_argument("graph", help="a graph file or a family spec such as ring:8")
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--ridge", type=float, default=0.0)
    p.add_argument("--n", type=int, default=100, help="data samples (families only)")
    p.add_argument("--m", type=int, default=100, help="synthetic samples (families only)")
    p.add_argument("--alpha", type=float, default=0.5, help="synthetic share (families only)")
    p.add_argument("--generations", type=int, default=100)
    p.add_argument("--replicates", type=int, default=1000)
    p.add_argument("--regime", default="replace", choices=["replace", "accumulate"])
    p.add_argument("--pool", default="independent", choices=["independent", "shared"])
    p.add_argument("--loss-scale", default="mean", choices=["mean", "sum"])
    p.add_argument("--engine", default="auto", choices=["auto", "suffstat", "samples"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results (.npz) here")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args) -> int:
    import jax

    import collapse_jax as cj

    eco = load_graph(args.graph, n=args.n, m=args.m, alpha=args.alpha)
    task = cj.LinearRegression(dim=args.dim, noise=args.noise, ridge=args.ridge)
    res = cj.simulate(eco, task, jax.random.key(args.seed), generations=args.generations,
                      replicates=args.replicates, regime=args.regime, pool=args.pool,
                      loss_scale=args.loss_scale, engine=args.engine)
    print(res.summary())
    if args.out:
        res.save(args.out)
        print(f"wrote {args.out}")
    return 0


# -------------------------------------------------------------------- sweep
_SWEEP_SECTIONS = {
    "graph": ("spec", "n", "m", "alpha"),
    "task": ("dim", "noise", "ridge"),
    "simulate": ("generations", "regime", "pool", "loss_scale", "engine"),
}
_SWEEP_TOP = ("seed", "replicates", "chunk", "block", "path", "quantiles", "trajectories", "grid") + tuple(_SWEEP_SECTIONS)


def sweep_config(file: str) -> dict:
    """Read a sweep TOML file; return the keyword arguments of :func:`collapse_jax.sweep`.

    Schema (every key is checked; unknown keys are an error)::

        seed = 0                      # key = jax.random.key(seed)
        replicates = 2048             # per grid point
        chunk = 512                   # replicates per device call and checkpoint
        block = 16                    # optional, power of two dividing chunk
        path = "sweeps/ring"          # optional: resumable folder (relative to the
                                      # working directory); result.nc and summary.csv go there
        quantiles = [0.05, 0.5, 0.95] # optional
        trajectories = false          # optional: keep every replicate

        [graph]                       # as `collapse-jax simulate GRAPH --n --m --alpha`
        spec = "ring:{K}"             # load_graph spec or file; {name} takes grid values
        n = 100                       # data samples (families only)
        m = 100                       # synthetic samples (families only)
        alpha = 0.5                   # synthetic share (families only)

        [task]                        # LinearRegression(dim, noise, ridge)
        dim = 10
        noise = 1.0
        ridge = 0.0

        [simulate]                    # options of collapse_jax.simulate
        generations = 50              # required
        regime = "replace"            # pool, loss_scale, engine likewise

        [grid]                        # the Cartesian product of these lists
        K = [4, 8]                    # used by graph.spec
        alpha = [0.25, 0.5, 0.75]     # overrides graph.alpha

    A grid name equal to an option of ``[graph]``, ``[task]`` or ``[simulate]``
    overrides it at each point; any grid name may appear in ``graph.spec`` as
    ``{name}``. A grid name used nowhere is an error. See examples/sweep.toml.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib

    import jax

    from collapse_jax import LinearRegression

    with open(file, "rb") as f:
        try:
            conf = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{file}: not valid TOML: {e}") from None
    unknown = sorted(set(conf) - set(_SWEEP_TOP))
    if unknown:
        raise ValueError(f"{file}: unknown keys {unknown}; allowed: {list(_SWEEP_TOP)}")
    sections = {}
    for name, allowed in _SWEEP_SECTIONS.items():
        sec = conf.get(name, {})
        if not isinstance(sec, dict):
            raise ValueError(f"{file}: [{name}] must be a table")
        bad = sorted(set(sec) - set(allowed))
        if bad:
            raise ValueError(f"{file}: [{name}] has unknown keys {bad}; allowed: {list(allowed)}")
        sections[name] = dict(sec)
    for name, required in (("graph", "spec"), ("simulate", "generations")):
        if required not in sections[name]:
            raise ValueError(f"{file}: [{name}] must set {required!r}")
    for name in ("replicates", "chunk"):
        if name not in conf:
            raise ValueError(f"{file}: {name!r} is required")
    grid = conf.get("grid", {})
    if not isinstance(grid, dict):
        raise ValueError(f"{file}: [grid] must be a table of lists")
    spec = str(sections["graph"]["spec"])
    for name in grid:
        used = any(name in _SWEEP_SECTIONS[s] for s in _SWEEP_SECTIONS)
        if name == "spec" or not (used or "{" + name + "}" in spec):
            raise ValueError(f"{file}: grid parameter {name!r} is used nowhere: it must be an option of "
                             f"[graph], [task] or [simulate] or appear as {{{name}}} in graph.spec")

    def build(**point):
        opts = {s: dict(sections[s]) for s in sections}
        for name, value in point.items():
            for s in opts:
                if name in _SWEEP_SECTIONS[s]:
                    opts[s][name] = value
        g, t = opts["graph"], opts["task"]
        try:
            graph = spec.format(**point)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"{file}: graph.spec {spec!r} cannot be filled from {point}: {e}") from None
        family_only = sorted(set(point) & {"n", "m", "alpha"})
        if family_only and os.path.exists(graph):
            raise ValueError(f"{file}: grid parameters {family_only} apply to graph families only, "
                             f"but graph.spec {graph!r} is a file (it carries its own attributes)")
        eco = load_graph(graph, n=int(g.get("n", 100)), m=int(g.get("m", 100)), alpha=float(g.get("alpha", 0.5)))
        task = LinearRegression(dim=int(t.get("dim", 10)), noise=float(t.get("noise", 1.0)),
                                ridge=float(t.get("ridge", 0.0)))
        return eco, task, opts["simulate"]

    kwargs = dict(build=build, grid=grid, key=jax.random.key(int(conf.get("seed", 0))),
                  replicates=conf["replicates"], chunk=conf["chunk"], path=conf.get("path"))
    for name in ("block", "quantiles", "trajectories"):
        if name in conf:
            kwargs[name] = conf[name]
    return kwargs


def _parser_sweep(sub):
    p = sub.add_parser("sweep", help="a resumable Monte Carlo study over a parameter grid (TOML config)",
                       description="Run a parameter sweep described by a TOML file (schema: "
                                   "collapse_jax.cli.sweep_config; example: examples/sweep.toml).")
    p.add_argument("config", help="the sweep's TOML file")
    p.add_argument("--path", default=None, help="resumable output folder (overrides the config's path)")
    p.add_argument("--out", default=None, help="also write the results (netCDF) to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    from collapse_jax.study import sweep

    kwargs = sweep_config(args.config)
    if args.path is not None:
        kwargs["path"] = args.path
    result = sweep(**kwargs, progress=not args.no_progress)
    if result is None:  # only with an explicit process share; not reachable from the CLI
        return 0
    df = result.to_dataframe()
    last = df[df["generation"] == df["generation"].max()]
    cols = list(result.dataset["mean"].dims[:-2]) + ["model", "mean", "sem", "nonfinite"]
    cols += [c for c in ("q0.5",) if c in df.columns]
    print(f"final generation {int(df['generation'].max())}, {result.dataset.attrs['replicates']} replicates "
          f"per point, {result.dataset.attrs['signatures']} compiled signature(s)")
    print(last[cols].to_string(index=False))
    path = kwargs.get("path")
    if path:
        df.to_csv(os.path.join(path, "summary.csv"), index=False)
        print(f"wrote {os.path.join(path, 'result.nc')} and summary.csv")
    if args.out:
        result.save(args.out)
        print(f"wrote {args.out}")
    return 0


# ----------------------------------------------------------------- diagnose
def _parser_diagnose(sub):
    p = sub.add_parser("diagnose", help="topological and spectral collapse diagnosis of a graph")
    p.add_argument("graph", help="a graph file or a family spec such as ring:8")
    p.add_argument("--dim", type=int, default=10, help="linear-regression dimension d")
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--ridge", type=float, default=0.0)
    p.add_argument("--n", type=int, default=100, help="data samples (families only)")
    p.add_argument("--m", type=int, default=100, help="synthetic samples (families only)")
    p.add_argument("--alpha", type=float, default=0.5, help="synthetic share (families only)")
    p.add_argument("--loss-scale", default="mean", choices=["mean", "sum"])
    p.add_argument("--pool", default="independent", choices=["independent", "shared"])
    p.add_argument("--topology-only", action="store_true",
                   help="no task: topology, rho(W) and the second eigenvalue only")
    p.add_argument("--json", default=None, help="also write the diagnosis as JSON here")
    p.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args) -> int:
    import collapse_jax as cj

    eco = load_graph(args.graph, n=args.n, m=args.m, alpha=args.alpha)
    task = None if args.topology_only else cj.LinearRegression(dim=args.dim, noise=args.noise, ridge=args.ridge)
    diag = cj.diagnose(eco, task, loss_scale=args.loss_scale, pool=args.pool)
    print(diag)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(diag.to_dict(), f, indent=2, default=str)
        print(f"wrote {args.json}")
    return 0


# ----------------------------------------------------------------- optimize
def save_graph(G, path: str) -> None:
    """Write a graph as GraphML (``.graphml``) or node-link JSON (``.json``), atomically.

    GraphML holds scalar attributes only: a node with an array attribute
    (``cov``, ``design``, ``theta``) needs ``.json``, which stores arrays as lists.
    """
    import networkx as nx
    import numpy as np

    ext = os.path.splitext(path)[1].lower()
    if ext not in (".graphml", ".json"):
        raise ValueError(f"--out {path!r}: the extension must be .graphml or .json")
    tmp = path + ".tmp"
    if ext == ".graphml":
        for v, attrs in G.nodes(data=True):
            for name, val in attrs.items():
                if isinstance(val, np.ndarray):
                    raise ValueError(f"node {v!r}: attribute {name!r} is an array; GraphML cannot hold it, "
                                     "write .json instead")
        nx.write_graphml(G, tmp)
    else:
        data = nx.node_link_data(G, edges="links")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1,
                      default=lambda x: x.tolist() if isinstance(x, (np.ndarray, np.generic)) else str(x))
    os.replace(tmp, path)


def _parser_optimize(sub):
    p = sub.add_parser("optimize", help="optimize edge weights and alpha to minimize long-run error")
    p.add_argument("graph", help="a graph file or a family spec such as ring:8")
    p.add_argument("--out", required=True, help="write the optimized graph here (.graphml or .json)")
    p.add_argument("--dim", type=int, default=10, help="linear-regression dimension d")
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--n", type=int, default=100, help="data samples (families only)")
    p.add_argument("--m", type=int, default=100, help="synthetic samples (families only)")
    p.add_argument("--alpha", type=float, default=0.5, help="starting synthetic share (families only)")
    p.add_argument("--objective", default="stationary", choices=["stationary", "monte_carlo"])
    p.add_argument("--reduce", default="mean", choices=["mean", "max"], help="over models")
    p.add_argument("--params", default="weights,alpha",
                   help="comma-separated: weights, real_weights, model_weights, alpha")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    p.add_argument("--alpha-min", type=float, default=0.0)
    p.add_argument("--alpha-max", type=float, default=1.0)
    p.add_argument("--real-budget", type=float, default=None,
                   help="bound on the mean real-data share mean_k(1 - alpha_k)")
    p.add_argument("--loss-scale", default="mean", choices=["mean", "sum"])
    p.add_argument("--pool", default="independent", choices=["independent", "shared"])
    p.add_argument("--generations", type=int, default=100, help="monte_carlo only")
    p.add_argument("--replicates", type=int, default=256, help="monte_carlo only")
    p.add_argument("--seed", type=int, default=0, help="monte_carlo only")
    p.set_defaults(func=cmd_optimize)


def cmd_optimize(args) -> int:
    import jax
    import optax

    import collapse_jax as cj

    eco = load_graph(args.graph, n=args.n, m=args.m, alpha=args.alpha)
    task = cj.LinearRegression(dim=args.dim, noise=args.noise)
    options = dict(reduce=args.reduce, loss_scale=args.loss_scale, pool=args.pool)
    key = None
    if args.objective == "monte_carlo":
        options.update(generations=args.generations, replicates=args.replicates)
        key = jax.random.key(args.seed)
    t0 = time.perf_counter()
    out = cj.optimize(eco, task, objective=args.objective, optimizer=optax.adam(args.lr), steps=args.steps,
                      params=tuple(p.strip() for p in args.params.split(",") if p.strip()), key=key,
                      alpha_bounds=(args.alpha_min, args.alpha_max), real_budget=args.real_budget,
                      options=options)
    dt = time.perf_counter() - t0
    print(f"{args.objective} long-run error ({args.reduce} over models): "
          f"{out.history[0]:.6g} -> {out.history[-1]:.6g} in {args.steps} steps ({dt:.1f} s)")
    print(f"{'model':>10} {'alpha before':>13} {'alpha after':>12}")
    for k, name in enumerate(eco.models):
        print(f"{str(name):>10} {float(eco.alpha[k]):>13.4f} {float(out.eco.alpha[k]):>12.4f}")
    print()
    print(out.diagnostics)
    save_graph(out.to_networkx(), args.out)
    print(f"wrote {args.out}")
    return 0


# --------------------------------------------------------------------- main
_PARSERS = [_parser_demo, _parser_simulate, _parser_diagnose, _parser_optimize, _parser_sweep]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="collapse-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for register in _PARSERS:
        register(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"collapse-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
