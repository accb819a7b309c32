"""A sweep's result: labelled summaries assembled from every point's merged statistics.

:func:`assemble` turns the merged statistics of each grid point (from memory
or from the chunk files on disk, one point at a time) into an
``xarray.Dataset`` wrapped in :class:`SweepResult`; :func:`load_sweep`
assembles a finished sweep from its folder.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import tempfile
from typing import Any, Callable, Optional, Sequence

import numpy as np

from collapse_jax.study.storage import ChunkError, ChunkId, chunk_file, read_chunk, read_manifest
from collapse_jax.study.streaming import SERIES, Accumulator, histogram_quantiles

__all__ = ["DEFAULT_QUANTILES", "SweepResult", "assemble", "chunk_ids", "point_from_disk", "load_sweep"]

DEFAULT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def chunk_ids(point: int, replicates: int, chunk: int) -> list:
    """The chunks of one grid point: replicates ``[c * chunk, min((c + 1) * chunk, replicates))``."""
    return [ChunkId(point, c, c * chunk, min((c + 1) * chunk, replicates)) for c in range(-(-replicates // chunk))]


def point_from_disk(path: str, point: int, replicates: int, chunk: int, digest: str, trajectories: bool) -> dict:
    """One point's merged statistics from its chunk files; a bad file is a ``ValueError`` saying what to do."""
    acc = Accumulator(trajectories)
    for ident in chunk_ids(point, replicates, chunk):
        try:
            rec = read_chunk(path, ident, digest, trajectories)
        except ChunkError as e:
            raise ValueError(f"{e}. Rerun the same cj.sweep call at {path!r} to recompute that chunk (the bad "
                             "file is set aside), or delete it and rerun.") from None
        acc.add(rec)
    return acc.result()


def load_sweep(path: str, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> "SweepResult":
    """Assemble a finished sweep from its folder (e.g. after array jobs ran every share).

    Raises:
        ValueError: when the folder has no manifest or a corrupt one, chunks
            are missing, or a chunk file is bad (each naming the file).
    """
    meta = read_manifest(os.fspath(path))
    if meta is None:
        raise ValueError(f"{path!r} holds no sweep (no manifest.json)")
    cfg, R = meta["config"], meta["replicates"]
    missing = [(i.point, i.chunk) for p in range(len(cfg["points"])) for i in chunk_ids(p, R, cfg["chunk"])
               if not os.path.exists(chunk_file(path, i.point, i.chunk))]
    if missing:
        raise ValueError(f"sweep at {path!r} is unfinished: {len(missing)} chunks missing, "
                         f"first (point, chunk) = {missing[0]}; rerun its cj.sweep call to finish it")
    return assemble(meta, lambda p: point_from_disk(path, p, R, cfg["chunk"], meta["hash"], cfg["trajectories"]),
                    tuple(float(q) for q in quantiles), path)


def assemble(meta: dict, point_stats: Callable[[int], dict], qs, path) -> "SweepResult":
    """Labelled arrays from every point's merged statistics (``point_stats(p)``, one point at a time)."""
    xr = importlib.import_module("xarray")  # imported when used: it is slow to import

    cfg = meta["config"]
    names = meta["names"]
    values = [cfg["grid"][n] for n in names]
    shape = tuple(len(v) for v in values)
    R, traj = meta["replicates"], cfg["trajectories"]
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
                             ("quantiles", histogram_quantiles(s["hist"], nonfin, s["error_min"], s["error_max"],
                                                               edges, qs))):
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
        xr = importlib.import_module("xarray")  # imported when used: it is slow to import

        with xr.open_dataset(file) as ds:
            return cls(ds.load(), None)

    def __repr__(self) -> str:
        return f"SweepResult(path={self.path!r})\n{self.dataset!r}"
