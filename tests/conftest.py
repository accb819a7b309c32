import atexit
import gc
import os

# Most of the suite's time is XLA compiling small programs. Two compiler flags cut an engine
# program's compile from 4.8 s to 0.7 s on this 2-core machine: LLVM at level 0 (the HLO
# passes, fusion, layout and canonicalization, stay those users get) and the classic
# elemental emitters instead of the newer fusion emitters. A third compiles each program as
# one LLVM module instead of 32 on parallel threads, which a busy 2-core machine cannot run
# in parallel (paired runs: test_gaussian plus test_public_private 105 -> 89 s, test_simulate
# plus test_sampling 183 s both ways). Float32 results differ from the default build's by
# rounding (relative ~1e-5), and code generated otherwise can break promises of
# bit-identical results across programs (chunk sizes, batch widths) that hold in the build
# users get. So the tests of such promises carry the `default_compiler` mark:
# this process leaves them out and test_default_compiler.py runs them all in one pytest
# subprocess with the default flags. Execution is 2-2.6x slower, which these small programs
# do not notice. COLLAPSE_JAX_TEST_FAST_COMPILE=0 runs everything here with your flags.
# Set before JAX starts its backend; subprocesses (the CLI, notebook kernels) inherit it.
FAST_COMPILE = {"--xla_backend_optimization_level": "0", "--xla_cpu_use_fusion_emitters": "false",
                "--xla_cpu_parallel_codegen_split_count": "1"}
USER_XLA_FLAGS = os.environ.get("COLLAPSE_JAX_TEST_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
FAST = os.environ.get("COLLAPSE_JAX_TEST_FAST_COMPILE", "1") != "0"
if FAST:
    os.environ["COLLAPSE_JAX_TEST_USER_XLA_FLAGS"] = USER_XLA_FLAGS
    os.environ["XLA_FLAGS"] = " ".join(
        [USER_XLA_FLAGS] + [f"{k}={v}" for k, v in FAST_COMPILE.items() if k not in USER_XLA_FLAGS]).strip()

# NumPy's BLAS on one thread (the oracles' solves and eigendecompositions): OpenBLAS threads
# spin while they wait, and with the second core busy (the background jobs below, or CI's
# load) a two-thread BLAS call waits for a core it cannot get. One diagnose(exact=True) call
# at d = 50 (test_diagnostics) took 12.6-26.6 s with two BLAS threads beside a running suite
# and 6.6-7.4 s with one. A value the caller set is kept. Set before NumPy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import jax  # noqa: E402
import pytest  # noqa: E402

from prompt_interrupt import before_forced_exit, install  # noqa: E402

# CLI tests must not write compiled code into the user's ~/.cache (the CLI enables the cache).
os.environ.setdefault("COLLAPSE_JAX_CACHE", "0")

# Follow diffrax/equinox: implicit rank promotion is a bug in library code.
jax.config.update("jax_numpy_rank_promotion", "raise")


# vm.max_map_count is 65,530 by default; stay well under it (one module adds a few thousand).
MAP_BUDGET = 30_000


def memory_maps():
    """Memory mappings of this process (Linux), or None where /proc cannot tell."""
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop every compiled executable after a test module once they map too much memory.

    XLA's CPU JIT maps memory for every executable it keeps; the whole suite in
    one process compiles thousands and would pass the kernel's limit of 65,530
    memory maps (vm.max_map_count), which aborts the process inside LLVM. Until
    MAP_BUDGET the compiled functions stay, so modules that run the same
    programs (the same ecosystems and tasks through ``simulate``) share them.
    """
    yield
    maps = memory_maps()
    if maps is None or maps > MAP_BUDGET:
        jax.clear_caches()
        gc.collect()


@pytest.fixture
def x64():
    """Run a test in float64, restoring the previous setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


LEFT_OUT = pytest.StashKey[int]()


def _waits_for_background(item):
    return hasattr(getattr(item, "module", None), "start_in_background")


def pytest_collection_modifyitems(config, items):
    """Run the tests that wait for a background job (pytest_collection_finish) last, so this process
    does its own work meanwhile; under the fast-compile flags, leave out the `default_compiler` tests
    (test_default_compiler.py runs them in a subprocess with the default flags)."""
    items.sort(key=_waits_for_background)  # stable: the order within each group stays
    if not FAST:
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("default_compiler") else keep).append(item)
    if not drop:
        return
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
    if not any(item.originalname == "test_default_compiler_tests_pass_with_the_default_flags" for item in keep):
        config.stash[LEFT_OUT] = len(drop)


def background_cpus() -> list:
    """The CPUs for background jobs: the upper half of this process's (on 2 cores, the second)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity here: every CPU
        cpus = list(range(os.cpu_count() or 1))
    return cpus[len(cpus) // 2:]


def pin_to_background_cpus(pid: int) -> None:
    """Confine a background job (and the processes it starts later) to :func:`background_cpus`.

    On a 2-core machine the jobs then share the second core instead of competing with
    this process on both. Its effect alone was not measured, nor whether XLA sizes its
    thread pools to the affinity mask.
    """
    try:
        os.sched_setaffinity(pid, background_cpus())
    except (AttributeError, OSError):  # no affinity here, or the job has already ended
        pass


def stop_at_exit(stop) -> None:
    """Call ``stop()`` when this process ends, normally (atexit) or forced by Ctrl-C's watcher
    (prompt_interrupt.py, whose ``os._exit`` skips atexit): a background job leaves no orphan."""
    atexit.register(stop)
    before_forced_exit(stop)


def pytest_collection_finish(session):
    """Start the selected tests' subprocess jobs (the default-flag tests, the notebooks) now.

    Each is one long subprocess that this process only waits for: started before
    the first test, they use the second core while this process runs the rest of
    the suite (the wall time falls by about their length on 2 cores). A test
    module offers such a job as ``start_in_background(item)``, called once per
    selected item of it; the item's test then waits for the result. Collecting
    only (``--collect-only``) starts nothing.
    """
    if session.config.option.collectonly:
        return
    for item in session.items:
        start = getattr(getattr(item, "module", None), "start_in_background", None)
        if start is not None:
            start(item)


def pytest_terminal_summary(terminalreporter, config):
    if config.stash.get(LEFT_OUT, 0):
        terminalreporter.write_line(
            f"{config.stash[LEFT_OUT]} default_compiler tests were left out (fast-compile flags); run them with "
            "COLLAPSE_JAX_TEST_FAST_COMPILE=0 or through tests/test_default_compiler.py", yellow=True)


def pytest_configure(config):
    # Ctrl-C must stop the run within seconds even while a test waits in XLA.
    install(config)
