"""The Monte Carlo engine: generations by ``lax.scan``, models and replicates by ``vmap``.

THEORY.md section 1 is the contract; the choices it leaves open are made here:

* Loss weights, never sample counts: an edge ``u -> k`` of effective weight
  ``w`` contributes ``w / n_u * (X'X, X'y)`` (``loss_scale="mean"``) or
  ``w * (X'X, X'y)`` (``"sum"``) to model k's normal equations, so results are
  differentiable in the weights.
* Generation 0: a model with real in-edges fits on them with its real weights
  renormalized to sum 1; one without fits on ``n0`` fresh samples of the truth.
* Real data are never accumulated: a fresh node is drawn anew for every
  consumer and generation, a fixed node once per replicate, before generation 0.
* ``regime="accumulate"`` keeps every synthetic batch since generation 1; with
  ``loss_scale="mean"`` an edge's weight is shared by the union of its batches
  (divided by ``t * m``), with ``"sum"`` every sample counts once.
* ``pool="shared"``: a producer publishes one batch per generation that all its
  consumers see; ``"independent"``: every edge draws its own batch.
* Keys: replicate ``i`` uses ``fold_in(key, i)``; inside it, generation ``t``
  uses ``fold_in(., t)`` and every data set drawn in it ``fold_in(., item)``,
  items numbered fresh real edges first, then synthetic batches (generation
  0: then the truth samples). The first ``r`` replicates of a run therefore
  do not depend on how many replicates it has.
* Edges that do not exist cost nothing: draws run over edge lists and combine
  with ``segment_sum``.
* Errors that overflow are ``inf``; a NaN produced downstream of an overflow
  (``inf - inf`` in a diverging fit) is reported as ``inf`` too.

What triggers a recompile: a new topology, sample size, dtype, task ``dim`` or
any of the keyword options (``generations``, ``replicates``, ``regime``,
``pool``, ``loss_scale``, ``engine``, ``batch_size``). New weights, alpha,
covariances, thetas, noise or ridge reuse the compiled function.
"""

from __future__ import annotations

import collections
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.ecosystem import Ecosystem
from collapse_jax.results import SimulationResult

__all__ = ["simulate", "simulate_replicate", "REGIMES", "POOLS", "LOSS_SCALES", "ENGINES"]

REGIMES = ("replace", "accumulate")
POOLS = ("independent", "shared")
LOSS_SCALES = ("mean", "sum")
ENGINES = ("auto", "suffstat", "samples")


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


def simulate(
    eco: Ecosystem,
    task,
    key: jax.Array,
    *,
    generations: int,
    replicates: int = 1,
    regime: str = "replace",
    pool: str = "independent",
    loss_scale: str = "mean",
    engine: str = "auto",
    batch_size: Optional[int] = None,
    diagnostics: bool = False,
) -> SimulationResult:
    """Simulate ``replicates`` independent histories of the ecosystem.

    Args:
        eco: the interaction graph.
        task: the estimator, e.g. :class:`collapse_jax.LinearRegression`.
        key: a PRNG key (``jax.random.key``); required, never defaulted.
        generations: number of generations T after generation 0.
        replicates: number of independent replicates R.
        regime: "replace" or "accumulate" (THEORY section 1).
        pool: "independent" or "shared" synthetic batches.
        loss_scale: "mean" or "sum".
        engine: "suffstat" (exact sufficient-statistic sampling), "samples"
            (materialized data) or "auto" (suffstat when the task supports it).
        batch_size: replicates per vectorized batch (``lax.map``) to bound
            memory; None vectorizes all of them at once.
        diagnostics: also return the spectral diagnostics of
            :func:`collapse_jax.diagnostics.spectral` (``rho_W``, ``slem_W``,
            ``rho_Q``, large-sample ``stationary_error``), computed inside the
            same compiled call.

    Returns:
        A :class:`SimulationResult` with ``error`` of shape ``(R, T + 1, K)``
        and ``metrics`` ``{"dispersion", "cosine"}`` of shape ``(R, T + 1)``;
        with ``diagnostics=True`` its ``diagnostics`` is a dict of arrays.

    Example:
        >>> import jax, collapse_jax as cj
        >>> eco = cj.graphs.chain(3, n=50, m=50)
        >>> res = cj.simulate(eco, cj.LinearRegression(dim=5), jax.random.key(0),
        ...                   generations=10, replicates=100)
        >>> res.error.shape
        (100, 11, 3)
    """
    cfg = make_config(eco, task, generations, regime, pool, loss_scale, engine)
    check_replicates(replicates, batch_size)
    key = as_key(key)
    plan = None
    if diagnostics:
        from collapse_jax.diagnostics import spectral_plan

        plan = spectral_plan(eco, task)
    out = _simulate_jit(eco, task, key, cfg, int(replicates), batch_size, plan)
    trace, diag = out if diagnostics else (out, None)
    return SimulationResult(
        error=trace.error,
        metrics={"dispersion": trace.dispersion, "cosine": trace.cosine},
        models=eco.models,
        config=dict(cfg._asdict(), replicates=int(replicates)),
        diagnostics=diag,
    )


def make_config(eco, task, generations, regime, pool, loss_scale, engine) -> Config:
    """Validate the options and the (ecosystem, task) pair; return a :class:`Config`."""
    if not isinstance(eco, Ecosystem):
        raise ValueError(f"eco must be a collapse_jax.Ecosystem, got {type(eco).__name__}")
    for name, value, allowed in (
        ("regime", regime, REGIMES), ("pool", pool, POOLS),
        ("loss_scale", loss_scale, LOSS_SCALES), ("engine", engine, ENGINES),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if isinstance(generations, bool) or not isinstance(generations, (int, np.integer)) or generations < 0:
        raise ValueError(f"generations must be a non-negative integer, got {generations!r}")
    if engine == "auto":
        engine = "suffstat" if getattr(task, "supports_suffstat", False) else "samples"
    elif engine == "suffstat" and not getattr(task, "supports_suffstat", False):
        raise ValueError(f"engine='suffstat' is not available for {type(task).__name__}; use 'samples'")
    task.check(eco)
    return Config(int(generations), regime, pool, loss_scale, engine)


def check_replicates(replicates, batch_size) -> None:
    """Raise ``ValueError`` unless ``replicates`` >= 1 and ``batch_size`` is None or >= 1 (integers)."""
    if isinstance(replicates, bool) or not isinstance(replicates, (int, np.integer)) or replicates < 1:
        raise ValueError(f"replicates must be a positive integer, got {replicates!r}")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be None or a positive integer, got {batch_size!r}")


def as_key(key) -> jax.Array:
    """Accept a typed key or a legacy ``uint32[2]`` key; return a typed key."""
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got shape {key.shape}")
        return key
    arr = jnp.asarray(key)
    if arr.dtype == jnp.uint32 and arr.shape == (2,):
        return jax.random.wrap_key_data(arr)
    raise ValueError("key must be a PRNG key from jax.random.key(seed)")


def _simulate_impl(eco, task, key, cfg: Config, replicates: int, batch_size, diagnostics=None):
    """The jitted body; ``diagnostics`` (static) is None or a plan from
    :func:`collapse_jax.diagnostics.spectral_plan`, in which case it returns
    ``(trace, spectral diagnostics)``."""
    def one(i):
        return simulate_replicate(eco, task, jax.random.fold_in(key, i), cfg)

    ids = jnp.arange(replicates, dtype=jnp.uint32)
    if batch_size is None or batch_size >= replicates:
        trace = jax.vmap(one)(ids)
    else:
        trace = jax.lax.map(one, ids, batch_size=batch_size)
    if diagnostics is None:
        return trace
    from collapse_jax.diagnostics import spectral

    return trace, spectral(eco, task, diagnostics, cfg.loss_scale, cfg.pool)


_simulate_jit = jax.jit(_simulate_impl, static_argnums=(3, 4, 5, 6))


# --------------------------------------------------------------------- engine
class _Draws(NamedTuple):
    """A static plan to draw one data set per item, grouped by source signature."""

    groups: tuple   # of (n, item positions, source ids, unique source ids)
    order: np.ndarray  # inverse permutation back to item order


def _plan(sources: np.ndarray, sizes, laws) -> _Draws:
    """Group items whose sources share sample size and law structure (one vmap each)."""
    sig = {}
    for pos, s in enumerate(sources):
        law = laws[s]
        leaves, tdef = jax.tree_util.tree_flatten(law)
        key = (sizes[s], tdef, tuple(np.shape(x) for x in leaves))
        sig.setdefault(key, []).append(pos)
    groups, flat = [], []
    for (n, _, _), positions in sig.items():
        positions = np.asarray(positions, int)
        src = sources[positions]
        uniq, local = np.unique(src, return_inverse=True)
        groups.append((n, positions, local, uniq))
        flat.extend(positions)
    order = np.argsort(np.asarray(flat, int)) if flat else np.zeros(0, int)
    return _Draws(tuple(groups), order)


def _draw_items(task, key, plan: _Draws, item_ids, laws, params, engine):
    """Draw one data set per item; returns statistics stacked in item order."""
    outs = []
    for n, positions, local, uniq in plan.groups:
        law_stack = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[laws[s] for s in uniq])
        keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(item_ids[positions], jnp.uint32))
        theta = jax.tree_util.tree_map(lambda p: p[uniq[local]], params)

        def draw(k, li, th, law_stack=law_stack, n=n):
            law = jax.tree_util.tree_map(lambda x: x[li], law_stack)
            return task.draw(k, law, th, n, engine)

        outs.append(jax.vmap(draw)(keys, jnp.asarray(local), theta))
    stats = _concat(outs)
    if np.array_equal(plan.order, np.arange(len(plan.order))):
        return stats  # one group in item order: no permutation copy
    return jax.tree_util.tree_map(lambda x: x[plan.order], stats)


def _concat(trees):
    return trees[0] if len(trees) == 1 else jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *trees)


def _draw_parts(task, key, parts, engine):
    """Draw the items of several source families, in order, numbered 0, 1, ... across them.

    ``parts`` is a sequence of ``(sources, sizes, laws, params)``: item ``i``
    of a part draws from source ``sources[i]`` (an index into that part's
    ``sizes``, ``laws`` and stacked ``params``). When the families' params
    have the same structure (data nodes and models do for every task here)
    they are pooled, so that items of equal signature across families share
    one ``vmap`` (one compiled draw, no concatenation). The result does not
    depend on the pooling: an item's draw depends only on
    ``fold_in(key, item)``, its law, parameter and size.
    """
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return None
    shapes = [jax.tree_util.tree_map(lambda x: (x.shape[1:], x.dtype), p[3]) for p in parts]
    if all(sh == shapes[0] for sh in shapes):
        offsets = np.cumsum([0] + [len(p[1]) for p in parts])
        sources = np.concatenate([np.asarray(p[0], int) + o for p, o in zip(parts, offsets)])
        sizes = [n for p in parts for n in p[1]]
        laws = [law for p in parts for law in p[2]]
        params = _concat([p[3] for p in parts])
        return _draw_items(task, key, _plan(sources, sizes, laws), np.arange(len(sources)), laws, params, engine)
    outs, start = [], 0
    for sources, sizes, laws, params in parts:
        ids = start + np.arange(len(sources))
        outs.append(_draw_items(task, key, _plan(np.asarray(sources, int), sizes, laws), ids, laws, params, engine))
        start += len(sources)
    return _concat(outs)


def _take(stats, index):
    """``stats[index]`` on every leaf; no copy when ``index`` is ``arange``."""
    if np.array_equal(index, np.arange(len(index))) and all(
            x.shape[0] == len(index) for x in jax.tree_util.tree_leaves(stats)):
        return stats
    return jax.tree_util.tree_map(lambda x: x[index], stats)


def _combine(stats, coef, consumers, K):
    """``sum_e coef[e] * stats[e]`` per consumer: (E, ...) -> (K, ...)."""
    consumers = np.asarray(consumers)
    ordered = bool(np.all(np.diff(consumers) >= 0))

    def one(x):
        c = coef.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
        return jax.ops.segment_sum(c * x, consumers, num_segments=K, indices_are_sorted=ordered)

    return jax.tree_util.tree_map(one, stats)


def _add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


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

