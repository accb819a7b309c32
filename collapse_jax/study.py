"""Monte Carlo studies at scale: parameter grids x replicates, chunked, sharded, resumable.

:func:`sweep` runs ``replicates`` independent histories of the ecosystem at
every point of a parameter grid and keeps streaming summaries per grid point,
generation and model, so that 10^7 replicates never sit in memory.

Keys. Grid point ``p`` (its index in the Cartesian product, last parameter
fastest) uses ``key_p = fold_in(key, p)``; replicate ``i`` uses
``fold_in(key_p, i)``, exactly as :func:`collapse_jax.simulate` does. So point
``p`` of a sweep reproduces ``cj.simulate(eco, task, key_p, ...)`` replicate
for replicate, and no result depends on how replicates are split.

Chunks and blocks. Replicates run ``chunk`` at a time (the unit of memory, of
work per call and of checkpointing). Inside a chunk they are grouped in
aligned *blocks* of ``block`` replicates (a power of two; ``chunk`` must be a
multiple of it). Each block's count, mean and sum of squared deviations are
computed on the device by a fixed pairwise tree (two passes: the mean, then
the squared deviations, each scaled by an exact power of two so that errors
near float32's limit do not overflow the sums); blocks are merged on the host, in float64, with
Chan, Golub and LeVeque's pairwise update, along a *canonical* binary tree over
block indices: a chunk stores the maximal aligned dyadic groups of its blocks,
and the final merge joins sibling groups bottom-up and folds what is left from
left to right. The tree depends only on the block indices, so every summary is
bit-identical for any chunk size (with the same ``block``), any number of
devices and any order in which chunks finish. Histograms, minima, maxima and
counts are exact integers or order-free, and quantiles are read off the
histograms (linear interpolation inside a bin: accurate to a bin width).

What a summary means. ``mean``, ``var`` (unbiased) and ``sem`` are over all
replicates; where any replicate's error overflowed (the engine reports it as
``inf``) they are ``inf`` (for the metrics, whose non-finite values can be
NaN, they are NaN), and ``nonfinite`` counts those replicates. ``count`` is the
number of finite replicates, ``min``/``max`` their extremes.

Devices. Every chunk is split over the given devices (default: every local
device) with ``jax.shard_map`` on a one-axis ``Mesh``; each device simulates
its contiguous share of the chunk's replicates, computes its blocks' summaries
and its partial histogram, which a ``psum`` (integers: exact) combines. The
chunk is padded to a multiple of ``block * devices``; padded replicates are
simulated and discarded, so pick ``chunk`` a multiple of ``block * devices``.

Hosts. After ``jax.distributed.initialize()``, process ``i`` of ``P`` runs
chunks ``i, i + P, i + 2P, ...`` of the (signature, point, chunk) task list on
its own local devices (no cross-host communication is needed until the end),
writes each finished chunk to ``path`` on a shared file system, waits at a
barrier (``multihost_utils.sync_global_devices``) and then every process reads
all chunks and returns the same result. Runnable recipe, on each of two hosts
(or two shells of one machine)::

    # sweep_job.py
    import sys, jax
    jax.distributed.initialize(coordinator_address="host0:12345",
                               num_processes=2, process_id=int(sys.argv[1]))
    import collapse_jax as cj
    study = cj.sweep(build, grid, jax.random.key(0), replicates=10**6,
                     chunk=2**14, path="/shared/ring_sweep")

    $ python sweep_job.py 0      # on host 0
    $ python sweep_job.py 1      # on host 1

Without ``jax.distributed`` (e.g. a batch-system array job), pass
``process_index=i, process_count=P`` explicitly: each job runs its share and
returns None while chunks are missing; :func:`load_sweep` (or the same
``sweep`` call once every share is done) assembles the result.

Resume. With ``path``, the sweep writes ``path/manifest.json`` (the grid, the
key, replicates, chunk, block, bins, the package versions, a fingerprint of
every point's ecosystem, task and options, and a hash of all that) and then
every finished chunk to ``path/chunks/`` atomically (a temporary file, fsync,
``os.replace``). Calling the sweep again with the same ``path`` recomputes
only missing chunks; a different configuration at the same path raises
``ValueError`` naming what differs. A newer JAX or collapse_jax is a different
configuration (random streams may change between versions).

Recompiles. Grid values that change static structure (K, the topology,
sample sizes, ``dim``, ``generations`` or any simulate option) give a new
*static signature* and compile once each; values that only change weights,
alpha, noise, thetas or covariances reuse the compiled chunk function. Points
are run grouped by signature, so each signature compiles once per process
(``result.dataset.attrs["signatures"]`` says how many there were). A new
``chunk``, ``block``, number of devices, number of bins or ``trajectories``
also compiles anew.

Example:
    >>> import jax, collapse_jax as cj
    >>> def build(K, alpha):
    ...     eco = cj.graphs.ring(K, alpha=alpha, n=50, m=50)
    ...     return eco, cj.LinearRegression(dim=5), dict(generations=20)
    >>> study = cj.sweep(build, {"K": [3, 6], "alpha": [0.2, 0.8]}, jax.random.key(0),
    ...                  replicates=256, chunk=128, progress=False)
    >>> study.dataset["mean"].dims
    ('K', 'alpha', 'generation', 'model')
    >>> df = study.to_dataframe()   # one row per (K, alpha, generation, model)
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import tempfile
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from collapse_jax.engine import Config, as_key, make_config, simulate_replicate

__all__ = ["sweep", "load_sweep", "SweepResult", "DEFAULT_BINS", "DEFAULT_QUANTILES", "SIMULATE_OPTIONS"]

#: Options ``build`` may return for :func:`collapse_jax.simulate` (the sweep sets replicates and batching).
SIMULATE_OPTIONS = ("generations", "regime", "pool", "loss_scale", "engine")
#: Histogram edges of the error: 8 per decade from 1e-6 to 1e6 (plus an under- and an overflow bin).
DEFAULT_BINS = np.geomspace(1e-6, 1e6, 97)
DEFAULT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
SERIES = ("error", "dispersion", "cosine")  # the engine's per-replicate outputs (simulate.Trace)
_RESERVED = ("generation", "model", "quantile", "bin", "replicate")
_AXIS = "replicates"
_FORMAT = 1


# ===================================================================== device
def _pairwise_sum(x):
    """Sum over axis 1 (a power of two long) by a fixed pairwise tree: same bits on any device."""
    while x.shape[1] > 1:
        x = x[:, 0::2] + x[:, 1::2]
    return x[:, 0]


def _scaled_sum(v):
    """Pairwise sum over axis 1, scaled by a power of two so that it cannot overflow.

    Returns ``(s, e)`` with sum = ``s * 2**e``; ``|s| <= len(axis 1)``. Scaling by
    ``2**-e`` is exact, so below overflow the bits are those of the plain sum.
    """
    _, e = jnp.frexp(jnp.max(jnp.abs(v), axis=1))
    return _pairwise_sum(jnp.ldexp(v, -e[:, None])), e


def _block_stats(x, valid, block):
    """Per aligned block of ``block`` replicates: finite count, mean, sum of squared deviations.

    ``x`` is ``(c, ...)``, ``valid`` ``(c,)``. Returns ``(n, mean, q, e)``, arrays
    ``(c // block, ...)``, with the sum of squared deviations ``M2 = q * 4**e``
    (assembled in float64 on the host: near float32's limit M2 is not a float32).
    """
    c = x.shape[0]
    xb = x.reshape((c // block, block) + x.shape[1:])
    mask = valid.reshape((c // block, block) + (1,) * (x.ndim - 1)) & jnp.isfinite(xb)
    n = jnp.sum(mask, axis=1, dtype=jnp.int32)
    total, e = _scaled_sum(jnp.where(mask, xb, 0))
    mean = jnp.ldexp(total / jnp.maximum(n, 1).astype(x.dtype), e)
    dev = jnp.where(mask, xb - mean[:, None], 0)
    _, e2 = jnp.frexp(jnp.max(jnp.abs(dev), axis=1))
    dev = jnp.ldexp(dev, -e2[:, None])
    # The barrier keeps XLA from contracting the square into the first add of the
    # tree (an FMA), which could differ between compilations for different chunks.
    q = _pairwise_sum(jax.lax.optimization_barrier(dev * dev))
    return n, mean, q, e2


def _extremes(x, valid):
    """Order-free per-cell aggregates over this device's replicates: non-finite count, min, max."""
    v = valid.reshape((-1,) + (1,) * (x.ndim - 1))
    finite = jnp.isfinite(x)
    nonfinite = jax.lax.psum(jnp.sum(v & ~finite, axis=0, dtype=jnp.int32), _AXIS)
    lo = jax.lax.pmin(jnp.min(jnp.where(v & finite, x, jnp.inf), axis=0), _AXIS)
    hi = jax.lax.pmax(jnp.max(jnp.where(v & finite, x, -jnp.inf), axis=0), _AXIS)
    return nonfinite, lo, hi


def _histogram(x, valid, edges):
    """Counts ``(T + 1, K, len(edges) + 1)`` of finite values: underflow, the bins, overflow."""
    nbin = edges.shape[0] + 1
    _, T1, K = x.shape
    idx = jnp.searchsorted(edges.astype(x.dtype), x, side="right")
    ok = valid.reshape(-1, 1, 1) & jnp.isfinite(x)
    cell = jnp.arange(T1 * K, dtype=jnp.int32).reshape(1, T1, K)
    flat = (cell * nbin + idx.astype(jnp.int32)).reshape(-1)
    counts = jnp.zeros(T1 * K * nbin, jnp.int32).at[flat].add(ok.reshape(-1).astype(jnp.int32))
    return jax.lax.psum(counts.reshape(T1, K, nbin), _AXIS)


def _chunk_impl(eco, task, key, start, end, edges, *, cfg: Config, size: int, block: int,
                mesh: Mesh, trajectories: bool):
    """Replicates ``start .. start + size - 1`` of one grid point, split over ``mesh``.

    Replicates at or past ``end`` are simulated but masked out of every summary.
    """
    local = size // mesh.size

    def shard(eco, task, key, start, end, edges):
        first = start + jax.lax.axis_index(_AXIS).astype(jnp.uint32) * np.uint32(local)
        ids = first + jnp.arange(local, dtype=jnp.uint32)
        trace = jax.vmap(lambda i: simulate_replicate(eco, task, jax.random.fold_in(key, i), cfg))(ids)
        valid = ids < end
        series = trace._asdict()
        blocks = {name: _block_stats(x, valid, block) for name, x in series.items()}
        extremes = {name: _extremes(x, valid) for name, x in series.items()}
        hist = _histogram(series["error"], valid, edges)
        return blocks, extremes, hist, (series if trajectories else None)

    return jax.shard_map(
        shard, mesh=mesh, in_specs=(P(), P(), P(), P(), P(), P()),
        out_specs=(P(_AXIS), P(), P(), P(_AXIS)),
    )(eco, task, key, start, end, edges)


_chunk_jit = jax.jit(_chunk_impl, static_argnames=("cfg", "size", "block", "mesh", "trajectories"))


# ======================================================================= host
def _merge(a, b):
    """Chan et al.'s pairwise merge of (count, mean, M2) triples, exact when either side is empty."""
    na, ma, qa = a
    nb, mb, qb = b
    n = na + nb
    with np.errstate(all="ignore"):
        nf = np.maximum(n, 1).astype(np.float64)
        delta = mb - ma
        mean = np.where(nb == 0, ma, np.where(na == 0, mb, ma + delta * (nb / nf)))
        m2 = np.where(nb == 0, qa, np.where(na == 0, qb, qa + qb + delta * delta * (na * (nb / nf))))
    return n, mean, m2


def _tree(stats):
    """Merge ``2**p`` consecutive blocks (leading axis) by the perfect pairwise tree."""
    while stats[0].shape[0] > 1:
        stats = _merge(tuple(s[0::2] for s in stats), tuple(s[1::2] for s in stats))
    return tuple(s[0] for s in stats)


def _dyadic(lo: int, hi: int):
    """The maximal aligned dyadic intervals covering ``[lo, hi)``: ``(level, index)`` pairs."""
    out = []
    while lo < hi:
        level = 0
        while lo % (2 << level) == 0 and lo + (2 << level) <= hi:
            level += 1
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def _chunk_record(blocks, extremes, hist, traj, first_block: int, nblocks: int, nvalid: int) -> dict:
    """Host-side record of one chunk: its dyadic groups of blocks and its order-free aggregates."""
    groups = _dyadic(first_block, first_block + nblocks)
    rec = {"level": np.asarray([g[0] for g in groups], np.int64),
           "index": np.asarray([g[1] for g in groups], np.int64),
           "hist": np.asarray(hist)}
    for name in SERIES:
        n, mean, q, e2 = (np.asarray(a)[:nblocks] for a in blocks[name])
        n, mean = n.astype(np.int64), mean.astype(np.float64)
        m2 = np.ldexp(q.astype(np.float64), 2 * e2.astype(np.int64))  # exact in float64
        parts = []
        for level, index in groups:
            s = (index << level) - first_block
            parts.append(_tree((n[s:s + (1 << level)], mean[s:s + (1 << level)], m2[s:s + (1 << level)])))
        for j, field in enumerate(("n", "mean", "m2")):
            rec[f"{name}_{field}"] = np.stack([p[j] for p in parts])
        for field, a in zip(("nonfinite", "min", "max"), extremes[name]):
            rec[f"{name}_{field}"] = np.asarray(a)
        if traj is not None:
            rec[f"{name}_trajectory"] = np.asarray(traj[name])[:nvalid]
    return rec


class _Accumulator:
    """Streaming merge of one grid point's chunk records, in bounded memory.

    Dyadic groups join their sibling as soon as both are present (a binary
    counter over block indices), so at most ~log2(blocks) groups are held;
    :meth:`result` folds what is left from left to right. The arithmetic is
    that of the canonical tree whatever the order in which chunks arrive.
    Trajectories, if kept, must arrive in chunk order.
    """

    def __init__(self, trajectories: bool):
        self.nodes = {name: {} for name in SERIES}
        self.totals = {}
        self.trajectories = {name: [] for name in SERIES} if trajectories else None

    def add(self, rec: dict) -> None:
        for name in SERIES:
            nodes = self.nodes[name]
            for i, (level, index) in enumerate(zip(rec["level"].tolist(), rec["index"].tolist())):
                stats = tuple(rec[f"{name}_{f}"][i] for f in ("n", "mean", "m2"))
                while (level, index ^ 1) in nodes:  # the sibling is here: merge, left before right
                    other = nodes.pop((level, index ^ 1))
                    stats = _merge(other, stats) if index & 1 else _merge(stats, other)
                    level, index = level + 1, index >> 1
                nodes[(level, index)] = stats
            if self.trajectories is not None:
                self.trajectories[name].append(rec[f"{name}_trajectory"])
        for field, combine in (("nonfinite", np.add), ("min", np.minimum), ("max", np.maximum)):
            for name in SERIES:
                k = f"{name}_{field}"
                v = rec[k].astype(np.int64 if field == "nonfinite" else np.float64)
                self.totals[k] = v if k not in self.totals else combine(self.totals[k], v)
        h = rec["hist"].astype(np.int64)
        self.totals["hist"] = h if "hist" not in self.totals else self.totals["hist"] + h

    def result(self) -> dict:
        out = dict(self.totals)
        for name in SERIES:
            nodes = self.nodes[name]
            ordered = [nodes[k] for k in sorted(nodes, key=lambda k: k[1] << k[0])]
            acc = ordered[0]
            for node in ordered[1:]:
                acc = _merge(acc, node)
            out[f"{name}_n"], out[f"{name}_mean"], out[f"{name}_m2"] = acc
            if self.trajectories is not None:
                out[f"{name}_trajectory"] = np.concatenate(self.trajectories[name])
        return out


def _quantiles(hist, nonfinite, lo, hi, edges, qs):
    """Quantiles from a histogram with under/overflow bins, non-finite values on top.

    The value at rank ``q * N`` is interpolated linearly inside its bin, whose
    outer bins are closed by the observed minimum and maximum. ``hist`` is
    ``(..., nbin)``; returns ``(..., len(qs))``.
    """
    edges = np.asarray(edges, np.float64)
    total = hist.sum(-1) + nonfinite
    cum = np.cumsum(hist, -1)
    lower = np.concatenate([[-np.inf], edges])
    upper = np.concatenate([edges, [np.inf]])
    out = np.full(hist.shape[:-1] + (len(qs),), np.nan)
    with np.errstate(all="ignore"):
        for j, q in enumerate(qs):
            rank = q * total
            b = np.minimum(np.argmax(cum >= rank[..., None], axis=-1), hist.shape[-1] - 1)
            before = np.take_along_axis(cum, b[..., None], -1)[..., 0] - np.take_along_axis(hist, b[..., None], -1)[..., 0]
            count = np.take_along_axis(hist, b[..., None], -1)[..., 0]
            a = np.maximum(lower[b], lo)
            z = np.minimum(upper[b], hi)
            frac = np.clip((rank - before) / np.maximum(count, 1), 0.0, 1.0)
            val = a + frac * (z - a)
            val = np.where(rank > cum[..., -1], np.inf, val)  # inside the non-finite replicates
            out[..., j] = np.where(total > 0, val, np.nan)
    return out


# ====================================================================== sweep
class _Point(NamedTuple):
    index: int
    labels: dict
    eco: Any
    task: Any
    cfg: Config
    signature: Any
    fingerprint: str


def _is_int(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, np.integer))


def _expand_grid(grid):
    """Validate the grid; return (names, value tuples, list of point label dicts)."""
    if not isinstance(grid, Mapping):
        raise ValueError(f"grid must be a dict of value lists, got {type(grid).__name__}")
    names, values = tuple(grid), []
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"grid: parameter name {name!r} must be a Python identifier")
        if name in _RESERVED:
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


def _prepare(build: Callable, points) -> list:
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
        out.append(_Point(p, labels, eco, task, cfg, signature, h.hexdigest()))
    return out


def _optional(module: str):
    """Import an optional dependency of the study extra, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"collapse_jax.sweep needs {module.split('.')[0]}: "
                          "pip install 'collapse-jax[study]'") from None


def _versions() -> dict:
    import collapse_jax
    return {"jax": jax.__version__, "collapse_jax": collapse_jax.__version__}


def _atomic_write(path: str, write: Callable) -> None:
    """Write via ``write(fileobj)`` to a temporary file beside ``path``, fsync, then ``os.replace``."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _chunk_file(path: str, point: int, chunk: int) -> str:
    return os.path.join(path, "chunks", f"p{point:06d}-c{chunk:08d}.npz")


def _save_record(path: str, point: int, chunk: int, rec: dict, digest: str) -> None:
    _atomic_write(_chunk_file(path, point, chunk),
                  lambda f: np.savez_compressed(f, hash=np.asarray(digest), **rec))


def _load_record(path: str, point: int, chunk: int, digest: str) -> dict:
    file = _chunk_file(path, point, chunk)
    with np.load(file) as z:
        if str(z["hash"]) != digest:
            raise ValueError(f"{file} belongs to another sweep configuration (hash {str(z['hash'])[:12]}, "
                             f"expected {digest[:12]}); use another path or delete it")
        return {k: z[k] for k in z.files if k != "hash"}


def _open_manifest(path: str, manifest: dict) -> None:
    """Create ``path/manifest.json``, or check that the one there describes the same sweep."""
    os.makedirs(os.path.join(path, "chunks"), exist_ok=True)
    file = os.path.join(path, "manifest.json")
    if os.path.exists(file):
        with open(file) as f:
            old = json.load(f)
        if old.get("hash") != manifest["hash"]:
            diff = sorted(k for k in manifest["config"] if old.get("config", {}).get(k) != manifest["config"][k])
            detail = ", ".join(diff) or "format"
            if "points" in diff and old.get("config", {}).get("grid") == manifest["config"]["grid"]:
                pts = [i for i, (a, b) in enumerate(zip(old["config"]["points"], manifest["config"]["points"]))
                       if a != b]
                detail += f" (build returns a different ecosystem, task or options at points {pts[:5]})"
            raise ValueError(f"sweep path {path!r} holds a sweep with a different configuration: {detail} "
                             "differ. Use another path, or delete it to start over.")
        return
    _atomic_write(file, lambda f: f.write(json.dumps(manifest, indent=1).encode()))


def sweep(
    build: Callable[..., tuple],
    grid: Mapping[str, Sequence],
    key: jax.Array,
    replicates: int,
    chunk: int,
    path: Optional[str] = None,
    *,
    block: int = 16,
    bins: Sequence[float] = DEFAULT_BINS,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    trajectories: bool = False,
    devices: Optional[Sequence] = None,
    progress: bool = True,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
) -> Optional["SweepResult"]:
    """Simulate every point of a parameter grid with many replicates; streaming summaries.

    Args:
        build: ``build(**point) -> (eco, task, simulate_kwargs)`` for one grid
            point; ``simulate_kwargs`` sets ``generations`` and optionally
            ``regime``, ``pool``, ``loss_scale``, ``engine``.
        grid: ``{name: [values]}`` of scalar labels; the sweep runs their
            Cartesian product (last name fastest).
        key: a PRNG key (``jax.random.key``); point ``p`` uses
            ``fold_in(key, p)``, its replicate ``i`` ``fold_in(fold_in(key, p), i)``.
        replicates: replicates R per grid point.
        chunk: replicates per device call and per checkpoint; a multiple of
            ``block`` (capped at R rounded up to ``block``). Memory scales
            with ``chunk``; results do not depend on it.
        path: a folder for the manifest, the finished chunks and
            ``result.nc``; with it a sweep resumes where it stopped. None keeps
            everything in memory.
        block: replicates per summary block, a power of two (module docstring).
        bins: increasing histogram edges of the error; quantiles come from
            the histogram.
        quantiles: probabilities in [0, 1] reported per point, generation, model.
        trajectories: also keep every replicate's trajectory (memory and disk
            grow with R).
        devices: devices to shard each chunk over (default ``jax.local_devices()``).
        progress: show a tqdm bar with an ETA over chunks.
        process_index, process_count: this process's share of the chunks
            (default ``jax.process_index()``, ``jax.process_count()``).

    Returns:
        A :class:`SweepResult`, or None when this process ran its explicit
        share and other shares are still missing.

    Raises:
        ValueError: bad arguments (naming them), a bad grid point (naming its
            labels), or a different configuration already stored at ``path``.
    """
    names, values, labels = _expand_grid(grid)
    for name, v in (("replicates", replicates), ("chunk", chunk), ("block", block)):
        if not _is_int(v) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    if chunk % block:
        raise ValueError(f"chunk={chunk} must be a multiple of block={block} (summaries are merged over "
                         f"aligned blocks of {block} replicates so that they do not depend on the chunk size); "
                         f"use chunk={max(block, chunk // block * block)} or a smaller power-of-two block")
    edges = np.asarray(bins, np.float64)
    if edges.ndim != 1 or edges.size < 1 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError("bins must be a non-empty, finite, strictly increasing 1-d sequence of edges")
    qs = tuple(float(q) for q in quantiles)
    if any(not 0.0 <= q <= 1.0 for q in qs):
        raise ValueError(f"quantiles must lie in [0, 1], got {qs}")
    if replicates + chunk >= 2**32:
        raise ValueError(f"replicates={replicates} is too large: replicate ids are uint32 (as in simulate)")
    key = as_key(key)
    chunk = min(int(chunk), -(-int(replicates) // block) * block)
    n_chunks = -(-int(replicates) // chunk)
    if process_index is None and process_count is None:
        process_index, process_count = jax.process_index(), jax.process_count()
    elif not (_is_int(process_index) and _is_int(process_count) and 0 <= process_index < process_count):
        raise ValueError(f"process_index ({process_index!r}) must be in 0..process_count-1 ({process_count!r})")
    if process_count > 1 and path is None:
        raise ValueError("a sweep shared between processes needs path (a folder on a shared file system)")
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must not be empty")
    mesh = Mesh(np.asarray(devices), (_AXIS,))
    size = -(-chunk // (block * mesh.size)) * block * mesh.size  # padded: whole blocks per device
    if size != chunk and n_chunks > 1:
        warnings.warn(f"chunk={chunk} is not a multiple of block * devices = {block * mesh.size}: every call "
                      f"simulates {size} replicates and discards {size - chunk}", stacklevel=2)

    points = _prepare(build, labels)
    config = dict(
        format=_FORMAT, grid={n: list(v) for n, v in zip(names, values)},
        key=np.asarray(jax.random.key_data(key)).tolist(), key_impl=str(jax.random.key_impl(key)),
        replicates=int(replicates), chunk=chunk, block=block, bins=edges.tolist(),
        trajectories=bool(trajectories), x64=bool(jax.config.jax_enable_x64),
        versions=_versions(), points=[pt.fingerprint for pt in points],
    )
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    groups = {}
    for pt in points:
        groups.setdefault(pt.signature, []).append(pt)
    meta = dict(
        config=config, hash=digest, names=list(names), signatures=len(groups),
        models=[[str(m) for m in pt.eco.models] for pt in points],
        generations=[pt.cfg.generations for pt in points],
    )
    if path is not None:
        _open_manifest(path, meta)

    # Tasks grouped by signature, so that each signature compiles once per process.
    tasks = [(pt, c) for group in groups.values() for pt in group for c in range(n_chunks)]
    mine = tasks[process_index::process_count]
    accumulators = {}  # in memory (no path): point -> _Accumulator, fed in chunk order
    todo = [(pt, c) for pt, c in mine
            if path is None or not os.path.exists(_chunk_file(path, pt.index, c))]
    edges_dev = jnp.asarray(edges)
    if progress:
        bar = _optional("tqdm.auto").tqdm(total=len(mine), initial=len(mine) - len(todo), unit="chunk",
                                          desc="sweep", dynamic_ncols=True)
    else:
        bar = _Silent()

    def dispatch(pt, c):
        start = c * chunk
        end = min(start + chunk, int(replicates))
        out = _chunk_jit(pt.eco, pt.task, jax.random.fold_in(key, pt.index), np.uint32(start),
                         np.uint32(end), edges_dev, cfg=pt.cfg, size=size, block=block, mesh=mesh,
                         trajectories=bool(trajectories))
        return pt, c, start, end, out

    def finish(pt, c, start, end, out):
        rec = _chunk_record(*out, first_block=start // block, nblocks=-(-(end - start) // block),
                            nvalid=end - start)
        if path is None:
            accumulators.setdefault(pt.index, _Accumulator(trajectories)).add(rec)
        else:
            _save_record(path, pt.index, c, rec, digest)
        bar.update(1)

    pending = None
    try:
        for pt, c in todo:  # dispatch the next chunk before reading back the last (async dispatch)
            nxt = dispatch(pt, c)
            if pending is not None:
                finish(*pending)
            pending = nxt
        if pending is not None:
            finish(*pending)
    finally:
        bar.close()

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"collapse_jax.sweep:{digest[:16]}")
    if path is not None:
        missing = [(p, c) for p in range(len(points)) for c in range(n_chunks)
                   if not os.path.exists(_chunk_file(path, p, c))]
        if missing:
            return None
        result = _assemble(meta, lambda p: _point_from_disk(path, p, n_chunks, digest, trajectories), qs, path)
        if jax.process_count() == 1 or jax.process_index() == 0:
            result.save(os.path.join(path, "result.nc"))
        return result
    return _assemble(meta, lambda p: accumulators[p].result(), qs, None)


class _Silent:
    """Stands in for the progress bar when ``progress=False`` (tqdm not needed)."""

    def update(self, n=1):
        pass

    def close(self):
        pass


def _point_from_disk(path: str, point: int, n_chunks: int, digest: str, trajectories: bool) -> dict:
    acc = _Accumulator(trajectories)
    for c in range(n_chunks):
        acc.add(_load_record(path, point, c, digest))
    return acc.result()


def load_sweep(path: str, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> "SweepResult":
    """Assemble a finished sweep from its folder (e.g. after array jobs ran every share).

    Raises:
        ValueError: when the folder has no manifest or chunks are missing.
    """
    file = os.path.join(path, "manifest.json")
    if not os.path.exists(file):
        raise ValueError(f"{path!r} holds no sweep (no manifest.json)")
    with open(file) as f:
        meta = json.load(f)
    cfg = meta["config"]
    n_chunks = -(-cfg["replicates"] // cfg["chunk"])
    missing = [(p, c) for p in range(len(cfg["points"])) for c in range(n_chunks)
               if not os.path.exists(_chunk_file(path, p, c))]
    if missing:
        raise ValueError(f"sweep at {path!r} is unfinished: {len(missing)} chunks missing, "
                         f"first (point, chunk) = {missing[0]}")
    return _assemble(meta, lambda p: _point_from_disk(path, p, n_chunks, meta["hash"], cfg["trajectories"]),
                     tuple(float(q) for q in quantiles), path)


# ==================================================================== results
def _assemble(meta: dict, point_stats: Callable[[int], dict], qs, path) -> "SweepResult":
    """Labelled arrays from every point's merged statistics (``point_stats(p)``, one point at a time)."""
    xr = _optional("xarray")

    cfg = meta["config"]
    names = meta["names"]
    values = [cfg["grid"][n] for n in names]
    shape = tuple(len(v) for v in values)
    R, traj = cfg["replicates"], cfg["trajectories"]
    edges = np.asarray(cfg["bins"], np.float64)
    models = list(dict.fromkeys(m for ms in meta["models"] for m in ms))
    T1 = max(meta["generations"]) + 1
    K, nbin, Q = len(models), len(edges) + 1, len(qs)

    def full(tail, fill, dtype=np.float64):
        return np.full(shape + tail, fill, dtype)

    err = {v: full((T1, K), np.nan) for v in ("mean", "var", "sem", "min", "max")}
    err["count"] = full((T1, K), 0, np.int64)
    err["nonfinite"] = full((T1, K), 0, np.int64)
    err["quantiles"] = full((T1, K, Q), np.nan)
    err["hist"] = full((T1, K, nbin), 0, np.int64)
    met = {f"{s}_{v}": full((T1,), np.nan) for s in SERIES[1:] for v in ("mean", "var", "sem")}
    trajs = {}
    if traj:
        trajs["error_trajectory"] = full((R, T1, K), np.nan)
        for s in SERIES[1:]:
            trajs[f"{s}_trajectory"] = full((R, T1), np.nan)

    for p in range(len(meta["models"])):
        idx = np.unravel_index(p, shape) if shape else ()
        t = meta["generations"][p] + 1
        cols = [models.index(m) for m in meta["models"][p]]
        s = point_stats(p)
        for name in SERIES:
            n, nonfin = s[f"{name}_n"], s[f"{name}_nonfinite"]
            with np.errstate(all="ignore"):
                var = np.where(n > 1, s[f"{name}_m2"] / np.maximum(n - 1, 1), np.nan)
                bad = np.inf if name == "error" else np.nan  # the engine reports overflowed errors as inf
                mean = np.where(nonfin > 0, bad, s[f"{name}_mean"])
                var = np.where(nonfin > 0, bad, var)
                sem = np.sqrt(var / R)
            if name == "error":
                sel = idx + (slice(0, t),)
                for v, a in (("mean", mean), ("var", var), ("sem", sem), ("count", n), ("nonfinite", nonfin),
                             ("min", np.where(n > 0, s["error_min"], np.nan)),
                             ("max", np.where(n > 0, s["error_max"], np.nan)),
                             ("hist", s["hist"]),
                             ("quantiles", _quantiles(s["hist"], nonfin, s["error_min"], s["error_max"], edges, qs))):
                    err[v][sel][:, cols] = a
                if traj:
                    trajs["error_trajectory"][idx + (slice(None), slice(0, t))][..., cols] = s["error_trajectory"]
            else:
                for v, a in (("mean", mean), ("var", var), ("sem", sem)):
                    met[f"{name}_{v}"][idx + (slice(0, t),)] = a
                if traj:
                    trajs[f"{name}_trajectory"][idx + (slice(None), slice(0, t))] = s[f"{name}_trajectory"]

    gdims = tuple(names)
    cell = gdims + ("generation", "model")
    data = {v: (cell, a) for v, a in err.items() if v not in ("quantiles", "hist")}
    data["quantiles"] = (cell + ("quantile",), err["quantiles"])
    data["hist"] = (cell + ("bin",), err["hist"])
    data.update({v: (gdims + ("generation",), a) for v, a in met.items()})
    if traj:
        data["error_trajectory"] = (gdims + ("replicate", "generation", "model"), trajs.pop("error_trajectory"))
        data.update({v: (gdims + ("replicate", "generation"), a) for v, a in trajs.items()})
    coords = {n: list(v) for n, v in zip(names, values)}
    coords.update(generation=np.arange(T1), model=models, quantile=list(qs),
                  bin_lower=("bin", np.concatenate([[-np.inf], edges])),
                  bin_upper=("bin", np.concatenate([edges, [np.inf]])))
    if traj:
        coords["replicate"] = np.arange(R)
    attrs = dict(
        description="collapse_jax sweep: per grid point, generation and model, summaries of the excess "
                    "risk over replicates (collapse_jax.study)",
        replicates=R, chunk=cfg["chunk"], block=cfg["block"], signatures=meta["signatures"],
        config_hash=meta["hash"], key=json.dumps(cfg["key"]), key_impl=cfg["key_impl"],
        versions=json.dumps(cfg["versions"]), x64=int(cfg["x64"]),
    )
    return SweepResult(xr.Dataset(data, coords=coords, attrs=attrs), path)


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Output of :func:`sweep`: labelled summaries as an ``xarray.Dataset``.

    Dimensions: one per grid parameter (in grid order), ``generation``
    (0..T), ``model`` (the union of the points' model names; a point without
    a model has NaN there), ``quantile``, ``bin``, and ``replicate`` for
    trajectories. Error variables (dims ``(*grid, generation, model)``):
    ``mean``, ``var``, ``sem``, ``count``, ``nonfinite``, ``min``, ``max``;
    ``quantiles`` (``+ quantile``), ``hist`` (``+ bin``, edges in the
    ``bin_lower``/``bin_upper`` coordinates). Metrics (``(*grid, generation)``):
    ``dispersion_mean/var/sem``, ``cosine_mean/var/sem``. With
    ``trajectories=True``: ``error_trajectory`` (``(*grid, replicate,
    generation, model)``), ``dispersion_trajectory``, ``cosine_trajectory``.

    Attributes:
        dataset: the ``xarray.Dataset``.
        path: the sweep's folder, or None.
    """

    dataset: Any
    path: Optional[str] = None

    def to_dataframe(self):
        """A tidy ``pandas.DataFrame``: one row per (grid point, generation, model).

        Columns: the grid parameters, ``generation``, ``model``, ``mean``,
        ``var``, ``sem``, ``count``, ``nonfinite``, ``min``, ``max``, one
        ``q<p>`` column per quantile, and the per-generation metrics
        ``dispersion_mean`` and ``cosine_mean``. Models absent at a point are
        left out.
        """
        ds = self.dataset
        cols = ["mean", "var", "sem", "count", "nonfinite", "min", "max"]
        df = ds[cols].to_dataframe()
        q = ds["quantiles"].to_series().unstack("quantile")
        q.columns = [f"q{c:g}" for c in q.columns]
        df = df.join(q)
        for m in ("dispersion_mean", "cosine_mean"):
            df = df.join(ds[m].to_series(), on=[d for d in ds[m].dims])
        df = df.reset_index()
        return df[(df["count"] + df["nonfinite"]) > 0].reset_index(drop=True)

    def save(self, file: str, engine: Optional[str] = None) -> None:
        """Write the dataset to a netCDF file atomically (``xarray.Dataset.to_netcdf``)."""
        ds = self.dataset
        folder = os.path.dirname(os.path.abspath(file))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".nc")
        os.close(fd)
        try:
            ds.to_netcdf(tmp, engine=engine)
            os.replace(tmp, file)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def open(cls, file: str) -> "SweepResult":
        """Read a result written by :meth:`save` (loaded into memory)."""
        xr = _optional("xarray")

        with xr.open_dataset(file) as ds:
            return cls(ds.load(), None)

    def __repr__(self) -> str:
        return f"SweepResult(path={self.path!r})\n{self.dataset!r}"
