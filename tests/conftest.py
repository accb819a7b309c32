import gc
import os

# Most of the suite's time is XLA compiling small programs, and LLVM's optimizer is about 70%
# of each compile (engine program: 4.8 s -> 1.5 s at level 0). The tests compile with LLVM
# level 0: the HLO passes (fusion, layout, canonicalization) are those users get; float32
# results differ from the default build's by rounding (relative ~1e-5), and execution is
# 2-2.6x slower, which these small programs do not notice. test_simulate checks the
# bit-identity promises again in a process at the default level. Set the flag in XLA_FLAGS
# yourself to choose another level. Set before JAX starts its backend; subprocesses
# (the CLI, notebook kernels) inherit it.
OPT_FLAG = "--xla_backend_optimization_level"
if OPT_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {OPT_FLAG}=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

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


def pytest_configure(config):
    # Ctrl-C must stop the run within seconds even while a test waits in XLA.
    from prompt_interrupt import install

    install(config)
