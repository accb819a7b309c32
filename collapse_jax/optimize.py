"""Optimize an interaction graph's edge weights and alpha with optax.

The optimizer works on unconstrained parameters and never changes the graph's
sparsity:

* relative weights: one logit per existing edge; each model's real in-edges
  and, separately, its model in-edges are a softmax of their logits (so only
  existing edges carry weight, and a model with a single edge of a kind has
  nothing to choose there);
* alpha: one logit per model whose alpha is free (it has both real and model
  in-edges), ``alpha = lo + (hi - lo) * sigmoid(z)`` with per-model bounds
  ``alpha_bounds=(lo, hi)`` (default ``(0, 1)``); the alpha of the other
  models is forced (1 without real data, 0 without model in-edges).

Budget on real data (``real_budget=B``): the mean real-data share over all
models, ``mean_k (1 - alpha_k)``, must stay ``<= B``. It is enforced exactly
by **projection**: after every optimizer step (and once at the start) the
free alphas are replaced by the Euclidean projection, in alpha space, onto
``{lo <= alpha <= hi, mean(1 - alpha) <= B}`` (bisection on the multiplier of
the budget, 60 halvings), then mapped back to logits. Logits are clipped to
``+-LOGIT_MAX``, so an alpha at a bound is represented to within
``(hi - lo) * sigmoid(-LOGIT_MAX)``. An optimum at a bound is approached
slowly (the sigmoid saturates and its gradient vanishes): a few hundred Adam
steps get within about 1% of ``hi - lo``. An existing edge of weight 0 starts at
logit ``-LOGIT_MAX`` and, its gradient being about ``exp(-LOGIT_MAX)``,
effectively stays off.

The loop is one ``jax.jit``-compiled step (value and gradient, optax update,
projection) called ``steps + 1`` times: it is traced once per
:func:`optimize` call (the last call only evaluates the objective at the final
parameters). Everything static (topology, options, optimizer) is closed over.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from collapse_jax.ecosystem import Ecosystem
from collapse_jax.diagnostics import diagnose
from collapse_jax.objectives import EdgeWeights, edge_weights, free_alpha, long_run_error, with_edge_weights
from collapse_jax.engine.simulate import as_key

__all__ = ["optimize", "OptimizeResult", "PARAMS", "LOGIT_MAX"]

PARAMS = ("weights", "real_weights", "model_weights", "alpha")
OBJECTIVES = ("stationary", "monte_carlo")
LOGIT_MAX = 30.0
_BISECTIONS = 60


@dataclasses.dataclass(frozen=True)
class OptimizeResult:
    """Output of :func:`optimize`.

    Attributes:
        eco: the optimized ecosystem (same graph, new relative weights and alpha).
        history: ``(steps + 1,)`` objective before each step and at the end.
        diagnostics: :func:`collapse_jax.diagnose` of the optimized ecosystem.
    """

    eco: Ecosystem
    history: np.ndarray
    diagnostics: Any

    def to_networkx(self):
        """The optimized graph (effective edge weights), as :meth:`Ecosystem.to_networkx`."""
        return self.eco.to_networkx()


# ---------------------------------------------------------- parameterization
@dataclasses.dataclass(frozen=True)
class _Space:
    """Static description of the unconstrained parameters of one ecosystem."""

    K: int
    real_rows: np.ndarray   # (E_r,) consumer of each real edge
    model_rows: np.ndarray  # (E_m,) consumer of each model edge
    free: np.ndarray        # (F,) models whose alpha is free
    lo: np.ndarray          # (F,) alpha bounds of the free models
    hi: np.ndarray
    names: tuple            # which of "real", "model", "alpha" are optimized
    forced_share: float     # sum over forced models of 1 - alpha
    budget: Optional[float]  # bound on sum over free models of 1 - alpha


def _segment_softmax(z: jax.Array, rows: np.ndarray, K: int) -> jax.Array:
    top = jax.ops.segment_max(z, rows, num_segments=K)
    ez = jnp.exp(z - top[rows])
    return ez / jax.ops.segment_sum(ez, rows, num_segments=K)[rows]


def _log_relative(w: jax.Array, rows: np.ndarray, K: int) -> jax.Array:
    total = jax.ops.segment_sum(w, rows, num_segments=K)[rows]
    return jnp.clip(jnp.log(w / total), -LOGIT_MAX, LOGIT_MAX)


def _alpha_logit(alpha: jax.Array, space: _Space) -> jax.Array:
    u = (alpha - space.lo) / (space.hi - space.lo)
    return jnp.clip(jnp.log(u) - jnp.log1p(-u), -LOGIT_MAX, LOGIT_MAX)


def _to_unconstrained(p: EdgeWeights, space: _Space) -> dict:
    theta = {}
    if "real" in space.names:
        theta["real"] = _log_relative(p.real, space.real_rows, space.K)
    if "model" in space.names:
        theta["model"] = _log_relative(p.model, space.model_rows, space.K)
    if "alpha" in space.names:
        theta["alpha"] = _alpha_logit(p.alpha[space.free], space)
    return theta


def _to_edge_weights(theta: dict, start: EdgeWeights, space: _Space) -> EdgeWeights:
    real, model, alpha = start
    if "real" in theta:
        real = _segment_softmax(theta["real"], space.real_rows, space.K)
    if "model" in theta:
        model = _segment_softmax(theta["model"], space.model_rows, space.K)
    if "alpha" in theta:
        a = space.lo + (space.hi - space.lo) * jax.nn.sigmoid(theta["alpha"])
        alpha = alpha.at[space.free].set(a.astype(alpha.dtype))
    return EdgeWeights(real, model, alpha)


def _project_alpha(theta: dict, space: _Space) -> dict:
    """Project the free alphas onto the budget set (see the module docstring)."""
    if space.budget is None or "alpha" not in theta:
        return theta
    alpha = space.lo + (space.hi - space.lo) * jax.nn.sigmoid(theta["alpha"])
    share, lo_s, hi_s = 1.0 - alpha, 1.0 - space.hi, 1.0 - space.lo

    def total(lam):
        return jnp.clip(share - lam, lo_s, hi_s).sum()

    def halve(_, bracket):
        a, b = bracket
        mid = 0.5 * (a + b)
        over = total(mid) > space.budget
        return jnp.where(over, mid, a), jnp.where(over, b, mid)

    top = jnp.max(share - lo_s)
    _, lam = jax.lax.fori_loop(0, _BISECTIONS, halve, (jnp.zeros_like(top), top))
    lam = jnp.where(total(0.0) > space.budget, lam, 0.0)
    projected = 1.0 - jnp.clip(share - lam, lo_s, hi_s)
    return dict(theta, alpha=_alpha_logit(projected, space))


def _bounds(alpha_bounds, eco: Ecosystem, free: np.ndarray) -> tuple:
    if alpha_bounds is None:
        lo, hi = np.zeros(eco.K), np.ones(eco.K)
    else:
        try:
            lo, hi = alpha_bounds
        except (TypeError, ValueError):
            raise ValueError(f"alpha_bounds must be a pair (lo, hi), got {alpha_bounds!r}") from None
        lo = np.broadcast_to(np.asarray(lo, float), (eco.K,)) if np.ndim(lo) == 0 else np.asarray(lo, float)
        hi = np.broadcast_to(np.asarray(hi, float), (eco.K,)) if np.ndim(hi) == 0 else np.asarray(hi, float)
        if lo.shape != (eco.K,) or hi.shape != (eco.K,):
            raise ValueError(f"alpha_bounds: lo and hi must be scalars or ({eco.K},) arrays")
    alpha = np.asarray(eco.alpha, float)
    for k in free:
        name = eco.models[k]
        if not (np.isfinite(lo[k]) and np.isfinite(hi[k]) and 0.0 <= lo[k] < hi[k] <= 1.0):
            raise ValueError(f"alpha_bounds for model node {name!r} must satisfy 0 <= lo < hi <= 1, "
                             f"got ({lo[k]}, {hi[k]})")
        if not lo[k] <= alpha[k] <= hi[k]:
            raise ValueError(f"model node {name!r}: alpha {alpha[k]:.6g} is outside its bounds "
                             f"({lo[k]}, {hi[k]})")
    return lo[free], hi[free]


def _space(eco: Ecosystem, params, alpha_bounds, real_budget) -> _Space:
    if isinstance(params, str):
        params = (params,)
    for p in params:
        if p not in PARAMS:
            raise ValueError(f"params: unknown entry {p!r}; choose from {PARAMS}")
    if not params:
        raise ValueError("params is empty: nothing to optimize")
    names = set()
    if {"weights", "real_weights"} & set(params) and len(eco.real_edges):
        names.add("real")
    if {"weights", "model_weights"} & set(params) and len(eco.model_edges):
        names.add("model")
    free = np.flatnonzero(free_alpha(eco))
    if "alpha" in params and len(free):
        names.add("alpha")
    lo, hi = _bounds(alpha_bounds, eco, free)
    forced = np.setdiff1d(np.arange(eco.K), free)
    forced_share = float(np.sum(1.0 - np.asarray(eco.alpha, float)[forced]))
    budget = None
    if real_budget is not None:
        B = float(real_budget)
        if not (np.isfinite(B) and 0.0 <= B <= 1.0):
            raise ValueError(f"real_budget must be in [0, 1], got {real_budget!r}")
        if "alpha" not in names:
            raise ValueError("real_budget constrains alpha; add 'alpha' to params (and give some "
                             "model both real and model in-edges)")
        budget = eco.K * B - forced_share
        least = float(np.sum(1.0 - hi))
        if least > budget + 1e-12:
            raise ValueError(
                f"real_budget={B} is infeasible: the models without a choice use a real share of "
                f"{forced_share:.6g} and the others at least {least:.6g} (alpha <= hi), "
                f"a mean of {(forced_share + least) / eco.K:.6g} > {B}")
    rows = lambda edges: np.asarray(edges, int).reshape(-1, 2)[:, 0]  # noqa: E731
    return _Space(eco.K, rows(eco.real_edges), rows(eco.model_edges), free, lo, hi,
                  tuple(sorted(names)), forced_share, budget)


# ------------------------------------------------------------------ objective
def _objective(objective, task, key, options) -> Callable:
    """``f(eco, step) -> scalar`` for a built-in kind or a user callable ``f(eco)``."""
    options = dict(options or {})
    if callable(objective):
        if options:
            raise ValueError("options are for the built-in objectives; close over them in your callable")
        return lambda eco, i: objective(eco)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES} or a callable f(eco) -> scalar, got {objective!r}")
    if "key" in options or "kind" in options:
        raise ValueError("options must not contain 'key' or 'kind' (pass key=... to optimize)")
    if objective == "stationary":
        return lambda eco, i: long_run_error(eco, task, "stationary", **options)
    if key is None:
        raise ValueError("objective='monte_carlo' needs key=jax.random.key(...)")
    key = as_key(key)
    # Fresh draws every step (stochastic gradients); replicate keys as in simulate.
    return lambda eco, i: long_run_error(eco, task, "monte_carlo", key=jax.random.fold_in(key, i), **options)


def optimize(
    eco: Ecosystem,
    task,
    *,
    objective: Union[str, Callable] = "stationary",
    optimizer: Optional[optax.GradientTransformation] = None,
    steps: int = 500,
    params: Sequence[str] = ("weights", "alpha"),
    key: Optional[jax.Array] = None,
    alpha_bounds: Optional[tuple] = None,
    real_budget: Optional[float] = None,
    options: Optional[dict] = None,
) -> OptimizeResult:
    """Minimize a long-run error over the relative edge weights and alpha of ``eco``.

    Args:
        eco: the starting ecosystem; its graph (edges, sizes) is kept.
        task: the estimator, e.g. :class:`collapse_jax.LinearRegression`.
        objective: ``"stationary"`` or ``"monte_carlo"`` (:func:`collapse_jax.long_run_error`
            with ``options``), or a callable ``f(eco) -> scalar`` (jit-able).
        optimizer: an optax transformation (default ``optax.adam(1e-2)``).
        steps: number of optimizer steps.
        params: what to optimize: ``"weights"`` (both kinds), ``"real_weights"``,
            ``"model_weights"``, ``"alpha"``.
        key: Monte Carlo only: step ``i`` uses ``fold_in(key, i)`` (fresh draws each step).
        alpha_bounds: ``(lo, hi)``, scalars or ``(K,)`` arrays: bounds on the free alphas.
        real_budget: bound on the mean real-data share ``mean_k (1 - alpha_k)`` (projection).
        options: keyword arguments of :func:`collapse_jax.long_run_error`
            (``reduce``, ``exact``, ``loss_scale``, ``pool``, ``generations``,
            ``replicates``, ``window``, ...).

    Returns:
        An :class:`OptimizeResult`; ``result.to_networkx()`` is the optimized graph.

    Raises:
        ValueError: bad options, bounds or budget, or a non-finite objective at the start.
        FloatingPointError: the objective or its gradient became non-finite during the run.

    Example:
        >>> import optax, collapse_jax as cj
        >>> eco = cj.graphs.from_edges(1, [(0, 0)], alpha=0.5, n=100, m=100)
        >>> out = cj.optimize(eco, cj.LinearRegression(dim=5), steps=300, optimizer=optax.adam(0.05))
        >>> round(float(out.eco.alpha[0]), 2)   # (3 - sqrt 5) / 2 for n = m
        0.38
    """
    if not isinstance(eco, Ecosystem):
        raise ValueError(f"eco must be a collapse_jax.Ecosystem, got {type(eco).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    optimizer = optax.adam(1e-2) if optimizer is None else optimizer
    space = _space(eco, params, alpha_bounds, real_budget)
    if not space.names:
        raise ValueError(f"nothing to optimize: no model of {eco!r} has a choice among {tuple(params)}")
    fn = _objective(objective, task, key, options)
    start = edge_weights(eco)

    def loss(theta, i):
        return fn(with_edge_weights(eco, _to_edge_weights(theta, start, space)), i)

    @jax.jit
    def step(theta, opt_state, i):
        value, grad = jax.value_and_grad(loss)(theta, i)
        ok = jnp.isfinite(value) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grad)]))
        updates, opt_state = optimizer.update(grad, opt_state, theta)
        theta = _project_alpha(optax.apply_updates(theta, updates), space)
        return theta, opt_state, value, ok

    theta = _project_alpha(_to_unconstrained(start, space), space)
    opt_state = optimizer.init(theta)
    history = []
    for i in range(steps + 1):
        new_theta, new_state, value, ok = step(theta, opt_state, jnp.asarray(i, jnp.uint32))
        history.append(float(value))
        if not bool(ok):
            if i == 0:
                raise ValueError(f"the objective or its gradient is not finite at the start (value {history[0]}); "
                                 "does the ecosystem collapse (see cj.diagnose)?")
            raise FloatingPointError(f"optimize: non-finite objective or gradient at step {i} (value {value}); "
                                     "lower the learning rate or bound alpha")
        if i < steps:
            theta, opt_state = new_theta, new_state
    out = with_edge_weights(eco, _to_edge_weights(theta, start, space))
    return OptimizeResult(out, np.asarray(history), _diagnose(out, task))


def _diagnose(eco: Ecosystem, task):
    return diagnose(eco, task)
