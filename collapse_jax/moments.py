"""Analytic moments of linear-regression ecosystems (THEORY.md section 4).

Notation: ``e_{t,k} = theta_{t,k} - theta*`` and ``V_t[k, l] = E <e_{t,k}, e_{t,l}>_Sigma``
(the diagonal is the expected excess risk). Everything here assumes one
covariate covariance ``Sigma`` (the task's ``cov``, default the identity) for
every data node, synthetic design and the test distribution ("isotropic":
whitening by ``Sigma^{-1/2}`` reduces it to the identity exactly).

Large-sample recursion (``exact=False``)::

    e_t = (W (x) I) e_{t-1} + xi_t,     V_t = W V_{t-1} W' + D,
    D[k, l] = sigma^2 d ( [k == l] sum_{s fresh} R_ks^2 / n_s + sum_j W_kj W_lj / m_j [shared or k == l] )

with the *effective* weights of :func:`effective_weights` (``loss_scale="sum"``:
proportional to weight x sample count).

Choices this module makes (THEORY leaves them open):

* Fixed data nodes (``fresh=False``) are not per-generation noise: their label
  noise ``phi_s`` (covariance ``sigma^2 Sigma^{-1} / n_s``) is drawn once and
  shared by every consumer and generation. :func:`noise_diagonal` therefore
  counts fresh data nodes and synthetic batches only; :func:`stationary` adds
  the fixed nodes as a persistent offset ``M phi`` with ``M = (I - W)^{-1} R``.
* Data nodes with their own ``theta`` bias the fits; the bias enters the
  second moments the same way (``<Delta_s, Delta_s'>_Sigma`` with
  ``Delta_s = theta_s - theta*``).
* Ridge is not modelled (``task.ridge`` must be 0 here); fixed designs and
  per-node covariances that differ from the task's are the business of
  :mod:`collapse_jax.public_private` and the diagnostics' mean operator.

All functions are pure ``jnp`` and differentiable with respect to
``eco.real_weights``, ``eco.model_weights`` and ``eco.alpha``; they compute in
the dtype of the ecosystem's weights (use float64 for accurate gradients).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.ecosystem import Ecosystem
from collapse_jax.lyapunov import solve_discrete_lyapunov

__all__ = [
    "effective_weights",
    "noise_diagonal",
    "noise_covariance",
    "stationary",
]

LOSS_SCALES = ("mean", "sum")
POOLS = ("independent", "shared")


# ------------------------------------------------------------------ checks
def _option(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_isotropic(eco: Ecosystem, task, where: str = "moments") -> None:
    """Raise ``ValueError`` unless the analytic K x K theory applies to (eco, task).

    It needs: linear regression without ridge, no fixed design, and every
    node's covariance equal to the task's (None means "the task's").
    """
    if not hasattr(task, "noise") or not hasattr(task, "dim"):
        raise ValueError(f"{where}: needs a LinearRegression task, got {type(task).__name__}")
    if _concrete(task.ridge) and float(task.ridge) != 0.0:
        raise ValueError(f"{where}: the analytic moments are for unregularized least squares; task.ridge must be 0")
    for kind, names, designs in (("data node", eco.data, eco.data_design),
                                 ("model node", eco.models, eco.model_design)):
        for name, x in zip(names, designs):
            if x is not None:
                raise ValueError(
                    f"{where}: {kind} {name!r} has a fixed design; use "
                    "collapse_jax.moments(...) (it dispatches to public_private.moments_fixed)"
                )
    ref = None if task.cov is None else np.asarray(task.cov, float) if _concrete(task.cov) else None
    for kind, names, covs in (("data node", eco.data, eco.data_cov), ("model node", eco.models, eco.model_cov)):
        for name, c in zip(names, covs):
            if c is None or not _concrete(c):
                continue
            c = np.asarray(c, float)
            target = np.eye(task.dim) if task.cov is None else ref
            if target is not None and not np.allclose(c, target, rtol=1e-6, atol=1e-9):
                raise ValueError(
                    f"{where}: {kind} {name!r} has a covariance different from the task's; the K x K "
                    "theory needs one covariance (see collapse_jax.diagnose for the mean operator rho(Q))"
                )


# ----------------------------------------------------------------- weights
def effective_weights(eco: Ecosystem, loss_scale: str = "mean"):
    """The shares of every source in each model's normal equations (THEORY section 1).

    ``loss_scale="mean"``: the effective weights are ``eco.R`` and ``eco.W``.
    ``"sum"``: weights multiply per-sample losses, so the share of a source is
    proportional to weight x sample count, renormalized per row.

    Returns:
        ``(R_eff (K, S), W_eff (K, K))``, each row of ``[R_eff, W_eff]`` summing to 1.

    Example:
        >>> eco = cj.graphs.ring(3, alpha=0.5, n=10, m=30)
        >>> R, W = effective_weights(eco, "sum")   # m0: real share 10 / 40
    """
    _option("loss_scale", loss_scale, LOSS_SCALES)
    R, W = eco.R, eco.W
    if loss_scale == "mean":
        return R, W
    n = jnp.asarray(eco.n, R.dtype)
    m = jnp.asarray(eco.n_synthetic, W.dtype)
    Rn, Wm = R * n[None, :], W * m[None, :]
    total = Rn.sum(1) + Wm.sum(1)
    return Rn / total[:, None], Wm / total[:, None]


def _fresh_mask(eco: Ecosystem, dtype) -> jax.Array:
    return jnp.asarray(np.asarray(eco.fresh, bool).reshape(-1), dtype)


# ------------------------------------------------------------------- noise
def noise_covariance(
    eco: Ecosystem, task, loss_scale: str = "mean", pool: str = "independent"
) -> jax.Array:
    """``(K, K)`` large-sample innovation covariance ``D`` of one generation.

    ``D[k, l] = E <xi_k, xi_l>_Sigma``: the label noise a model picks up in
    one generation from fresh data nodes (independent per consumer) and from
    synthetic batches (independent per edge, or with ``pool="shared"`` one
    batch per producer that correlates its consumers). Fixed data nodes are
    not innovations (see the module docstring).

    Example:
        >>> D = noise_covariance(cj.graphs.star(3, n=50, m=50), cj.LinearRegression(dim=5), pool="shared")
    """
    _option("pool", pool, POOLS)
    check_isotropic(eco, task, "noise_covariance")
    R, W = effective_weights(eco, loss_scale)
    dtype = W.dtype
    n = jnp.asarray(eco.n, dtype)
    m = jnp.asarray(eco.n_synthetic, dtype)
    scale = jnp.asarray(task.noise, dtype) ** 2 * task.dim
    real = (R ** 2 * (_fresh_mask(eco, dtype) / n)[None, :]).sum(1) if eco.S else jnp.zeros(eco.K, dtype)
    if pool == "shared":
        syn = (W / m[None, :]) @ W.T
        return scale * (jnp.diag(real) + syn)
    return scale * jnp.diag(real + (W ** 2 / m[None, :]).sum(1))


def noise_diagonal(eco: Ecosystem, task, loss_scale: str = "mean") -> jax.Array:
    """``(K,)`` large-sample per-generation noise ``delta_k`` (THEORY section 4).

    ``delta_k = sigma^2 d (sum_{s fresh} R_ks^2 / n_s + sum_j W_kj^2 / m_j)``
    with the effective weights of :func:`effective_weights`. Fixed data nodes
    are left out: their noise is drawn once and persists (it enters
    :func:`stationary` as an offset, not as an innovation).

    Example:
        >>> eco = cj.graphs.chain(3, n=100, m=100)
        >>> noise_diagonal(eco, cj.LinearRegression(dim=10))   # 10 / 100 each
    """
    return jnp.diag(noise_covariance(eco, task, loss_scale, "independent"))


# -------------------------------------------------------------- stationary
def _bias_gram(eco: Ecosystem, task, dtype) -> Optional[jax.Array]:
    """``(S, S)`` Gram ``<theta_s - theta*, theta_s' - theta*>_Sigma``, or None when all thetas agree."""
    if all(t is None for t in eco.data_theta):
        return None
    star = jnp.asarray(task.theta_star, dtype)
    delta = jnp.stack([jnp.zeros_like(star) if t is None else jnp.asarray(t, dtype) - star
                       for t in eco.data_theta])
    if task.cov is None:
        return delta @ delta.T
    return delta @ jnp.asarray(task.cov, dtype) @ delta.T


def persistent_gram(eco: Ecosystem, task, dtype) -> Optional[jax.Array]:
    """``(S, S)`` second moments of the parts of the real data that do not renew.

    Fixed nodes' label noise (``sigma^2 d / n_s`` on the diagonal) plus the
    bias Gram of data nodes whose theta differs from theta*; None if neither.
    """
    fixed = ~np.asarray(eco.fresh, bool).reshape(-1)
    gram = _bias_gram(eco, task, dtype)
    if not fixed.any():
        return gram
    noise = jnp.asarray(task.noise, dtype) ** 2 * task.dim
    diag = jnp.diag(noise * jnp.asarray(fixed, dtype) / jnp.asarray(eco.n, dtype))
    return diag if gram is None else gram + diag


def stationary(
    eco: Ecosystem, task, exact: bool = False, loss_scale: str = "mean", pool: str = "independent",
    **exact_options,
) -> jax.Array:
    """``(K, K)`` stationary second moments ``V_inf`` (replace regime); ``inf`` if it does not exist.

    ``exact=False`` (large-sample): ``V_inf = C + M Gamma M'`` with ``C``
    solving the discrete Lyapunov equation ``C = W C W' + D``
    (:func:`collapse_jax.lyapunov.solve_discrete_lyapunov`), ``D`` from
    :func:`noise_covariance`, ``M = (I - W)^{-1} R`` and ``Gamma`` the
    persistent part of the real data (fixed nodes' noise, biased thetas).
    ``exact=True``: the finite-sample fixed point of the exact second-moment
    map ``V = L(V) + N`` (see :func:`exact_operator`); takes the keyword
    options of that function.

    The diagonal is each model's long-run expected excess risk. When
    ``rho(W) >= 1`` (some model reads from a closed class without data) every
    entry is ``inf``.

    Example:
        >>> eco = cj.graphs.chain(3, n=100, m=100)
        >>> V = stationary(eco, cj.LinearRegression(dim=10))  # diag: (i + 1) * 10 / 100
    """
    _option("loss_scale", loss_scale, LOSS_SCALES)
    _option("pool", pool, POOLS)
    if exact:
        return _exact_stationary(eco, task, loss_scale=loss_scale, pool=pool, **exact_options)
    if exact_options:
        raise ValueError(f"stationary: unexpected options {sorted(exact_options)} for exact=False")
    R, W = effective_weights(eco, loss_scale)
    D = noise_covariance(eco, task, loss_scale, pool)
    C = solve_discrete_lyapunov(W, D)
    gamma = persistent_gram(eco, task, W.dtype)
    if gamma is None:
        return C
    M = jnp.linalg.solve(jnp.eye(eco.K, dtype=W.dtype) - W, R)
    B = M @ gamma @ M.T
    ok = jnp.all(jnp.isfinite(C))
    # rho(W) >= 1: (I - W) may be singular; report inf, never NaN.
    return jnp.where(ok, C + jnp.where(ok, B, 0.0), jnp.inf)


def _exact_stationary(eco, task, loss_scale, pool, **options):
    raise NotImplementedError("stationary(exact=True) is not implemented yet")
