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
from collapse_jax.theory.moments import check_isotropic, effective_weights, stationary
from collapse_jax.tasks.linear_regression.task import LinearRegression

__all__ = ["mean_operator", "spectral", "spectral_plan", "radius"]


# ------------------------------------------------------------ mean operator
def _gram_of(task, cov, design, dtype):
    """Population per-sample Gram of a covariate law (d, d)."""
    if design is not None:
        X = jnp.asarray(design, dtype)
        return X.T @ X / X.shape[0]
    if cov is None:
        cov = task.cov
    return jnp.eye(task.dim, dtype=dtype) if cov is None else jnp.asarray(cov, dtype)


def mean_operator(eco: Ecosystem, task, loss_scale: str = "mean") -> jax.Array:
    """``(K d, K d)`` large-sample mean operator ``Q`` (pure ``jnp``, differentiable).

    ``Q_kj = w_kj P_k^{-1} Sigma_j`` with ``P_k = sum_s r_ks Sigma_s +
    sum_j w_kj Sigma_j + (ridge / Z_k) I`` (effective weights; ``Z_k`` the
    row's total loss weight: 1 under "mean", ``sum r n + sum w m`` under
    "sum"), ``Sigma`` the per-sample Gram of each source: its covariance, or
    ``X'X / n`` for a fixed design. ``E e_t = Q E e_{t-1}`` + drift.

    Example:
        >>> Q = mean_operator(cj.graphs.ring(3), cj.LinearRegression(dim=2))   # = W (x) I
    """
    R, W = effective_weights(eco, loss_scale)
    dtype = W.dtype
    K, d = eco.K, task.dim
    data_g = [_gram_of(task, c, x, dtype) for c, x in zip(eco.data_attr("cov"), eco.data_attr("design"))]
    syn_g = jnp.stack([_gram_of(task, c, x, dtype) for c, x in zip(eco.model_attr("cov"), eco.model_attr("design"))])
    P = jnp.einsum("kj,jab->kab", W, syn_g)
    if eco.S:
        P = P + jnp.einsum("ks,sab->kab", R, jnp.stack(data_g))
    if loss_scale == "mean":
        Z = jnp.ones(K, dtype)
    else:
        Z = ((eco.R * jnp.asarray(eco.n, dtype)[None, :]).sum(1)
             + (eco.W * jnp.asarray(eco.n_synthetic, dtype)[None, :]).sum(1))
    P = P + (jnp.asarray(task.ridge, dtype) / Z)[:, None, None] * jnp.eye(d, dtype=dtype)[None]
    blocks = W[:, :, None, None] * jnp.linalg.solve(P[:, None], syn_g[None])  # (K, K, d, d)
    return blocks.transpose(0, 2, 1, 3).reshape(K * d, K * d)


def radius(M) -> float:
    M = np.asarray(M, float)
    return float(np.max(np.abs(np.linalg.eigvals(M)))) if M.size else 0.0


# ----------------------------------------------------- in-simulation spectra
def spectral_plan(eco: Ecosystem, task) -> tuple:
    """Static description of what :func:`spectral` can compute for (eco, task) (hashable).

    Decided outside ``jit`` from concrete values: ``("rho_Q",)`` for linear
    regression, plus ``"stationary"`` when the large-sample K x K theory
    applies (:func:`collapse_jax.moments.check_isotropic`).
    """
    plan = ["rho_W", "slem_W"]
    if isinstance(task, LinearRegression):
        plan.append("rho_Q")
        try:
            check_isotropic(eco, task)
            plan.append("stationary_error")
        except ValueError:
            pass
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
        out["stationary_error"] = jnp.diagonal(stationary(eco, task, False, loss_scale, pool))
    return out

