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

The loop is one module-level ``jax.jit``-compiled step (value and gradient,
optax update, projection, and the running best point), compiled once per
static signature: the topology and sample sizes, the parameter space, the
objective's options and the optimizer object, and reused by every later
:func:`optimize` call with the same ones (new starting weights, alpha, task
numbers or keys do not recompile; pass the *same* optimizer object, since
``optax.adam(1e-2)`` twice makes two different objects). The Python loop only
dispatches steps: nothing waits on the device until the end (the history is
gathered once, a non-finite value is recorded on the device and reported
afterwards). The result is the best point seen (deterministic objectives) or
the last one (``objective="monte_carlo"``, whose values are noisy).
:data:`TRACES` counts the traces of the step.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import warnings
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:  # imported on first use (_optax below)
    import optax

from collapse_jax.ecosystem import Ecosystem
from collapse_jax.diagnostics import diagnose
from collapse_jax.objectives import (
    EdgeWeights, apply_reduce, check_reduce, edge_weights, evaluate, free_alpha, monte_carlo_options,
    with_edge_weights,
)
from collapse_jax.engine.simulate import as_key
from collapse_jax.theory import large_sample as ls

__all__ = ["optimize", "OptimizeResult", "PARAMS", "LOGIT_MAX", "TRACES"]

TRACES = collections.Counter()  # traces of the compiled step (tests count recompilations)

PARAMS = ("weights", "real_weights", "model_weights", "alpha")
OBJECTIVES = ("stationary", "monte_carlo")
LOGIT_MAX = 30.0
_BISECTIONS = 60


@dataclasses.dataclass(frozen=True)
class OptimizeResult:
    """Output of :func:`optimize`.

    Attributes:
        eco: the optimized ecosystem (same graph, new relative weights and alpha):
            the point of step ``step``.
        history: ``(steps + 1,)`` objective at the point of each step (``history[i]``
            before the i-th update; ``history[-1]`` at the final point).
        diagnostics: :func:`collapse_jax.diagnose` of the optimized ecosystem.
        step: which point ``eco`` is: the best seen (deterministic objectives)
            or the last (``objective="monte_carlo"``).
        start_projected: the starting alphas violated ``real_budget`` (or were
            moved by it), so the run started from their projection (a warning says so).
        start_value: the objective at the given start, before any projection.
    """

    eco: Ecosystem
    history: np.ndarray
    diagnostics: Any
    step: int = 0
    start_projected: bool = False
    start_value: float = float("nan")

    def to_networkx(self):
        """The optimized graph (effective edge weights), as :meth:`Ecosystem.to_networkx`."""
        return self.eco.to_networkx()


# ---------------------------------------------------------- parameterization
class _Space(NamedTuple):
    """Static description of the unconstrained parameters of one ecosystem (hashable: a compile key)."""

    K: int
    real_rows_: tuple   # (E_r,) consumer of each real edge
    model_rows_: tuple  # (E_m,) consumer of each model edge
    free_: tuple        # (F,) models whose alpha is free
    lo_: tuple          # (F,) alpha bounds of the free models
    hi_: tuple
    names: tuple            # which of "real", "model", "alpha" are optimized
    forced_share: float     # sum over forced models of 1 - alpha
    budget: Optional[float]  # bound on sum over free models of 1 - alpha

    real_rows = property(lambda self: np.asarray(self.real_rows_, int))
    model_rows = property(lambda self: np.asarray(self.model_rows_, int))
    free = property(lambda self: np.asarray(self.free_, int))
    lo = property(lambda self: np.asarray(self.lo_, float))
    hi = property(lambda self: np.asarray(self.hi_, float))


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


# The three maps below are compiled once per space (retraced for a new ecosystem layout or bounds),
# not applied eagerly (one XLA compile per primitive) when optimize starts and ends.
@functools.partial(jax.jit, static_argnames=("space",))
def _to_unconstrained(p: EdgeWeights, space: _Space) -> dict:
    theta = {}
    if "real" in space.names:
        theta["real"] = _log_relative(p.real, space.real_rows, space.K)
    if "model" in space.names:
        theta["model"] = _log_relative(p.model, space.model_rows, space.K)
    if "alpha" in space.names:
        theta["alpha"] = _alpha_logit(p.alpha[space.free], space)
    return theta


@functools.partial(jax.jit, static_argnames=("space",))
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


@functools.partial(jax.jit, static_argnames=("space",))
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
    rows = lambda edges: tuple(np.asarray(edges, int).reshape(-1, 2)[:, 0].tolist())  # noqa: E731
    return _Space(eco.K, rows(eco.real_edges), rows(eco.model_edges), tuple(free.tolist()),
                  tuple(map(float, lo)), tuple(map(float, hi)), tuple(sorted(names)), forced_share, budget)


# ------------------------------------------------------------------ objective
def _objective_spec(objective, eco, task, key, options) -> tuple:
    """A hashable description of the objective: ``(kind, spec, mode, weights)``.

    ``kind`` is ``"callable"`` (``spec`` the user's function ``f(eco)``) or a
    built-in kind with the static ``spec`` of :func:`collapse_jax.objectives.evaluate`.
    """
    options = dict(options or {})
    if callable(objective):
        if options:
            raise ValueError("options are for the built-in objectives; close over them in your callable")
        return "callable", objective, None, None
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES} or a callable f(eco) -> scalar, got {objective!r}")
    if "key" in options or "kind" in options:
        raise ValueError("options must not contain 'key' or 'kind' (pass key=... to optimize)")
    mode, weights = check_reduce(options.pop("reduce", "mean"), eco.K)
    loss_scale = options.pop("loss_scale", "mean")
    pool = options.pop("pool", "independent")
    if objective == "stationary":
        if options.pop("exact", False):
            raise ValueError("optimize: exact=True is not supported (the exact operator's Monte Carlo "
                             "is compiled on its own); optimize the large-sample stationary error")
        if options:
            raise ValueError(f"options {sorted(options)} are not options of the stationary objective")
        ls.check_large_sample(eco, task, "optimize")
        return "stationary", ("stationary", loss_scale, pool, None), mode, weights
    if key is None:
        raise ValueError("objective='monte_carlo' needs key=jax.random.key(...)")
    try:
        mc = monte_carlo_options(eco, task, loss_scale=loss_scale, pool=pool, **options)
    except TypeError as e:
        raise ValueError(f"options of the monte_carlo objective: {e}") from None
    return "monte_carlo", ("monte_carlo", loss_scale, pool, mc), mode, weights


class _State(NamedTuple):
    theta: dict
    opt_state: Any
    best_theta: dict
    best_value: jax.Array
    best_step: jax.Array
    bad_step: jax.Array  # first step with a non-finite value or gradient (-1: none)


@functools.partial(jax.jit, static_argnames=("space", "kind", "spec", "mode", "optimizer"))
def _step(state: _State, i, eco, task, key, weights, *, space, kind, spec, mode, optimizer):
    """One optimizer step: compiled once per static signature, reused across :func:`optimize` calls."""
    TRACES["step"] += 1
    start = edge_weights(eco)

    def loss(theta):
        e = with_edge_weights(eco, _to_edge_weights(theta, start, space))
        if kind == "callable":
            return spec(e)
        k = None if key is None else jax.random.fold_in(key, i)  # fresh draws every step
        return apply_reduce(evaluate(e, task, k, spec), mode, weights)

    value, grad = jax.value_and_grad(loss)(state.theta)
    ok = jnp.isfinite(value) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grad)]))
    ok = ok & (state.bad_step < 0)
    updates, opt_state = optimizer.update(grad, state.opt_state, state.theta)
    theta = _project_alpha(_optax().apply_updates(state.theta, updates), space)
    better = ok & (value < state.best_value)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
    return _State(
        theta=keep(theta, state.theta),
        opt_state=keep(opt_state, state.opt_state),
        best_theta=jax.tree.map(lambda a, b: jnp.where(better, a, b), state.theta, state.best_theta),
        best_value=jnp.where(better, value, state.best_value),
        best_step=jnp.where(better, i, state.best_step),
        bad_step=jnp.where(ok | (state.bad_step >= 0), state.bad_step, i),
    ), value


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
        task: any task (:mod:`collapse_jax.tasks.base`); ``"stationary"`` needs
            its asymptotic covariance and risk metric.
        objective: ``"stationary"`` or ``"monte_carlo"`` (:func:`collapse_jax.long_run_error`
            with ``options``), or a callable ``f(eco) -> scalar`` (jit-able).
        optimizer: an optax transformation (default ``optax.adam(1e-2)``, one
            shared object, so the default compiles once).
        steps: number of optimizer steps.
        params: what to optimize: ``"weights"`` (both kinds), ``"real_weights"``,
            ``"model_weights"``, ``"alpha"``.
        key: Monte Carlo only: step ``i`` uses ``fold_in(key, i)`` (fresh draws each step).
        alpha_bounds: ``(lo, hi)``, scalars or ``(K,)`` arrays: bounds on the free alphas.
        real_budget: bound on the mean real-data share ``mean_k (1 - alpha_k)``
            over all models (those without real data count 0) (projection). If
            the start violates it, the run starts from its projection, with a
            warning and ``result.start_projected``.
        options: keyword arguments of :func:`collapse_jax.long_run_error`
            (``reduce``, ``loss_scale``, ``pool``, ``generations``,
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
    optimizer = _default_optimizer() if optimizer is None else optimizer
    space = _space(eco, params, alpha_bounds, real_budget)
    if not space.names:
        raise ValueError(f"nothing to optimize: no model of {eco!r} has a choice among {tuple(params)}")
    kind, spec, mode, weights = _objective_spec(objective, eco, task, key, options)
    key = None if kind != "monte_carlo" else as_key(key)
    statics = dict(space=space, kind=kind, spec=spec, mode=mode, optimizer=optimizer)

    start = edge_weights(eco)
    theta0 = _to_unconstrained(start, space)
    theta = _project_alpha(theta0, space)
    projected = False
    if space.budget is not None:
        a0 = np.asarray(_to_edge_weights(theta0, start, space).alpha)
        a1 = np.asarray(_to_edge_weights(theta, start, space).alpha)
        projected = bool(np.max(np.abs(a0 - a1)) > 1e-6)
        if projected:
            warnings.warn(
                f"optimize: real_budget={real_budget} binds at the start: the mean real share "
                f"{np.mean(1 - np.asarray(eco.alpha, float)):.4g} exceeds it, so the run starts from the "
                f"projected alphas {np.round(a1, 4).tolist()} (models without real data count 0 in the mean)",
                stacklevel=2)
    inf = jnp.asarray(jnp.inf, jnp.result_type(float))
    state = _State(theta, optimizer.init(theta), theta, inf, jnp.asarray(0, jnp.int32),
                   jnp.asarray(-1, jnp.int32))
    values = []
    for i in range(steps + 1):  # asynchronous dispatch: no host synchronisation inside the loop
        state, value = _step(state, jnp.asarray(i, jnp.int32), eco, task, key, weights, **statics)
        values.append(value)
    history = np.asarray(jax.device_get(values), float)  # not jnp.stack: a compile per number of steps
    bad = int(state.bad_step)
    if bad == 0:
        raise ValueError(f"the objective or its gradient is not finite at the start (value {history[0]}); "
                         "does the ecosystem collapse (see cj.diagnose)?")
    if bad > 0:
        raise FloatingPointError(f"optimize: non-finite objective or gradient at step {bad} "
                                 f"(value {history[bad]}); lower the learning rate or bound alpha")
    if kind == "monte_carlo":
        best, at = state.theta, steps
    else:
        best, at = state.best_theta, int(state.best_step)
    out = with_edge_weights(eco, _to_edge_weights(best, start, space))
    start_value = history[0]
    if projected:
        start_value = float(_evaluate_once(eco, task, key, weights, kind, spec, mode))
    return OptimizeResult(out, history, _diagnose(out, task), step=at, start_projected=projected,
                          start_value=float(start_value))


def _optax():
    """optax, imported on first use: importing it costs a fresh process 0.15-0.4 s that
    ``import collapse_jax`` need not pay when it never optimizes (benchmarks/README.md, first result)."""
    import optax

    return optax


@functools.lru_cache(maxsize=None)
def _default_optimizer():
    """``optax.adam(1e-2)``: one shared object per process, so the default compiles :func:`_step` once."""
    return _optax().adam(1e-2)


def _evaluate_once(eco, task, key, weights, kind, spec, mode):
    if kind == "callable":
        return spec(eco)
    k = None if key is None else jax.random.fold_in(key, 0)
    return apply_reduce(evaluate(eco, task, k, spec), mode, weights)


def _diagnose(eco: Ecosystem, task):
    return diagnose(eco, task)
