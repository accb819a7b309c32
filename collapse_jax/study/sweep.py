"""Monte Carlo studies at scale: parameter grids x replicates, chunked, split over devices, resumable.

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
aligned *blocks* of ``block`` replicates (a power of two), whose statistics are
merged along a canonical tree over block indices
(:mod:`collapse_jax.study.streaming`). Any positive ``chunk`` works: it is
rounded up to a multiple of ``block``, so that every chunk holds whole
blocks, and every summary is bit-identical for any chunk size (with the same
``block``), any number of devices and any order in which chunks finish.

What a summary means. ``mean``, ``var`` (unbiased) and ``sem`` are over all
replicates; where any replicate's error overflowed (the engine reports it as
``inf``) they are ``inf`` (for the metrics, whose non-finite values can be
NaN, they are NaN), and ``nonfinite`` counts those replicates. ``count`` is the
number of finite replicates, ``min``/``max`` their extremes.

Devices. Every chunk is split over the given devices (default: every local
device): each device runs the same single-device program on its contiguous
share of the chunk's replicates (dispatched asynchronously, so the devices
work at once), through the engine's replicate mapping, as ``cj.simulate``
does; it computes its blocks' summaries, extremes and partial histogram,
which the host combines (integers, minima and maxima: exact). No SPMD
partitioning is involved: XLA compiles a partitioned program differently,
and float32 results would then differ in the last bits between device
counts. So a replicate's numbers, and every summary, are bit-identical on
any number of devices. The price: the program is compiled once per device
(the first chunk dispatches from one thread per device, so the compiles run
in parallel). The chunk is padded to a multiple of
``block * devices``; padded replicates are simulated and discarded, so pick
``chunk`` a multiple of ``block * devices``.

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
key, chunk, block, bins, the package versions, a fingerprint of every point's
ecosystem, task and options, a hash of all that, and the number of
replicates) and then every finished chunk to ``path/chunks/`` atomically (a
temporary file, fsync, ``os.replace``), each recording which chunk it is and
the configuration hash (:mod:`collapse_jax.study.storage`). Calling the sweep
again with the same ``path`` recomputes only missing chunks; a chunk file that
is unreadable or not the chunk it claims to be is moved aside to
``<file>.rejected`` and recomputed, with a warning. A different configuration
at the same path raises ``ValueError`` naming what differs; a newer JAX or
collapse_jax is a different configuration (random streams may change between
versions). More (or fewer) ``replicates`` are not a different configuration:
only the new chunks run (and the last, partial chunk, which grows), and the
result equals a fresh sweep with the new count. While a sweep computes, it
holds ``path/lock`` (``lock-<i>-of-<P>`` for process share ``i`` of ``P``):
a second sweep into the same folder is a ``ValueError``, and a lock left by a
process that died is taken over.

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

import concurrent.futures
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import warnings
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from collapse_jax.study.grid import (
    Config, as_key, check_build, default_batch_size, expand_grid, is_int, map_replicates, prepare, simulate_replicate,
)
from collapse_jax.study.result import DEFAULT_QUANTILES, SweepResult, assemble, chunk_ids, point_from_disk
from collapse_jax.study.storage import (
    FORMAT, ChunkError, FolderLock, check_folder, chunk_file, chunk_identity, make_folder, open_manifest,
    read_chunk, save_chunk, set_aside,
)
from collapse_jax.study.streaming import (
    DEFAULT_BINS, Accumulator, block_stats, chunk_record, extremes, histogram,
)

__all__ = ["sweep"]

#: What a sweep needs beyond JAX: (module, what for). All are dependencies of collapse-jax.
REQUIREMENTS = (("xarray", "labelled results"), ("pandas", "to_dataframe"))


def _device_impl(eco, task, key, first, end, edges, *, cfg: Config, local: int, block: int, trajectories: bool):
    """One device's share of a chunk: replicates ``first .. first + local - 1``.

    Replicates at or past ``end`` are simulated but masked out of every
    summary. The replicates go through the engine's own replicate mapping
    (:func:`collapse_jax.engine.simulate.map_replicates`, never a width-1
    ``vmap``, in batches of :func:`~collapse_jax.engine.simulate.default_batch_size`
    on CPU) in a single-device program, exactly as :func:`collapse_jax.simulate`
    runs them, so a replicate's numbers do not depend on the number of devices.
    """
    trace = map_replicates(lambda j: simulate_replicate(eco, task, jax.random.fold_in(key, first + j), cfg),
                           local, default_batch_size(local, None, eco, task))
    valid = first + jnp.arange(local, dtype=jnp.uint32) < end
    series = trace._asdict()
    blocks = {name: block_stats(x, valid, block) for name, x in series.items()}
    ext = {name: extremes(x, valid) for name, x in series.items()}
    hist = histogram(series["error"], valid, edges)
    return blocks, ext, hist, (series if trajectories else None)


_device_jit = jax.jit(_device_impl, static_argnames=("cfg", "local", "block", "trajectories"))


def _place(tree, device):
    """``tree`` with its array leaves on ``device`` (Python scalars stay as they are, weak types included)."""
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(x, device) if isinstance(x, (jax.Array, np.ndarray)) else x, tree)


def _run_chunk(eco, task, key, start, end, edges, *, cfg: Config, size: int, block: int, devices: tuple,
               trajectories: bool):
    """Dispatch replicates ``start .. start + size - 1`` of one grid point over ``devices``; do not wait.

    Device ``d`` runs the same single-device program on its contiguous share
    ``start + d * size / len(devices) ..`` (no SPMD partitioning: XLA compiles
    a partitioned program differently, and float32 results then differ in the
    last bits from a one-device run). Returns the per-device outputs, in
    device order; :func:`_gather` combines them on the host.
    """
    local = size // len(devices)

    def dispatch(d):
        args = _place((eco, task, key, np.uint32(start + d * local), np.uint32(end), edges), devices[d])
        return _device_jit(*args, cfg=cfg, local=local, block=block, trajectories=trajectories)

    if len(devices) == 1:
        return [dispatch(0)]
    # From one thread per device: the first call compiles for every device, and XLA compiles them in parallel.
    with concurrent.futures.ThreadPoolExecutor(len(devices)) as pool:
        return list(pool.map(dispatch, range(len(devices))))


def _gather(parts):
    """Per-device outputs -> one chunk's (blocks, extremes, histogram, trajectories), in replicate order.

    Blocks and trajectories are concatenated; the order-free aggregates
    (non-finite counts, minima, maxima, histogram counts) are combined exactly.
    """
    parts = jax.device_get(parts)
    blocks = {name: tuple(np.concatenate([p[0][name][i] for p in parts]) for i in range(4)) for name in parts[0][0]}
    ext = {name: (sum(p[1][name][0] for p in parts), np.minimum.reduce([p[1][name][1] for p in parts]),
                  np.maximum.reduce([p[1][name][2] for p in parts])) for name in parts[0][1]}
    hist = sum(p[2] for p in parts)
    traj = None if parts[0][3] is None else {name: np.concatenate([p[3][name] for p in parts]) for name in parts[0][3]}
    return blocks, ext, hist, traj


class _Silent:
    """Stands in for the progress bar when ``progress=False`` (tqdm not needed)."""

    def update(self, n=1):
        pass

    def close(self):
        pass


def _check_requirements(progress: bool, path: Optional[str]) -> None:
    """Before anything runs or is written: the packages the sweep will import, or one line saying how."""
    need = list(REQUIREMENTS)
    if progress:
        need.append(("tqdm", "the progress bar (or pass progress=False)"))
    missing = [f"{m} ({why})" for m, why in need if importlib.util.find_spec(m) is None]
    if path is not None and not any(importlib.util.find_spec(m) for m in ("h5netcdf", "netCDF4", "scipy")):
        missing.append("h5netcdf (writing result.nc)")
    if missing:
        raise ImportError(f"collapse_jax.sweep needs {', '.join(missing)}: pip install \"collapse-jax[study]\"")


def _versions() -> dict:
    try:
        version = importlib.metadata.version("collapse-jax")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {"jax": jax.__version__, "collapse_jax": version}


def _finished(path: str, ident, digest: str, trajectories: bool) -> bool:
    """Whether chunk ``ident`` is on disk and sound; a bad file is set aside (with a warning) to be recomputed."""
    file = chunk_file(path, ident.point, ident.chunk)
    if not os.path.exists(file):
        return False
    try:
        read_chunk(path, ident, digest, trajectories)
        return True
    except ChunkError as e:
        if e.stale:  # the last chunk of a sweep that had other replicates: rerun (and replaced) as it is now
            return False
        aside = set_aside(file)
        warnings.warn(f"{e}: moved it to {aside} and recomputing that chunk", stacklevel=3)
        return False


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
) -> Optional[SweepResult]:
    """Simulate every point of a parameter grid with many replicates; streaming summaries.

    Args:
        build: ``build(**point) -> (eco, task, simulate_kwargs)`` for one grid
            point; ``simulate_kwargs`` sets ``generations`` and optionally
            ``regime``, ``pool``, ``loss_scale``, ``engine``.
        grid: ``{name: [values]}`` of scalar labels; the sweep runs their
            Cartesian product (last name fastest).
        key: a PRNG key (``jax.random.key``); point ``p`` uses
            ``fold_in(key, p)``, its replicate ``i`` ``fold_in(fold_in(key, p), i)``.
        replicates: replicates R per grid point. With ``path``, rerunning a
            finished sweep with more replicates computes only the new ones.
        chunk: replicates per device call and per checkpoint, any positive
            integer: it is rounded up to a multiple of ``block`` (and a sweep
            with fewer replicates runs them in one call). Memory scales with
            ``chunk``; results do not depend on it.
        path: a folder for the manifest, the finished chunks and
            ``result.nc``; with it a sweep resumes where it stopped. None keeps
            everything in memory.
        block: replicates per summary block, a power of two (module docstring).
        bins: increasing histogram edges of the error; quantiles come from
            the histogram.
        quantiles: probabilities in [0, 1] reported per point, generation, model.
        trajectories: also keep every replicate's trajectory (memory and disk
            grow with R).
        devices: devices to split each chunk over (default ``jax.local_devices()``).
        progress: show a tqdm bar with an ETA over chunks.
        process_index, process_count: this process's share of the chunks
            (default ``jax.process_index()``, ``jax.process_count()``).

    Returns:
        A :class:`SweepResult`, or None when this process ran its explicit
        share and other shares are still missing.

    Raises:
        ValueError: bad arguments (naming them), a grid parameter ``build``
            does not take, a bad grid point (naming its labels), a ``path``
            that is a file or cannot be written, a folder in use by another
            sweep (naming its lock file), a corrupt manifest, or a different
            configuration already stored at ``path``. All of these are raised
            before any computation.
        ImportError: a required package is missing (before anything is written).
    """
    names, values, labels = expand_grid(grid)
    for name, v in (("replicates", replicates), ("chunk", chunk), ("block", block)):
        if not is_int(v) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    edges = np.asarray(bins, np.float64)
    if edges.ndim != 1 or edges.size < 1 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError("bins must be a non-empty, finite, strictly increasing 1-d sequence of edges")
    qs = tuple(float(q) for q in quantiles)
    if any(not 0.0 <= q <= 1.0 for q in qs):
        raise ValueError(f"quantiles must lie in [0, 1], got {qs}")
    replicates = int(replicates)
    chunk = -(-int(chunk) // block) * block  # whole blocks per chunk: summaries do not depend on the chunk
    if replicates + chunk >= 2**32:
        raise ValueError(f"replicates={replicates} is too large: replicate ids are uint32 (as in simulate)")
    key = as_key(key)
    if process_index is None and process_count is None:
        process_index, process_count = jax.process_index(), jax.process_count()
    elif not (is_int(process_index) and is_int(process_count) and 0 <= process_index < process_count):
        raise ValueError(f"process_index ({process_index!r}) must be in 0..process_count-1 ({process_count!r})")
    if process_count > 1 and path is None:
        raise ValueError("a sweep shared between processes needs path (a folder on a shared file system)")
    if path is not None:
        path = check_folder(path)
    _check_requirements(progress, path)
    devices = tuple(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must not be empty")
    bad = [d for d in devices if not isinstance(d, jax.Device)]
    if bad:
        raise ValueError(f"devices must be JAX devices (e.g. jax.local_devices()), got {bad[0]!r}")
    per_call = min(chunk, -(-replicates // block) * block)
    size = -(-per_call // (block * len(devices))) * block * len(devices)  # padded: whole blocks per device
    n_chunks = -(-replicates // chunk)
    if size != per_call and n_chunks > 1:
        warnings.warn(f"chunk={chunk} is not a multiple of block * devices = {block * len(devices)}: every call "
                      f"simulates {size} replicates and discards {size - per_call}", stacklevel=2)

    check_build(build, names)
    points = prepare(build, labels)
    config = dict(
        format=FORMAT, grid={n: list(v) for n, v in zip(names, values)},
        key=np.asarray(jax.random.key_data(key)).tolist(), key_impl=str(jax.random.key_impl(key)),
        chunk=chunk, block=block, bins=edges.tolist(),
        trajectories=bool(trajectories), x64=bool(jax.config.jax_enable_x64),
        versions=_versions(), points=[pt.fingerprint for pt in points],
    )
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    groups = {}
    for pt in points:
        groups.setdefault(pt.signature, []).append(pt)
    meta = dict(
        config=config, hash=digest, replicates=replicates, names=list(names), signatures=len(groups),
        models=[[str(m) for m in pt.eco.models] for pt in points],
        generations=[pt.cfg.generations for pt in points],
    )
    # Tasks grouped by signature, so that each signature compiles once per process.
    tasks = [(pt, ident) for group in groups.values() for pt in group
             for ident in chunk_ids(pt.index, replicates, chunk)]
    mine = tasks[process_index::process_count]
    edges_dev = jnp.asarray(edges)

    def run(todo, finish):
        """Run ``todo`` chunks, dispatching the next before reading back the last (async dispatch)."""
        if progress:
            bar = importlib.import_module("tqdm.auto").tqdm(
                total=len(mine), initial=len(mine) - len(todo), unit="chunk", desc="sweep", dynamic_ncols=True)
        else:
            bar = _Silent()
        pending = None
        try:
            for pt, ident in todo:
                out = _run_chunk(pt.eco, pt.task, jax.random.fold_in(key, pt.index), ident.start, ident.end,
                                 edges_dev, cfg=pt.cfg, size=size, block=block, devices=devices,
                                 trajectories=bool(trajectories))
                if pending is not None:
                    finish(*pending)
                    bar.update(1)
                pending = (pt, ident, out)
            if pending is not None:
                finish(*pending)
                bar.update(1)
        finally:
            bar.close()

    def record(ident, out):
        return chunk_record(*_gather(out), first_block=ident.start // block, nblocks=-(-(ident.end - ident.start) // block),
                            nvalid=ident.end - ident.start)

    if path is None:
        accumulators = {}  # point -> Accumulator, fed in chunk order

        def keep(pt, ident, out):
            accumulators.setdefault(pt.index, Accumulator(trajectories)).add(record(ident, out))

        run(mine, keep)
        return assemble(meta, lambda p: accumulators[p].result(), qs, None)

    make_folder(path)
    lock = "lock" if process_count == 1 else f"lock-{process_index}-of-{process_count}"
    with FolderLock(path, lock):
        open_manifest(path, meta)
        todo = [(pt, ident) for pt, ident in mine if not _finished(path, ident, digest, bool(trajectories))]
        run(todo, lambda pt, ident, out: save_chunk(path, ident, digest, record(ident, out)))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"collapse_jax.sweep:{digest[:16]}")
        if any(chunk_identity(path, ident) != ident for _, ident in tasks):  # other shares still running
            return None
        result = assemble(meta, lambda p: point_from_disk(path, p, replicates, chunk, digest, bool(trajectories)),
                          qs, path)
        if jax.process_count() == 1 or jax.process_index() == 0:
            result.save(os.path.join(path, "result.nc"))
    return result
