"""Shared helpers of the benchmark scripts: the standard study, timers, the RNG floor, tables, JSON.

Every script prints a table and writes JSON (``--json PATH``); ``--smoke``
shrinks every size so that the script runs in seconds (used by
``tests/test_benchmarks_smoke.py``). Figures that are compared are measured
in the same run, because this project's machines are shared and absolute
timings move by tens of percent from one minute to the next.
"""

from __future__ import annotations

import os

# The NumPy reference is fastest with one BLAS thread (small solves); set it before NumPy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Dict, List, Sequence  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, ROOT)

import collapse_jax as cj  # noqa: E402

# The exact samplers (Bartlett factor), for the engine breakdown in standard.py; the one import of
# them in benchmarks/, wherever the package keeps them.
try:
    from collapse_jax.tasks import samplers  # noqa: E402
except ImportError:
    from collapse_jax import sampling as samplers  # noqa: E402

# The standard study (DESIGN.md "Performance").
STANDARD = dict(K=16, p=0.2, seed=0, alpha=0.5, d=32, n=128, m=128, T=200, R=4096,
                regime="replace", pool="independent")


def standard_ecosystem(K: int = 16, p: float = 0.2, seed: int = 0, n: int = 128, m: int = 128,
                       alpha: float = 0.5) -> cj.Ecosystem:
    """K models on a seeded directed Erdos-Renyi graph; one fresh data node feeds every other model."""
    return cj.graphs.erdos_renyi(K, p, seed=seed, real=range(0, K, 2), n=n, m=m, alpha=alpha)


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds); for the test suite")
    ap.add_argument("--json", default=None, help="write the results here (default: benchmarks/results/<name>.json)")
    return ap


# ------------------------------------------------------------------ timing
def block(x):
    return jax.block_until_ready(x)


def timed(fn: Callable[[], Any]):
    """Run ``fn`` once; return ``(wall seconds, process CPU seconds, result)``."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = block(fn())
    return time.perf_counter() - w0, time.process_time() - c0, out


def best_of(fn: Callable[[], Any], repeat: int):
    """Fastest wall time (and its CPU time) of ``repeat`` runs."""
    runs = [timed(fn)[:2] for _ in range(repeat)]
    return min(runs)


_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileClock:
    """Sums JAX's tracing, lowering and XLA compile durations while active (``jax.monitoring``)."""

    _active: List["CompileClock"] = []
    _registered = False

    def __init__(self):
        self.seconds = 0.0
        self.last_event = None  # (perf_counter, process_time) when the last compile event ended

    @classmethod
    def _listen(cls, event: str, duration: float, **_):
        if event in _COMPILE_EVENTS:
            now = (time.perf_counter(), time.process_time())
            for clock in cls._active:
                clock.seconds += duration
                clock.last_event = now

    def __enter__(self):
        if not CompileClock._registered:
            jax.monitoring.register_event_duration_secs_listener(CompileClock._listen)
            CompileClock._registered = True
        CompileClock._active.append(self)
        return self

    def __exit__(self, *exc):
        CompileClock._active.remove(self)


def run_excluding_compile(fn: Callable[[], Any], after: Dict[str, float] | None = None):
    """Run ``fn`` once; return ``(wall, cpu, compile seconds inside it, result)``.

    Lets a long run be timed once: ``wall - compile`` is its steady-state time.
    With a dict ``after``, also stores there the wall and process CPU seconds
    from the end of the last compile event to the result (``wall_s``,
    ``cpu_s``): the execution's own CPU time, which ``cpu`` (compile included)
    does not give.
    """
    with CompileClock() as clock:
        w0, c0 = time.perf_counter(), time.process_time()
        out = block(fn())
        w1, c1 = time.perf_counter(), time.process_time()
    if after is not None:
        lw, lc = clock.last_event or (w0, c0)
        after.update(wall_s=w1 - lw, cpu_s=c1 - lc)
    return w1 - w0, c1 - c0, clock.seconds, out


# ------------------------------------------------------------- the RNG floor
def datasets_drawn(eco: cj.Ecosystem, generations: int, replicates: int, pool: str) -> int:
    """Data sets the engine draws: generation 0 (fresh real edges, truth samples of models
    without real data, fixed nodes once) plus every generation's fresh real edges and
    synthetic batches (one per edge, or one per producer with a shared pool)."""
    fresh = sum(1 for _, s in eco.real_edges if eco.fresh[s])
    fixed = len({s for _, s in eco.real_edges if not eco.fresh[s]})
    no_real = int(np.sum(~eco.has_real()))
    synthetic = len({j for _, j in eco.model_edges}) if pool == "shared" else len(eco.model_edges)
    return replicates * (fixed + fresh + no_real + generations * (fresh + synthetic))


def normals_needed(d: int) -> int:
    """Random numbers one Gaussian data set's sufficient statistics need (THEORY 3):
    d(d-1)/2 normals below the Bartlett diagonal, d chi-squares on it, d normals for X'eps."""
    return d * (d + 1) // 2 + d


def engine_draws(d: int) -> int:
    """Random numbers the engine draws per data set in its first pass: the above, with each
    chi-square drawn as one normal and one uniform (Marsaglia-Tsang; rare exact retries on top)."""
    return normals_needed(d) + d


def rng_floor(key: jax.Array, count: int, block_size: int | None = None, max_count: int | None = None):
    """Seconds one jitted call takes to draw ``count`` standard normals (same key implementation).

    Draws in blocks of ``block_size`` inside a ``fori_loop`` (summed, so memory
    stays bounded). With ``max_count`` smaller than ``count``, times
    ``max_count`` normals and scales linearly (drawing is linear in the count).

    Returns:
        ``(wall, cpu, scale)``: the (scaled) times and the scale factor used.
    """
    if block_size is None:
        block_size = 2 ** 18 if jax.default_backend() == "cpu" else 2 ** 24
    todo = count if max_count is None else min(count, max_count)
    blocks = max(1, round(todo / block_size))
    scale = count / (blocks * block_size)

    @jax.jit
    def draw(key):
        def body(i, acc):
            return acc + jnp.sum(jax.random.normal(jax.random.fold_in(key, i), (block_size,)))
        return jax.lax.fori_loop(0, blocks, body, jnp.zeros(()))

    block(draw(key))  # compile
    wall, cpu = best_of(lambda: draw(key), 2)
    return wall * scale, cpu * scale, scale


# ------------------------------------------------------------------ output
def machine() -> Dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = jax.devices()[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "jax": jax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "load_average": load_average(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def load_average() -> List[float] | None:
    """``os.getloadavg()`` now (1, 5, 15 minutes), rounded; None where unavailable."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], title: str | None = None) -> None:
    """Print :func:`table` with the machine's load average under it (figures move with the load)."""
    if title:
        print(f"\n{title}")
    print(table(rows, headers))
    print(f"load average (1, 5, 15 min): {load_average()}, {os.cpu_count()} cores", flush=True)


def zscore(a, b) -> float:
    """Two-sample z-score of the means of ``a`` and ``b`` (1-D, independent samples)."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    return float((a.mean() - b.mean()) / se) if se > 0 else float("nan")


def rng_rates(count: int = 2 ** 24, repeat: int = 3) -> List[Dict[str, Any]]:
    """Random numbers per second, in this process: JAX's PRNG implementations (jitted
    ``normal`` float32 and ``bits`` uint32 of ``count`` draws) and NumPy's default
    generator (PCG64, one thread: ``standard_normal`` float32 and float64, raw 64-bit words).

    Each figure is the fastest of ``repeat`` calls after a warm-up (compile) call.
    """
    rows = []
    for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
        key = jax.random.key(0, impl=impl)
        normal = jax.jit(lambda k: jax.random.normal(k, (count,), jnp.float32))
        bits = jax.jit(lambda k: jax.random.bits(k, (count,), jnp.uint32))
        for what, fn, nbits in (("normal f32", normal, 32), ("bits u32", bits, 32)):
            block(fn(key))
            wall = best_of(lambda: fn(key), repeat)[0]
            rows.append(dict(generator=f"jax {impl}", what=what, count=count, wall_s=wall,
                             per_s=count / wall, bits_per_s=count * nbits / wall))
    rng = np.random.default_rng(0)
    for what, fn, n, nbits in (
        ("normal f32", lambda: rng.standard_normal(count, dtype=np.float32), count, 32),
        ("normal f64", lambda: rng.standard_normal(count), count, 64),
        ("bits u64 (random_raw)", lambda: rng.bit_generator.random_raw(count // 2), count // 2, 64),
    ):
        fn()
        wall = best_of(fn, repeat)[0]
        rows.append(dict(generator="numpy PCG64 (1 thread)", what=what, count=n, wall_s=wall,
                         per_s=n / wall, bits_per_s=n * nbits / wall))
    return rows


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table (also valid markdown)."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                       for i, (c, w) in enumerate(zip(r, widths))) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in cells])


def _fmt(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x == 0 or 1e-3 <= abs(x) < 1e6:
            return f"{x:.4g}" if abs(x) < 100 else f"{x:,.0f}"
        return f"{x:.3g}"
    if isinstance(x, (int, np.integer)):
        return f"{x:,}"
    return str(x)


def write_json(path: str | None, name: str, payload: Dict[str, Any]) -> str:
    """Write ``payload`` (plus the machine) as JSON; return the path."""
    if path is None:
        path = os.path.join(ROOT, "benchmarks", "results", f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = dict(payload, benchmark=name, machine=machine())
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=_jsonable)
    os.replace(tmp, path)
    return path


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def key_for(impl: str | None, seed: int = 0) -> jax.Array:
    """A typed key; ``impl`` picks the PRNG (threefry2x32 default, philox4x32, rbg, unsafe_rbg)."""
    return jax.random.key(seed) if impl in (None, "default") else jax.random.key(seed, impl=impl)

