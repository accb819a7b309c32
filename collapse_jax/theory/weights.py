"""Effective mixing weights of an ecosystem (THEORY.md section 1): graph arithmetic, task-neutral.

The lowest layer of the theory: it imports only :mod:`collapse_jax.ecosystem`
and :mod:`collapse_jax.options`, so task theories (for example linear
regression's exact theory) can use it without importing the task-generic
theory above them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.ecosystem import Ecosystem, row_shares
from collapse_jax.options import LOSS_SCALES
from collapse_jax.options import check_choice as _option

__all__ = ["effective_weights", "generation0_weights", "fresh_mask", "pinned_alpha"]


def pinned_alpha(eco: Ecosystem) -> jax.Array:
    """``(K,)`` ``eco.alpha`` with the alphas fixed by definition replaced by constants.

    A model with no real in-edge has alpha 1, one with no model in-edge alpha 0
    (THEORY section 1): those entries are constants here, so every gradient
    with respect to them is exactly zero (their value does not enter the fit).
    """
    return _pinned_alpha(eco)


def _pinned_alpha_impl(eco: Ecosystem) -> jax.Array:
    has_model = np.zeros(eco.K, bool)
    for k, _ in eco.model_edges:
        has_model[k] = True
    has_real = eco.has_real()
    alpha = eco.alpha
    alpha = jnp.where(jnp.asarray(~has_real), jnp.ones_like(alpha), alpha)
    return jnp.where(jnp.asarray(has_real & ~has_model), jnp.zeros_like(alpha), alpha)


# Compiled once per topology (retraced for new edges, sizes or dtype), not applied eagerly:
# every eager primitive would be an XLA compile of its own.
_pinned_alpha = jax.jit(_pinned_alpha_impl)


def effective_weights(eco: Ecosystem, loss_scale: str = "mean"):
    """The shares of every source in each model's normal equations (THEORY section 1).

    ``loss_scale="mean"``: the effective weights are ``eco.R`` and ``eco.W``
    (with the alphas fixed by definition pinned, :func:`pinned_alpha`, so
    their gradients are zero).
    ``"sum"``: weights multiply per-sample losses, so the share of a source is
    proportional to weight x sample count, renormalized per row.

    Returns:
        ``(R_eff (K, S), W_eff (K, K))``, each row of ``[R_eff, W_eff]`` summing to 1.

    Example:
        >>> import collapse_jax as cj
        >>> R, W = effective_weights(cj.graphs.ring(3, alpha=0.5, n=10, m=30), "sum")
        >>> round(float(R[0, 0]), 4)   # real share 0.5 * 10 / (0.5 * 10 + 0.5 * 30)
        0.25
    """
    _option("loss_scale", loss_scale, LOSS_SCALES)
    return _effective_weights(eco, loss_scale)


def _effective_weights_impl(eco: Ecosystem, loss_scale: str):
    alpha = _pinned_alpha_impl(eco)
    R, W = row_shares(eco.real_weights, 1.0 - alpha), row_shares(eco.model_weights, alpha)
    if loss_scale == "mean":
        return R, W
    n = jnp.asarray(eco.n, R.dtype)
    m = jnp.asarray(eco.n_synthetic, W.dtype)
    Rn, Wm = R * n[None, :], W * m[None, :]
    total = Rn.sum(1) + Wm.sum(1)
    return Rn / total[:, None], Wm / total[:, None]


# Retraced per (topology, loss_scale, dtype).
_effective_weights = jax.jit(_effective_weights_impl, static_argnames=("loss_scale",))


def generation0_weights(eco: Ecosystem, loss_scale: str = "mean") -> jax.Array:
    """``(K, S)`` shares of the data nodes in each model's generation-0 fit.

    Generation 0 fits on the real in-edges with the relative real weights
    renormalized to sum 1 (THEORY section 1); under ``loss_scale="sum"`` the
    shares are proportional to weight x sample count. Rows of models without
    real data are 0 (they fit on ``n0`` truth samples).
    """
    _option("loss_scale", loss_scale, LOSS_SCALES)
    return _generation0_weights(eco, loss_scale)


def _generation0_weights_impl(eco: Ecosystem, loss_scale: str) -> jax.Array:
    rel = eco.real_weights
    if loss_scale == "sum":
        rel = rel * jnp.asarray(eco.n, rel.dtype)[None, :]
    total = rel.sum(1, keepdims=True)
    return rel / jnp.where(total > 0, total, 1.0)


# Retraced per (topology, loss_scale, dtype).
_generation0_weights = jax.jit(_generation0_weights_impl, static_argnames=("loss_scale",))


def fresh_mask(eco: Ecosystem, dtype) -> jax.Array:
    """``(S,)`` 1.0 for fresh data nodes, 0.0 for fixed ones."""
    return jnp.asarray(np.asarray(eco.fresh, bool).reshape(-1), dtype)
