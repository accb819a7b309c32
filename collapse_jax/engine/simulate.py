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

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.ecosystem import Ecosystem
from collapse_jax.engine.results import SimulationResult
from collapse_jax.engine.scan import Config, simulate_replicate
from collapse_jax.options import Options
from collapse_jax.theory.spectral import spectral, spectral_plan

__all__ = ["simulate", "make_config", "check_replicates", "as_key"]


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
    opts = Options(regime, pool, loss_scale, engine).check()
    if opts.regime == "accumulate_subsample":
        raise ValueError("regime='accumulate_subsample' is not implemented by this engine yet")
    check_generations(generations)
    if engine == "auto":
        engine = "suffstat" if getattr(task, "supports_suffstat", False) else "samples"
    elif engine == "suffstat" and not getattr(task, "supports_suffstat", False):
        raise ValueError(f"engine='suffstat' is not available for {type(task).__name__}; use 'samples'")
    task.check(eco)
    return Config(int(generations), regime, pool, loss_scale, engine)


def check_generations(generations) -> None:
    """Raise ``ValueError`` unless ``generations`` is a non-negative integer."""
    if isinstance(generations, bool) or not isinstance(generations, (int, np.integer)) or generations < 0:
        raise ValueError(f"generations must be a non-negative integer, got {generations!r}")


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
    return trace, spectral(eco, task, diagnostics, cfg.loss_scale, cfg.pool)


_simulate_jit = jax.jit(_simulate_impl, static_argnums=(3, 4, 5, 6))
