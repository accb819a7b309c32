"""collapse_jax.compile_cache: opt-in, reversible, honours its environment variables.

Whether a warm cache speeds up a fresh process is measured, not asserted (see
the module docstring); here only that compiled executables land in the directory.
"""

import os

import jax
import jax.numpy as jnp
import pytest

import collapse_jax  # noqa: F401  (importing the library must not turn the cache on)
from collapse_jax import compile_cache

NAMES = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")


def _values():
    return {name: jax.config.values[name] for name in NAMES}


def test_import_changes_nothing_and_enable_disable_restore(tmp_path, monkeypatch):
    monkeypatch.delenv("COLLAPSE_JAX_CACHE", raising=False)
    before = _values()
    assert before["jax_compilation_cache_dir"] is None  # nothing set by `import collapse_jax`
    outer = compile_cache.enable(tmp_path / "a", min_compile_time_secs=0.5)
    assert outer == {"jax_compilation_cache_dir": str(tmp_path / "a"),
                     "jax_persistent_cache_min_compile_time_secs": 0.5}
    assert _values() == outer and (tmp_path / "a").is_dir()
    inner = compile_cache.enable(tmp_path / "b")
    assert _values() == inner
    assert compile_cache.disable() == outer
    assert _values() == outer
    assert compile_cache.disable() == before
    assert _values() == before
    assert compile_cache.disable() == {}  # nothing pending


def test_default_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("COLLAPSE_JAX_CACHE", raising=False)
    monkeypatch.delenv("COLLAPSE_JAX_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_path() == str(tmp_path / "xdg" / "collapse_jax" / "xla")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compile_cache.default_path() == str(tmp_path / "home" / ".cache" / "collapse_jax" / "xla")
    monkeypatch.setenv("COLLAPSE_JAX_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache.default_path() == str(tmp_path / "mine")
    before = _values()
    try:
        assert compile_cache.enable()["jax_compilation_cache_dir"] == str(tmp_path / "mine")
    finally:
        compile_cache.disable()
    assert _values() == before


@pytest.mark.parametrize("off", ["0", "false", "OFF"])
def test_environment_switch_turns_default_off(tmp_path, monkeypatch, off):
    monkeypatch.setenv("COLLAPSE_JAX_CACHE", off)
    monkeypatch.setenv("COLLAPSE_JAX_CACHE_DIR", str(tmp_path / "mine"))
    before = _values()
    assert compile_cache.default_path() is None
    assert compile_cache.enable() == {}
    assert _values() == before and not (tmp_path / "mine").exists()
    assert compile_cache.disable() == {}
    # an explicit path is still honoured
    try:
        assert compile_cache.enable(tmp_path / "explicit")["jax_compilation_cache_dir"] == str(tmp_path / "explicit")
    finally:
        compile_cache.disable()


def test_compiled_executables_are_written(tmp_path):
    compile_cache.enable(tmp_path)
    try:
        f = jax.jit(lambda x: jnp.cumsum(jnp.sin(x) * 3.25) - 0.125)  # a computation no other test compiles
        f(jnp.arange(37.0)).block_until_ready()
    finally:
        compile_cache.disable()
    assert any(os.scandir(tmp_path))


def test_enabled_context_restores_only_what_it_set(tmp_path, monkeypatch):
    before = _values()
    monkeypatch.delenv("COLLAPSE_JAX_CACHE", raising=False)
    with compile_cache.enabled(tmp_path) as settings:
        assert _values() == settings
    assert _values() == before
    outer = compile_cache.enable(tmp_path / "outer")
    try:
        monkeypatch.setenv("COLLAPSE_JAX_CACHE", "0")
        with compile_cache.enabled() as settings:
            assert settings == {} and _values() == outer
        assert _values() == outer  # the pending outer enable() survives
    finally:
        compile_cache.disable()
    assert _values() == before


ALL = NAMES + ("jax_persistent_cache_min_entry_size_bytes", "jax_enable_compilation_cache")


def _all_values():
    return {name: jax.config.values[name] for name in ALL}


def _tiny_simulate(dim):
    # a task dimension no other test uses, so that this call compiles (and may write the cache)
    eco = collapse_jax.graphs.chain(2, n=9, m=9)
    return collapse_jax.simulate(eco, collapse_jax.LinearRegression(dim=dim), jax.random.key(0),
                                 generations=2, replicates=3)


def test_simulate_uses_the_default_cache_and_restores_every_option(tmp_path, monkeypatch):
    monkeypatch.delenv("COLLAPSE_JAX_CACHE", raising=False)
    monkeypatch.setenv("COLLAPSE_JAX_CACHE_DIR", str(tmp_path / "cache"))
    before = _all_values()
    assert before["jax_compilation_cache_dir"] is None
    _tiny_simulate(dim=7)
    assert _all_values() == before  # on only for the call
    assert any(os.scandir(tmp_path / "cache"))  # the engine's executables were written there
    # the user's own compiles after the call do not go to the library's cache
    n = len(os.listdir(tmp_path / "cache"))
    jax.jit(lambda x: jnp.tanh(x) * 2.75 + 0.5)(jnp.arange(11.0)).block_until_ready()
    assert len(os.listdir(tmp_path / "cache")) == n


def test_simulate_respects_the_switch_and_the_users_own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAPSE_JAX_CACHE_DIR", str(tmp_path / "library"))
    monkeypatch.setenv("COLLAPSE_JAX_CACHE", "0")
    before = _all_values()
    _tiny_simulate(dim=6)
    assert _all_values() == before and not (tmp_path / "library").exists()
    monkeypatch.delenv("COLLAPSE_JAX_CACHE")
    compile_cache.enable(tmp_path / "users")  # stands for the user's own jax_compilation_cache_dir
    try:
        mine = _all_values()
        _tiny_simulate(dim=5)
        assert _all_values() == mine
    finally:
        compile_cache.disable()
    assert any(os.scandir(tmp_path / "users")) and not (tmp_path / "library").exists()
    assert _all_values() == before


def test_scoped_counts_overlapping_calls_and_restores_after_the_last(tmp_path, monkeypatch):
    # Two library calls overlapping in two threads: the first to leave must not restore the options
    # under the other (which may still be compiling); the last to leave restores them all.
    import threading

    monkeypatch.delenv("COLLAPSE_JAX_CACHE", raising=False)
    monkeypatch.setenv("COLLAPSE_JAX_CACHE_DIR", str(tmp_path / "cache"))
    before = _all_values()
    entered, release_a, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with compile_cache.scoped() as settings:
            seen["a"] = settings
            entered.set()
            release_a.wait(10)
        a_left.set()

    t = threading.Thread(target=a)
    t.start()
    assert entered.wait(10)
    with compile_cache.scoped() as settings:
        seen["b"] = settings  # inside another call's scope: sets nothing itself
        release_a.set()
        assert a_left.wait(10)
        assert jax.config.values["jax_compilation_cache_dir"] == str(tmp_path / "cache")  # still on for b
        with compile_cache.scoped() as nested:
            assert nested == {}
        assert jax.config.values["jax_compilation_cache_dir"] == str(tmp_path / "cache")
    t.join(10)
    assert seen["a"]["jax_compilation_cache_dir"] == str(tmp_path / "cache") and seen["b"] == {}
    assert _all_values() == before
    assert compile_cache._depth == 0 and compile_cache._held == {} and compile_cache._previous == []


def test_scoped_restores_after_an_exception_and_decides_anew_each_call(tmp_path, monkeypatch):
    monkeypatch.delenv("COLLAPSE_JAX_CACHE", raising=False)
    monkeypatch.setenv("COLLAPSE_JAX_CACHE_DIR", str(tmp_path / "one"))
    before = _all_values()
    with pytest.raises(RuntimeError):
        with compile_cache.scoped() as settings:
            assert settings["jax_compilation_cache_dir"] == str(tmp_path / "one")
            raise RuntimeError
    assert _all_values() == before and compile_cache._depth == 0
    monkeypatch.setenv("COLLAPSE_JAX_CACHE_DIR", str(tmp_path / "two"))  # not a decision kept from the first call
    with compile_cache.scoped() as settings:
        assert settings["jax_compilation_cache_dir"] == str(tmp_path / "two")
    monkeypatch.setenv("COLLAPSE_JAX_CACHE", "0")
    with compile_cache.scoped() as settings:
        assert settings == {} and _all_values() == before
    assert _all_values() == before
