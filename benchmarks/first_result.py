"""Time to the first result of the standard study in this (fresh) process, broken down.

Run: as a whole process, e.g. with farm-bench (which times from launch to exit):

    farm-bench -n 5 -- python benchmarks/first_result.py          # the library's default cache
    COLLAPSE_JAX_CACHE=0 farm-bench -n 3 -- python benchmarks/first_result.py   # cold

It prints one JSON line: seconds spent importing JAX, importing collapse_jax
(on top of JAX), building the ecosystem, and in the first ``cj.simulate``
(standard study, T = 200, R = 16): JAX's tracing, lowering to MLIR, backend
compile or persistent-cache load (JAX's own monitoring events), and the rest
(running it, and Python around it). ``from_start_s`` counts from the
interpreter's start (``time.perf_counter`` cannot, so it uses the process's
start time from /proc); farm-bench's wall time adds interpreter start-up and
exit. The cache is whatever the library does by default (``COLLAPSE_JAX_CACHE``
and ``COLLAPSE_JAX_CACHE_DIR`` apply).

Interpreter exit takes about 1 s after the result (benchmarks/README.md,
session 16): CPython's finalization runs its cyclic garbage collector over
every tracked object (about 135,000; JAX alone brings 88,000).
``FIRST_RESULT_FREEZE=1`` ends the script with ``gc.freeze()`` (what a user's
script may do as its last statement; the library does not do it for them),
which exempts those objects and shows what exit costs without that pass.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections import defaultdict  # noqa: E402


def _since_process_start() -> float | None:
    """Seconds since this process started (Linux /proc), or None."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def main() -> dict:
    R = int(os.environ.get("FIRST_RESULT_R", 16))
    T = int(os.environ.get("FIRST_RESULT_T", 200))
    t_pre = time.perf_counter()
    import jax

    t_jax = time.perf_counter()
    events = defaultdict(float)
    jax.monitoring.register_event_duration_secs_listener(lambda name, d, **_: events.__setitem__(name, events[name] + d))
    import collapse_jax as cj

    t_cj = time.perf_counter()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import standard_ecosystem

    eco, task = standard_ecosystem(), cj.LinearRegression(dim=32)
    key = jax.random.key(0)
    t_setup = time.perf_counter()
    err = jax.block_until_ready(cj.simulate(eco, task, key, generations=T, replicates=R, batch_size=16).error)
    t_done = time.perf_counter()
    trace = events["/jax/core/compile/jaxpr_trace_duration"]
    lower = events["/jax/core/compile/jaxpr_to_mlir_module_duration"]
    backend = events["/jax/core/compile/backend_compile_duration"]
    out = dict(
        import_jax_s=t_jax - t_pre,
        import_collapse_jax_s=t_cj - t_jax,
        setup_s=t_setup - t_cj,
        simulate_s=t_done - t_setup,
        trace_s=trace,
        lower_s=lower,
        backend_compile_or_cache_load_s=backend,
        cache_retrieval_s=events["/jax/compilation_cache/cache_retrieval_time_sec"],
        rest_of_simulate_s=(t_done - t_setup) - trace - lower - backend,
        from_script_start_s=t_done - T0,
        from_process_start_s=_since_process_start(),
        cpu_s=time.process_time(),
        final_error=float(err[:, -1].mean()),
        cache=os.environ.get("COLLAPSE_JAX_CACHE", "default"),
        R=R, T=T,
    )
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
    if os.environ.get("FIRST_RESULT_FREEZE") == "1":
        import gc

        gc.freeze()  # finalization's collections skip every object alive now (see the docstring)
