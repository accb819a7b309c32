"""Persistent XLA compilation cache: on by default around the library's own compiles, scoped.

A fresh process spends most of its time to the first result compiling (the
standard study of DESIGN.md: 7-25 s of XLA compile on a 2-core CPU). JAX
can keep compiled executables on disk and reload them in later processes.
:func:`collapse_jax.simulate` and the command-line tool compile inside
:func:`scoped`, which turns JAX's persistent cache on in the user cache
directory below for the duration of the call and restores every JAX option
it touched when the call returns: importing ``collapse_jax`` changes no JAX
setting, and neither does calling it. When you have set your own
``jax_compilation_cache_dir`` (or ``jax_enable_compilation_cache=False``),
the library uses your setting and changes nothing. :func:`enable` and
:func:`disable` turn the cache on and off for the whole process.

Where the cache lives (first that applies):

1. the ``path`` given to :func:`enable`;
2. ``$COLLAPSE_JAX_CACHE_DIR``;
3. ``$XDG_CACHE_HOME/collapse_jax/xla``;
4. ``~/.cache/collapse_jax/xla``.

``COLLAPSE_JAX_CACHE=0`` (or ``false``, ``no``, ``off``) turns the default
cache off: :func:`scoped` and ``enable()`` without a path then do nothing.
The cache is safe to delete at any time. As JAX warns, a compilation cache is
trusted code: do not point it at a directory others can write to.

Example:
    >>> from collapse_jax import compile_cache
    >>> settings = compile_cache.enable("/tmp/cj-doc-cache")
    >>> settings["jax_compilation_cache_dir"]
    '/tmp/cj-doc-cache'
    >>> restored = compile_cache.disable()
    >>> with compile_cache.enabled() as settings:  # what the CLI does; {} under COLLAPSE_JAX_CACHE=0
    ...     pass
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator, Optional

import jax
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

__all__ = ["default_path", "disable", "enable", "enabled", "scoped"]

ENV_DIR = "COLLAPSE_JAX_CACHE_DIR"
ENV_SWITCH = "COLLAPSE_JAX_CACHE"
_OFF = ("0", "false", "no", "off")
# The JAX options enable() sets (names as in jax.config.values, JAX 0.4.2x to 0.10).
_DIR = "jax_compilation_cache_dir"
_MIN_TIME = "jax_persistent_cache_min_compile_time_secs"
# JAX sets this one itself, globally, the first time it opens a cache: restored too.
_MIN_SIZE = "jax_persistent_cache_min_entry_size_bytes"

# Values before each enable(), so that disable() restores them (a stack: enable/disable nest).
_previous: list[dict] = []

# scoped(): library calls inside it now, in all threads, and what the outermost one set (under _lock).
_lock = threading.Lock()
_depth = 0
_held: dict = {}


def default_path() -> Optional[str]:
    """The cache directory ``enable()`` would use, or None when ``COLLAPSE_JAX_CACHE`` turns it off."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in _OFF:
        return None
    path = os.environ.get(ENV_DIR)
    if path:
        return os.path.abspath(os.path.expanduser(path))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "collapse_jax", "xla")


def enable(path: Optional[str | os.PathLike] = None, min_compile_time_secs: float = 0.0) -> dict:
    """Turn on JAX's persistent compilation cache in ``path`` (default: :func:`default_path`).

    Sets ``jax_compilation_cache_dir`` and
    ``jax_persistent_cache_min_compile_time_secs`` (compilations shorter than
    this are not written; JAX's default is 1 s, which would skip the many
    0.1-0.5 s compilations of a study) and creates the directory.

    Args:
        path: the cache directory; an explicit path is used even when
            ``COLLAPSE_JAX_CACHE=0``.
        min_compile_time_secs: the shortest compilation worth caching.

    Returns:
        The options it set, ``{name: value}``; ``{}`` when the environment
        turned the cache off (nothing was changed then).
    """
    path = default_path() if path is None else os.path.abspath(os.fspath(path))
    if path is None:
        return {}
    os.makedirs(path, exist_ok=True)
    settings = {_DIR: path, _MIN_TIME: float(min_compile_time_secs)}
    _previous.append(({name: jax.config.values[name] for name in settings}, jax.config.values[_MIN_SIZE]))
    for name, value in settings.items():
        jax.config.update(name, value)
    # JAX opens its cache once per process: reopen it so that a cache already opened elsewhere is replaced.
    _jax_cache.reset_cache()
    return settings


def disable() -> dict:
    """Undo the latest :func:`enable`: restore the options it changed; returns the restored values.

    Also restores ``jax_persistent_cache_min_entry_size_bytes``, which JAX
    sets globally when it opens a cache. Does nothing (returns ``{}``) when
    no ``enable()`` is pending. Files already in the cache directory stay there.
    """
    if not _previous:
        return {}
    previous, min_size = _previous.pop()
    for name, value in previous.items():
        jax.config.update(name, value)
    jax.config.update(_MIN_SIZE, min_size)
    _jax_cache.reset_cache()
    return previous


@contextlib.contextmanager
def enabled(path: Optional[str | os.PathLike] = None, min_compile_time_secs: float = 0.0) -> Iterator[dict]:
    """:func:`enable` for the duration of a ``with`` block (yields its settings), then :func:`disable`.

    Restores only what it set: when the environment turned the cache off
    (``{}``), an ``enable()`` pending outside the block is left alone.
    """
    settings = enable(path, min_compile_time_secs)
    try:
        yield settings
    finally:
        if settings:
            disable()


def _user_has_cache() -> bool:
    """Whether the process already decided about the persistent cache (its own directory, or off)."""
    return jax.config.values[_DIR] is not None or not jax.config.values["jax_enable_compilation_cache"]


@contextlib.contextmanager
def scoped() -> Iterator[dict]:
    """The default cache around one of the library's own calls: on inside, every JAX option restored after.

    Yields the options it set (``{}`` when it changed nothing): nothing when
    ``COLLAPSE_JAX_CACHE`` turns the cache off, nor when the process already
    has a cache directory of its own or has disabled JAX's cache (the user's,
    or an enclosing :func:`enabled`), which is then used as it is, nor inside
    another library call's scope.

    Threads: JAX's cache options are process-wide, so the scope is too. The
    first library call to enter turns the cache on, the last to leave
    restores the options (a count under a lock), so a call never has the
    options restored under it by another thread's call. While any library call
    is inside, another thread's own compiles (outside the library) also go to
    the library's cache; and :func:`enable`/:func:`disable` from another
    thread during a library call are not supported (they share one stack).
    Neither can change a result: the cache only stores compiled programs
    under JAX's own key.

    The decision (on or off, which directory) is taken anew by every outermost
    call, not once per process: the user may set or clear their own cache, or
    the environment variables, between calls, and a decision kept from an
    earlier call would override them. Entering and leaving costs 0.07-0.1 ms
    (2 cores, loaded), against seconds for a simulation.

    Example:
        >>> import jax
        >>> from collapse_jax import compile_cache
        >>> before = jax.config.values["jax_compilation_cache_dir"]
        >>> with compile_cache.scoped():
        ...     pass
        >>> jax.config.values["jax_compilation_cache_dir"] == before
        True
    """
    global _depth, _held
    settings = {}
    with _lock:
        if _depth == 0 and not _user_has_cache() and default_path() is not None:
            try:
                settings = _held = enable()
            except OSError:  # an unwritable cache directory must not stop a simulation
                pass
        _depth += 1
    try:
        yield settings
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _held:
                _held = {}
                disable()
