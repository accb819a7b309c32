"""The parameter grid of a sweep: its expansion into points and each point's preparation.

Grid point ``p`` is the ``p``-th element of the Cartesian product of the
grid's value lists (last parameter fastest). :func:`prepare` calls the user's
``build`` at every point and returns :class:`Point` records holding the
ecosystem, task and simulate options, the *static signature* (what a compiled
chunk function depends on) and a *fingerprint* (a hash of every array, for
resuming safely).

This module is also the study's one door to the engine: the two imports
below bring every engine name the study uses (``sweep`` takes ``as_key``,
``simulate_replicate``, ``map_replicates`` and the batch-size rule from here), so that moving the
engine means editing them only.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np

# The engine API of the whole study package (sweep.py re-imports as_key, simulate_replicate, map_replicates,
# default_batch_size).
from collapse_jax.engine import Config, as_key, make_config, simulate_replicate
from collapse_jax.engine.simulate import default_batch_size, map_replicates

__all__ = ["SIMULATE_OPTIONS", "RESERVED", "Point", "is_int", "expand_grid", "check_build", "prepare",
           "Config", "as_key", "make_config", "simulate_replicate", "map_replicates", "default_batch_size"]

#: Options ``build`` may return for :func:`collapse_jax.simulate` (the sweep sets replicates and batching).
SIMULATE_OPTIONS = ("generations", "regime", "pool", "loss_scale", "engine")
#: Names of result dimensions, which a grid parameter may not take.
RESERVED = ("generation", "model", "quantile", "bin", "replicate")


class Point(NamedTuple):
    index: int
    labels: dict
    eco: Any
    task: Any
    cfg: Config
    signature: Any
    fingerprint: str


def is_int(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, np.integer))


def expand_grid(grid):
    """Validate the grid; return (names, value tuples, list of point label dicts)."""
    if not isinstance(grid, Mapping):
        raise ValueError(f"grid must be a dict of value lists, got {type(grid).__name__}")
    names, values = tuple(grid), []
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"grid: parameter name {name!r} must be a Python identifier")
        if name in RESERVED:
            raise ValueError(f"grid: parameter name {name!r} is reserved for a result dimension")
        vals = grid[name]
        if isinstance(vals, (str, bytes)) or not isinstance(vals, (Sequence, np.ndarray)):
            raise ValueError(f"grid[{name!r}] must be a list of values, got {vals!r}")
        clean = []
        for v in vals:
            if isinstance(v, np.generic):
                v = v.item()
            if not isinstance(v, (bool, int, float, str)):
                raise ValueError(f"grid[{name!r}]: value {v!r} is not a scalar label (int, float, str, bool); "
                                 "grid over labels and map them to objects in build")
            clean.append(v)
        if not clean:
            raise ValueError(f"grid[{name!r}] is empty")
        if len({(type(v), v) for v in clean}) != len(clean):
            raise ValueError(f"grid[{name!r}] has duplicate values: {clean}")
        values.append(tuple(clean))
    points = [dict(zip(names, combo)) for combo in itertools.product(*values)]
    return names, tuple(values), points


def check_build(build: Callable, names: Sequence[str]) -> None:
    """``ValueError`` unless ``build`` accepts every grid parameter by keyword and needs no other.

    Checked on ``build``'s signature where Python can read it (not for some
    builtins and C callables), so that a mismatch is named before any call.
    """
    if not callable(build):
        raise ValueError(f"build must be callable, got {build!r}")
    try:
        sig = inspect.signature(build)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    kinds = {p.kind for p in params.values()}
    if inspect.Parameter.VAR_KEYWORD not in kinds:
        named = [n for n, p in params.items()
                 if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        unknown = [n for n in names if n not in named]
        if unknown:
            raise ValueError(f"grid parameter {unknown[0]!r} is not a keyword argument of build"
                             f"{sig} (the sweep calls build(**point)); rename it or add it to build")
    needed = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in names
              and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY,
                             inspect.Parameter.POSITIONAL_ONLY)]
    if needed:
        raise ValueError(f"build{sig} needs the argument {needed[0]!r}, which is not a grid parameter "
                         f"(grid: {list(names)}); add it to the grid or give it a default")


def prepare(build: Callable, points) -> list:
    """Call ``build`` at every point; validate; compute static signatures and fingerprints."""
    out = []
    for p, labels in enumerate(points):
        built = build(**labels)
        if not (isinstance(built, tuple) and len(built) == 3):
            raise ValueError(f"grid point {labels}: build must return (eco, task, simulate_kwargs), got {built!r}")
        eco, task, kwargs = built
        kwargs = dict(kwargs or {})
        extra = sorted(set(kwargs) - set(SIMULATE_OPTIONS))
        if extra:
            raise ValueError(f"grid point {labels}: simulate_kwargs {extra} are not allowed "
                             f"(the sweep sets replicates and batching); allowed: {SIMULATE_OPTIONS}")
        if "generations" not in kwargs:
            raise ValueError(f"grid point {labels}: simulate_kwargs must set 'generations'")
        try:
            cfg = make_config(eco, task, kwargs["generations"], kwargs.get("regime", "replace"),
                              kwargs.get("pool", "independent"), kwargs.get("loss_scale", "mean"),
                              kwargs.get("engine", "auto"))
        except ValueError as e:
            raise ValueError(f"grid point {labels}: {e}") from None
        leaves, treedef = jax.tree_util.tree_flatten((eco, task))
        arrays = [np.asarray(x) for x in leaves]
        signature = (treedef, tuple((a.shape, str(a.dtype)) for a in arrays), cfg)
        h = hashlib.sha256(repr((str(treedef), tuple(cfg))).encode())
        for a in arrays:
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        out.append(Point(p, labels, eco, task, cfg, signature, h.hexdigest()))
    return out
