"""Task-generic large-sample theory of an ecosystem (THEORY.md sections 4 and 6).

For any task with an asymptotic covariance ``C = H^-1 J H^-1`` (per sample, at
the truth, :meth:`Task.asymptotic_covariance`) and a local risk metric ``A``
(``risk(theta* + e) ~ e' A e``, :meth:`Task.risk_metric`), the errors of the
models follow, to first order in ``1 / n``, the linear recursion

    e_t = (W (x) I) e_{t-1} + xi_t,     V_t = W V_{t-1} W' + D,
    D[k, l] = tr(A C) ( [k == l] sum_{s fresh} R_ks^2 / n_s + sum_j W_kj W_lj / m_j [shared or k == l] )

for ``V_t[k, l] = E <e_{t,k}, e_{t,l}>_A``, whose diagonal is each model's
expected error. With linear regression ``tr(A C) = tr(Sigma sigma^2 Sigma^-1)
= sigma^2 d``. ``R, W`` are the *effective* weights
(:func:`effective_weights`: under ``loss_scale="sum"`` proportional to weight
x sample count).

Choices this module makes (THEORY leaves them open):

* Fixed data nodes (``fresh=False``) are not per-generation noise: their
  estimation noise ``phi_s`` (covariance ``C / n_s``) is drawn once and shared
  by every consumer and generation. :func:`noise_covariance` counts fresh data
  nodes and synthetic batches only; :func:`stationary` adds the fixed nodes
  as a persistent offset ``M phi`` with ``M = (I - W)^{-1} R``.
* Data nodes whose generating param differs from the truth
  (``task.data_params(eco)`` vs ``task.truth_param()``, compared through
  ``task.vector``) bias the fits; the bias enters the second moments the same
  way (``<Delta_s, Delta_s'>_A``).
* The theory needs every source to share the truth's covariate law: checked
  by :func:`check_large_sample` (the task's exact theory refines the check
  where it has one, e.g. linear regression's ridge and covariances).

Every function is pure ``jnp`` and differentiable with respect to
``eco.real_weights``, ``eco.model_weights`` and ``eco.alpha``, in the dtype
of the ecosystem's weights (use float64 for accurate gradients).

Example:
    >>> import collapse_jax as cj
    >>> from collapse_jax.theory import large_sample as ls
    >>> V = ls.stationary(cj.graphs.chain(3, n=100, m=100), cj.LinearRegression(dim=10))
    >>> [round(float(v), 6) for v in V.diagonal()]   # (i + 1) * 10 / 100
    [0.1, 0.2, 0.3]
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.ecosystem import Ecosystem
from collapse_jax.graphs.topology import topology
from collapse_jax.options import LOSS_SCALES, POOLS
from collapse_jax.options import check_choice as _option
from collapse_jax.tasks.base import Unsupported
from collapse_jax.theory.lyapunov import solve_discrete_lyapunov
from collapse_jax.theory.weights import effective_weights, fresh_mask, generation0_weights

__all__ = [
    "effective_weights",
    "generation0_weights",
    "risk_scale",
    "check_large_sample",
    "supports",
    "noise_covariance",
    "noise_diagonal",
    "persistent_gram",
    "stationary_parts",
    "stationary",
    "noise_and_stationary",
    "bounded_models",
    "large_sample",
]


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


# ------------------------------------------------------------- the task's part
def _method(task, name):
    fn = getattr(task, name, None)
    if fn is None:
        raise Unsupported(f"{type(task).__name__} has no {name}()")
    return fn()


def risk_scale(task, dtype=None) -> jax.Array:
    """``tr(A C)``: the expected error of one fit on one sample, to first order (a scalar).

    ``A = task.risk_metric()``, ``C = task.asymptotic_covariance()``. Raises
    :class:`collapse_jax.tasks.base.Unsupported` if the task lacks either.

    Example:
        >>> import collapse_jax as cj
        >>> float(risk_scale(cj.LinearRegression(dim=4, noise=0.5)))   # sigma^2 d
        1.0
    """
    return _risk_scale(task, None if dtype is None else jnp.dtype(dtype))


def _risk_scale_impl(task, dtype):
    C = jnp.asarray(_method(task, "asymptotic_covariance"))
    A = jnp.asarray(_method(task, "risk_metric"))
    if dtype is not None:
        A, C = A.astype(dtype), C.astype(dtype)
    if C.ndim == 0:
        return A * C
    return jnp.sum(A * C.T)


# Retraced per (task structure and shapes, dtype).
_risk_scale = jax.jit(_risk_scale_impl, static_argnames=("dtype",))


def _exact_theory(task):
    fn = getattr(task, "exact_theory", None)
    return None if fn is None else fn()


def _same_law(a, b) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    for x, y in zip(la, lb):
        if not (_concrete(x) and _concrete(y)):
            continue
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape or not np.allclose(x, y, rtol=1e-6, atol=1e-9):
            return False
    return True


def check_large_sample(eco: Ecosystem, task, where: str = "moments") -> None:
    """Raise ``ValueError`` unless the K x K large-sample theory applies to (eco, task).

    It needs :func:`risk_scale` (the task's asymptotic covariance and risk
    metric) and one covariate law for every source: the task's exact theory
    decides where it has ``check_large_sample`` (linear regression: one
    covariance, no fixed design, ridge 0); otherwise every data node's and
    every model's synthetic law must equal the truth's.
    """
    try:
        jax.eval_shape(lambda: _risk_scale_impl(task, None))  # traced for its shapes only, not run
    except Unsupported as e:
        raise ValueError(f"{where}: the large-sample theory needs the task's asymptotic covariance and "
                         f"risk metric: {e}") from None
    q = int(np.size(jax.eval_shape(lambda: task.vector(task.truth_param()))))
    for name in ("asymptotic_covariance", "risk_metric"):
        shape = jax.eval_shape(lambda name=name: _method(task, name)).shape
        if shape not in ((), (q, q)):
            raise ValueError(f"{where}: {type(task).__name__}.{name}() has shape {shape}; the theory needs "
                             f"({q}, {q}), the length of {type(task).__name__}.vector")
    theory = _exact_theory(task)
    if theory is not None and hasattr(theory, "check_large_sample"):
        theory.check_large_sample(eco, task, where)
        return
    truth = task.truth_law()
    for kind, names, laws in (("data node", eco.data, task.data_laws(eco)),
                              ("model node", eco.models, task.synthetic_laws(eco))):
        for name, law in zip(names, laws):
            if not _same_law(law, truth):
                raise ValueError(f"{where}: {kind} {name!r} has a sampling law different from the truth's; "
                                 "the K x K large-sample theory needs one law for every source")


def supports(eco: Ecosystem, task) -> Optional[str]:
    """``None`` if the large-sample theory applies to (eco, task), else the reason (a string)."""
    try:
        check_large_sample(eco, task)
    except ValueError as e:
        return str(e)
    return None


# ------------------------------------------------------------------- noise
def noise_covariance(
    eco: Ecosystem, task, loss_scale: str = "mean", pool: str = "independent"
) -> jax.Array:
    """``(K, K)`` large-sample innovation covariance ``D`` of one generation.

    ``D[k, l] = E <xi_k, xi_l>_A``: the estimation noise a model picks up in
    one generation from fresh data nodes (independent per consumer) and from
    synthetic batches (independent per edge, or with ``pool="shared"`` one
    batch per producer that correlates its consumers). Fixed data nodes are
    not innovations (see the module docstring).

    Example:
        >>> import collapse_jax as cj
        >>> D = noise_covariance(cj.graphs.star(3, n=50, m=50), cj.LinearRegression(dim=5), pool="shared")
        >>> D.shape
        (3, 3)
    """
    _option("pool", pool, POOLS)
    check_large_sample(eco, task, "noise_covariance")
    return _noise_covariance(eco, task, loss_scale, pool)


def _noise_covariance_impl(eco: Ecosystem, task, loss_scale: str, pool: str) -> jax.Array:
    R, W = effective_weights(eco, loss_scale)
    dtype = W.dtype
    n = jnp.asarray(eco.n, dtype)
    m = jnp.asarray(eco.n_synthetic, dtype)
    scale = _risk_scale_impl(task, dtype)
    real = (R ** 2 * (fresh_mask(eco, dtype) / n)[None, :]).sum(1) if eco.S else jnp.zeros(eco.K, dtype)
    if pool == "shared":
        syn = (W / m[None, :]) @ W.T
        return scale * (jnp.diag(real) + syn)
    return scale * jnp.diag(real + (W ** 2 / m[None, :]).sum(1))


# Retraced per (topology, sizes, task structure and shapes, dtype, loss_scale, pool).
_noise_covariance = jax.jit(_noise_covariance_impl, static_argnames=("loss_scale", "pool"))


def noise_diagonal(eco: Ecosystem, task, loss_scale: str = "mean") -> jax.Array:
    """``(K,)`` large-sample per-generation noise ``delta_k`` (THEORY sections 4 and 6).

    ``delta_k = tr(A C) (sum_{s fresh} R_ks^2 / n_s + sum_j W_kj^2 / m_j)``
    with the effective weights of :func:`effective_weights`. Fixed data nodes
    are left out: their noise is drawn once and persists.

    Example:
        >>> import collapse_jax as cj
        >>> delta = noise_diagonal(cj.graphs.chain(3, n=100, m=100), cj.LinearRegression(dim=10))
        >>> [round(float(v), 6) for v in delta]   # 10 / 100 each
        [0.1, 0.1, 0.1]
    """
    check_large_sample(eco, task, "noise_covariance")
    return _noise_diagonal(eco, task, loss_scale)


def _noise_diagonal_impl(eco: Ecosystem, task, loss_scale: str) -> jax.Array:
    return jnp.diag(_noise_covariance_impl(eco, task, loss_scale, "independent"))


# Retraced as _noise_covariance.
_noise_diagonal = jax.jit(_noise_diagonal_impl, static_argnames=("loss_scale",))


# ------------------------------------------------------- persistent parts
def _bias_impl(eco: Ecosystem, task, dtype) -> jax.Array:
    """``(S, q)`` ``vector(param_s) - vector(truth)`` per data node."""
    truth = jnp.asarray(task.vector(task.truth_param()), dtype)
    params = task.data_params(eco)
    return jnp.asarray(jax.vmap(task.vector)(params), dtype) - truth[None, :]


# Retraced per (topology, task structure and shapes, dtype).
_bias_values = jax.jit(_bias_impl, static_argnames=("dtype",))


def _biased(eco: Ecosystem, task, dtype) -> bool:
    """Whether some data node's param differs from the truth's (concretely; True when traced: it may)."""
    if not eco.S:
        return False
    delta = _bias_values(eco, task, jnp.dtype(dtype))
    return not _concrete(delta) or bool(np.any(np.asarray(delta)))


def _bias(eco: Ecosystem, task, dtype, biased: bool) -> Optional[jax.Array]:
    """``(S, q)`` ``vector(param_s) - vector(truth)`` per data node, or None when not ``biased`` (:func:`_biased`)."""
    return _bias_impl(eco, task, dtype) if biased else None


def persistent_gram(eco: Ecosystem, task, dtype) -> Optional[jax.Array]:
    """``(S, S)`` second moments ``Gamma`` of the parts of the real data that do not renew.

    Fixed nodes' estimation noise (``tr(A C) / n_s`` on the diagonal) plus the
    Gram ``<Delta_s, Delta_s'>_A`` of biased data nodes; None if there is neither.
    """
    dtype = jnp.dtype(dtype)
    return _persistent_gram(eco, task, dtype, _biased(eco, task, dtype))


def _persistent_gram_impl(eco: Ecosystem, task, dtype, biased: bool) -> Optional[jax.Array]:
    fixed = ~np.asarray(eco.fresh, bool).reshape(-1)
    delta = _bias(eco, task, dtype, biased)
    gram = None
    if delta is not None:
        A = jnp.asarray(_method(task, "risk_metric"), dtype)
        if A.ndim == 0:
            A = A * jnp.eye(delta.shape[1], dtype=dtype)
        if A.shape != (delta.shape[1],) * 2:
            raise ValueError(f"data nodes with their own parameters: the risk metric {A.shape} does not match "
                             f"the parameter vector ({delta.shape[1]},) of {type(task).__name__}")
        gram = delta @ A @ delta.T
    if not fixed.any():
        return gram
    diag = jnp.diag(_risk_scale_impl(task, dtype) * jnp.asarray(fixed, dtype) / jnp.asarray(eco.n, dtype))
    return diag if gram is None else gram + diag


# Retraced per (topology, sizes, task structure and shapes, dtype, biased).
_persistent_gram = jax.jit(_persistent_gram_impl, static_argnames=("dtype", "biased"))


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


def stationary(eco: Ecosystem, task, loss_scale: str = "mean", pool: str = "independent") -> jax.Array:
    """``(K, K)`` large-sample stationary second moments ``V_inf`` (replace regime); ``inf`` where unbounded.

    ``V_inf = C + M Gamma M'`` with ``C`` solving the discrete Lyapunov
    equation ``C = W C W' + D`` (:func:`collapse_jax.theory.lyapunov.solve_discrete_lyapunov`),
    ``D`` from :func:`noise_covariance`, ``M = (I - W)^{-1} R`` and ``Gamma``
    from :func:`persistent_gram`. The diagonal is each model's long-run
    expected error.

    Rows and columns of models that collapse (they read from a closed class
    without data, THEORY 4) are ``inf``; the other models are
    upstream-closed, so their block solves its own equation. Which models
    collapse is read from the support ``W > 0`` when the weights are concrete,
    and from the static edge lists under tracing (``jax.grad``/``jit``), where
    a model with a real in-edge counts as fed by data: if that is wrong
    (alpha = 1 on it), the block's solve returns ``inf`` rather than a wrong
    finite value.

    Example:
        >>> import collapse_jax as cj
        >>> V = stationary(cj.graphs.chain(3, n=100, m=100), cj.LinearRegression(dim=10))
        >>> V.shape
        (3, 3)
    """
    _option("loss_scale", loss_scale, LOSS_SCALES)
    _option("pool", pool, POOLS)
    check_large_sample(eco, task, "noise_covariance")
    R, W = effective_weights(eco, loss_scale)
    bounded = tuple(int(b) for b in bounded_models(eco, W, R))
    return _noise_and_stationary(eco, task, loss_scale, pool, bounded, _biased(eco, task, W.dtype))[1]


def _noise_and_stationary_impl(eco: Ecosystem, task, loss_scale: str, pool: str, bounded: tuple, biased: bool):
    R, W = effective_weights(eco, loss_scale)
    D = _noise_covariance_impl(eco, task, loss_scale, pool)
    V = jnp.full((eco.K, eco.K), jnp.inf, W.dtype)
    B = np.asarray(bounded, int)
    if len(B):
        gamma = _persistent_gram_impl(eco, task, W.dtype, biased)
        VB = stationary_parts(W[np.ix_(B, B)], R[B], D[np.ix_(B, B)], gamma)
        V = V.at[np.ix_(B, B)].set(VB)
    return D, V


# Retraced per (topology, sizes, task structure and shapes, dtype, options, bounded set, biased).
_noise_and_stationary = jax.jit(_noise_and_stationary_impl,
                                static_argnames=("loss_scale", "pool", "bounded", "biased"))


def noise_and_stationary(eco: Ecosystem, task, loss_scale: str = "mean", pool: str = "independent",
                         bounded: Optional[tuple] = None) -> tuple:
    """``(D (K, K), V_inf (K, K))`` in one compiled call (what :func:`collapse_jax.diagnose` needs).

    ``bounded``: the models that read from no closed class (default: from the
    support of the concrete weights, :func:`bounded_models`); their block of
    ``V_inf`` solves its own Lyapunov equation, the rest is ``inf``. Compiled
    once per (topology, options, bounded set) and reused.

    Example:
        >>> import collapse_jax as cj
        >>> D, V = noise_and_stationary(cj.graphs.chain(2, n=100, m=100), cj.LinearRegression(dim=10))
        >>> [round(float(v), 6) for v in V.diagonal()]
        [0.1, 0.2]
    """
    _option("loss_scale", loss_scale, LOSS_SCALES)
    _option("pool", pool, POOLS)
    check_large_sample(eco, task, "stationary")
    R, W = effective_weights(eco, loss_scale)
    if bounded is None:
        bounded = bounded_models(eco, W, R)
    return _noise_and_stationary(eco, task, loss_scale, pool, tuple(int(b) for b in bounded),
                                 _biased(eco, task, W.dtype))


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
    sig2d = _risk_scale_impl(task, dtype)
    fresh = fresh_mask(eco, dtype)
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
        ``(mean (T + 1, K, q), second (T + 1, K, K))``: ``E[vector(theta) - vector(theta*)]``
        (``q`` the length of ``task.vector``) and ``E <e_k, e_l>_A``.

    Example:
        >>> import collapse_jax as cj
        >>> mean, second = large_sample(cj.graphs.ring(3, n=50, m=50), cj.LinearRegression(dim=4), 10)
        >>> second.shape
        (11, 3, 3)
    """
    _option("regime", regime, ("replace", "accumulate"))
    _option("pool", pool, POOLS)
    _option("loss_scale", loss_scale, LOSS_SCALES)
    check_large_sample(eco, task, "moments")
    R, W = effective_weights(eco, loss_scale)
    return _large_sample(eco, task, int(generations), regime, pool, loss_scale, _biased(eco, task, W.dtype))


def _large_sample_impl(eco: Ecosystem, task, generations: int, regime: str, pool: str, loss_scale: str,
                       biased: bool):
    K, S = eco.K, eco.S
    R, W = effective_weights(eco, loss_scale)
    dtype = W.dtype
    sig2d = _risk_scale_impl(task, dtype)
    n = jnp.asarray(eco.n, dtype)
    m = jnp.asarray(eco.n_synthetic, dtype)
    fresh = fresh_mask(eco, dtype)

    noise0, R0 = _generation0(eco, task, loss_scale, dtype)
    d = int(np.size(task.vector(task.truth_param())))  # q: length of the parameter vector
    delta = _bias(eco, task, dtype, biased)
    delta = jnp.zeros((S, d), dtype) if delta is None else delta
    gamma = _persistent_gram_impl(eco, task, dtype, biased)
    gamma = jnp.zeros((S, S), dtype) if gamma is None else gamma

    if regime == "replace":
        E = 0
        D = _noise_covariance_impl(eco, task, loss_scale, pool)
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


# The whole recursion in one program, retraced per (topology, sizes, task structure and
# shapes, dtype, generations, regime, pool, loss_scale, biased).
_large_sample = jax.jit(_large_sample_impl,
                        static_argnames=("generations", "regime", "pool", "loss_scale", "biased"))

