"""The ``collapse-jax`` command line.

Each subcommand is a pair: ``_parser_NAME(subparsers)`` registers its
arguments and ``cmd_NAME(args) -> int`` runs it. ``main`` wires them up and
turns bad input (``ValueError``, ``OSError``) into one line,
``collapse-jax <command>: error: ...``, with exit code 2; Ctrl-C exits 130.
Every input is read and every output path checked before any computation.

JAX and the library are imported inside the commands, so that ``--help`` and
argument errors answer at once.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from types import SimpleNamespace

from collapse_jax import compile_cache
from collapse_jax.options import ENGINES, LOSS_SCALES, POOLS, REGIMES
from collapse_jax.study.storage import writable_folder

__all__ = ["main", "load_graph", "save_graph", "sweep_config", "make_task", "TASKS", "FAMILIES"]

PROG = "collapse-jax"

# The graph families and their spec syntax (``load_graph``).
FAMILIES = {
    "ring": ("ring:K", "a directed cycle m0 -> m1 -> ... -> m0; m0 also reads fresh real data"),
    "chain": ("chain:K", "m0 -> m1 -> ... -> m(K-1); m0 reads fresh real data"),
    "star": ("star:K", "hub m0 reads fresh real data; the K-1 leaves read the hub"),
    "complete": ("complete:K", "every model reads every model (itself too); no real data"),
    "erdos_renyi": ("erdos_renyi:K:p:seed", "seeded directed G(K, p), p in [0, 1]; even models read real data"),
}
FAMILY_DEFAULTS = dict(n=100, alpha=0.5)  # m defaults to n

GRAPH_HELP = """\
GRAPH is a family spec or a file.
Families (n, m and alpha from --n, --m, --alpha):
""" + "".join(f"  {syntax:<22} {what}\n" for syntax, what in FAMILIES.values()) + """\
Files, by extension: .graphml, .gml, .json (networkx node-link), anything else
an edge list. GraphML/GML/JSON nodes carry kind="data" (with n) or
kind="model" (with n_synthetic), edges u -> v (v trains on u's data) a
weight; --n / --m, when given, override every data node's n / every model's
n_synthetic and n0, and --alpha re-mixes every model that reads both real and
synthetic data (edge weights stay relative within each kind).
Edge list: one edge "u v [weight]" per line (weight 1 if absent, # starts a
comment). Node kinds follow from the graph: a node without in-edges is a
data node (fresh data, n from --n, default 100), every other node a model
(n_synthetic from --m, default 100); weights are relative within each kind
and --alpha (default 0.5) sets the synthetic share of models reading both.
"""

# --task NAME -> (class in collapse_jax, the task options it takes)
TASKS = {
    "linear": ("LinearRegression", ("dim", "noise", "ridge")),
    "gaussian": ("GaussianFit", ("dim", "estimator")),
    "categorical": ("Categorical", ("probs", "vocab", "zipf")),
    "logistic": ("LogisticRegression", ("dim", "ridge")),
    "poisson": ("PoissonRegression", ("dim", "ridge")),
}
# What each task's ``error`` measures (the summary's and the plot's quantity).
TASK_QUANTITY = {
    "LinearRegression": "excess risk",
    "GaussianFit": "KL(truth || fitted Gaussian)",
    "Categorical": "Brier excess risk sum (p_hat - p)^2",
    "LogisticRegression": "parameter error (theta - theta*)' Sigma (theta - theta*)",
    "PoissonRegression": "parameter error (theta - theta*)' Sigma (theta - theta*)",
}
TASK_DEFAULTS = dict(task="linear", dim=10, noise=1.0, ridge=0.0, estimator="mle", probs=None, vocab=10, zipf=1.0)
_GRAPH_EXTENSIONS = {".graphml": "GraphML", ".gml": "GML", ".json": "node-link JSON"}


# ------------------------------------------------------------ argparse glue
class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help (unless the help states them), epilogs kept as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or "default" in text or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def _int_at_least(low: int, what: str):
    """An argparse type: an integer >= ``low``, else an error saying it must be ``what``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "a non-negative integer")


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def _add_parser(sub, name, help, description, example):
    return sub.add_parser(name, help=help, description=description,
                          epilog=f"example:\n  {example}", formatter_class=_Formatter)


def _add_graph(p, alpha_help="synthetic share of every model that reads both real and synthetic data"):
    p.add_argument("graph", metavar="GRAPH", help="a family spec (ring:8, star:5, erdos_renyi:16:0.2:0, ...) "
                                                  "or a graph file; see below")
    p.add_argument("--n", type=_positive_int, default=None,
                   help="samples per draw of every data node (default: 100 for families and edge lists, "
                        "a GraphML/GML/JSON file's own otherwise)")
    p.add_argument("--m", type=_positive_int, default=None,
                   help="synthetic samples each model publishes, and generation-0 samples of a model "
                        "without real data (default: the --n value for families and edge lists, "
                        "a GraphML/GML/JSON file's own otherwise)")
    p.add_argument("--alpha", type=_finite_float, default=None,
                   help=f"{alpha_help} (default: 0.5 for families and edge lists, "
                        "a GraphML/GML/JSON file's own weights otherwise)")
    p.epilog = GRAPH_HELP + "\n" + (p.epilog or "")


def _add_task(p):
    g = p.add_argument_group("task", "the estimator every model fits (--task) and its options; an option "
                                     "that does not apply to the chosen task is an error")
    g.add_argument("--task", default="linear", choices=list(TASKS),
                   help="linear regression, Gaussian fit (mean and covariance), categorical token "
                        "frequencies, logistic or Poisson regression")
    g.add_argument("--dim", type=_positive_int, default=None,
                   help="parameter dimension d (linear, gaussian, logistic, poisson; default 10)")
    g.add_argument("--noise", type=_finite_float, default=None,
                   help="label noise sigma (linear; default 1.0)")
    g.add_argument("--ridge", type=_finite_float, default=None,
                   help="ridge penalty (linear, logistic, poisson; default 0.0)")
    g.add_argument("--estimator", choices=["mle", "unbiased"], default=None,
                   help="covariance estimator (gaussian; default mle)")
    g.add_argument("--probs", default=None,
                   help="true symbol probabilities, comma-separated, summing to 1 (categorical; "
                        "default: Zipf over --vocab symbols)")
    g.add_argument("--vocab", type=_positive_int, default=None,
                   help="number of symbols V for Zipf probabilities p_i ~ i^-zipf (categorical; default 10)")
    g.add_argument("--zipf", type=_finite_float, default=None,
                   help="Zipf exponent (categorical; default 1.0)")


def _add_options(p, regime=True, engine=True):
    if regime:
        p.add_argument("--regime", default="replace", choices=REGIMES,
                       help="replace: train on the newest synthetic batch; accumulate: on every batch so "
                            "far; accumulate_subsample: on a constant-size subsample of them")
    p.add_argument("--pool", default="independent", choices=POOLS,
                   help="independent: every edge draws its own synthetic batch; shared: one batch per producer")
    p.add_argument("--loss-scale", default="mean", choices=LOSS_SCALES,
                   help="mean: weights are shares of the training mixture; sum: sample counts matter too")
    if engine:
        p.add_argument("--engine", default="auto", choices=ENGINES,
                       help="suffstat: exact sufficient statistics; samples: materialized data; auto: "
                            "suffstat where the task allows it")


# ------------------------------------------------------------------- checks
def check_writable(path: str, option: str) -> None:
    """Raise ``ValueError`` naming ``option`` unless a file can be written at ``path``."""
    if os.path.isdir(path):
        raise ValueError(f"{option} {path!r} is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{option} {path!r}: the folder {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{option} {path!r}: not writable")


def _check_extension(path: str, option: str, allowed) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in allowed:
        raise ValueError(f"{option} {path!r}: the extension must be one of {', '.join(sorted(allowed))}")
    return ext


def _check_plot_path(path: str, option: str = "--plot") -> None:
    from matplotlib.backend_bases import FigureCanvasBase  # no backend is selected by this import

    _check_extension(path, option, {"." + e for e in FigureCanvasBase.get_supported_filetypes()})
    check_writable(path, option)


# ------------------------------------------------------------------- graphs
def _looks_like_file(spec: str) -> bool:
    family = spec.partition(":")[0]
    return family not in FAMILIES and (":" not in spec or os.sep in spec or "/" in spec
                                       or os.path.splitext(spec)[1] != "")


def load_graph(spec: str, *, n=None, m=None, alpha=None):
    """An Ecosystem from a family spec or a file (GraphML, GML, node-link JSON, edge list).

    Family specs (``FAMILIES``): ``ring:K``, ``chain:K``, ``star:K``,
    ``complete:K``, ``erdos_renyi:K:p:seed``; ``n``, ``m`` and ``alpha``
    default to 100, 100 and 0.5.

    Files: GraphML, GML and node-link JSON carry node kinds and sizes; ``n``
    (every data node's ``n``), ``m`` (every model's ``n_synthetic`` and
    ``n0``) and ``alpha`` (the synthetic share of every model that reads both
    real and synthetic data; edge weights stay relative within each kind)
    override the file's when given. Without ``alpha`` each model's in-edge
    weights are normalized to sum to 1. An edge list (any other extension)
    has lines ``u v [weight]``; a node without in-edges is a data node, every
    other node a model (``n``, ``m``, ``alpha`` default as for families).

    Raises:
        ValueError: naming the file (or spec) and what is wrong with it.
    """
    from collapse_jax import graphs
    from collapse_jax.ecosystem import Ecosystem

    if os.path.exists(spec) or _looks_like_file(spec):
        if os.path.isdir(spec):
            raise ValueError(f"graph file {spec!r} is a directory")
        if not os.path.exists(spec):
            raise ValueError(f"graph file {spec!r}: no such file (nor a family spec: "
                             f"{', '.join(s for s, _ in FAMILIES.values())})")
        ext = os.path.splitext(spec)[1].lower()
        if ext not in _GRAPH_EXTENSIONS:
            G = _read_edge_list(spec, n=n, m=m)
            alpha = FAMILY_DEFAULTS["alpha"] if alpha is None else alpha
        else:
            G = _read_graph_file(spec, ext)
            _override_sizes(G, spec, n=n, m=m)
        try:
            if alpha is None:
                return Ecosystem.from_networkx(G, normalize=True)
            return Ecosystem.from_networkx(G, alpha=alpha)
        except ValueError as e:
            raise ValueError(f"graph file {spec!r}: {e}") from None

    family, _, rest = spec.partition(":")
    if family not in FAMILIES:
        raise ValueError(f"GRAPH {spec!r}: unknown family {family!r} and no such file; families: "
                         f"{', '.join(s for s, _ in FAMILIES.values())}")
    parts = rest.split(":") if rest else []
    syntax = FAMILIES[family][0]
    try:
        if len(parts) != len(syntax.split(":")) - 1:
            raise ValueError
        K = int(parts[0])
        extra = (float(parts[1]), int(parts[2])) if family == "erdos_renyi" else ()
    except ValueError:
        raise ValueError(f"GRAPH {spec!r}: expected {syntax}") from None
    sizes = dict(n=FAMILY_DEFAULTS["n"] if n is None else n,
                 m=(FAMILY_DEFAULTS["n"] if n is None else n) if m is None else m,
                 alpha=FAMILY_DEFAULTS["alpha"] if alpha is None else alpha)
    try:
        if family == "erdos_renyi":
            return graphs.erdos_renyi(K, extra[0], seed=extra[1], **sizes)
        return getattr(graphs, family)(K, **sizes)
    except ValueError as e:
        raise ValueError(f"GRAPH {spec!r}: {e}") from None


def _read_graph_file(path: str, ext: str):
    import xml.etree.ElementTree as ET

    import networkx as nx

    fmt = _GRAPH_EXTENSIONS[ext]
    if os.path.getsize(path) == 0:
        raise ValueError(f"graph file {path!r} is empty (expected {fmt})")
    try:
        if ext == ".graphml":
            G = nx.read_graphml(path)
        elif ext == ".gml":
            G = nx.read_gml(path)
        else:
            with open(path) as f:
                data = json.load(f)
            if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
                raise ValueError("node-link JSON needs an object with a 'nodes' list (and 'links')")
            if "edges" in data and "links" not in data:
                G = nx.node_link_graph(data, directed=True, edges="edges")
            else:
                G = nx.node_link_graph(data, directed=True, edges="links")
    except (ET.ParseError, json.JSONDecodeError, UnicodeDecodeError, nx.NetworkXError,
            KeyError, IndexError, TypeError, ValueError) as e:
        what = f"{type(e).__name__}: {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"graph file {path!r}: not a valid {fmt} file ({what})") from None
    if not G.is_directed():
        hint = {".graphml": 'edgedefault="directed"', ".gml": "directed 1", ".json": '"directed": true'}[ext]
        raise ValueError(f"graph file {path!r} is undirected; edges must point the way data flows "
                         f"(u -> v: v trains on u's data): write it with {hint}")
    if G.is_multigraph():
        seen = {}
        for u, v in G.edges():
            seen[u, v] = seen.get((u, v), 0) + 1
        for (u, v), count in seen.items():
            if count > 1:
                raise ValueError(f"graph file {path!r}: edge {u!r} -> {v!r} appears {count} times; "
                                 "merge parallel edges into one weight")
        G = nx.DiGraph(G)
    return G


def _override_sizes(G, path: str, *, n=None, m=None) -> None:
    for v, a in G.nodes(data=True):
        kind = a.get("kind")
        if kind == "data" and n is not None:
            if a.get("design") is not None:
                raise ValueError(f"graph file {path!r}: --n cannot change data node {v!r}: "
                                 "its size is fixed by its design")
            a["n"] = n
        elif kind == "model" and m is not None:
            if a.get("design") is not None:
                raise ValueError(f"graph file {path!r}: --m cannot change model node {v!r}: "
                                 "its size is fixed by its design")
            a["n_synthetic"] = m
            a["n0"] = m


def _read_edge_list(path: str, *, n=None, m=None):
    import networkx as nx

    G = nx.DiGraph()
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"graph file {path!r}: not a text edge list") from None
    for i, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) not in (2, 3):
            raise ValueError(f"graph file {path!r}, line {i}: expected 'u v [weight]', got {line.strip()!r}")
        weight = 1.0
        if len(fields) == 3:
            try:
                weight = float(fields[2])
            except ValueError:
                raise ValueError(f"graph file {path!r}, line {i}: weight {fields[2]!r} is not a number") from None
        u, v = fields[:2]
        if G.has_edge(u, v):
            raise ValueError(f"graph file {path!r}, line {i}: edge {u!r} -> {v!r} appears twice")
        G.add_edge(u, v, weight=weight)
    if G.number_of_edges() == 0:
        raise ValueError(f"graph file {path!r}: no edges (expected lines 'u v [weight]')")
    n = FAMILY_DEFAULTS["n"] if n is None else n
    m = n if m is None else m
    for v in G.nodes:
        if G.in_degree(v) == 0:
            G.nodes[v].update(kind="data", n=n)
        else:
            G.nodes[v].update(kind="model", n_synthetic=m, n0=m)
    return G


# --------------------------------------------------------------------- tasks
def make_task(args):
    """The task of ``--task`` and its options (an object with attributes, e.g. argparse's Namespace).

    Unset options (``None`` or absent) take ``TASK_DEFAULTS``; an option set
    for a task that does not take it is a ``ValueError``. The class is looked
    up in ``collapse_jax`` by name, so a version without it says so.
    """
    import numpy as np

    import collapse_jax as cj

    name = getattr(args, "task", None) or TASK_DEFAULTS["task"]
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    cls_name, takes = TASKS[name]
    for option in TASK_DEFAULTS:
        if option != "task" and option not in takes and getattr(args, option, None) is not None:
            users = [t for t, (_, opts) in TASKS.items() if option in opts]
            raise ValueError(f"--{option} does not apply to --task {name} (it applies to: {', '.join(users)})")
    opt = {o: (TASK_DEFAULTS[o] if getattr(args, o, None) is None else getattr(args, o)) for o in takes}
    if name == "linear":
        call = ((), dict(dim=opt["dim"], noise=opt["noise"], ridge=opt["ridge"]))
    elif name == "gaussian":
        call = ((opt["dim"],), dict(estimator=opt["estimator"]))
    elif name == "categorical":
        if getattr(args, "probs", None) is not None:
            if getattr(args, "vocab", None) is not None or getattr(args, "zipf", None) is not None:
                raise ValueError("--probs gives the probabilities: --vocab and --zipf cannot be used with it")
            probs = _parse_probs(opt["probs"])
        else:
            ranks = np.arange(1, int(opt["vocab"]) + 1, dtype=float)
            probs = ranks ** -float(opt["zipf"])
            probs = probs / probs.sum()
        call = ((), dict(probs=probs))
    else:
        call = ((opt["dim"],), dict(ridge=opt["ridge"]))
    # Looked up last, so that bad options are named whether or not this version has the task.
    cls = getattr(cj, cls_name, None)
    if cls is None:
        raise ValueError(f"task {name!r} is not available in this version (collapse_jax has no {cls_name})")
    return cls(*call[0], **call[1])


def _parse_probs(text):
    import numpy as np

    if isinstance(text, str):
        try:
            values = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--probs {text!r}: expected comma-separated numbers such as 0.5,0.3,0.2") from None
    else:
        values = list(text)
    p = np.asarray(values, float)
    if p.ndim != 1 or p.size < 2 or not np.all(np.isfinite(p)) or np.any(p < 0) or abs(p.sum() - 1) > 1e-6:
        raise ValueError(f"--probs {text!r}: need at least 2 non-negative numbers summing to 1")
    return p


def _task_label(task) -> str:
    name = type(task).__name__
    for attr in ("dim", "noise", "ridge", "estimator"):
        if hasattr(task, attr):
            name += f" {'d' if attr == 'dim' else attr}={getattr(task, attr)}"
    if hasattr(task, "probs"):
        name += f" V={len(task.probs)}"
    return name


def describe(eco, task, **options) -> str:
    """One line stating the ecosystem, the task and the study's options (for printed tables)."""
    import numpy as np

    def values(xs):
        xs = sorted(set(xs))
        return str(xs[0]) if len(xs) == 1 else "{" + ", ".join(map(str, xs)) + "}"

    mixing = [k for k in range(eco.K) if eco.has_real()[k] and any(kk == k for kk, _ in eco.model_edges)]
    alphas = values(round(float(np.asarray(eco.alpha)[k]), 4) for k in mixing) if mixing else "none mixes"
    parts = [f"{eco.K} model{'s' * (eco.K != 1)}, {eco.S} data node{'s' * (eco.S != 1)}", _task_label(task),
             f"n={values(eco.n) if eco.n else '-'}", f"m={values(eco.n_synthetic)}", f"alpha={alphas}"]
    parts += [f"{k}={v}" for k, v in options.items()]
    return ", ".join(parts)


def _one_fit_risk(eco, task):
    """d/(n-d-1): the excess risk of one OLS fit on n samples (linear regression, one n), else None."""
    if type(task).__name__ != "LinearRegression" or len(set(eco.n)) != 1:
        return None
    d, n = task.dim, eco.n[0]
    return (d, n, d / (n - d - 1)) if n > d + 1 else None


def verdict_note(summary) -> str:
    """A short note of a summary's verdicts for a plot panel, e.g. ``"risk grows: 6 of 6 models"``."""
    rows = summary.rows
    counts = {v: sum(r.get("verdict") == v for r in rows) for v in ("diverges", "grows", "bounded")}
    words = {"diverges": "risk diverges", "grows": "risk grows", "bounded": "bounded"}
    parts = [f"{words[v]}: {c} of {len(rows)} models" for v, c in counts.items() if c]
    return "\n".join(parts)


def _check_pair(eco, task):
    check = getattr(task, "check", None)
    if check is not None:
        check(eco)


# --------------------------------------------------------------------- demo
def _parser_demo(sub):
    p = _add_parser(sub, "demo", "a small study: per-model table, plot and results",
                    "Three six-model ecosystems (linear regression d=10, n=m=50): a ring whose m0 keeps "
                    "real data (bounded error), a ring without real data (collapse), and a star whose hub "
                    "reads real data. Prints a per-model table and writes a plot, summary.json and one "
                    ".npz per study.", "collapse-jax demo --out demo_output --replicates 1000")
    p.add_argument("--out", default="demo_output", help="output folder")
    p.add_argument("--replicates", type=_positive_int, default=1000, help="replicates R per study")
    p.add_argument("--generations", type=_positive_int, default=100, help="generations T")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed")
    p.set_defaults(func=cmd_demo)


def demo_studies(n: int = 50):
    """The demo's three ecosystems: ``{title: (ecosystem, hub or None)}``."""
    from collapse_jax import graphs

    return {
        "Ring of 6, m0 keeps real data (alpha=0.5)": (graphs.ring(6, alpha=0.5, real=(0,), n=n, m=n), None),
        "Ring of 6, no real data": (graphs.ring(6, real=(), n=n, m=n), None),
        "Star of 6, hub m0 reads real data": (graphs.star(6, real=(0,), n=n, m=n), "m0"),
    }


def cmd_demo(args) -> int:
    writable_folder(args.out, "--out")
    import jax

    import collapse_jax as cj
    from collapse_jax import plotting

    task = cj.LinearRegression(dim=10, noise=1.0)
    d, n = task.dim, 50
    studies = demo_studies(n)
    files = {title: "ring6_real_at_m0" if i == 0 else ("ring6_no_real" if i == 1 else "star6")
             for i, title in enumerate(studies)}
    os.makedirs(args.out, exist_ok=True)
    key = jax.random.key(args.seed)
    setup = (f"linear regression d={d}, n=m={n}, sigma=1, T={args.generations}, R={args.replicates}, "
             "replace regime, independent pool")
    print(f"collapse-jax demo: {setup}")
    print(f"reference: one OLS fit on {n} samples has excess risk d/(n-d-1) = {d / (n - d - 1):.4f}\n")
    results, summaries, notes = {}, {}, {}
    for i, (title, (eco, _)) in enumerate(studies.items()):
        t0 = time.perf_counter()
        res = cj.simulate(eco, task, jax.random.fold_in(key, i), generations=args.generations,
                          replicates=args.replicates)
        res.error.block_until_ready()
        dt = time.perf_counter() - t0
        s = res.summary()
        print(f"== {files[title]}: {title}  ({dt:.1f} s)")
        print(s, "\n")
        results[title] = res
        notes[title] = verdict_note(s)
        summaries[files[title]] = s.to_dict()
        res.save(os.path.join(args.out, f"{files[title]}.npz"))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summaries, f, indent=2)
    png = os.path.join(args.out, "error_vs_generation.png")
    plotting.plot_error(results, png, reference=(d / (n - d - 1), f"one OLS fit: d/(n-d-1) = {d / (n - d - 1):.3f}"),
                        title=f"Mean excess risk per model: {setup}",
                        mark={title: {hub: "hub"} for title, (_, hub) in studies.items() if hub}, notes=notes)
    print(f"wrote {png}, summary.json and one .npz per study to {os.path.abspath(args.out)}")
    return 0


# ----------------------------------------------------------------- simulate
_RESULT_EXTENSIONS = {".npz", ".nc", ".csv"}


def _parser_simulate(sub):
    p = _add_parser(sub, "simulate", "simulate one ecosystem and print the per-model table",
                    "Simulate R replicates of T generations and print, per model, the final mean "
                    "error, its median, its slope over the last half, and a verdict.",
                    "collapse-jax simulate ring:8 --alpha 0.3 --generations 200 --plot ring8.png")
    _add_graph(p)
    _add_task(p)
    p.add_argument("--generations", type=_nonnegative_int, default=100, help="generations T after generation 0")
    p.add_argument("--replicates", type=_positive_int, default=1000, help="independent replicates R")
    _add_options(p)
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="replicates per vectorized batch, to bound memory (default: sized to the CPU's caches; "
                        "all at once on GPU)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed")
    p.add_argument("--out", default=None,
                   help="write the results here: .npz (arrays), .nc (xarray/netCDF) or .csv (tidy table) (default: not written)")
    p.add_argument("--plot", default=None, help="write a plot of the mean error per model here (.png, .pdf, .svg) (default: no plot)")
    p.set_defaults(func=cmd_simulate)


def cmd_simulate(args) -> int:
    if args.out:
        _check_extension(args.out, "--out", _RESULT_EXTENSIONS)
        check_writable(args.out, "--out")
    if args.plot:
        _check_plot_path(args.plot)
    import jax

    import collapse_jax as cj

    eco = load_graph(args.graph, n=args.n, m=args.m, alpha=args.alpha)
    task = make_task(args)
    _check_pair(eco, task)
    options = dict(T=args.generations, R=args.replicates, regime=args.regime, pool=args.pool,
                   loss_scale=args.loss_scale, engine=args.engine)
    header = describe(eco, task, **options)
    res = cj.simulate(eco, task, jax.random.key(args.seed), generations=args.generations,
                      replicates=args.replicates, regime=args.regime, pool=args.pool,
                      loss_scale=args.loss_scale, engine=args.engine, batch_size=args.batch_size)
    print(f"collapse-jax simulate {args.graph}: {header}")
    ref = _one_fit_risk(eco, task)
    if ref:
        print(f"reference: one OLS fit on n={ref[1]} samples has excess risk d/(n-d-1) = {ref[2]:.4g}")
    quantity = TASK_QUANTITY.get(type(task).__name__, "error")
    summary = res.summary(quantity=quantity)
    print(summary)
    if args.out:
        _save_result(res, args.out, graph=args.graph, task=_task_label(task))
        print(f"wrote {args.out}")
    if args.plot:
        from collapse_jax import plotting

        reference = (ref[2], f"one OLS fit: d/(n-d-1) = {ref[2]:.3g}") if ref else None
        plotting.plot_error({str(args.graph): res}, args.plot, reference=reference,
                            title=f"{args.graph}: {header}", notes={str(args.graph): verdict_note(summary)},
                            ylabel=f"mean {quantity} (band: +- 2 s.e.)")
        print(f"wrote {args.plot}")
    return 0


def _save_result(res, path: str, **attrs) -> None:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        res.save(path)
        return
    tmp = path + ".tmp" + ext
    if ext == ".nc":
        ds = res.to_xarray()
        ds.attrs.update(attrs)
        ds.to_netcdf(tmp, engine="h5netcdf")
    else:
        res.to_dataframe().to_csv(tmp, index=False)
    os.replace(tmp, path)


# -------------------------------------------------------------------- sweep
_SWEEP_SECTIONS = {
    "graph": {"spec": "str", "n": "int", "m": "int", "alpha": "float"},
    "task": {"name": "str", "dim": "int", "noise": "float", "ridge": "float", "estimator": "str",
             "probs": "floats", "vocab": "int", "zipf": "float"},
    "simulate": {"generations": "int", "regime": "str", "pool": "str", "loss_scale": "str", "engine": "str"},
}
_SWEEP_TOP = {"seed": "int", "replicates": "int", "chunk": "int", "block": "int", "path": "str",
              "quantiles": "floats", "trajectories": "bool"}
_SWEEP_CHOICES = {"regime": REGIMES, "pool": POOLS, "loss_scale": LOSS_SCALES, "engine": ENGINES,
                  "name": tuple(TASKS), "estimator": ("mle", "unbiased")}
_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "floats": "a list of numbers"}


def _check_value(file: str, where: str, value, kind: str, choices=None):
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "floats": isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                  for x in value),
    }[kind]
    if not ok:
        raise ValueError(f"{file}: {where} must be {_TYPE_WORDS[kind]}, got {value!r}")
    if choices is not None and value not in choices:
        raise ValueError(f"{file}: {where} must be one of {list(choices)}, got {value!r}")
    return value


def sweep_config(file: str, *, task=None) -> dict:
    """Read a sweep TOML file; return the keyword arguments of :func:`collapse_jax.sweep`.

    Schema (every key and every value's type is checked; unknown keys are an error)::

        seed = 0                      # key = jax.random.key(seed)
        replicates = 2048             # per grid point
        chunk = 512                   # replicates per device call and checkpoint
        block = 16                    # optional, power of two dividing chunk
        path = "sweeps/ring"          # optional: resumable folder (relative to the
                                      # working directory); result.nc and summary.csv go there
        quantiles = [0.05, 0.5, 0.95] # optional
        trajectories = false          # optional: keep every replicate

        [graph]                       # as `collapse-jax simulate GRAPH --n --m --alpha`
        spec = "ring:{K}"             # family spec or file; {name} takes grid values
        n = 100                       # data samples (default 100; a file's own if unset)
        m = 100                       # synthetic samples (default: n)
        alpha = 0.5                   # synthetic share (default 0.5; a file's own if unset)

        [task]                        # as `collapse-jax simulate --task NAME ...`
        name = "linear"               # linear, gaussian, categorical, logistic, poisson
        dim = 10                      # and the options of that task: noise, ridge,
        noise = 1.0                   # estimator, probs, vocab, zipf
        ridge = 0.0

        [simulate]                    # options of collapse_jax.simulate
        generations = 50              # required
        regime = "replace"            # pool, loss_scale, engine likewise

        [grid]                        # the Cartesian product of these lists
        K = [4, 8]                    # used by graph.spec
        alpha = [0.25, 0.5, 0.75]     # overrides graph.alpha

    A grid name equal to an option of ``[graph]``, ``[task]`` or ``[simulate]``
    overrides it at each point (its values are type-checked like the option);
    any grid name may appear in ``graph.spec`` as ``{name}``. A grid name used
    nowhere is an error. ``task`` (the CLI's ``--task``) overrides
    ``[task] name``. See examples/sweep.toml.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib

    import jax

    if os.path.isdir(file):
        raise ValueError(f"config file {file!r} is a directory")
    if not os.path.exists(file):
        raise ValueError(f"config file {file!r}: no such file")
    with open(file, "rb") as f:
        try:
            conf = tomllib.load(f)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{file}: not valid TOML: {e}") from None
    allowed_top = list(_SWEEP_TOP) + ["grid"] + list(_SWEEP_SECTIONS)
    unknown = sorted(set(conf) - set(allowed_top))
    if unknown:
        raise ValueError(f"{file}: unknown keys {unknown}; allowed: {allowed_top}")
    for name, kind in _SWEEP_TOP.items():
        if name in conf:
            _check_value(file, name, conf[name], kind)
    sections = {}
    for name, schema in _SWEEP_SECTIONS.items():
        sec = conf.get(name, {})
        if not isinstance(sec, dict):
            raise ValueError(f"{file}: [{name}] must be a table")
        bad = sorted(set(sec) - set(schema))
        if bad:
            raise ValueError(f"{file}: [{name}] has unknown keys {bad}; allowed: {list(schema)}")
        for key, value in sec.items():
            _check_value(file, f"[{name}] {key}", value, schema[key], _SWEEP_CHOICES.get(key))
        sections[name] = dict(sec)
    if task is not None:
        sections["task"]["name"] = _check_value(file, "--task", task, "str", tuple(TASKS))
    for name, required in (("graph", "spec"), ("simulate", "generations")):
        if required not in sections[name]:
            raise ValueError(f"{file}: [{name}] must set {required!r}")
    for name in ("replicates", "chunk"):
        if name not in conf:
            raise ValueError(f"{file}: {name!r} is required")
    grid = conf.get("grid", {})
    if not isinstance(grid, dict):
        raise ValueError(f"{file}: [grid] must be a table of lists")
    spec = sections["graph"]["spec"]
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{file}: [grid] {name} must be a non-empty list, got {values!r}")
        owners = [s for s in _SWEEP_SECTIONS if name in _SWEEP_SECTIONS[s]]
        if name == "spec" or not (owners or "{" + name + "}" in spec):
            raise ValueError(f"{file}: grid parameter {name!r} is used nowhere: it must be an option of "
                             f"[graph], [task] or [simulate] or appear as {{{name}}} in graph.spec")
        for value in values:
            for s in owners:
                _check_value(file, f"[grid] {name}", value, _SWEEP_SECTIONS[s][name], _SWEEP_CHOICES.get(name))

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
        eco = load_graph(graph, n=g.get("n"), m=g.get("m"), alpha=g.get("alpha"))
        task_args = SimpleNamespace(**{k: v for k, v in t.items() if k != "name"}, task=t.get("name", "linear"))
        return eco, make_task(task_args), opts["simulate"]

    kwargs = dict(build=build, grid=grid, key=jax.random.key(int(conf.get("seed", 0))),
                  replicates=conf["replicates"], chunk=conf["chunk"], path=conf.get("path"))
    for name in ("block", "quantiles", "trajectories"):
        if name in conf:
            kwargs[name] = conf[name]
    return kwargs


def _parser_sweep(sub):
    p = _add_parser(sub, "sweep", "a resumable Monte Carlo study over a parameter grid (TOML config)",
                    "Run a parameter sweep described by a TOML file (schema: collapse_jax.cli.sweep_config; "
                    "example: examples/sweep.toml). Rerun the same command to resume after a crash.",
                    "collapse-jax sweep examples/sweep.toml --path sweep_ring")
    p.add_argument("config", help="the sweep's TOML file")
    p.add_argument("--task", default=None, choices=list(TASKS),
                   help="the task (overrides the config's [task] name; default: the config's, else linear)")
    p.add_argument("--path", default=None, help="resumable output folder (default: the config's path)")
    p.add_argument("--out", default=None, help="also write the results (netCDF) to this file (default: not written)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    kwargs = sweep_config(args.config, task=args.task)
    if args.path is not None:
        kwargs["path"] = args.path
    if kwargs.get("path"):
        writable_folder(kwargs["path"], "--path" if args.path is not None else f"{args.config}: path")
    if args.out:
        check_writable(args.out, "--out")
    # Build every grid point now: a bad point is refused before anything is computed or written.
    names = list(kwargs["grid"])
    for values in itertools.product(*(kwargs["grid"][k] for k in names)):
        point = dict(zip(names, values))
        try:
            eco, task, _ = kwargs["build"](**point)
            _check_pair(eco, task)
        except ValueError as e:
            raise ValueError(f"grid point {point}: {e}" if point else str(e)) from None

    from collapse_jax import study

    result = study.sweep(**kwargs, progress=not args.no_progress)
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
    p = _add_parser(sub, "diagnose", "topological and spectral collapse diagnosis of a graph",
                    "Which models collapse and why (the closed class without real data each reads "
                    "from), rho(W), the homogenization rate and, with a task, rho(Q), rho(L), slopes "
                    "and stationary errors (replace regime).",
                    "collapse-jax diagnose erdos_renyi:16:0.2:0 --topology-only")
    _add_graph(p)
    _add_task(p)
    _add_options(p, regime=False, engine=False)
    p.add_argument("--topology-only", action="store_true",
                   help="no task: topology, rho(W) and the second eigenvalue only (fast)")
    p.add_argument("--json", default=None, help="also write the diagnosis as JSON here (default: not written)")
    p.add_argument("--no-progress", action="store_true",
                   help="no stage lines on stderr (default: shown when stderr is a terminal)")
    p.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args) -> int:
    if args.json:
        check_writable(args.json, "--json")
    import collapse_jax as cj

    eco = load_graph(args.graph, n=args.n, m=args.m, alpha=args.alpha)
    if args.topology_only:
        given = [f"--{o}" for o in TASK_DEFAULTS if o != "task" and getattr(args, o, None) is not None]
        if given or args.task != "linear":
            raise ValueError(f"--topology-only uses no task: drop {', '.join(given) or '--task'}")
        task = None
    else:
        task = make_task(args)
        _check_pair(eco, task)
    # Stage lines (what is being computed) on a terminal only: never in pipes, logs or --no-progress.
    progress = not args.no_progress and sys.stderr.isatty()
    diag = cj.diagnose(eco, task, loss_scale=args.loss_scale, pool=args.pool, progress=progress)
    print(f"collapse-jax diagnose {args.graph}: "
          + (describe(eco, task) if task is not None else f"{eco.K} models, {eco.S} data nodes, topology only"))
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

    ext = _check_extension(path, "--out", {".graphml", ".json"})
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
    p = _add_parser(sub, "optimize", "optimize edge weights and alpha to minimize long-run error",
                    "Minimize the long-run error (stationary: analytic; monte_carlo: simulated) over the "
                    "relative weights of existing edges and alpha with Adam; write the optimized graph.",
                    "collapse-jax optimize ring:8 --steps 500 --out best.graphml")
    _add_graph(p, alpha_help="starting synthetic share of every model that reads both real and synthetic data")
    p.add_argument("--out", required=True, help="write the optimized graph here (.graphml or .json); required")
    _add_task(p)
    p.add_argument("--objective", default="stationary", choices=["stationary", "monte_carlo"],
                   help="stationary: analytic large-sample long-run error; monte_carlo: simulated")
    p.add_argument("--reduce", default="mean", choices=["mean", "max"], help="how to combine the models' errors")
    p.add_argument("--params", default="weights,alpha",
                   help="what to optimize, comma-separated: weights, real_weights, model_weights, alpha")
    p.add_argument("--steps", type=_positive_int, default=500, help="Adam steps")
    p.add_argument("--lr", type=_finite_float, default=1e-2, help="Adam learning rate")
    p.add_argument("--alpha-min", type=_finite_float, default=0.0, help="lower bound on every optimized alpha")
    p.add_argument("--alpha-max", type=_finite_float, default=1.0, help="upper bound on every optimized alpha")
    p.add_argument("--real-budget", type=_finite_float, default=None,
                   help="bound on the mean real-data share mean_k(1 - alpha_k) (default: no bound)")
    _add_options(p, regime=False, engine=False)
    p.add_argument("--generations", type=_positive_int, default=100, help="generations (monte_carlo only)")
    p.add_argument("--replicates", type=_positive_int, default=256, help="replicates (monte_carlo only)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (monte_carlo only)")
    p.set_defaults(func=cmd_optimize)


def cmd_optimize(args) -> int:
    _check_extension(args.out, "--out", {".graphml", ".json"})
    check_writable(args.out, "--out")
    import jax
    import optax

    import collapse_jax as cj

    eco = load_graph(args.graph, n=args.n, m=args.m, alpha=args.alpha)
    task = make_task(args)
    _check_pair(eco, task)
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
    print(f"collapse-jax optimize {args.graph}: {describe(eco, task)}")
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


def build_parser() -> argparse.ArgumentParser:
    """The ``collapse-jax`` argument parser (every subcommand)."""
    parser = _Parser(prog=PROG, formatter_class=_Formatter,
                     description="Simulate, diagnose and optimize model collapse among generative models "
                                 "that train on each other's outputs over a directed graph.",
                     epilog="commands:\n"
                            "  collapse-jax demo                      a small study: table, plot, results\n"
                            "  collapse-jax simulate ring:8 --plot p.png\n"
                            "  collapse-jax diagnose star:5 --topology-only\n"
                            "  collapse-jax optimize ring:8 --out best.graphml\n"
                            "  collapse-jax sweep examples/sweep.toml\n"
                            "Run collapse-jax COMMAND --help for a command's options.\n\n" + GRAPH_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for register in _PARSERS:
        register(sub)
    return parser


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv=None) -> int:
    """Run the command line; return the exit code (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or an argument error (2), already printed
        return e.code if isinstance(e.code, int) else 2
    try:
        # The persistent XLA cache makes a second run start in seconds; it lives in
        # ~/.cache/collapse_jax/xla (COLLAPSE_JAX_CACHE_DIR moves it, COLLAPSE_JAX_CACHE=0 turns it off)
        # and is restored when the command returns, so an in-process caller keeps its own settings.
        with compile_cache.enabled():
            return args.func(args)
    except (ValueError, OSError) as e:
        print(f"{PROG} {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional dependency (xarray, pandas, h5netcdf, ...) is missing
        print(f"{PROG} {args.command}: error: this needs the package {e.name!r}, which is not installed "
              f"(pip install {e.name})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
