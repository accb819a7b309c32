"""Streaming statistics of replicates: block sums on the device, canonical merges on the host.

Inside a chunk, replicates are grouped in aligned *blocks* of ``block``
replicates (a power of two). Each block's count, mean and sum of squared
deviations are computed on the device by a fixed pairwise tree (two passes:
the mean, then the squared deviations, each scaled by an exact power of two so
that errors near float32's limit do not overflow the sums); blocks are merged
on the host, in float64, with Chan, Golub and LeVeque's pairwise update, along
a *canonical* binary tree over block indices: a chunk stores the maximal
aligned dyadic groups of its blocks (:func:`chunk_record`), and
:class:`Accumulator` joins sibling groups bottom-up and folds what is left
from left to right. The tree depends only on the block indices, so every
summary is bit-identical for any chunk size (a multiple of ``block``), any
number of devices and any order in which chunks finish. Histograms, minima,
maxima and counts are exact integers or order-free, and quantiles are read off
the histograms (:func:`histogram_quantiles`; linear interpolation inside a bin: accurate
to a bin width).

The device-side functions see one device's share of a chunk; the sweep
combines their order-free aggregates across devices on the host, exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SERIES", "DEFAULT_BINS", "block_stats", "extremes", "histogram", "merge", "tree", "dyadic",
           "chunk_record", "Accumulator", "histogram_quantiles"]

#: The engine's per-replicate outputs (the fields of ``simulate.Trace``), in this order.
SERIES = ("error", "dispersion", "cosine")
#: Histogram edges of the error: 8 per decade from 1e-6 to 1e6 (plus an under- and an overflow bin).
DEFAULT_BINS = np.geomspace(1e-6, 1e6, 97)


# ------------------------------------------------------------ on the device
def pairwise_sum(x):
    """Sum over axis 1 (a power of two long) by a fixed pairwise tree: same bits on any device."""
    while x.shape[1] > 1:
        x = x[:, 0::2] + x[:, 1::2]
    return x[:, 0]


def scaled_sum(v):
    """Pairwise sum over axis 1, scaled by a power of two so that it cannot overflow.

    Returns ``(s, e)`` with sum = ``s * 2**e``; ``|s| <= len(axis 1)``. Scaling by
    ``2**-e`` is exact, so below overflow the bits are those of the plain sum.
    """
    _, e = jnp.frexp(jnp.max(jnp.abs(v), axis=1))
    return pairwise_sum(jnp.ldexp(v, -e[:, None])), e


def block_stats(x, valid, block):
    """Per aligned block of ``block`` replicates: finite count, mean, sum of squared deviations.

    ``x`` is ``(c, ...)``, ``valid`` ``(c,)``. Returns ``(n, mean, q, e)``, arrays
    ``(c // block, ...)``, with the sum of squared deviations ``M2 = q * 4**e``
    (assembled in float64 on the host: near float32's limit M2 is not a float32).
    """
    c = x.shape[0]
    xb = x.reshape((c // block, block) + x.shape[1:])
    mask = valid.reshape((c // block, block) + (1,) * (x.ndim - 1)) & jnp.isfinite(xb)
    n = jnp.sum(mask, axis=1, dtype=jnp.int32)
    total, e = scaled_sum(jnp.where(mask, xb, 0))
    mean = jnp.ldexp(total / jnp.maximum(n, 1).astype(x.dtype), e)
    dev = jnp.where(mask, xb - mean[:, None], 0)
    _, e2 = jnp.frexp(jnp.max(jnp.abs(dev), axis=1))
    dev = jnp.ldexp(dev, -e2[:, None])
    # The barrier keeps XLA from contracting the square into the first add of the
    # tree (an FMA), which could differ between compilations for different chunks.
    q = pairwise_sum(jax.lax.optimization_barrier(dev * dev))
    return n, mean, q, e2


def extremes(x, valid):
    """Order-free per-cell aggregates over this device's replicates: non-finite count, min, max."""
    v = valid.reshape((-1,) + (1,) * (x.ndim - 1))
    finite = jnp.isfinite(x)
    nonfinite = jnp.sum(v & ~finite, axis=0, dtype=jnp.int32)
    lo = jnp.min(jnp.where(v & finite, x, jnp.inf), axis=0)
    hi = jnp.max(jnp.where(v & finite, x, -jnp.inf), axis=0)
    return nonfinite, lo, hi


def histogram(x, valid, edges):
    """Counts ``(T + 1, K, len(edges) + 1)`` of finite values: underflow, the bins, overflow."""
    nbin = edges.shape[0] + 1
    _, T1, K = x.shape
    idx = jnp.searchsorted(edges.astype(x.dtype), x, side="right")
    ok = valid.reshape(-1, 1, 1) & jnp.isfinite(x)
    cell = jnp.arange(T1 * K, dtype=jnp.int32).reshape(1, T1, K)
    flat = (cell * nbin + idx.astype(jnp.int32)).reshape(-1)
    counts = jnp.zeros(T1 * K * nbin, jnp.int32).at[flat].add(ok.reshape(-1).astype(jnp.int32))
    return counts.reshape(T1, K, nbin)


# -------------------------------------------------------------- on the host
def merge(a, b):
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


def tree(stats):
    """Merge ``2**p`` consecutive blocks (leading axis) by the perfect pairwise tree."""
    while stats[0].shape[0] > 1:
        stats = merge(tuple(s[0::2] for s in stats), tuple(s[1::2] for s in stats))
    return tuple(s[0] for s in stats)


def dyadic(lo: int, hi: int):
    """The maximal aligned dyadic intervals covering ``[lo, hi)``: ``(level, index)`` pairs."""
    out = []
    while lo < hi:
        level = 0
        while lo % (2 << level) == 0 and lo + (2 << level) <= hi:
            level += 1
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def chunk_record(blocks, extremes, hist, traj, first_block: int, nblocks: int, nvalid: int) -> dict:
    """Host-side record of one chunk: its dyadic groups of blocks and its order-free aggregates."""
    groups = dyadic(first_block, first_block + nblocks)
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
            parts.append(tree((n[s:s + (1 << level)], mean[s:s + (1 << level)], m2[s:s + (1 << level)])))
        for j, field in enumerate(("n", "mean", "m2")):
            rec[f"{name}_{field}"] = np.stack([p[j] for p in parts])
        for field, a in zip(("nonfinite", "min", "max"), extremes[name]):
            rec[f"{name}_{field}"] = np.asarray(a)
        if traj is not None:
            rec[f"{name}_trajectory"] = np.asarray(traj[name])[:nvalid]
    return rec


class Accumulator:
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
                    stats = merge(other, stats) if index & 1 else merge(stats, other)
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
                acc = merge(acc, node)
            out[f"{name}_n"], out[f"{name}_mean"], out[f"{name}_m2"] = acc
            if self.trajectories is not None:
                out[f"{name}_trajectory"] = np.concatenate(self.trajectories[name])
        return out


def histogram_quantiles(hist, nonfinite, lo, hi, edges, qs):
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
