"""One replicate of an ecosystem: generation 0, then ``lax.scan`` over generations.

:func:`simulate_replicate` is the pure building block behind
:func:`collapse_jax.simulate`, :func:`collapse_jax.analyze`, the Monte Carlo
objectives and :func:`collapse_jax.sweep`; it can be ``vmap``-ed, ``jit``-ed
and differentiated with respect to the ecosystem's weights.
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
from collapse_jax.engine.draws import take as _take

__all__ = ["Config", "Carry", "Trace", "simulate_replicate", "scan_generations"]


class Config(NamedTuple):
    """Static options of a simulation (hashable: part of the compile cache key)."""

    generations: int
    regime: str = "replace"
    pool: str = "independent"
    loss_scale: str = "mean"
    engine: str = "suffstat"
    checkpoint: bool = False  # rematerialize generations under reverse-mode AD (see scan_generations)


class Carry(NamedTuple):
    params: Any        # per-model parameters, stacked on a leading K axis
    accumulated: Any   # accumulated synthetic statistics (accumulate regime) or None


class Trace(NamedTuple):
    error: jax.Array       # (K,) excess risk per model
    dispersion: jax.Array  # () mean squared distance of the models to their average
    cosine: jax.Array      # () mean pairwise cosine similarity of the models


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


def simulate_replicate(eco: Ecosystem, task, key: jax.Array, cfg: Config) -> Trace:
    """One replicate: returns a :class:`Trace` with a leading ``T + 1`` axis.

    This is the pure building block behind :func:`simulate`; it can be
    ``vmap``-ed, ``jit``-ed and differentiated with respect to ``eco``'s
    weights (pathwise gradients through the reparameterized samplers).
    """
    K, engine = eco.K, cfg.engine
    dtype = jnp.result_type(float)
    R, W = eco.R.astype(dtype), eco.W.astype(dtype)

    data_laws = task.data_laws(eco)
    data_params = task.data_params(eco)
    syn_laws = task.synthetic_laws(eco)
    n_data = np.asarray(eco.n, float)
    m = np.asarray(eco.n_synthetic, float)

    real_e = np.asarray(eco.real_edges, int).reshape(-1, 2)
    model_e = np.asarray(eco.model_edges, int).reshape(-1, 2)
    is_fresh = np.asarray(eco.fresh, bool)
    fresh_e = np.flatnonzero(is_fresh[real_e[:, 1]]) if len(real_e) else np.zeros(0, int)
    fixed_e = np.flatnonzero(~is_fresh[real_e[:, 1]]) if len(real_e) else np.zeros(0, int)
    fixed_src = np.unique(real_e[fixed_e, 1]) if len(fixed_e) else np.zeros(0, int)

    k_fixed, k_zero, k_gens = jax.random.split(key, 3)
    sizes_data = list(eco.n)

    # Fixed data nodes: drawn once per replicate, reused by every consumer.
    fixed_stats = None
    if len(fixed_src):
        fixed_stats = _draw_items(task, k_fixed, _plan(fixed_src, sizes_data, data_laws),
                                  fixed_src, data_laws, data_params, engine)
        fixed_pos = np.searchsorted(fixed_src, real_e[fixed_e, 1])
    fresh_part = (real_e[fresh_e, 1], sizes_data, data_laws, data_params)
    n_fresh = len(fresh_e)

    def split(drawn):
        """Drawn items ``[fresh real edges..., rest...]`` -> (stats per real edge in edge order, rest)."""
        fresh = jax.tree_util.tree_map(lambda x: x[:n_fresh], drawn) if n_fresh else None
        rest = jax.tree_util.tree_map(lambda x: x[n_fresh:], drawn) if drawn is not None else None
        if fixed_stats is None:  # every real edge is fresh: edge order is item order
            return fresh, rest
        parts = ([fresh] if n_fresh else []) + [jax.tree_util.tree_map(lambda x: x[fixed_pos], fixed_stats)]
        return _take(_concat(parts), np.argsort(np.concatenate([fresh_e, fixed_e]))), rest

    def real_coef(weights):
        if not len(real_e):
            return None
        w = weights[real_e[:, 0], real_e[:, 1]]
        return w / n_data[real_e[:, 1]] if cfg.loss_scale == "mean" else w

    def combine(pieces):
        """``pieces``: (stats per edge, coefficients, consumers) or None -> (K, ...) statistics."""
        pieces = [p for p in pieces if p[0] is not None and len(p[2])]
        return _combine(_concat([p[0] for p in pieces]), jnp.concatenate([p[1] for p in pieces]),
                        np.concatenate([p[2] for p in pieces]), K)

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
    real0, truth0 = split(_draw_parts(task, k_zero, [fresh_part, truth_part], engine))
    c0 = 1.0 / np.asarray(sizes0, float) if cfg.loss_scale == "mean" else np.ones(len(no_real))
    stats0 = combine([(real0, real_coef(real_rel), real_e[:, 0]),
                      (truth0 if len(no_real) else None, jnp.asarray(c0, dtype), no_real)])
    params0 = jax.vmap(task.fit)(stats0)

    # ---------------------------------------------------------- generations
    # One draw per generation for the fresh real edges and the synthetic batches.
    shared = cfg.pool == "shared"
    producers = np.unique(model_e[:, 1]) if len(model_e) else np.zeros(0, int)
    if shared:
        syn_src = producers
        edge_item = np.searchsorted(producers, model_e[:, 1]) if len(model_e) else None
    else:
        syn_src = model_e[:, 1] if len(model_e) else np.zeros(0, int)
        edge_item = None
    syn_sizes = list(eco.n_synthetic)
    real_c = real_coef(R)
    syn_w = W[model_e[:, 0], model_e[:, 1]] if len(model_e) else None
    accumulate = cfg.regime == "accumulate"

    def step(carry: Carry, t):
        real, syn = split(_draw_parts(task, jax.random.fold_in(k_gens, t),
                                      [fresh_part, (syn_src, syn_sizes, syn_laws, carry.params)], engine))
        acc = carry.accumulated
        coef = None
        if len(model_e):
            if accumulate:
                acc = _add(acc, syn)
                syn = acc
            if edge_item is not None:
                syn = _take(syn, edge_item)
            if cfg.loss_scale == "mean":
                batches = t.astype(dtype) if accumulate else 1.0
                coef = syn_w / (m[model_e[:, 1]] * batches)
            else:
                coef = syn_w
        stats = combine([(real, real_c, real_e[:, 0]), (syn if len(model_e) else None, coef, model_e[:, 0])])
        params = jax.vmap(task.fit)(stats)
        return Carry(params, acc), _trace(task, params)

    acc0 = None
    if accumulate and len(model_e):
        shape = jax.eval_shape(
            lambda: _draw_parts(task, k_gens, [(syn_src, syn_sizes, syn_laws, params0)], engine))
        acc0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shape)
    ts = jnp.arange(1, cfg.generations + 1)
    traces = scan_generations(step, Carry(params0, acc0), ts, cfg.checkpoint)
    first = _trace(task, params0)
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first, traces)


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

