"""Spectra of the linear dynamics: the mean operator ``Q`` and the in-simulation diagnostics.

``rho(W)`` and the second eigenvalue modulus of ``W`` (homogenization rate),
``rho(Q)`` of the large-sample mean operator, and the large-sample stationary
error, as ``jnp`` functions that run inside a jitted simulation
(``cj.simulate(..., diagnostics=True)``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.ecosystem import Ecosystem
from collapse_jax.theory import large_sample as ls
from collapse_jax.theory.moments import exact_theory
from collapse_jax.theory.weights import effective_weights

__all__ = ["mean_operator", "spectral", "spectral_plan", "radius"]


def mean_operator(eco: Ecosystem, task, loss_scale: str = "mean") -> jax.Array:
    """The task's large-sample mean operator ``Q`` (``task.exact_theory().mean_operator``).

    Raises ``ValueError`` when the task has none. Linear regression:
    :func:`collapse_jax.tasks.linear_regression.exact.mean_operator`.
    """
    theory = exact_theory(task)
    if theory is None or not hasattr(theory, "mean_operator"):
        raise ValueError(f"{type(task).__name__} has no mean operator")
    return theory.mean_operator(eco, task, loss_scale)



def radius(M) -> float:
    M = np.asarray(M, float)
    return float(np.max(np.abs(np.linalg.eigvals(M)))) if M.size else 0.0


# ----------------------------------------------------- in-simulation spectra
def spectral_plan(eco: Ecosystem, task) -> tuple:
    """Static description of what :func:`spectral` can compute for (eco, task) (hashable).

    Decided outside ``jit`` from concrete values: ``"rho_Q"`` when the task's
    exact theory has a mean operator (linear regression), ``"stationary_error"``
    when the task-generic large-sample theory applies
    (:func:`collapse_jax.theory.large_sample.check_large_sample`).
    """
    plan = ["rho_W", "slem_W"]
    theory = exact_theory(task)
    if theory is not None and hasattr(theory, "mean_operator"):
        plan.append("rho_Q")
    if ls.supports(eco, task) is None:
        plan.append("stationary_error")
    return tuple(plan)


def spectral(eco: Ecosystem, task, plan: tuple, loss_scale: str = "mean", pool: str = "independent") -> dict:
    """The ``jnp``-computable diagnostics (jit-able): a dict of arrays.

    ``rho_W`` and ``slem_W`` (spectral radius and second-largest eigenvalue
    modulus of ``W``; ``nan`` for one model), ``rho_Q`` (:func:`mean_operator`)
    and ``stationary_error`` ``(K,)`` (large-sample, ``inf`` when the
    ecosystem collapses), as listed in ``plan`` (:func:`spectral_plan`).
    Uses the non-symmetric eigensolver (CPU, or host LAPACK on GPU).
    """
    _, W = effective_weights(eco, loss_scale)
    mod = jnp.sort(jnp.abs(jnp.linalg.eigvals(W)))[::-1]
    out = {"rho_W": mod[0], "slem_W": mod[1] if eco.K > 1 else jnp.asarray(jnp.nan, mod.dtype)}
    if "rho_Q" in plan:
        out["rho_Q"] = jnp.max(jnp.abs(jnp.linalg.eigvals(mean_operator(eco, task, loss_scale))))
    if "stationary_error" in plan:
        out["stationary_error"] = jnp.diagonal(ls.stationary(eco, task, loss_scale, pool))
    return out

