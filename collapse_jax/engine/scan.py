"""One replicate of an ecosystem: generation 0, then ``lax.scan`` over generations.

:func:`simulate_replicate` is the pure building block behind
:func:`collapse_jax.simulate`, :func:`collapse_jax.analyze`, the Monte Carlo
objectives and :func:`collapse_jax.sweep`; it can be ``vmap``-ed, ``jit``-ed
and differentiated with respect to the ecosystem's weights.

It talks to the estimator only through the protocol of
:mod:`collapse_jax.tasks.base`, along one of three paths (chosen from static
facts, so each is its own compiled program):

* **statistics** (``task.additive`` and ``regime`` "replace" or
  "accumulate"): ``task.draw`` gives each data set's additive statistics
  (exact sufficient statistics with ``engine="suffstat"``), a model's
  statistics are ``sum_e c_e stats_e`` over its in-edges (``segment_sum``),
  ``task.fit`` solves; "accumulate" adds every generation's synthetic
  statistics into the carry (memory flat in T).
* **subsampled statistics** (``task.additive`` and "accumulate_subsample"):
  real data as above; synthetic batches are materialized (``task.sample``)
  into a buffer, every edge draws its subsample from it and
  ``task.statistics(subsample, mask)`` summarizes it.
* **samples** (``task.additive = False``): every data set is materialized
  (``task.sample``); each model gathers the samples of its in-edges into one
  padded ``(N_k, ...)`` set with a weight per sample (its edge's coefficient
  ``c_e``, zero for padding and for future generations) and
  ``task.fit_samples(data, weights)`` is ``vmap``-ed over models.

Memory that grows with T (document it to users): "accumulate" on the samples
path and "accumulate_subsample" on both keep, in the scan carry, a buffer of
every generation's synthetic samples, ``T x (synthetic samples per
generation)`` rows per replicate (pre-allocated; future slots carry zero
weight); the samples path under "accumulate" also refits on all of them, so
its cost per generation grows with T.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.ecosystem import Ecosystem
from collapse_jax.engine.draws import add as _add
from collapse_jax.engine.draws import combine_edges as _combine
from collapse_jax.engine.draws import concat as _concat
from collapse_jax.engine.draws import draw_items as _draw_items
from collapse_jax.engine.draws import draw_parts as _draw_parts
from collapse_jax.engine.draws import plan_draws as _plan
from collapse_jax.engine.draws import sample_items as _sample_items
from collapse_jax.engine.draws import take as _take
from collapse_jax.tasks.base import Task

__all__ = ["Config", "Carry", "Trace", "Extras", "simulate_replicate", "scan_generations",
           "HOMOGENIZATION", "available_metrics", "has_capability"]

# Per-generation metrics of the whole ecosystem, (R, T + 1) each; always computed (cheap).
HOMOGENIZATION = ("dispersion", "cosine")
# Stream for the subsample draws of "accumulate_subsample" (separate from the data items).
_SUBSAMPLE_STREAM = 7

# The engine's random stream: threefry2x32 in its non-partitionable form
# (``jax.threefry_partitionable(False)``), entered while simulate_replicate is
# traced and left when it returns, so no JAX setting outlives the call. On CPU
# it draws the same bits' worth 2.2x cheaper (benchmarks/README.md); it is a
# trace-time setting that JAX keys its jit caches on, so a user's own
# ``jax.random`` calls, traced outside, keep the user's setting. The numbers
# drawn are other numbers from the same distributions (README, "Random stream").
_THREEFRY_PARTITIONABLE = False


class Config(NamedTuple):
    """Static options of a simulation (hashable: part of the compile cache key).

    ``metrics``: names of further per-model metrics to compute every
    generation (entries of ``task.metrics`` and ``"task_error"``); empty by
    default, so the tools that scan replicates for the error alone pay for
    nothing else. ``return_params``: also return the fitted parameters.
    With either, :func:`simulate_replicate` returns ``(Trace, Extras)``.
    """

    generations: int
    regime: str = "replace"
    pool: str = "independent"
    loss_scale: str = "mean"
    engine: str = "suffstat"
    checkpoint: bool = False  # rematerialize generations under reverse-mode AD (see scan_generations)
    metrics: tuple = ()
    return_params: bool = False

    @property
    def extras(self) -> bool:
        return bool(self.metrics) or self.return_params


class Carry(NamedTuple):
    params: Any        # per-model parameters, stacked on a leading K axis
    accumulated: Any   # accumulated synthetic statistics ("accumulate", statistics path) or None
    buffer: Any = None  # (T, rows, ...) synthetic samples of every generation (sample buffers) or None


class Trace(NamedTuple):
    error: jax.Array       # (K,) excess risk per model
    dispersion: jax.Array  # () mean squared distance of the models to their average
    cosine: jax.Array      # () mean pairwise cosine similarity of the models


class Extras(NamedTuple):
    params: Any     # fitted parameters (K, ...) or None
    metrics: dict   # {name: (K,) task metric, "task_error": (K, S)}


def has_capability(task, name: str) -> bool:
    """Whether ``task`` implements the optional protocol method ``name`` (not the base's refusal)."""
    impl = getattr(type(task), name, None)
    return impl is not None and impl is not getattr(Task, name, None)


def available_metrics(task, eco: Ecosystem) -> tuple:
    """Names of the per-model metrics ``task`` offers on ``eco``: its ``metrics`` and ``task_error``."""
    names = tuple(getattr(task, "metric_definitions", {}) or ())
    if not names and has_capability(task, "metrics"):
        # A task without declared definitions: ask it (shapes only, nothing computed).
        names = tuple(jax.eval_shape(lambda: task.metrics(task.truth_param())))
    if eco.S and has_capability(task, "risk_on"):
        names += ("task_error",)
    return names


def _trace(task, params) -> Trace:
    err = jax.vmap(task.risk)(params)
    # A diverging fit overflows to inf and then to NaN (inf - inf); report inf.
    err = jnp.where(jnp.isnan(err), jnp.inf, err)
    vec = jax.vmap(task.vector)(params)
    K = vec.shape[0]
    dispersion = jnp.mean(jnp.sum((vec - vec.mean(0, keepdims=True)) ** 2, axis=1))
    if K < 2:
        cosine = jnp.ones((), vec.dtype)  # one model is trivially homogeneous
    else:
        norm = jnp.linalg.norm(vec, axis=1)
        unit = vec / jnp.where(norm > 0, norm, 1.0)[:, None]
        sim = unit @ unit.T
        cosine = (jnp.sum(sim) - jnp.trace(sim)) / (K * (K - 1))
    return Trace(err, dispersion, cosine)


def _extras(task, params, cfg: Config, data_params, data_laws) -> Extras:
    out = {}
    task_metrics = [name for name in cfg.metrics if name != "task_error"]
    if task_metrics:
        values = jax.vmap(task.metrics)(params)
        out.update({name: values[name] for name in task_metrics})
    if "task_error" in cfg.metrics:
        cols = []
        for s, law in enumerate(data_laws):  # laws may differ in structure: one vmap per node
            th = jax.tree_util.tree_map(lambda x: x[s], data_params)
            e = jax.vmap(lambda p: task.risk_on(p, th, law))(params)
            cols.append(jnp.where(jnp.isnan(e), jnp.inf, e))
        out["task_error"] = jnp.stack(cols, axis=1)
    return Extras(params if cfg.return_params else None, out)


def _slots(segments, K: int):
    """Static gather tables for per-model padded sample sets.

    ``segments``: ``(consumer, pool row offset, rows, coefficient index, generation, valid rows)``.
    Returns ``(rows (K, N), coef index (K, N), generation (K, N), valid (K, N))``,
    ``N`` the largest per-model total; generation -1 marks rows valid at every
    generation; padding rows point at row 0 with ``valid = 0``.
    """
    per = [[] for _ in range(K)]
    for k, off, size, ci, gen, nvalid in segments:
        r = np.arange(int(size))
        per[int(k)].append((int(off) + r, np.full(len(r), int(ci)), np.full(len(r), int(gen)),
                            (r < nvalid).astype(float)))
    cols = [tuple(np.concatenate(x) for x in zip(*p)) if p else (np.zeros(0, int),) * 3 + (np.zeros(0),)
            for p in per]
    N = max(1, max(len(c[0]) for c in cols))
    rows = np.zeros((K, N), int)
    cidx = np.zeros((K, N), int)
    gens = np.full((K, N), -1, int)
    valid = np.zeros((K, N))
    for k, (r, c, g, v) in enumerate(cols):
        rows[k, :len(r)], cidx[k, :len(r)], gens[k, :len(r)], valid[k, :len(r)] = r, c, g, v
    return rows, cidx, gens, valid


def simulate_replicate(eco: Ecosystem, task, key: jax.Array, cfg: Config):
    """One replicate: a :class:`Trace` with a leading ``T + 1`` axis (``(Trace, Extras)`` with ``cfg.extras``).

    This is the pure building block behind :func:`simulate`; it can be
    ``vmap``-ed, ``jit``-ed and differentiated with respect to ``eco``'s
    weights (pathwise gradients through the reparameterized samplers).
    ``Extras`` holds ``params`` (leaves ``(T + 1, K, ...)``, with
    ``cfg.return_params``) and ``metrics`` (``(T + 1, K)`` per task metric,
    ``(T + 1, K, S)`` for ``"task_error"``).

    Example:
        >>> import jax, collapse_jax as cj
        >>> from collapse_jax.engine import Config
        >>> eco, task = cj.graphs.chain(2, n=20, m=20), cj.LinearRegression(dim=3)
        >>> tr = simulate_replicate(eco, task, jax.random.key(0), Config(generations=4))
        >>> tr.error.shape
        (5, 2)
    """
    with jax.threefry_partitionable(_THREEFRY_PARTITIONABLE):
        return _simulate_replicate(eco, task, key, cfg)


def _simulate_replicate(eco: Ecosystem, task, key: jax.Array, cfg: Config):
    """:func:`simulate_replicate` under the engine's PRNG setting."""
    K, engine = eco.K, cfg.engine
    dtype = jnp.result_type(float)
    R, W = eco.R.astype(dtype), eco.W.astype(dtype)
    additive = getattr(task, "additive", True)
    samples_path = not additive
    subsample = cfg.regime == "accumulate_subsample"
    accumulate = cfg.regime == "accumulate"
    T = cfg.generations

    data_laws = task.data_laws(eco)
    data_params = task.data_params(eco)
    syn_laws = task.synthetic_laws(eco)
    n_data = np.asarray(eco.n, float)
    m = np.asarray(eco.n_synthetic, float)

    real_e = np.asarray(eco.real_edges, int).reshape(-1, 2)
    model_e = np.asarray(eco.model_edges, int).reshape(-1, 2)
    E_r, E_m = len(real_e), len(model_e)
    is_fresh = np.asarray(eco.fresh, bool)
    fresh_e = np.flatnonzero(is_fresh[real_e[:, 1]]) if E_r else np.zeros(0, int)
    fixed_e = np.flatnonzero(~is_fresh[real_e[:, 1]]) if E_r else np.zeros(0, int)
    fixed_src = np.unique(real_e[fixed_e, 1]) if len(fixed_e) else np.zeros(0, int)

    k_fixed, k_zero, k_gens = jax.random.split(key, 3)
    k_sub = jax.random.fold_in(key, _SUBSAMPLE_STREAM)
    sizes_data = list(eco.n)
    fresh_part = (real_e[fresh_e, 1], sizes_data, data_laws, data_params)
    n_fresh = len(fresh_e)
    fixed_pos = np.searchsorted(fixed_src, real_e[fixed_e, 1]) if len(fixed_e) else np.zeros(0, int)

    # Fixed data nodes: drawn once per replicate, reused by every consumer.
    fixed_stats = fixed_flat = None
    if len(fixed_src):
        fplan = _plan(fixed_src, sizes_data, data_laws)
        if samples_path:
            fixed_flat = _sample_items(task, k_fixed, fplan, fixed_src, data_laws, data_params)
        else:
            fixed_stats = _draw_items(task, k_fixed, fplan, fixed_src, data_laws, data_params, engine)

    def split(drawn):
        """Drawn items ``[fresh real edges..., rest...]`` -> (stats per real edge in edge order, rest)."""
        fresh = jax.tree_util.tree_map(lambda x: x[:n_fresh], drawn) if n_fresh else None
        rest = jax.tree_util.tree_map(lambda x: x[n_fresh:], drawn) if drawn is not None else None
        if fixed_stats is None:  # every real edge is fresh: edge order is item order
            return fresh, rest
        parts = ([fresh] if n_fresh else []) + [jax.tree_util.tree_map(lambda x: x[fixed_pos], fixed_stats)]
        return _take(_concat(parts), np.argsort(np.concatenate([fresh_e, fixed_e]))), rest

    def real_coef(weights):
        if not E_r:
            return jnp.zeros(0, dtype)
        w = weights[real_e[:, 0], real_e[:, 1]]
        return w / n_data[real_e[:, 1]] if cfg.loss_scale == "mean" else w

    def combine(pieces):
        """``pieces``: (stats per edge, coefficients, consumers) or None -> (K, ...) statistics."""
        pieces = [p for p in pieces if p[0] is not None and len(p[2])]
        return _combine(_concat([p[0] for p in pieces]), jnp.concatenate([p[1] for p in pieces]),
                        np.concatenate([p[2] for p in pieces]), K)

    def rows_of(flat):
        return 0 if flat is None else int(flat.sizes.sum())

    def real_segments(fresh_flat, base):
        """Segments of every real edge in a pool ``[fresh items, fixed items, ...]`` (coefficient = edge)."""
        segs = []
        n_fresh_rows = rows_of(fresh_flat)
        for i, e in enumerate(fresh_e):
            segs.append((real_e[e, 0], base + fresh_flat.offsets[i], fresh_flat.sizes[i], e, -1, fresh_flat.sizes[i]))
        for i, e in enumerate(fixed_e):
            f = fixed_pos[i]
            segs.append((real_e[e, 0], base + n_fresh_rows + fixed_flat.offsets[f], fixed_flat.sizes[f], e, -1,
                         fixed_flat.sizes[f]))
        return segs

    def pool(*parts):
        """Concatenate sample pytrees (None parts skipped) on the sample axis."""
        return _concat([p for p in parts if p is not None])

    def fit_gathered(pool_data, tables, coef, t=None):
        rows, cidx, gens, valid = tables
        w = coef[cidx] * jnp.asarray(valid, dtype)
        if t is not None and (gens >= 0).any():
            live = jnp.asarray(gens) < t
            scale = t.astype(dtype) if cfg.loss_scale == "mean" else jnp.ones((), dtype)
            w = jnp.where(jnp.asarray(gens) >= 0, jnp.where(live, w / scale, 0.0), w)
        data = jax.tree_util.tree_map(lambda x: x[rows], pool_data)
        return jax.vmap(task.fit_samples)(data, w)

    # ------------------------------------------------------------ generation 0
    # One draw for the real edges and the truth samples of models without real data.
    has_real = eco.has_real()
    real_rel = eco.real_weights.astype(dtype)
    real_rel = real_rel / jnp.where(real_rel.sum(1, keepdims=True) > 0, real_rel.sum(1, keepdims=True), 1.0)
    no_real = np.flatnonzero(~has_real)
    sizes0 = [eco.n0[k] for k in no_real]
    truth = task.truth_param()
    star = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (len(no_real),) + x.shape), truth)
    truth_part = (np.arange(len(no_real)), sizes0, [task.truth_law()] * len(no_real), star)
    c0 = 1.0 / np.asarray(sizes0, float) if cfg.loss_scale == "mean" else np.ones(len(no_real))
    if samples_path:
        fresh0 = _sample_items(task, k_zero, _plan(real_e[fresh_e, 1], sizes_data, data_laws),
                               np.arange(n_fresh), data_laws, data_params) if n_fresh else None
        truth0 = _sample_items(task, k_zero, _plan(truth_part[0], sizes0, truth_part[2]),
                               n_fresh + np.arange(len(no_real)), truth_part[2], star) if len(no_real) else None
        base_truth = rows_of(fresh0) + rows_of(fixed_flat)
        segs = real_segments(fresh0, 0)
        segs += [(k, base_truth + truth0.offsets[i], truth0.sizes[i], E_r + i, -1, truth0.sizes[i])
                 for i, k in enumerate(no_real)]
        coef0 = jnp.concatenate([real_coef(real_rel), jnp.asarray(c0, dtype)])
        params0 = fit_gathered(pool(*(f.data if f is not None else None for f in (fresh0, fixed_flat, truth0))),
                               _slots(segs, K), coef0)
    else:
        real0, truth0 = split(_draw_parts(task, k_zero, [fresh_part, truth_part], engine))
        stats0 = combine([(real0, real_coef(real_rel), real_e[:, 0]),
                          (truth0 if len(no_real) else None, jnp.asarray(c0, dtype), no_real)])
        params0 = jax.vmap(task.fit)(stats0)

    # ---------------------------------------------------------- generations
    shared = cfg.pool == "shared"
    producers = np.unique(model_e[:, 1]) if E_m else np.zeros(0, int)
    if shared:
        syn_src = producers
        edge_item = np.searchsorted(producers, model_e[:, 1]) if E_m else np.zeros(0, int)
    else:
        syn_src = model_e[:, 1] if E_m else np.zeros(0, int)
        edge_item = np.arange(E_m)
    syn_sizes = list(eco.n_synthetic)
    real_c = real_coef(R)
    syn_w = W[model_e[:, 0], model_e[:, 1]] if E_m else jnp.zeros(0, dtype)
    # Replace-like coefficient of a synthetic edge (its batch, or its subsample, of m_j samples).
    syn_c = syn_w / m[model_e[:, 1]] if (E_m and cfg.loss_scale == "mean") else syn_w
    syn_ids = n_fresh + np.arange(len(syn_src))
    syn_plan = _plan(syn_src, syn_sizes, syn_laws) if E_m else None
    buffered = E_m and (subsample or (samples_path and accumulate))
    m_e = m[model_e[:, 1]].astype(int) if E_m else np.zeros(0, int)
    m_max = int(m_e.max()) if E_m else 0

    # Static layout of the synthetic samples of one generation (the buffer's rows).
    syn_layout = None
    if E_m and (samples_path or subsample):
        syn_layout = jax.eval_shape(
            lambda: _sample_items(task, k_gens, syn_plan, syn_ids, syn_laws, params0).data)
        # Offsets are static: the layout sample_items uses (groups end to end).
        offs, sizes = np.zeros(len(syn_src), int), np.zeros(len(syn_src), int)
        start = 0
        for n_g, positions, _, _ in syn_plan.groups:
            offs[positions] = start + n_g * np.arange(len(positions))
            sizes[positions] = n_g
            start += n_g * len(positions)
        syn_rows = start

    if subsample and E_m:
        # Candidates of edge e: rows g * syn_rows + offs[item] + r of the buffer, g < T, r < m_max.
        g_idx = np.repeat(np.arange(T), m_max)
        r_idx = np.tile(np.arange(m_max), T)
        cand = (g_idx[None, :] * syn_rows + offs[edge_item][:, None] + np.minimum(r_idx[None, :], m_e[:, None] - 1))
        cand_ok = r_idx[None, :] < m_e[:, None]
        sel_valid = (np.arange(m_max)[None, :] < m_e[:, None]).astype(float)

    def subsample_rows(t):
        """``(E_m, m_max)`` buffer rows: per edge, m_e of its t * m_e pooled samples, uniformly without replacement."""
        u = jax.random.uniform(jax.random.fold_in(k_sub, t), cand.shape, dtype)
        live = jnp.asarray(cand_ok) & (jnp.asarray(g_idx)[None, :] < t)
        score = jnp.where(live, u, 2.0)
        _, pos = jax.lax.top_k(-score, m_max)
        return jnp.take_along_axis(jnp.asarray(cand), pos, axis=1)

    def flat_fresh(kt):
        if not n_fresh:
            return None
        return _sample_items(task, kt, _plan(real_e[fresh_e, 1], sizes_data, data_laws), np.arange(n_fresh),
                             data_laws, data_params)

    # Static tables of the samples path, per regime (pool = [fresh, fixed, synthetic part]).
    tables = None
    if samples_path:
        fresh_layout = None
        if n_fresh:
            fl = _plan(real_e[fresh_e, 1], sizes_data, data_laws)
            fo, fs, st = np.zeros(n_fresh, int), np.zeros(n_fresh, int), 0
            for n_g, positions, _, _ in fl.groups:
                fo[positions] = st + n_g * np.arange(len(positions))
                fs[positions] = n_g
                st += n_g * len(positions)
            fresh_layout = _Layout(fo, fs)
        base = (0 if fresh_layout is None else int(fresh_layout.sizes.sum())) + rows_of(fixed_flat)
        segs = real_segments(fresh_layout, 0)
        for e in range(E_m):
            k = model_e[e, 0]
            if cfg.regime == "replace":
                segs.append((k, base + offs[edge_item[e]], m_e[e], E_r + e, -1, m_e[e]))
            elif accumulate:
                segs += [(k, base + g * syn_rows + offs[edge_item[e]], m_e[e], E_r + e, g, m_e[e]) for g in range(T)]
            else:  # subsample: the selected rows are laid out (E_m, m_max)
                segs.append((k, base + e * m_max, m_max, E_r + e, -1, m_e[e]))
        tables = _slots(segs, K)

    def step(carry: Carry, t):
        kt = jax.random.fold_in(k_gens, t)
        acc, buf = carry.accumulated, carry.buffer
        if samples_path:
            fresh = flat_fresh(kt)
            fresh = None if fresh is None else fresh.data
            syn = _sample_items(task, kt, syn_plan, syn_ids, syn_laws, carry.params).data if E_m else None
            if buffered:
                buf = jax.tree_util.tree_map(lambda b, x: jax.lax.dynamic_update_index_in_dim(b, x, t - 1, 0),
                                             buf, syn)
            if accumulate and E_m:
                syn_part = jax.tree_util.tree_map(lambda b: b.reshape((-1,) + b.shape[2:]), buf)
            elif subsample and E_m:
                rows = subsample_rows(t).reshape(-1)
                syn_part = jax.tree_util.tree_map(lambda b: b.reshape((-1,) + b.shape[2:])[rows], buf)
            else:
                syn_part = syn
            coef = jnp.concatenate([real_c, syn_c])
            params = fit_gathered(pool(fresh, None if fixed_flat is None else fixed_flat.data, syn_part),
                                  tables, coef, t if accumulate else None)
            return Carry(params, acc, buf), _outputs(params)
        if subsample:
            real, _ = split(_draw_parts(task, kt, [fresh_part], engine)) if E_r else (None, None)
            stats_syn, coef = None, None
            if E_m:
                syn = _sample_items(task, kt, syn_plan, syn_ids, syn_laws, carry.params).data
                buf = jax.tree_util.tree_map(lambda b, x: jax.lax.dynamic_update_index_in_dim(b, x, t - 1, 0),
                                             buf, syn)
                rows = subsample_rows(t)
                sub = jax.tree_util.tree_map(lambda b: b.reshape((-1,) + b.shape[2:])[rows], buf)  # (E_m, m_max, ...)
                stats_syn = jax.vmap(task.statistics)(sub, jnp.asarray(sel_valid, dtype))
                coef = syn_c
            stats = combine([(real, real_c, real_e[:, 0]), (stats_syn, coef, model_e[:, 0])])
            params = jax.vmap(task.fit)(stats)
            return Carry(params, acc, buf), _outputs(params)
        real, syn = split(_draw_parts(task, kt, [fresh_part, (syn_src, syn_sizes, syn_laws, carry.params)], engine))
        coef = None
        if E_m:
            if accumulate:
                acc = _add(acc, syn)
                syn = acc
            if shared:
                syn = _take(syn, edge_item)
            if cfg.loss_scale == "mean":
                batches = t.astype(dtype) if accumulate else 1.0
                coef = syn_w / (m[model_e[:, 1]] * batches)
            else:
                coef = syn_w
        stats = combine([(real, real_c, real_e[:, 0]), (syn if E_m else None, coef, model_e[:, 0])])
        params = jax.vmap(task.fit)(stats)
        return Carry(params, acc, buf), _outputs(params)

    def _outputs(params):
        tr = _trace(task, params)
        if not cfg.extras:
            return tr
        return tr, _extras(task, params, cfg, data_params, data_laws)

    acc0 = buf0 = None
    if accumulate and E_m and not samples_path:
        shape = jax.eval_shape(
            lambda: _draw_parts(task, k_gens, [(syn_src, syn_sizes, syn_laws, params0)], engine))
        acc0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shape)
    if buffered:
        buf0 = jax.tree_util.tree_map(lambda s: jnp.zeros((max(T, 1),) + s.shape, s.dtype), syn_layout)
    ts = jnp.arange(1, T + 1)
    outs = scan_generations(step, Carry(params0, acc0, buf0), ts, cfg.checkpoint)
    first = _outputs(params0)
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first, outs)


class _Layout(NamedTuple):
    """Static row layout of items in a flat sample pool (offsets and sizes per item)."""

    offsets: np.ndarray
    sizes: np.ndarray


def scan_generations(step, carry, ts: jax.Array, checkpoint: bool):
    """``lax.scan(step, carry, ts)``'s stacked outputs, optionally with sqrt(T) memory under AD.

    Without ``checkpoint`` reverse-mode differentiation stores every
    generation's residuals (the drawn statistics and factorizations: about
    ``E (d^2 + d) + K d^2`` numbers a generation for E edges), ``O(T)``.
    With it, generations are scanned in ``ceil(T / B)`` blocks of
    ``B = ceil(sqrt(T))``, block and step both under ``jax.checkpoint``: the
    backward pass keeps one carry per block and, while it replays a block, one
    carry per step, about ``2 sqrt(T)`` carries (``K d`` numbers each, more
    under ``accumulate``) instead of ``T`` generations of residuals, for
    about one extra forward pass. The forward values are the same.
    """
    if not checkpoint or len(ts) < 2:
        return jax.lax.scan(step, carry, ts)[1]
    T = len(ts)
    B = int(np.ceil(np.sqrt(T)))
    step = jax.checkpoint(step, prevent_cse=False)

    @jax.checkpoint
    def block(c, ts_block):
        return jax.lax.scan(step, c, ts_block)

    full = (T // B) * B
    carry, out = jax.lax.scan(block, carry, ts[:full].reshape(T // B, B))
    out = jax.tree_util.tree_map(lambda x: x.reshape((full,) + x.shape[2:]), out)
    if full == T:
        return out
    _, rest = block(carry, ts[full:])
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), out, rest)

