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
* ``regime="accumulate_subsample"`` (Kazdan et al.): every edge j -> k keeps
  the pool of j's synthetic batches since generation 1 (its own batches under
  ``pool="independent"``, j's published ones under ``"shared"``), ``t * m_j``
  samples at generation t, and k trains on ``m_j`` of them drawn uniformly
  without replacement, anew every generation and independently per edge; the
  edge's coefficient is that of ``replace`` (``w / m_j`` or ``w``). It needs
  materialized samples (``engine="samples"``, which "auto" picks); the
  subsample draws use their own stream (``fold_in(replicate key, 7)``, then
  ``fold_in(., t)``), so the data drawn are those of ``replace``: at t = 1
  the two regimes fit the same samples.
* Memory: "accumulate_subsample", and "accumulate" for a task without
  additive statistics (``task.additive = False``), keep a buffer of every
  generation's synthetic samples in the scan carry: ``T x sum(m)`` samples
  per replicate, so memory grows linearly with T (and the non-additive
  "accumulate" refits on all of them, so its time grows as T^2).
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

Compiled code is cached on disk across processes (:mod:`collapse_jax.compile_cache`:
``~/.cache/collapse_jax/xla``, ``COLLAPSE_JAX_CACHE=0`` turns it off), set
only while :func:`simulate` runs. What triggers a recompile: a new topology, sample size, dtype, task ``dim``
(or any other static field of the task, or a new task class), adding or
removing a node attribute or changing its shape, or any of the keyword options
(``generations``, ``replicates``, ``regime``, ``pool``, ``loss_scale``,
``engine``, ``batch_size``, ``diagnostics``, ``return_params``, ``metrics``).
New weights, alpha, attribute values (covariances, designs, thetas), noise
or ridge reuse the compiled function.
"""


from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax import compile_cache
from collapse_jax.ecosystem import Ecosystem
from collapse_jax.engine.results import SimulationResult
from collapse_jax.engine.scan import HOMOGENIZATION, Config, available_metrics, simulate_replicate
from collapse_jax.options import Options
from collapse_jax.theory.spectral import spectral, spectral_plan

__all__ = ["simulate", "make_config", "check_replicates", "check_task", "as_key", "map_replicates",
           "default_batch_size", "cpu_batch_size", "replicate_footprint", "MAX_REPLICATES", "CPU_BATCH_FLOATS"]

# Replicate ids are uint32 (``fold_in(key, i)``): at most 2**32 replicates per run.
MAX_REPLICATES = 2**32

# On CPU without a batch_size, replicates are vectorized in batches that handle about this many
# numbers a generation (cpu_batch_size). Measured on the standard study (K = 16, d = 32,
# n = m = 128, R = 1024, T = 20; 2-core CPU, 4 alternating runs, median CPU s): all 1024 at once
# 19.0 s, 8 at a time 9.7, 16: 9.0, 32: 9.0, 64: 11.2 (all at once, one generation's random words
# alone are 119 MB, far out of the caches); the budget gives 15 there, raised to the floor of 16.
# Small problems keep all replicates in one vmap: a ring of 3 at d = 3, R = 4000, ran in 0.064 s
# so against 0.086 s in batches of 16.
CPU_BATCH_FLOATS = 2**20

# The protocol methods the engine calls (tasks/base.py); a task must have all of them.
_REQUIRED = ("check", "truth_param", "data_params", "data_laws", "synthetic_laws", "truth_law", "risk", "vector")


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
    return_params: bool = False,
    metrics: Optional[Sequence[str]] = None,
) -> SimulationResult:
    """Simulate ``replicates`` independent histories of the ecosystem.

    Args:
        eco: the interaction graph.
        task: the estimator, e.g. :class:`collapse_jax.LinearRegression`.
        key: a PRNG key (``jax.random.key``); required, never defaulted.
        generations: number of generations T after generation 0.
        replicates: number of independent replicates R.
        regime: "replace", "accumulate" or "accumulate_subsample" (THEORY section 1).
        pool: "independent" or "shared" synthetic batches.
        loss_scale: "mean" or "sum".
        engine: "suffstat" (exact sufficient-statistic sampling), "samples"
            (materialized data) or "auto" (suffstat when the task supports it
            and the regime allows it).
        batch_size: replicates per vectorized batch (``lax.map`` over
            batches) to bound memory. None (default): on CPU, batches sized
            to stay in the caches (:func:`default_batch_size`: 16 replicates
            for K = 16 models at d = 32, about 2x faster there than all at
            once; small problems run all at once); on GPU and TPU all at
            once. The results do not depend on it.
        diagnostics: also return the spectral diagnostics of
            :func:`collapse_jax.diagnostics.spectral` (``rho_W``, ``slem_W``,
            ``rho_Q``, large-sample ``stationary_error``), computed inside the
            same compiled call.
        return_params: also return the fitted parameters, ``res.params``: the
            task's param pytree with leading ``(R, T + 1, K)`` axes (memory
            ``R (T + 1) K p`` numbers).
        metrics: which per-model metrics to compute every generation, besides
            the homogenization metrics ``"dispersion"`` and ``"cosine"``
            (always computed): names of ``task.metrics`` entries and
            ``"task_error"`` (the error of every model on every data node's
            task, for tasks with ``risk_on``; ``K S`` risks per generation, so
            only on request). None (default): every entry of ``task.metrics``
            (cheap scalars) but not ``"task_error"``; ``()``: none (fastest).

    Returns:
        A :class:`SimulationResult` with ``error`` of shape ``(R, T + 1, K)``,
        ``metrics`` ``{"dispersion", "cosine"}`` of shape ``(R, T + 1)``, each
        requested task metric ``(R, T + 1, K)`` and ``"task_error"``
        ``(R, T + 1, K, S)``; with ``return_params=True``, ``params``; with
        ``diagnostics=True`` its ``diagnostics`` is a dict of arrays.

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
    for name, flag in (("diagnostics", diagnostics), ("return_params", return_params)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    offered = available_metrics(task, eco)
    if metrics is None:
        wanted = tuple(n for n in offered if n != "task_error")
    else:
        if isinstance(metrics, str):
            raise ValueError(f"metrics must be a sequence of names, got the string {metrics!r}")
        wanted = tuple(metrics)
        for name in wanted:
            if name not in offered + HOMOGENIZATION:
                raise ValueError(f"metrics: {name!r} is not offered by {type(task).__name__} on this ecosystem "
                                 f"(available: {', '.join(HOMOGENIZATION + offered)})")
    cfg = cfg._replace(metrics=tuple(n for n in wanted if n not in HOMOGENIZATION),
                       return_params=bool(return_params))
    plan = None
    if diagnostics:
        plan = spectral_plan(eco, task)
    # Compiled code is kept in the user cache directory (collapse_jax.compile_cache; COLLAPSE_JAX_CACHE=0
    # turns it off), set only for this call: the caller's JAX options are as they were when it returns.
    with compile_cache.scoped():
        out = _simulate_jit(eco, task, key, cfg, int(replicates), batch_size, plan)
    out, diag = out if diagnostics else (out, None)
    trace, extras = out if cfg.extras else (out, None)
    metrics_out = {"dispersion": trace.dispersion, "cosine": trace.cosine}
    if extras is not None:
        metrics_out.update(extras.metrics)
    return SimulationResult(
        error=trace.error,
        metrics=metrics_out,
        models=eco.models,
        config=dict(cfg._asdict(), replicates=int(replicates)),
        diagnostics=diag,
        params=None if extras is None else extras.params,
    )


def make_config(eco, task, generations, regime, pool, loss_scale, engine) -> Config:
    """Validate the options and the (ecosystem, task) pair; return a :class:`Config`."""
    if not isinstance(eco, Ecosystem):
        raise ValueError(f"eco must be a collapse_jax.Ecosystem, got {type(eco).__name__}")
    check_task(task)
    Options(regime, pool, loss_scale, engine).check()
    check_generations(generations)
    # Sample buffers (non-additive tasks, accumulate_subsample) need materialized data.
    needs_samples = regime == "accumulate_subsample" or not getattr(task, "additive", True)
    suffstat_ok = getattr(task, "supports_suffstat", False) and not needs_samples
    if engine == "auto":
        engine = "suffstat" if suffstat_ok else "samples"
    elif engine == "suffstat" and not suffstat_ok:
        why = ("regime='accumulate_subsample' subsamples materialized data" if regime == "accumulate_subsample"
               else f"it is not available for {type(task).__name__}")
        raise ValueError(f"engine='suffstat': {why}; use engine='samples' (or 'auto')")
    task.check(eco)
    return Config(int(generations), regime, pool, loss_scale, engine)


def check_task(task) -> None:
    """Raise ``ValueError`` unless ``task`` is an estimator (the protocol of :mod:`collapse_jax.tasks.base`)."""
    if task is None:
        raise ValueError("task is required, e.g. cj.LinearRegression(dim=10)")
    missing = [m for m in _REQUIRED if not callable(getattr(task, m, None))]
    additive = getattr(task, "additive", True)
    for m in (("draw", "fit") if additive else ("sample", "fit_samples")):
        if not callable(getattr(task, m, None)):
            missing.append(m)
    if missing:
        raise ValueError(f"task must be an estimator (collapse_jax.tasks.base.Task); "
                         f"{type(task).__name__} lacks {', '.join(missing)}")


def check_generations(generations) -> None:
    """Raise ``ValueError`` unless ``generations`` is a non-negative integer."""
    if isinstance(generations, bool) or not isinstance(generations, (int, np.integer)) or generations < 0:
        raise ValueError(f"generations must be a non-negative integer, got {generations!r}")


def check_replicates(replicates, batch_size) -> None:
    """Raise ``ValueError`` unless ``replicates`` >= 1 and ``batch_size`` is None or >= 1 (integers)."""
    if isinstance(replicates, bool) or not isinstance(replicates, (int, np.integer)) or replicates < 1:
        raise ValueError(f"replicates must be a positive integer, got {replicates!r}")
    if replicates > MAX_REPLICATES:
        raise ValueError(f"replicates must be at most 2**32 = {MAX_REPLICATES} (replicate ids are uint32), "
                         f"got {replicates}")
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be None or a positive integer, got {batch_size!r}")


def as_key(key) -> jax.Array:
    """Accept a typed key or a legacy ``uint32[2]`` key; return a typed key."""
    if key is None:
        raise ValueError("key is required: pass a PRNG key, e.g. jax.random.key(0) (never defaulted)")
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key, got shape {key.shape}")
        return key
    try:
        arr = jnp.asarray(key)
    except (TypeError, ValueError):
        raise ValueError(f"key must be a PRNG key from jax.random.key(seed), got {type(key).__name__}") from None
    if arr.dtype == jnp.uint32 and arr.shape == (2,):
        return jax.random.wrap_key_data(arr)
    raise ValueError("key must be a PRNG key from jax.random.key(seed)")


def _simulate_impl(eco, task, key, cfg: Config, replicates: int, batch_size, diagnostics=None):
    """The jitted body; ``diagnostics`` (static) is None or a plan from
    :func:`collapse_jax.diagnostics.spectral_plan`, in which case it returns
    ``(trace, spectral diagnostics)``."""
    def one(i):
        return simulate_replicate(eco, task, jax.random.fold_in(key, i), cfg)

    trace = map_replicates(one, replicates, default_batch_size(replicates, batch_size, eco, task))
    if diagnostics is None:
        return trace
    return trace, spectral(eco, task, diagnostics, cfg.loss_scale, cfg.pool)


def default_batch_size(replicates: int, batch_size: Optional[int], eco: Ecosystem, task) -> Optional[int]:
    """The batch size :func:`map_replicates` gets: ``batch_size`` if given; else, on CPU,
    :func:`cpu_batch_size` of this ecosystem and task's :func:`replicate_footprint`; elsewhere None
    (all at once). Decided at trace time from ``jax.default_backend()``."""
    if batch_size is not None or jax.default_backend() != "cpu":
        return batch_size
    return cpu_batch_size(replicates, replicate_footprint(eco, task))


def cpu_batch_size(replicates: int, footprint: int) -> int:
    """Batches of about :data:`CPU_BATCH_FLOATS` / ``footprint`` replicates (at least 16), split evenly.

    ``footprint``: an estimate of the numbers one replicate handles per generation.

    Example:
        >>> cpu_batch_size(1024, 68_640), cpu_batch_size(17, 68_640), cpu_batch_size(4000, 84)
        (16, 9, 4000)
    """
    width = max(CPU_BATCH_FLOATS // max(int(footprint), 1), 16)
    batches = -(-int(replicates) // width)
    return -(-int(replicates) // batches)


def replicate_footprint(eco: Ecosystem, task) -> int:
    """Numbers one replicate handles per generation, estimated: ``(E + K) (p^2 + p)`` for ``E`` edges,
    ``K`` models and ``p`` parameters per model (a Gram-like statistic per data set and per fit)."""
    p = int(np.prod(jax.eval_shape(task.vector, task.truth_param()).shape))
    edges = len(np.asarray(eco.real_edges).reshape(-1, 2)) + len(np.asarray(eco.model_edges).reshape(-1, 2))
    return (edges + eco.K) * (p * p + p)


def map_replicates(one, replicates: int, batch_size: Optional[int]):
    """``one(i)`` for replicate ids ``i = 0 .. replicates - 1`` (uint32), stacked on a leading axis.

    Bit-identical whatever ``batch_size`` and however many replicates: XLA
    compiles a ``vmap`` of width 1 differently from a wider one (a batched
    ``dot_general`` with a batch of 1 is canonicalized to an unbatched dot,
    whose emitter sums in another order: float32 results then differ by a few
    ulps, e.g. the samples engine's ``X'X``). So no vmapped call is ever of
    width 1: without ``batch_size`` (or ``batch_size >= replicates``) all
    replicates are one ``vmap``, padded to 2 when there is one; with it, the
    ids are padded to a multiple of ``max(batch_size, 2)`` and ``lax.map``-ed
    over chunks of that width (no width-1 remainder chunk). The padded
    replicates (at most ``width - 1``) are computed and dropped. Widths of 2
    and more have given identical per-lane results (tested in
    ``tests/test_simulate.py``); this is an observation about XLA's CPU and
    GPU code generation, not a guarantee of the compiler.
    """
    if batch_size is None or batch_size >= replicates:
        width, chunks = max(replicates, 2), 1
    else:
        width = max(int(batch_size), 2)
        chunks = -(-replicates // width)
    ids = jnp.arange(width * chunks, dtype=jnp.uint32)
    if chunks == 1:
        out = jax.vmap(one)(ids)
    else:
        out = jax.lax.map(jax.vmap(one), ids.reshape(chunks, width))
        out = jax.tree_util.tree_map(lambda x: x.reshape((chunks * width,) + x.shape[2:]), out)
    if width * chunks == replicates:
        return out
    return jax.tree_util.tree_map(lambda x: x[:replicates], out)


_simulate_jit = jax.jit(_simulate_impl, static_argnums=(3, 4, 5, 6))
