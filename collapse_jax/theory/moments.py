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

Finite samples (``exact=True``, :func:`exact_coefficients`): with
``G_kj = c_kj P_k^{-1} S_kj`` the error obeys ``e_t,k = sum_j G_kj e_{t-1,j} + u_k``
and, Gram matrices being rotation invariant, ``V_t = L(V_{t-1}) + N`` with
``L(V)[k, l] = sum_{e into k, f into l} cross[e, f] V[j_e, j_f]``. The
coefficients have closed forms for pooled least squares (``N_k`` samples:
``d / (N_k - d - 1)``) and single-source models (``G = I``); the others are a
seeded Monte Carlo over Gram matrices only.

The core functions (:func:`effective_weights`, :func:`noise_diagonal`,
:func:`noise_covariance`, :func:`stationary`, :func:`large_sample`) are pure
``jnp`` and differentiable with respect to ``eco.real_weights``,
``eco.model_weights`` and ``eco.alpha``; they compute in the dtype of the
ecosystem's weights (use float64 for accurate gradients). :func:`moments`,
the user-facing entry point, always computes in float64 (inside
``jax.enable_x64(True)``) and returns NumPy arrays.

Import note: ``collapse_jax.moments`` as an *attribute* of the package is the
function :func:`moments`; import this module's names with
``from collapse_jax.theory.moments import stationary, noise_diagonal`` (or
``importlib.import_module("collapse_jax.moments")``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.ecosystem import Ecosystem
from collapse_jax.options import LOSS_SCALES, POOLS
from collapse_jax.options import check_choice as _option
from collapse_jax.graphs.topology import topology
from collapse_jax.tasks.linear_regression.fixed_design import moments_fixed
from collapse_jax.tasks.linear_regression.task import GaussianLaw, LinearRegression
from collapse_jax.theory.lyapunov import solve_discrete_lyapunov

__all__ = [
    "effective_weights",
    "noise_diagonal",
    "noise_covariance",
    "stationary",
    "stationary_parts",
    "persistent_gram",
    "generation0_weights",
    "large_sample",
    "ExactCoefficients",
    "exact_coefficients",
    "exact_operator",
    "exact_stationary",
    "Moments",
    "moments",
    "check_isotropic",
    "bounded_models",
]

# ------------------------------------------------------------------ checks


def _check_linear_regression(task, where: str) -> None:
    if not isinstance(task, LinearRegression):
        raise ValueError(f"{where}: needs a collapse_jax.LinearRegression task, got {type(task).__name__}")


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_isotropic(eco: Ecosystem, task, where: str = "moments", allow_ridge: bool = False) -> None:
    """Raise ``ValueError`` unless the analytic K x K theory applies to (eco, task).

    It needs: linear regression, no fixed design, every node's covariance
    equal to the task's (None means "the task's"), and ridge 0 (with
    ``allow_ridge``: any ridge if the task's covariance is the identity, since
    ``P + ridge I`` keeps the rotation invariance only then).
    """
    if not hasattr(task, "noise") or not hasattr(task, "dim") or not hasattr(task, "ridge"):
        raise ValueError(f"{where}: needs a LinearRegression task, got {type(task).__name__}")
    if _concrete(task.ridge) and float(task.ridge) != 0.0:
        if not allow_ridge:
            raise ValueError(
                f"{where}: the analytic moments are for unregularized least squares; task.ridge must be 0")
        if task.cov is not None:
            raise ValueError(f"{where}: ridge > 0 with a non-identity task.cov breaks rotation invariance")
    for kind, names, designs in (("data node", eco.data, eco.data_attr("design")),
                                 ("model node", eco.models, eco.model_attr("design"))):
        for name, x in zip(names, designs):
            if x is not None:
                raise ValueError(
                    f"{where}: {kind} {name!r} has a fixed design; use "
                    "collapse_jax.moments(...) (it dispatches to public_private.moments_fixed)"
                )
    ref = None if task.cov is None else np.asarray(task.cov, float) if _concrete(task.cov) else None
    for kind, names, covs in (("data node", eco.data, eco.data_attr("cov")), ("model node", eco.models, eco.model_attr("cov"))):
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


# ------------------------------------------------------- persistent parts
def generation0_weights(eco: Ecosystem, loss_scale: str = "mean") -> jax.Array:
    """``(K, S)`` shares of the data nodes in each model's generation-0 fit.

    Generation 0 fits on the real in-edges with the relative real weights
    renormalized to sum 1 (THEORY section 1); under ``loss_scale="sum"`` the
    shares are proportional to weight x sample count. Rows of models without
    real data are 0 (they fit on ``n0`` truth samples).
    """
    _option("loss_scale", loss_scale, LOSS_SCALES)
    rel = eco.real_weights
    if loss_scale == "sum":
        rel = rel * jnp.asarray(eco.n, rel.dtype)[None, :]
    total = rel.sum(1, keepdims=True)
    return rel / jnp.where(total > 0, total, 1.0)


def _bias(eco: Ecosystem, task, dtype) -> Optional[jax.Array]:
    """``(S, d)`` ``theta_s - theta*`` per data node, or None when all thetas are the task's."""
    if all(t is None for t in eco.data_attr("theta")):
        return None
    star = jnp.asarray(task.theta_star, dtype)
    return jnp.stack([jnp.zeros_like(star) if t is None else jnp.asarray(t, dtype) - star
                      for t in eco.data_attr("theta")])


def persistent_gram(eco: Ecosystem, task, dtype) -> Optional[jax.Array]:
    """``(S, S)`` second moments ``Gamma`` of the parts of the real data that do not renew.

    Fixed nodes' label noise (``sigma^2 d / n_s`` on the diagonal) plus the
    Gram ``<theta_s - theta*, theta_s' - theta*>_Sigma`` of biased data
    nodes; None if there is neither.
    """
    fixed = ~np.asarray(eco.fresh, bool).reshape(-1)
    delta = _bias(eco, task, dtype)
    gram = None
    if delta is not None:
        gram = delta @ delta.T if task.cov is None else delta @ jnp.asarray(task.cov, dtype) @ delta.T
    if not fixed.any():
        return gram
    noise = jnp.asarray(task.noise, dtype) ** 2 * task.dim
    diag = jnp.diag(noise * jnp.asarray(fixed, dtype) / jnp.asarray(eco.n, dtype))
    return diag if gram is None else gram + diag


# -------------------------------------------------------------- stationary
def stationary_parts(W: jax.Array, R: jax.Array, D: jax.Array, gamma: Optional[jax.Array]) -> jax.Array:
    """``V = C + M Gamma M'`` with ``C = W C W' + D`` and ``M = (I - W)^{-1} R``; ``inf`` if rho(W) >= 1.

    The building block of :func:`stationary`, also used by the diagnostics on
    the bounded part of an ecosystem.
    """
    C = solve_discrete_lyapunov(W, D)
    if gamma is None:
        return C
    ok = jnp.all(jnp.isfinite(C))
    # rho(W) >= 1: I - W may be singular; solve a harmless system instead so
    # that neither the value nor the gradient becomes NaN.
    eye = jnp.eye(W.shape[0], dtype=W.dtype)
    M = jnp.linalg.solve(eye - jnp.where(ok, W, 0.0), R)
    return jnp.where(ok, C + M @ gamma @ M.T, jnp.inf)


def stationary(
    eco: Ecosystem, task, exact: bool = False, loss_scale: str = "mean", pool: str = "independent",
    **exact_options,
) -> jax.Array:
    """``(K, K)`` stationary second moments ``V_inf`` (replace regime); ``inf`` if it does not exist.

    ``exact=False`` (large-sample): ``V_inf = C + M Gamma M'`` with ``C``
    solving the discrete Lyapunov equation ``C = W C W' + D``
    (:func:`collapse_jax.lyapunov.solve_discrete_lyapunov`), ``D`` from
    :func:`noise_covariance`, ``M = (I - W)^{-1} R`` and ``Gamma`` from
    :func:`persistent_gram`. ``exact=True``: the finite-sample fixed point
    ``V = L(V) + N`` of the exact second-moment map (:func:`exact_coefficients`;
    keyword options ``mc_samples``, ``mc_seed``); it needs fresh data nodes
    and one theta.

    The diagonal is each model's long-run expected excess risk. Rows and
    columns of models that collapse (they read from a closed class without
    data, THEORY 4; for ``exact=True`` also from a component where
    ``rho(L) >= 1``) are ``inf``; the other models are upstream-closed, so
    their block solves its own equation. Which models collapse is read from
    the support ``W > 0`` when the weights are concrete, and from the static
    edge lists under tracing (``jax.grad``/``jit``), where a model with a real
    in-edge counts as fed by data: if that is wrong (alpha = 1 on it), the
    block's solve returns ``inf`` rather than a wrong finite value.

    Example:
        >>> eco = cj.graphs.chain(3, n=100, m=100)
        >>> V = stationary(eco, cj.LinearRegression(dim=10))  # diag: (i + 1) * 10 / 100
    """
    _option("loss_scale", loss_scale, LOSS_SCALES)
    _option("pool", pool, POOLS)
    if exact:
        coef = exact_coefficients(eco, task, loss_scale=loss_scale, pool=pool, **exact_options)
        return exact_stationary(eco, coef)
    if exact_options:
        raise ValueError(f"stationary: unexpected options {sorted(exact_options)} for exact=False")
    R, W = effective_weights(eco, loss_scale)
    D = noise_covariance(eco, task, loss_scale, pool)
    B = bounded_models(eco, W, R)
    V = jnp.full((eco.K, eco.K), jnp.inf, W.dtype)
    if not len(B):
        return V
    VB = stationary_parts(W[np.ix_(B, B)], R[B], D[np.ix_(B, B)], persistent_gram(eco, task, W.dtype))
    return V.at[np.ix_(B, B)].set(VB)


def _support(eco: Ecosystem, W, R):
    """``(K, K)`` support of W and ``(K,)`` has-data flags: from values if concrete, else static edges."""
    if _concrete(W) and _concrete(R):
        W = np.asarray(W, float)
        return W > 0, (np.asarray(R, float).sum(1) > 0) if eco.S else np.zeros(eco.K, bool)
    A = np.zeros((eco.K, eco.K), bool)
    for k, j in eco.model_edges:
        A[k, j] = True
    return A, eco.has_real()


def bounded_models(eco: Ecosystem, W, R) -> np.ndarray:
    """Indices of the models that read from no closed class (THEORY 4, item 2)."""
    A, has = _support(eco, W, R)
    return np.flatnonzero(~topology(A.astype(float), has).collapses)


# ---------------------------------------------------- large-sample moments
def _generation0(eco: Ecosystem, task, loss_scale, dtype):
    """Large-sample generation-0 state: noise (K,), shares R0 (K, S)."""
    R0 = generation0_weights(eco, loss_scale).astype(dtype)
    sig2d = jnp.asarray(task.noise, dtype) ** 2 * task.dim
    fresh = _fresh_mask(eco, dtype)
    n = jnp.asarray(eco.n, dtype)
    real = (R0 ** 2 * (fresh / n)[None, :]).sum(1) if eco.S else jnp.zeros(eco.K, dtype)
    truth = 1.0 / jnp.asarray(eco.n0, dtype)
    return sig2d * jnp.where(jnp.asarray(eco.has_real()), real, truth), R0


def large_sample(
    eco: Ecosystem, task, generations: int, *, regime: str = "replace", pool: str = "independent",
    loss_scale: str = "mean",
):
    """Large-sample trajectories of the mean and second moments (pure, differentiable).

    State-space form of THEORY section 4. Replace: the state is the errors
    ``e`` (K) and the persistent data parts ``p`` (S; bias and fixed-node
    noise), ``e_t = W e_{t-1} + R p + xi_t``. Accumulate: each model edge
    ``(k, j)`` also carries ``a``, the running average over the batches
    ``1..t`` of ``e_{u-1,j} + zeta_u`` (a batch's label noise ``zeta`` stays
    in the pool), ``a_t = (1 - 1/t) a_{t-1} + (e_{t-1,j} + zeta_t) / t`` and
    ``e_t = Omega_t a_t + rho_t p + eta_t``; with ``loss_scale="sum"`` the
    shares ``Omega_t, rho_t`` follow the accumulated counts.

    Returns:
        ``(mean (T + 1, K, d), second (T + 1, K, K))``: ``E[theta - theta*]``
        and ``E <e_k, e_l>_Sigma``.
    """
    _option("regime", regime, ("replace", "accumulate"))
    _option("pool", pool, POOLS)
    check_isotropic(eco, task, "moments")
    K, S, d = eco.K, eco.S, task.dim
    R, W = effective_weights(eco, loss_scale)
    dtype = W.dtype
    sig2d = jnp.asarray(task.noise, dtype) ** 2 * d
    n = jnp.asarray(eco.n, dtype)
    m = jnp.asarray(eco.n_synthetic, dtype)
    fresh = _fresh_mask(eco, dtype)

    noise0, R0 = _generation0(eco, task, loss_scale, dtype)
    delta = _bias(eco, task, dtype)
    delta = jnp.zeros((S, d), dtype) if delta is None else delta
    gamma = persistent_gram(eco, task, dtype)
    gamma = jnp.zeros((S, S), dtype) if gamma is None else gamma

    if regime == "replace":
        E = 0
        D = noise_covariance(eco, task, loss_scale, pool)
        F = jnp.block([[W, R], [jnp.zeros((S, K), dtype), jnp.eye(S, dtype=dtype)]])
        N = jnp.zeros((K + S, K + S), dtype).at[:K, :K].set(D)

        def transition(t):
            return F, N
    else:
        model_e = np.asarray(eco.model_edges, int).reshape(-1, 2)
        ke, je = model_e[:, 0], model_e[:, 1]
        E = len(model_e)
        cons = jnp.asarray(np.eye(K)[ke].T, dtype)  # (K, E) consumer of each edge
        sel = jnp.asarray(np.eye(K)[je], dtype)     # (E, K) producer of each edge
        same = (je[:, None] == je[None, :]) if pool == "shared" else np.eye(E, dtype=bool)
        zeta = jnp.asarray(same, dtype) * (sig2d / m[je])[:, None]  # one batch's noise, (E, E)
        w_e = W[ke, je]
        Rn = (R * n[None, :]).sum(1)
        Wm = (W * m[None, :]).sum(1)

        def transition(t):
            t = t.astype(dtype)
            if loss_scale == "mean":
                rho, omega = R, w_e
            else:
                Z = Rn + t * Wm
                rho, omega = R * n[None, :] / Z[:, None], w_e * t * m[je] / Z[ke]
            Om = cons * omega[None, :]
            lam = (t - 1.0) / t
            zK, zE, zS = (jnp.zeros((a, b), dtype) for a, b in ((S, K), (S, E), (E, S)))
            F = jnp.block([
                [Om @ sel / t, lam * Om, rho],
                [sel / t, lam * jnp.eye(E, dtype=dtype), zS],
                [zK, zE, jnp.eye(S, dtype=dtype)],
            ])
            eta = sig2d * (rho ** 2 * (fresh / n)[None, :]).sum(1) if S else jnp.zeros(K, dtype)
            z = zeta / t ** 2
            N = jnp.zeros((K + E + S,) * 2, dtype)
            N = N.at[:K, :K].set(Om @ z @ Om.T + jnp.diag(eta))
            N = N.at[:K, K:K + E].set(Om @ z).at[K:K + E, :K].set(z @ Om.T)
            N = N.at[K:K + E, K:K + E].set(z)
            return F, N

    size = K + E + S
    Y0 = jnp.zeros((size, size), dtype)
    Y0 = Y0.at[:K, :K].set(jnp.diag(noise0) + R0 @ gamma @ R0.T)
    Y0 = Y0.at[:K, K + E:].set(R0 @ gamma).at[K + E:, :K].set(gamma @ R0.T)
    Y0 = Y0.at[K + E:, K + E:].set(gamma)
    M0 = jnp.concatenate([R0 @ delta, jnp.zeros((E, d), dtype), delta])

    def step(carry, t):
        Y, M = carry
        F, N = transition(t)
        Y, M = F @ Y @ F.T + N, F @ M
        return (Y, M), (M[:K], Y[:K, :K])

    _, (means, seconds) = jax.lax.scan(step, (Y0, M0), jnp.arange(1, generations + 1))
    mean = jnp.concatenate([M0[None, :K], means])
    second = jnp.concatenate([Y0[None, :K, :K], seconds])
    return mean, second


# ------------------------------------------------------ exact (finite sample)
class ExactCoefficients(NamedTuple):
    """Coefficients of the exact second-moment map of THEORY section 4 (isotropic Gaussian design).

    With ``G_e = c_e P_k^{-1} S_e`` for model edge ``e = (k, j)`` (``P_k`` the
    combined normal-equation matrix, ``S_e`` the Gram of the batch),
    ``e_{t,k} = sum_j G_kj e_{t-1,j} + u_k`` and, by rotation invariance,
    ``E[G_e' G_f] = cross[e, f] I``, so

        V_t[k, l] = sum_{e into k, f into l} cross[e, f] V_{t-1}[j_e, j_f] + noise[k, l].

    Attributes:
        gain: ``(E,)`` ``E tr(G_e) / d`` (the exact mean operator; ``w_e`` for large samples).
        cross: ``(E, E)`` ``E tr(G_e' G_f) / d``.
        noise: ``(K, K)`` ``E <u_k, u_l>`` per generation.
        noise0: ``(K,)`` ``E ||e_{0,k}||^2`` of the generation-0 fit.
    """

    gain: jax.Array
    cross: jax.Array
    noise: jax.Array
    noise0: jax.Array


def _coef(weights, sizes, loss_scale):
    """Per-sample loss coefficients: weight / n under "mean", weight under "sum"."""
    return weights / sizes if loss_scale == "mean" else weights


def exact_coefficients(
    eco: Ecosystem, task, *, loss_scale: str = "mean", pool: str = "independent",
    mc_samples: int = 4096, mc_seed: int = 0, fixed_as_fresh: bool = False,
) -> ExactCoefficients:
    """Finite-sample coefficients of the exact second-moment map (isotropic Gaussian design).

    Closed forms where they exist (ridge 0): a model whose only source is
    one model's batch has ``G = I`` exactly; a model whose sources all have
    the same per-sample loss coefficient (pooled least squares, e.g. equal
    sample counts under "mean" or equal weights under "sum") has
    ``noise = sigma^2 d / (N_k - d - 1)`` (``E (X'X)^{-1} = I / (N - d - 1)``)
    and ``gain_e = m_e / N_k`` (exchangeable samples); with independent
    batches, models are independent, so ``cross[e, f] = gain_e gain_f`` when
    ``e`` and ``f`` feed different models (and, with ``pool="shared"``, models
    that share no producer). Everything else is the average over
    ``mc_samples`` draws of the Wishart Gram matrices only (labels are
    integrated out exactly), seeded by ``mc_seed``; the same draws serve
    every weight, so the estimate is differentiable in the weights
    (common random numbers). Pooled detection needs concrete weights; under
    ``jax.grad`` those models use the Monte Carlo estimate.

    The task's ``ridge`` enters ``P_k`` (the spectral radius of the map stays
    meaningful), but the closed forms and :func:`moments` need ridge 0.

    Args:
        eco, task: an isotropic ecosystem (:func:`check_isotropic`, ridge allowed).
        loss_scale, pool: as in :func:`collapse_jax.simulate`.
        mc_samples: Monte Carlo draws of all Gram matrices.
        mc_seed: seed of those draws.
        fixed_as_fresh: treat fixed Gaussian data nodes as fresh draws (an
            approximation used by the diagnostics); otherwise they are an error.

    Example:
        >>> coef = exact_coefficients(cj.graphs.complete(3, n=40, m=40), cj.LinearRegression(dim=5))
        >>> coef.gain    # 1/3 each (pooled: 40 of 120 samples)
    """
    _option("loss_scale", loss_scale, LOSS_SCALES)
    _option("pool", pool, POOLS)
    check_isotropic(eco, task, "exact moments", allow_ridge=True)
    no_ridge = _concrete(task.ridge) and float(task.ridge) == 0.0
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, (int, np.integer)) or mc_samples < 2:
        raise ValueError(f"mc_samples must be an integer >= 2, got {mc_samples!r}")
    K, d = eco.K, task.dim
    R, W = eco.R, eco.W
    dtype = W.dtype
    sig2 = jnp.asarray(task.noise, dtype) ** 2
    n = np.asarray(eco.n, int)
    m = np.asarray(eco.n_synthetic, int)
    real_e = np.asarray(eco.real_edges, int).reshape(-1, 2)
    model_e = np.asarray(eco.model_edges, int).reshape(-1, 2)
    Er, E = len(real_e), len(model_e)
    fresh = np.asarray(eco.fresh, bool).reshape(-1)
    if not fixed_as_fresh:
        for s in np.unique(real_e[:, 1]):
            if not fresh[s]:
                raise ValueError(
                    f"exact moments: data node {eco.data[s]!r} is fixed (fresh=False); its Gram persists, "
                    "so the finite-sample map is not Markov in V_t; use exact=False"
                )

    # Source instances: one Gram per real edge (fresh data are drawn per consumer),
    # per model edge (independent pool) or per producer (shared pool), and per
    # model without real data for its generation-0 truth samples.
    producers = np.unique(model_e[:, 1]) if E else np.zeros(0, int)
    syn_inst = (Er + np.searchsorted(producers, model_e[:, 1])) if pool == "shared" else Er + np.arange(E)
    n_syn_inst = len(producers) if pool == "shared" else E
    no_real = np.flatnonzero(~eco.has_real())
    truth_inst = Er + n_syn_inst + np.arange(len(no_real))
    sizes = np.concatenate([n[real_e[:, 1]], m[producers] if pool == "shared" else m[model_e[:, 1]],
                            np.asarray(eco.n0, int)[no_real]]).astype(int)

    inc_k = np.concatenate([real_e[:, 0], model_e[:, 0]])
    inc_i = np.concatenate([np.arange(Er), syn_inst]).astype(int)
    c = jnp.concatenate([
        _coef(R[real_e[:, 0], real_e[:, 1]], jnp.asarray(n[real_e[:, 1]], dtype), loss_scale),
        _coef(W[model_e[:, 0], model_e[:, 1]], jnp.asarray(m[model_e[:, 1]], dtype), loss_scale),
    ]).astype(dtype)
    pairs = np.argwhere(inc_i[:, None] == inc_i[None, :])  # incidences sharing one batch
    p_idx, q_idx = pairs[:, 0], pairs[:, 1]

    R0 = generation0_weights(eco, "mean").astype(dtype)  # relative real weights, rows sum to 1
    inc0_k = np.concatenate([real_e[:, 0], no_real])
    inc0_i = np.concatenate([np.arange(Er), truth_inst]).astype(int)
    c0 = jnp.concatenate([
        _coef(R0[real_e[:, 0], real_e[:, 1]], jnp.asarray(n[real_e[:, 1]], dtype), loss_scale),
        jnp.asarray(1.0 / sizes[truth_inst] if loss_scale == "mean" else np.ones(len(no_real)), dtype),
    ]).astype(dtype)

    # ---- closed forms (ridge 0): which coefficients need no Monte Carlo
    cvals = np.asarray(c) if _concrete(c) else None
    c0vals = np.asarray(c0) if _concrete(c0) else None

    def pooled(mine, values):
        return len(mine) == 1 or (values is not None and np.allclose(values[mine], values[mine[0]], rtol=1e-12, atol=0))

    closed_gain = np.full(E, np.nan)
    closed_noise = np.full(K, np.nan)
    closed_noise0 = np.full(K, np.nan)
    unit_cross = np.zeros(E, bool)  # the only source of its model: G = I
    if no_ridge:
        for k in range(K):
            mine = np.flatnonzero(inc_k == k)
            if pooled(mine, cvals):
                N_k = int(sizes[inc_i[mine]].sum())
                closed_noise[k] = d / (N_k - d - 1)
                for p in mine[mine >= Er]:
                    closed_gain[p - Er] = sizes[inc_i[p]] / N_k
                if len(mine) == 1 and mine[0] >= Er:
                    unit_cross[mine[0] - Er] = True
            mine0 = np.flatnonzero(inc0_k == k)
            if pooled(mine0, c0vals):
                closed_noise0[k] = d / (int(sizes[inc0_i[mine0]].sum()) - d - 1)
    ke = model_e[:, 0]
    if pool == "shared":
        reads = np.zeros((K, K), int)
        reads[ke, model_e[:, 1]] = 1
        dependent = (reads @ reads.T) > 0
    else:
        dependent = np.eye(K, dtype=bool)
    same_batch = dependent[ke][:, ke]  # pairs of edges whose G's are dependent
    cross_known = ~same_batch | (unit_cross[:, None] & unit_cross[None, :] & (ke[:, None] == ke[None, :]))
    need_mc = (np.isnan(closed_gain).any() or np.isnan(closed_noise).any() or np.isnan(closed_noise0).any()
               or not cross_known.all())

    if need_mc:
        plan = _GramPlan(
            K=K, d=d, Er=Er, E=E, sizes=tuple(int(x) for x in sizes),
            inc_k=tuple(inc_k.tolist()), inc_i=tuple(inc_i.tolist()),
            inc0_k=tuple(inc0_k.tolist()), inc0_i=tuple(inc0_i.tolist()),
            p_idx=tuple(p_idx.tolist()), q_idx=tuple(q_idx.tolist()),
            samples=int(mc_samples), batch=int(min(mc_samples, 256)),
        )
        gain, cross, noise, noise0 = _gram_averages(task, c, c0, jax.random.key(mc_seed), plan)
    else:
        gain, cross = jnp.zeros(E, dtype), jnp.zeros((E, E), dtype)
        noise, noise0 = jnp.zeros((K, K), dtype), jnp.zeros(K, dtype)
    gain = jnp.where(jnp.asarray(np.isnan(closed_gain)), gain, jnp.asarray(np.nan_to_num(closed_gain), dtype))
    known = ~np.isnan(closed_noise)
    noise = jnp.where(jnp.asarray(np.diag(known)), jnp.asarray(np.diag(np.nan_to_num(closed_noise)), dtype), noise)
    noise0 = jnp.where(jnp.asarray(np.isnan(closed_noise0)), noise0, jnp.asarray(np.nan_to_num(closed_noise0), dtype))
    noise, noise0 = sig2 * noise, sig2 * noise0
    cross = jnp.where(jnp.asarray(np.diag(unit_cross)), 1.0, cross)
    # Different models whose batches are independent: E[G_e' G_f] = E[G_e]' E[G_f].
    cross = jnp.where(jnp.asarray(~same_batch), gain[:, None] * gain[None, :], cross)
    return ExactCoefficients(gain, cross, noise, noise0)


class _GramPlan(NamedTuple):
    """Static layout of the Monte Carlo over Gram matrices (hashable: the compile key)."""

    K: int
    d: int
    Er: int          # real incidences come first
    E: int           # then model edges
    sizes: tuple     # samples of every source instance (its Gram is Wishart(I, size))
    inc_k: tuple     # consumer of every incidence (generation t >= 1)
    inc_i: tuple     # source instance of every incidence
    inc0_k: tuple    # the same for generation 0
    inc0_i: tuple
    p_idx: tuple     # pairs of incidences that share one batch
    q_idx: tuple
    samples: int
    batch: int


def _gram_averages_impl(task, c, c0, key, plan: _GramPlan):
    """Monte Carlo averages of tr(G), tr(G'G), and the label-noise traces (sigma = 1)."""
    K, d, Er, E = plan.K, plan.d, plan.Er, plan.E
    dtype = c.dtype
    sizes = np.asarray(plan.sizes, int)
    inc_k, inc_i = np.asarray(plan.inc_k, int), np.asarray(plan.inc_i, int)
    inc0_k, inc0_i = np.asarray(plan.inc0_k, int), np.asarray(plan.inc0_i, int)
    p_idx, q_idx = np.asarray(plan.p_idx, int), np.asarray(plan.q_idx, int)
    ridge = jnp.asarray(task.ridge, dtype) * jnp.eye(d, dtype=dtype)
    law = GaussianLaw(None)
    zero = jnp.zeros(d, dtype)
    groups = [(int(size), np.flatnonzero(sizes == size)) for size in np.unique(sizes)]

    def grams(key):
        S = jnp.zeros((len(sizes), d, d), dtype)
        for size, ids in groups:
            keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(ids, jnp.uint32))
            draw = jax.vmap(lambda k, size=size: task.draw(k, law, zero, size, "samples").gram)
            S = S.at[ids].set(draw(keys))
        return S

    def normal_matrix(S, coef, ks, ids):
        """``P_k`` (K, d, d): the weighted normal matrix of every model."""
        P = jax.ops.segment_sum(coef[:, None, None] * S[ids], ks, num_segments=K) + ridge[None]
        # A model without incidences (no generation-t source) gets the identity.
        return jnp.where(jnp.asarray(np.isin(np.arange(K), ks))[:, None, None], P, jnp.eye(d, dtype=dtype)[None])

    def inverses(P):
        # Not jnp.linalg.inv, and one LAPACK call per iteration: jaxlib's batched LU
        # kernel farms its batch out to the XLA CPU thread pool it runs on, and two
        # such calls running at once deadlocked a 2-core machine (every thread asleep
        # in getrf's BlockingCounter). P is symmetric positive definite: Cholesky.
        eye = jnp.eye(d, dtype=dtype)
        return jax.vmap(lambda p: jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(p, lower=True), eye))(P)

    def one(key):
        S = grams(key)
        Pinv, Pinv0 = jnp.split(inverses(jnp.concatenate([normal_matrix(S, c, inc_k, inc_i),
                                                           normal_matrix(S, c0, inc0_k, inc0_i)])), 2)
        Y = c[:, None, None] * (Pinv[inc_k] @ S[inc_i])
        G = Y[Er:]
        gain = jnp.trace(G, axis1=1, axis2=2) / d
        flat = G.reshape(E, d * d)
        cross = flat @ flat.T / d
        # c_p c_q tr(P_k^-1 S P_l^-1) = sum(Y_p * c_q P_l^-1) (P_l^-1 symmetric)
        val = c[q_idx] * jnp.sum(Y[p_idx] * Pinv[inc_k[q_idx]], axis=(1, 2))
        noise = jnp.zeros((K, K), dtype).at[inc_k[p_idx], inc_k[q_idx]].add(val)
        Y0 = c0[:, None, None] * (Pinv0[inc0_k] @ S[inc0_i])
        val0 = c0 * jnp.sum(Y0 * Pinv0[inc0_k], axis=(1, 2))
        noise0 = jax.ops.segment_sum(val0, inc0_k, num_segments=K)
        return gain, cross, noise, noise0

    keys = jax.random.split(key, plan.samples)
    out = jax.lax.map(one, keys, batch_size=plan.batch)
    return jax.tree_util.tree_map(lambda x: x.mean(0), out)


_gram_averages = jax.jit(_gram_averages_impl, static_argnames=("plan",))


def exact_operator(eco: Ecosystem, coef: ExactCoefficients) -> jax.Array:
    """``(K^2, K^2)`` matrix of the exact second-moment map ``V -> L(V)`` (row-major ``vec``)."""
    K = eco.K
    model_e = np.asarray(eco.model_edges, int).reshape(-1, 2)
    ke, je = model_e[:, 0], model_e[:, 1]
    rows = (ke[:, None] * K + ke[None, :]).ravel()
    cols = (je[:, None] * K + je[None, :]).ravel()
    return jnp.zeros((K * K, K * K), coef.cross.dtype).at[rows, cols].add(coef.cross.ravel())


def _apply_exact(eco: Ecosystem, coef: ExactCoefficients):
    model_e = np.asarray(eco.model_edges, int).reshape(-1, 2)
    ke, je = model_e[:, 0], model_e[:, 1]
    cons = jnp.asarray(np.eye(eco.K)[ke].T, coef.cross.dtype)

    def L(V):
        return cons @ (coef.cross * V[je][:, je]) @ cons.T

    return L


def exact_stationary(eco: Ecosystem, coef: ExactCoefficients) -> jax.Array:
    """``(K, K)`` fixed point of ``V = L(V) + noise``; ``inf`` for models that diverge.

    With concrete coefficients, a model is bounded when every strongly
    connected component it reads from (itself included) has ``rho(L) < 1``
    on its pairs (``L`` is block triangular along the condensation); the
    bounded models' block is solved on its own. Under tracing the whole
    ``K^2``-dimensional system is tested and solved at once (all ``inf`` if
    ``rho(L) >= 1``). Dense: fine for K up to a few tens.
    """
    K = eco.K
    Lmat = exact_operator(eco, coef)
    if _concrete(Lmat):
        Ln = np.asarray(Lmat, float)
        A = np.zeros((K, K))
        for a, (k, j) in enumerate(eco.model_edges):
            A[k, j] = float(np.asarray(coef.gain)[a] != 0.0)  # a zero-weight edge has G = 0
        topo = topology(A, np.ones(K, bool))  # only the components and reach matter here
        def radius(C):
            pairs = (C[:, None] * K + C[None, :]).ravel()
            return np.max(np.abs(np.linalg.eigvals(Ln[np.ix_(pairs, pairs)])))

        bad = [C for C in topo.components if radius(C) >= 1.0 - 1e-12]
        B = np.flatnonzero([not any(topo.reach[k, C].any() for C in bad) for k in range(K)])
        V = jnp.full((K, K), jnp.inf, Lmat.dtype)
        if not len(B):
            return V
        pairs = (B[:, None] * K + B[None, :]).ravel()
        sub = Lmat[np.ix_(pairs, pairs)]
        VB = jnp.linalg.solve(jnp.eye(len(pairs), dtype=Lmat.dtype) - sub, coef.noise[np.ix_(B, B)].reshape(-1))
        return V.at[np.ix_(B, B)].set(VB.reshape(len(B), len(B)))
    rho = jnp.max(jnp.abs(jnp.linalg.eigvals(jax.lax.stop_gradient(Lmat))))
    ok = rho < 1.0 - 1e-12
    A = jnp.eye(K * K, dtype=Lmat.dtype) - jnp.where(ok, Lmat, 0.0)
    V = jnp.linalg.solve(A, coef.noise.reshape(-1)).reshape(K, K)
    return jnp.where(ok, V, jnp.inf)


def exact_replace(eco: Ecosystem, coef: ExactCoefficients, generations: int) -> jax.Array:
    """``(T + 1, K, K)`` exact second moments ``V_0 = diag(noise0)``, ``V_t = L(V_{t-1}) + noise``."""
    L = _apply_exact(eco, coef)
    V0 = jnp.diag(coef.noise0)

    def step(V, _):
        V = L(V) + coef.noise
        return V, V

    _, Vs = jax.lax.scan(step, V0, None, length=generations)
    return jnp.concatenate([V0[None], Vs])


def exact_accumulate(eco: Ecosystem, task, generations: int) -> jax.Array:
    """``(T + 1, K, K)`` exact second moments under accumulate for self-loop-only models.

    A model whose only in-edge is its own output, fit by pooled least squares
    on every batch so far (all batches have m samples, so "mean" and "sum"
    agree), satisfies ``P_t e_t = P_{t-1} e_{t-1} + S_t e_{t-1} + Z_t' eps_t``
    with ``P_t = S_1 + ... + S_t``, i.e. ``e_t = e_{t-1} + P_t^{-1} Z_t' eps_t``:
    a martingale with uncorrelated increments. By exchangeability of the t
    batches, ``E tr(P_t^{-1} S_t P_t^{-1}) = E tr(P_t^{-1}) / t = d / (t (t m - d - 1))``:

        E ||e_t||^2 = sigma^2 d / (n0 - d - 1) + sigma^2 d sum_{s=1..t} 1 / (s (s m - d - 1)),

    bounded as t grows (Gerstgrasser et al.: accumulation avoids collapse).
    """
    for k, name in enumerate(eco.models):
        own = [e for e in eco.model_edges if e[0] == k]
        if any(kk == k for kk, _ in eco.real_edges) or own != [(k, k)]:
            raise ValueError(
                f"exact accumulate moments are implemented for models whose only in-edge is their own "
                f"output; model node {name!r} is not one (use exact=False)"
            )
    dtype = jnp.result_type(float)
    d = task.dim
    sig2d = jnp.asarray(task.noise, dtype) ** 2 * d
    m = jnp.asarray(eco.n_synthetic, dtype)
    n0 = jnp.asarray(eco.n0, dtype)
    t = jnp.arange(1, generations + 1, dtype=dtype)
    inc = sig2d / (t[:, None] * (t[:, None] * m[None, :] - d - 1))
    err = (sig2d / (n0 - d - 1))[None, :] + jnp.concatenate([jnp.zeros((1, eco.K), dtype), jnp.cumsum(inc, 0)])
    return jax.vmap(jnp.diag)(err)


# ------------------------------------------------------------ entry point
class Moments(NamedTuple):
    """Expected trajectories from :func:`moments` (NumPy float64).

    Attributes:
        error: ``(T + 1, K)`` expected excess risk per generation and model
            (the diagonal of ``second``).
        mean: ``(T + 1, K, d)`` ``E[theta_{t,k} - theta*]`` (the bias).
        second: ``(T + 1, K, K)`` ``V_t[k, l] = E <e_{t,k}, e_{t,l}>_Sigma``.
        stationary: ``(K, K)`` ``V_inf`` of the replace regime (``inf`` for
            collapsing ecosystems); None under accumulate.
        models: model names (the K axis).
        exact: whether the finite-sample (True) or large-sample recursion was used.
    """

    error: np.ndarray
    mean: np.ndarray
    second: np.ndarray
    stationary: Optional[np.ndarray]
    models: tuple
    exact: bool


def _to64(eco: Ecosystem, task):
    """Copies of eco and task whose arrays are float64 (call inside ``jax.enable_x64``); task may be None."""
    import dataclasses

    f64 = lambda x: None if x is None else jnp.asarray(np.asarray(x, np.float64))  # noqa: E731
    eco = eco.replace(
        real_weights=f64(eco.real_weights), model_weights=f64(eco.model_weights), alpha=f64(eco.alpha),
        data_cov=tuple(map(f64, eco.data_attr("cov"))), data_design=tuple(map(f64, eco.data_attr("design"))),
        data_theta=tuple(map(f64, eco.data_attr("theta"))), model_cov=tuple(map(f64, eco.model_attr("cov"))),
        model_design=tuple(map(f64, eco.model_attr("design"))),
    )
    if task is None:
        return eco, None
    task = dataclasses.replace(task, noise=float(task.noise), ridge=float(task.ridge),
                               theta=f64(task.theta), cov=f64(task.cov))
    return eco, task


def moments(
    eco: Ecosystem, task, generations: int, exact: bool = True, *, regime: str = "replace",
    pool: str = "independent", loss_scale: str = "mean", mc_samples: int = 4096, mc_seed: int = 0,
    **options,
) -> Moments:
    """Expected error trajectories of a linear-regression ecosystem (THEORY section 4).

    ``exact=False``: the large-sample recursion (:func:`large_sample`),
    ``V_t = W V_{t-1} W' + D`` plus fixed-node and bias terms, for both
    regimes. ``exact=True``: finite-sample exact for Gaussian designs (fresh
    data nodes, one theta, ridge 0): replace regime by the exact
    second-moment map (:func:`exact_coefficients`: closed forms where they
    exist, otherwise a seeded Monte Carlo over Gram matrices only);
    accumulate for self-loop-only models by the closed form of
    :func:`exact_accumulate`. The mean is 0 for ``exact=True`` (least
    squares is unbiased with one theta).

    Ecosystems with a fixed design on any node are dispatched to
    ``collapse_jax.public_private.moments_fixed(eco, task, generations, **options)``
    (the keyword options given here are forwarded, ``exact`` excepted).

    Precision: computed in float64 whatever ``jax_enable_x64`` says (inside
    ``jax.enable_x64(True)``); the results are NumPy float64 arrays.

    Args:
        eco: the ecosystem.
        task: a :class:`collapse_jax.LinearRegression`.
        generations: T.
        exact: finite-sample (True) or large-sample (False).
        regime, pool, loss_scale: as in :func:`collapse_jax.simulate`.
        mc_samples, mc_seed: Monte Carlo draws of Gram matrices for the exact
            coefficients that have no closed form.

    Returns:
        A :class:`Moments`.

    Example:
        >>> mom = cj.moments(cj.graphs.chain(3, n=100, m=100), cj.LinearRegression(dim=10), 20)
        >>> mom.error[-1]          # ~ (i + 1) * 10 / 89
    """
    if any(x is not None for x in (*eco.data_attr("design"), *eco.model_attr("design"))):
        forwarded = dict(regime=regime, pool=pool, loss_scale=loss_scale, **options)
        defaults = dict(regime="replace", pool="independent", loss_scale="mean")
        forwarded = {k: v for k, v in forwarded.items() if defaults.get(k, object()) != v}
        return moments_fixed(eco, task, generations, **forwarded)
    if options:
        raise ValueError(f"moments: unexpected options {sorted(options)}")
    _check_linear_regression(task, "moments")
    _option("regime", regime, ("replace", "accumulate"))
    _option("pool", pool, POOLS)
    _option("loss_scale", loss_scale, LOSS_SCALES)
    if isinstance(generations, bool) or not isinstance(generations, (int, np.integer)) or generations < 0:
        raise ValueError(f"generations must be a non-negative integer, got {generations!r}")
    task.check(eco)
    check_isotropic(eco, task, "moments")
    with jax.enable_x64(True):
        eco, task = _to64(eco, task)
        K, d = eco.K, task.dim
        V_inf = None
        if not exact:
            mean, second = large_sample(eco, task, int(generations), regime=regime, pool=pool,
                                        loss_scale=loss_scale)
            if regime == "replace":
                V_inf = stationary(eco, task, False, loss_scale, pool)
        else:
            if any(t is not None and not np.allclose(t, task.theta_star) for t in eco.data_attr("theta")):
                raise ValueError("exact moments need one theta for every data node (use exact=False)")
            if regime == "accumulate":
                second = exact_accumulate(eco, task, int(generations))
            else:
                coef = exact_coefficients(eco, task, loss_scale=loss_scale, pool=pool,
                                          mc_samples=mc_samples, mc_seed=mc_seed)
                second = exact_replace(eco, coef, int(generations))
                V_inf = exact_stationary(eco, coef)
            mean = jnp.zeros((int(generations) + 1, K, d))
        second = np.asarray(second, np.float64)
        return Moments(
            error=np.diagonal(second, axis1=1, axis2=2).copy(),
            mean=np.asarray(mean, np.float64),
            second=second,
            stationary=None if V_inf is None else np.asarray(V_inf, np.float64),
            models=eco.models,
            exact=bool(exact),
        )
