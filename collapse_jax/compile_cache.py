"""Opt-in persistent XLA compilation cache (a user cache directory, never turned on by import).

A fresh process spends most of its time to the first result compiling (the
standard study of DESIGN.md: about 7 s of XLA compile on a 2-core CPU). JAX
can keep compiled executables on disk and reload them in later processes;
:func:`enable` turns that on for the running process, :func:`disable` undoes
it. The library never calls them itself: importing ``collapse_jax`` changes
no JAX setting. The command-line tool calls :func:`enable` at startup.

Where the cache lives (first that applies):

1. the ``path`` given to :func:`enable`;
2. ``$COLLAPSE_JAX_CACHE_DIR``;
3. ``$XDG_CACHE_HOME/collapse_jax/xla``;
4. ``~/.cache/collapse_jax/xla``.

``COLLAPSE_JAX_CACHE=0`` (or ``false``, ``no``, ``off``) makes ``enable()``
without a path do nothing. The cache is safe to delete at any time. As JAX
warns, a compilation cache is trusted code: do not point it at a directory
others can write to.

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
from typing import Iterator, Optional

import jax
from jax.experimental.compilation_cache import compilation_cache as _jax_cache

__all__ = ["default_path", "disable", "enable", "enabled"]

ENV_DIR = "COLLAPSE_JAX_CACHE_DIR"
ENV_SWITCH = "COLLAPSE_JAX_CACHE"
_OFF = ("0", "false", "no", "off")
# The JAX options enable() sets (names as in jax.config.values, JAX 0.4.2x to 0.10).
_DIR = "jax_compilation_cache_dir"
_MIN_TIME = "jax_persistent_cache_min_compile_time_secs"

# Values before each enable(), so that disable() restores them (a stack: enable/disable nest).
_previous: list[dict] = []


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
    _previous.append({name: jax.config.values[name] for name in settings})
    for name, value in settings.items():
        jax.config.update(name, value)
    # JAX opens its cache once per process: reopen it so that a cache already opened elsewhere is replaced.
    _jax_cache.reset_cache()
    return settings


def disable() -> dict:
    """Undo the latest :func:`enable`: restore the options it changed; returns the restored values.

    Does nothing (returns ``{}``) when no ``enable()`` is pending. Files
    already in the cache directory stay there.
    """
    if not _previous:
        return {}
    previous = _previous.pop()
    for name, value in previous.items():
        jax.config.update(name, value)
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
