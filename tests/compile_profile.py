"""Opt-in pytest plugin: where the suite's time goes (XLA compiles, lowering, tracing) per file and test.

Most of the suite's time is JAX preparing programs, not running them. This
plugin listens to JAX's own duration events (``jax._src.monitoring``:
tracing to a jaxpr, lowering to MLIR, the backend compile) and prints, at the
end of the run, for every test file: wall time, XLA compiles and the seconds
spent in each stage, then the tests that spend the most. Eager
operations count too: each primitive applied outside ``jit`` to a new shape is
a compile of its own (about 20 ms under the suite's fast-compile flags, 50 ms
with XLA's defaults), so a test with hundreds of compiles and little compile
time per compile is paying for eager code.

Usage (it is not loaded by default)::

    PYTHONPATH=tests python -m pytest -p compile_profile [pytest arguments]
"""

import collections
import time

import pytest
from jax._src import monitoring

STAGES = {"/jax/core/compile/backend_compile_duration": "compile",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
          "/jax/core/compile/jaxpr_trace_duration": "trace"}

_current = [None]
_tests: dict = collections.defaultdict(collections.Counter)


def _listen(event, duration, **_):
    stage = STAGES.get(event)
    if stage is None or _current[0] is None:
        return
    _tests[_current[0]][stage] += duration
    if stage == "compile":
        _tests[_current[0]]["compiles"] += 1


monitoring.register_event_duration_secs_listener(_listen)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current[0] = item.nodeid
    start = time.perf_counter()
    yield
    _tests[item.nodeid]["wall"] += time.perf_counter() - start
    _current[0] = None


def _row(name, c):
    jax_s = c["compile"] + c["lower"] + c["trace"]
    return (f"{c['wall']:7.1f} {jax_s:7.1f} {c['compile']:7.1f} {c['lower']:6.1f} {c['trace']:6.1f} "
            f"{int(c['compiles']):6d}  {name}")


def pytest_terminal_summary(terminalreporter):
    if not _tests:
        return
    files: dict = collections.defaultdict(collections.Counter)
    for nodeid, c in _tests.items():
        files[nodeid.split("::")[0]].update(c)
    total = sum(files.values(), collections.Counter())
    header = f"{'wall s':>7} {'jax s':>7} {'compile':>7} {'lower':>6} {'trace':>6} {'n':>6}  "
    write = terminalreporter.write_line
    terminalreporter.section("JAX time per test file (compile_profile)")
    write(header + "file")
    for name, c in sorted(files.items(), key=lambda kv: -kv[1]["wall"]):
        write(_row(name, c))
    write(_row("all", total))
    terminalreporter.section("tests with the most JAX time")
    write(header + "test")
    by_jax = sorted(_tests.items(), key=lambda kv: -(kv[1]["compile"] + kv[1]["lower"] + kv[1]["trace"]))
    for nodeid, c in by_jax[:15]:
        write(_row(nodeid, c))
    terminalreporter.section("tests with the most time outside tracing, lowering and compiling")
    write(header + "test")
    by_rest = sorted(_tests.items(), key=lambda kv: -(kv[1]["wall"] - kv[1]["compile"] - kv[1]["lower"] - kv[1]["trace"]))
    for nodeid, c in by_rest[:25]:
        write(_row(nodeid, c))
