"""One compiled call: trajectories, spectral diagnostics and gradients of long-run error.

:func:`analyze` runs, inside a single ``jax.jit``, a Monte Carlo simulation
(the trajectories of :func:`collapse_jax.simulate`, same keys), the spectral
quantities of the mixing matrix, and ``jax.value_and_grad(..., has_aux=True)``
of the long-run error (:func:`collapse_jax.long_run_error`) with respect to
the relative edge weights at existing edges and alpha. With
``kind="monte_carlo"`` one simulation serves both: the trajectories are the
auxiliary output of the differentiated objective.

Memory (reverse mode through the simulation, per replicate): without
``checkpoint`` every generation's residuals are kept, about
``T * (E (d^2 + d) + K d^2)`` numbers for E edges; with ``checkpoint=True``
(the default here) generations are rematerialized in sqrt(T) blocks
(:func:`collapse_jax.simulate.scan_generations`), about ``2 sqrt(T) K d``
numbers plus one block's residuals, for roughly one extra forward pass.
Both are multiplied by the replicates vectorized at once (``batch_size``
bounds that), and the returned trajectories take ``R (T + 1) (K + 2)`` numbers.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Union

import jax

from collapse_jax.theory.spectral import spectral, spectral_plan
from collapse_jax.ecosystem import Ecosystem
from collapse_jax.objectives import (
    EdgeWeights, MonteCarlo, apply_reduce, check_reduce, edge_weights, monte_carlo_options,
    monte_carlo_per_model, stationary_per_model, with_edge_weights, KINDS,
)
from collapse_jax.engine.simulate import _simulate_impl, as_key
from collapse_jax.engine.scan import Trace

__all__ = ["analyze", "Analysis"]


class Analysis(NamedTuple):
    """Output of :func:`analyze`.

    Attributes:
        value: ``()`` long-run error (the differentiated objective).
        per_model: ``(K,)`` long-run error of each model.
        grads: :class:`collapse_jax.objectives.EdgeWeights` of ``d value / d`` the
            relative weight of every existing real edge ``(E_r,)`` and model
            edge ``(E_m,)`` and of alpha ``(K,)`` (zero where alpha is forced);
            ``grads.dense(eco)`` gives ``(K, S)`` and ``(K, K)`` matrices.
        trajectories: a :class:`collapse_jax.simulate.Trace`: ``error``
            ``(R, T + 1, K)``, ``dispersion`` and ``cosine`` ``(R, T + 1)``.
        spectral: the jit-able diagnostics of :func:`collapse_jax.diagnostics.spectral`:
            ``rho_W``, ``slem_W`` (second eigenvalue modulus: homogenization
            rate), with linear regression ``rho_Q`` and, when the analytic
            theory applies, the large-sample ``stationary_error`` ``(K,)``.
    """

    value: jax.Array
    per_model: jax.Array
    grads: EdgeWeights
    trajectories: Trace
    spectral: dict


def analyze(
    eco: Ecosystem,
    task,
    key: jax.Array,
    *,
    generations: int,
    replicates: int,
    kind: str = "monte_carlo",
    window: Optional[int] = None,
    reduce: Union[str, jax.Array] = "mean",
    exact: bool = False,
    regime: str = "replace",
    pool: str = "independent",
    loss_scale: str = "mean",
    engine: str = "auto",
    batch_size: Optional[int] = None,
    checkpoint: bool = True,
) -> Analysis:
    """Trajectories, spectral diagnostics and long-run-error gradients in one jitted call.

    Args:
        eco: the interaction graph.
        task: the estimator, e.g. :class:`collapse_jax.LinearRegression`.
        key: a PRNG key; the trajectories equal ``cj.simulate(eco, task, key, ...)``'s.
        generations, replicates, regime, pool, loss_scale, engine, batch_size:
            the simulation, as in :func:`collapse_jax.simulate`.
        kind: the long-run error differentiated: ``"monte_carlo"`` (the
            simulation's windowed mean, pathwise gradients) or
            ``"stationary"`` (analytic; the simulation is then not differentiated).
        window, reduce, exact: as in :func:`collapse_jax.long_run_error`.
        checkpoint: sqrt(T)-memory reverse mode through the generations
            (see the module docstring for the memory cost).

    Returns:
        An :class:`Analysis`.

    Example:
        >>> import jax, collapse_jax as cj
        >>> eco = cj.graphs.ring(3, n=100, m=100, alpha=0.5)
        >>> out = cj.analyze(eco, cj.LinearRegression(dim=4), jax.random.key(0),
        ...                  generations=20, replicates=32)
        >>> out.trajectories.error.shape, out.grads.model.shape
        ((32, 21, 3), (3,))
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    mode, weights = check_reduce(reduce, eco.K)
    mc = monte_carlo_options(eco, task, generations=generations, replicates=replicates, window=window,
                             regime=regime, pool=pool, loss_scale=loss_scale, engine=engine,
                             batch_size=batch_size, checkpoint=checkpoint)
    return _analyze(eco, task, as_key(key), weights, kind=kind, mode=mode, mc=mc, exact=bool(exact),
                    plan=spectral_plan(eco, task))


@functools.partial(jax.jit, static_argnames=("kind", "mode", "mc", "exact", "plan"))
def _analyze(eco, task, key, weights, *, kind: str, mode: str, mc: MonteCarlo, exact: bool,
             plan: tuple) -> Analysis:
    def objective(p):
        e = with_edge_weights(eco, p)
        if kind == "monte_carlo":
            per_model, trace = monte_carlo_per_model(e, task, key, mc)
        else:
            per_model = stationary_per_model(e, task, exact=exact, loss_scale=mc.cfg.loss_scale,
                                             pool=mc.cfg.pool)
            trace = None
        return apply_reduce(per_model, mode, weights), (per_model, trace)

    (value, (per_model, trace)), grads = jax.value_and_grad(objective, has_aux=True)(edge_weights(eco))
    if trace is None:
        trace = _simulate_impl(eco, task, key, mc.cfg, mc.replicates, mc.batch_size)
    return Analysis(value, per_model, grads, trace, spectral(eco, task, plan, mc.cfg.loss_scale, mc.cfg.pool))
