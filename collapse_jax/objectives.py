"""Long-run error of an ecosystem, differentiable in its edge weights and alpha.

Two estimates of the same quantity, the error the models settle at:

* ``kind="stationary"``: the analytic stationary error ``diag(V_inf)`` of
  :func:`collapse_jax.moments.stationary` (THEORY section 4: the Lyapunov
  solution of the large-sample recursion, or with ``exact=True`` of the exact
  finite-sample second-moment operator). Deterministic; exact gradients by
  implicit differentiation. ``inf`` when the ecosystem collapses.
* ``kind="monte_carlo"``: the replicate mean of the error averaged over the
  last ``window`` generations of :func:`collapse_jax.simulate.simulate_replicate`,
  replicates ``vmap``-ed with the keys of :func:`collapse_jax.simulate` (the
  same key gives the same draws: common random numbers across weights).
  Gradients are pathwise: the samplers are reparameterized (the random
  Bartlett factors and normals do not depend on the weights), so for a fixed
  key the estimate is a smooth function of the weights and its gradient is an
  unbiased estimate of the gradient of the expected windowed error.

"Edge weights" are the relative weights ``eco.real_weights`` /
``eco.model_weights`` at the graph's existing edges (``eco.real_edges`` /
``eco.model_edges``); :class:`EdgeWeights` is that view of an ecosystem, and
:func:`with_edge_weights` puts one back, so
``jax.grad(lambda p: long_run_error(with_edge_weights(eco, p), task))(edge_weights(eco))``
differentiates with respect to existing edges only. Differentiating with
respect to ``eco`` itself also works; its gradient at a non-edge is that of
the normalizing sum only and has no meaning.

Reductions over models (``reduce``): ``"mean"`` (default), ``"max"`` (a
subgradient: the gradient of the worst model), ``"none"`` (the ``(K,)``
vector) or a ``(K,)`` array of per-model weights (``sum_k w_k err_k``).

Alphas fixed by definition (a model with no real in-edge has alpha 1, one
with no model in-edge alpha 0) are pinned to constants before anything else
(:func:`collapse_jax.theory.weights.pinned_alpha`), so the gradient with
respect to them is exactly zero for both kinds.

Compilation: :func:`long_run_error` validates its options on the host, then
calls one module-level ``jax.jit`` function whose static arguments are the
topology and sample sizes (the ecosystem's static fields), ``kind``, the
reduction mode, and every option (``loss_scale``, ``pool``, and the Monte
Carlo ``generations``, ``replicates``, ``window``, ``regime``, ``engine``,
``batch_size``, ``checkpoint``); new weights, alpha, task numbers or keys
reuse the compiled function, eagerly or under ``jax.grad``. ``exact=True``
(the stationary error of linear regression's exact finite-sample operator)
runs eagerly: its Gram Monte Carlo is compiled on its own, and it decides
on the host which components diverge. :data:`TRACES` counts the traces.
"""

from __future__ import annotations

import collections
import functools
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.theory import large_sample as ls
from collapse_jax.theory import moments
from collapse_jax.theory.weights import pinned_alpha
from collapse_jax.ecosystem import Ecosystem
from collapse_jax.engine.scan import Trace
from collapse_jax.engine.simulate import _simulate_impl, as_key, check_replicates, make_config

__all__ = ["long_run_error", "EdgeWeights", "edge_weights", "with_edge_weights", "free_alpha", "KINDS", "TRACES"]

TRACES = collections.Counter()  # how often each jitted function was traced (tests count recompilations)

KINDS = ("stationary", "monte_carlo")
REDUCTIONS = ("mean", "max", "none")


class EdgeWeights(NamedTuple):
    """The differentiable weights of an ecosystem at its existing edges.

    Attributes:
        real: ``(E_r,)`` relative weight of each real edge, in ``eco.real_edges`` order.
        model: ``(E_m,)`` relative weight of each model edge, in ``eco.model_edges`` order.
        alpha: ``(K,)`` synthetic share of each model.
    """

    real: jax.Array
    model: jax.Array
    alpha: jax.Array

    def dense(self, eco: Ecosystem) -> tuple:
        """``(real (K, S), model (K, K))`` matrices, zero where there is no edge.

        Example:
            >>> import collapse_jax as cj
            >>> eco = cj.graphs.chain(2, n=50, m=50)
            >>> real, model = edge_weights(eco).dense(eco)
            >>> real.shape, model.shape
            ((2, 1), (2, 2))
        """
        out = with_edge_weights(eco, self)
        return out.real_weights, out.model_weights


def _edge_index(edges, K: int) -> tuple:
    e = np.asarray(edges, int).reshape(-1, 2)
    return e[:, 0], e[:, 1]


def edge_weights(eco: Ecosystem) -> EdgeWeights:
    """The :class:`EdgeWeights` view of ``eco``.

    Example:
        >>> import collapse_jax as cj
        >>> edge_weights(cj.graphs.ring(3, n=50, m=50)).model.shape
        (3,)
    """
    return _edge_weights(eco)


def _edge_weights_impl(eco: Ecosystem) -> EdgeWeights:
    rk, rs = _edge_index(eco.real_edges, eco.K)
    mk, mj = _edge_index(eco.model_edges, eco.K)
    return EdgeWeights(eco.real_weights[rk, rs], eco.model_weights[mk, mj], eco.alpha)


# Compiled once per topology (retraced for new edges, sizes or dtypes) instead of one XLA
# compile per eager gather; the same for _with_edge_weights.
_edge_weights = jax.jit(_edge_weights_impl)


def free_alpha(eco: Ecosystem) -> np.ndarray:
    """``(K,)`` bool: models whose alpha is free (both real and model in-edges).

    A model without real in-edges has alpha 1, one without model in-edges
    alpha 0 (THEORY section 1); those never change.
    """
    has_model = np.zeros(eco.K, bool)
    for k, _ in eco.model_edges:
        has_model[k] = True
    return eco.has_real() & has_model


def with_edge_weights(eco: Ecosystem, p: EdgeWeights) -> Ecosystem:
    """``eco`` with the weights of ``p`` at its existing edges.

    Non-edges stay zero; the alpha of models whose alpha is forced (see
    :func:`free_alpha`) stays as in ``eco``, so its gradient is zero.
    """
    return _with_edge_weights(eco, p)


def _with_edge_weights_impl(eco: Ecosystem, p: EdgeWeights) -> Ecosystem:
    rk, rs = _edge_index(eco.real_edges, eco.K)
    mk, mj = _edge_index(eco.model_edges, eco.K)
    real = jnp.zeros((eco.K, eco.S), p.real.dtype).at[rk, rs].set(p.real)
    model = jnp.zeros((eco.K, eco.K), p.model.dtype).at[mk, mj].set(p.model)
    alpha = jnp.where(free_alpha(eco), p.alpha, jnp.asarray(eco.alpha, p.alpha.dtype))
    return eco.replace(real_weights=real, model_weights=model, alpha=alpha)


_with_edge_weights = jax.jit(_with_edge_weights_impl)


# ------------------------------------------------------------------ reductions
def check_reduce(reduce, K: int):
    """Validate ``reduce``; return ``(mode, weights)`` with ``weights`` a (K,) array or None."""
    if isinstance(reduce, str):
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS} or a ({K},) array of weights, got {reduce!r}")
        return reduce, None
    if isinstance(reduce, jax.core.Tracer):
        if reduce.shape != (K,):
            raise ValueError(f"reduce: per-model weights must have shape ({K},), got {reduce.shape}")
        return "weighted", reduce
    w = np.asarray(reduce, float)
    if w.shape != (K,):
        raise ValueError(f"reduce: per-model weights must have shape ({K},), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("reduce: per-model weights must be finite")
    return "weighted", jnp.asarray(w, jnp.result_type(float))


def apply_reduce(per_model: jax.Array, mode: str, weights) -> jax.Array:
    """Reduce a ``(K,)`` per-model error as validated by :func:`check_reduce`."""
    if mode == "mean":
        return per_model.mean()
    if mode == "max":
        return per_model.max()
    if mode == "weighted":
        return weights.astype(per_model.dtype) @ per_model
    return per_model


# ------------------------------------------------------------------ estimates
def pin(eco: Ecosystem) -> Ecosystem:
    """``eco`` with the alphas fixed by definition as constants (zero gradient), same values."""
    return eco.replace(alpha=pinned_alpha(eco))


def stationary_per_model(eco: Ecosystem, task, *, exact: bool = False, loss_scale: str = "mean",
                         pool: str = "independent", exact_options: Optional[dict] = None) -> jax.Array:
    """``(K,)`` analytic stationary error per model (``inf`` when it collapses)."""
    V = moments.stationary(pin(eco), task, exact=exact, loss_scale=loss_scale, pool=pool, **(exact_options or {}))
    return jnp.diagonal(V)


class MonteCarlo(NamedTuple):
    """Static options of the Monte Carlo estimate (hashable: a jit cache key)."""

    cfg: object          # collapse_jax.simulate.Config
    replicates: int
    window: int
    batch_size: Optional[int]


def monte_carlo_options(eco, task, *, generations, replicates, window=None, regime="replace",
                        pool="independent", loss_scale="mean", engine="auto", batch_size=None,
                        checkpoint=False) -> MonteCarlo:
    """Validate the Monte Carlo options; ``window`` defaults to the last half of the generations."""
    if generations is None or replicates is None:
        raise ValueError("kind='monte_carlo' needs generations=... and replicates=...")
    cfg = make_config(eco, task, generations, regime, pool, loss_scale, engine)
    cfg = cfg._replace(checkpoint=bool(checkpoint))
    check_replicates(replicates, batch_size)
    T = cfg.generations
    if window is None:
        window = max(1, (T + 1) // 2)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or not 1 <= window <= T + 1:
        raise ValueError(f"window must be an integer in 1..generations + 1 = {T + 1}, got {window!r}")
    return MonteCarlo(cfg, int(replicates), int(window), batch_size)


def monte_carlo_per_model(eco: Ecosystem, task, key: jax.Array, mc: MonteCarlo) -> tuple:
    """``((K,) windowed replicate-mean error, Trace (R, T + 1, ...))`` from one simulation."""
    trace: Trace = _simulate_impl(pin(eco), task, key, mc.cfg, mc.replicates, mc.batch_size)
    return trace.error[:, -mc.window:].mean(axis=(0, 1)), trace


def long_run_error(
    eco: Ecosystem,
    task,
    kind: str = "stationary",
    *,
    reduce: Union[str, jax.Array] = "mean",
    exact: bool = False,
    exact_options: Optional[dict] = None,
    loss_scale: str = "mean",
    key: Optional[jax.Array] = None,
    generations: Optional[int] = None,
    replicates: Optional[int] = None,
    window: Optional[int] = None,
    regime: str = "replace",
    pool: str = "independent",
    engine: str = "auto",
    batch_size: Optional[int] = None,
    checkpoint: bool = False,
) -> jax.Array:
    """The long-run error of ``eco``, differentiable in its edge weights and alpha.

    Args:
        eco: the interaction graph (its weights may be tracers).
        task: the estimator, e.g. :class:`collapse_jax.LinearRegression`.
        kind: ``"stationary"`` (analytic) or ``"monte_carlo"`` (see the module docstring).
        reduce: ``"mean"``, ``"max"``, ``"none"`` or ``(K,)`` per-model weights.
        exact: stationary only: the exact finite-sample operator instead of the
            large-sample recursion (as in :func:`collapse_jax.moments`).
        exact_options: with ``exact=True``, options of
            :func:`collapse_jax.tasks.linear_regression.exact.exact_coefficients` (``mc_samples``, ``mc_seed``).
        loss_scale: ``"mean"`` or ``"sum"`` (both kinds).
        pool: ``"independent"`` or ``"shared"`` synthetic batches (both kinds).
        key: Monte Carlo only: a PRNG key; replicate ``i`` uses ``fold_in(key, i)``.
        generations: Monte Carlo only: generations T after generation 0.
        replicates: Monte Carlo only: number of replicates R.
        window: Monte Carlo only: average the last ``window`` generations
            (default ``(T + 1) // 2``; choose T so that they are past the transient).
        regime, engine, batch_size: Monte Carlo only, as in :func:`collapse_jax.simulate`.
        checkpoint: Monte Carlo only: sqrt(T)-memory reverse mode
            (:func:`collapse_jax.simulate.scan_generations`).

    Returns:
        A scalar, or ``(K,)`` with ``reduce="none"``.

    Raises:
        ValueError: for an unknown ``kind`` or ``reduce``, missing Monte Carlo
            options, or any invalid simulation option.

    Example:
        >>> import jax, collapse_jax as cj
        >>> eco = cj.graphs.chain(2, n=200, m=200, alpha=0.5)
        >>> task = cj.LinearRegression(dim=3)
        >>> err = cj.long_run_error(eco, task, "monte_carlo", key=jax.random.key(0),
        ...                         generations=20, replicates=64)
        >>> g = jax.grad(lambda a: cj.long_run_error(eco.replace(alpha=a), task))(eco.alpha)  # doctest: +SKIP
    """
    mode, weights = check_reduce(reduce, eco.K)
    if kind == "stationary":
        if exact:
            per_model = stationary_per_model(eco, task, exact=True, loss_scale=loss_scale, pool=pool,
                                             exact_options=exact_options)
            return apply_reduce(per_model, mode, weights)
        if exact_options:
            raise ValueError("exact_options are for exact=True")
        ls.check_large_sample(eco, task, "long_run_error")
        spec = ("stationary", loss_scale, pool, None)
    elif kind == "monte_carlo":
        if key is None:
            raise ValueError("kind='monte_carlo' needs key=jax.random.key(...)")
        mc = monte_carlo_options(eco, task, generations=generations, replicates=replicates, window=window,
                                 regime=regime, pool=pool, loss_scale=loss_scale, engine=engine,
                                 batch_size=batch_size, checkpoint=checkpoint)
        spec = ("monte_carlo", loss_scale, pool, mc)
        key = as_key(key)
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return _long_run(eco, task, key, weights, spec=spec, mode=mode)


def evaluate(eco: Ecosystem, task, key, spec: tuple) -> jax.Array:
    """``(K,)`` per-model long-run error for a validated static ``spec`` (traceable)."""
    kind, loss_scale, pool, mc = spec
    if kind == "stationary":
        return jnp.diagonal(ls.stationary(pin(eco), task, loss_scale, pool))
    per_model, _ = monte_carlo_per_model(eco, task, key, mc)
    return per_model


@functools.partial(jax.jit, static_argnames=("spec", "mode"))
def _long_run(eco: Ecosystem, task, key, weights, *, spec: tuple, mode: str) -> jax.Array:
    TRACES["long_run_error"] += 1
    return apply_reduce(evaluate(eco, task, key, spec), mode, weights)
