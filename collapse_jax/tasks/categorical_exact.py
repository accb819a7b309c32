"""Exact finite-sample second moments of the categorical task (THEORY sections 2, 6 and 7).

Every fit is linear in multinomial counts, ``p_k = sum_s R_ks c_s / n_s + sum_j W_kj c_j / m_j``
(effective weights, :func:`collapse_jax.theory.weights.effective_weights`), and given the
previous generation a count vector of ``n`` draws from ``q`` has mean ``n q`` and covariance
``n (diag(q) - q q')``, whose trace is ``n (1 - |q|^2)``. With every data node carrying the
truth ``p*`` the fits stay unbiased, ``E e_{t,k} = 0`` for ``e = p - p*``, so
``E (1 - |p_j|^2) = s0 - V[j, j]`` with ``s0 = 1 - |p*|^2``, and the second moments
``V_t[k, l] = E <e_{t,k}, e_{t,l}>`` follow the exact linear map

    V_t = W V_{t-1} W' + s0 diag(sum_s R_ks^2 / n_s) + sum_j M_j (s0 - V_{t-1}[j, j]) / m_j,

``M_j[k, l] = W_kj W_lj`` for ``k == l`` (``pool="independent"``: one batch per edge) or for
every ``k, l`` (``"shared"``: one batch per producer). Generation 0: ``s0 sum_s R0_ks^2 / n_s``
with real data, ``s0 / n0_k`` without. A self-loop on ``m`` samples gives
``s0 - V_t = (1 - 1/m) (s0 - V_{t-1})``: THEORY 7's diversity case. The map's own part
``L`` has ``rho(L) < 1`` even on a closed class (``1 - 1/m`` for a self-loop): the
error of a collapsing model grows, but to the bounded level ``s0`` of a fixated model
(all its mass on one symbol), so the exact stationary error is finite where the
large-sample one is ``inf``.

Scope (a ``ValueError`` otherwise, naming the culprit; ``exact=False`` covers the rest):
regime ``replace``, fresh data nodes, data nodes carrying the truth's ``probs``.

Layering: imports the ecosystem, the options and the weights, not the task module
(which imports this one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.ecosystem import Ecosystem
from collapse_jax.options import LOSS_SCALES, POOLS
from collapse_jax.options import check_choice as _option
from collapse_jax.theory.weights import effective_weights, generation0_weights

__all__ = ["check_exact", "operator", "exact_moments", "stationary", "second_moment_operator",
           "stationary_from_operator"]


def check_exact(eco: Ecosystem, task, where: str = "exact moments") -> None:
    """Raise ``ValueError`` naming the data node the exact theory cannot treat."""
    truth = np.asarray(task.probs, float)
    params = np.asarray(task.data_params(eco), float) if eco.S else np.zeros((0, truth.size))
    for s, name in enumerate(eco.data):
        if not bool(np.asarray(eco.fresh).reshape(-1)[s]):
            raise ValueError(f"{where}: data node {name!r} is fixed (fresh=False); its counts persist, "
                             "so the exact map is not Markov in V_t; use exact=False")
        if not np.allclose(params[s], truth, rtol=0, atol=1e-12):
            raise ValueError(f"{where}: data node {name!r} has probs of its own; the exact categorical "
                             "theory needs every source to carry the truth; use exact=False")


def operator(eco: Ecosystem, task, loss_scale: str = "mean", pool: str = "independent"):
    """``(L (K^2, K^2), N (K, K))``: ``vec V_t = L vec V_{t-1} + vec N`` (row-major vec).

    Differentiable in the weights and alpha (pure ``jnp``).
    """
    _option("loss_scale", loss_scale, LOSS_SCALES)
    _option("pool", pool, POOLS)
    return _operator(eco, task, loss_scale, pool)


def _operator_impl(eco: Ecosystem, task, loss_scale: str, pool: str):
    R, W = effective_weights(eco, loss_scale)
    dtype, K = W.dtype, eco.K
    p = jnp.asarray(task.probs, dtype)
    s0 = 1.0 - p @ p
    n = jnp.asarray(eco.n, dtype)
    m = jnp.asarray(eco.n_synthetic, dtype)
    real = (R ** 2 / n[None, :]).sum(1) if eco.S else jnp.zeros(K, dtype)
    M = W.T[:, :, None] * W.T[:, None, :]                   # (j, k, l) = W_kj W_lj
    if pool == "independent":
        M = M * jnp.eye(K, dtype=dtype)[None]
    M = M / m[:, None, None]
    N = s0 * (jnp.diag(real) + M.sum(0))
    # -sum_j M_j V[j, j]: column (j, j) of L, rows (k, l)
    diag_cols = jnp.zeros((K * K, K * K), dtype).at[:, np.arange(K) * (K + 1)].set(-M.reshape(K, K * K).T)
    return jnp.kron(W, W) + diag_cols, N


# Compiled once per (topology, sizes, number of symbols, dtype, loss_scale, pool): applied
# eagerly, each primitive was an XLA compile of its own. The same for the functions below.
_operator = jax.jit(_operator_impl, static_argnames=("loss_scale", "pool"))


def _generation0(eco: Ecosystem, task, loss_scale: str, dtype) -> jax.Array:
    p = jnp.asarray(task.probs, dtype)
    s0 = 1.0 - p @ p
    R0 = generation0_weights(eco, loss_scale).astype(dtype)
    n = jnp.asarray(eco.n, dtype)
    real = (R0 ** 2 / n[None, :]).sum(1) if eco.S else jnp.zeros(eco.K, dtype)
    truth = 1.0 / jnp.asarray(eco.n0, dtype)
    return jnp.diag(s0 * jnp.where(jnp.asarray(eco.has_real()), real, truth))


def stationary_from_operator(eco: Ecosystem, task, coef) -> jax.Array:
    """``(K, K)`` fixed point of ``V = L(V) + N`` for ``coef = (L, N)`` from :func:`operator`."""
    return _fixed_point(*coef)


@jax.jit  # retraced per (K, dtype)
def _fixed_point(L, N):
    v = jnp.linalg.solve(jnp.eye(L.shape[0], dtype=L.dtype) - L, N.reshape(-1))
    return v.reshape(N.shape)


def stationary(eco: Ecosystem, task, loss_scale: str = "mean", pool: str = "independent") -> jax.Array:
    """``(K, K)`` exact stationary second moments (replace); finite even on closed classes.

    Example:
        >>> import collapse_jax as cj, jax.numpy as jnp
        >>> eco = cj.graphs.from_edges(1, [(0, 0)], real=(), n=10, m=10, n0=10)
        >>> round(float(stationary(eco, cj.Categorical(jnp.array([0.5, 0.5])))[0, 0]), 5)   # fixation: 1 - |p*|^2
        0.5
    """
    check_exact(eco, task, "stationary")
    return stationary_from_operator(eco, task, operator(eco, task, loss_scale, pool))


def second_moment_operator(eco: Ecosystem, task, loss_scale: str = "mean", pool: str = "independent",
                           mc_samples: int = 0, mc_seed: int = 0):
    """``(L, (L, N), why)`` for :func:`collapse_jax.diagnose` (exact: no Monte Carlo, the seeds are unused)."""
    try:
        check_exact(eco, task, "rho(L)")
    except ValueError as e:
        return None, None, str(e)
    coef = operator(eco, task, loss_scale, pool)
    return coef[0], coef, None


def exact_moments(eco: Ecosystem, task, generations: int, *, regime: str = "replace",
                  pool: str = "independent", loss_scale: str = "mean", mc_samples: int = 0,
                  mc_seed: int = 0) -> tuple:
    """``(mean (T + 1, K, V) = 0, second (T + 1, K, K), stationary (K, K))``, exact (see the module docstring)."""
    if regime != "replace":
        raise ValueError(f"exact moments: the categorical exact theory covers regime='replace', got {regime!r}; "
                         "use exact=False")
    check_exact(eco, task)
    _option("loss_scale", loss_scale, LOSS_SCALES)
    _option("pool", pool, POOLS)
    return _exact_moments(eco, task, int(generations), pool, loss_scale)


def _exact_moments_impl(eco: Ecosystem, task, generations: int, pool: str, loss_scale: str):
    L, N = _operator_impl(eco, task, loss_scale, pool)
    V0 = _generation0(eco, task, loss_scale, L.dtype)
    K = eco.K

    def step(V, _):
        V = (L @ V.reshape(-1)).reshape(K, K) + N
        return V, V

    _, seconds = jax.lax.scan(step, V0, None, length=generations)
    second = jnp.concatenate([V0[None], seconds])
    mean = jnp.zeros((generations + 1, K, np.shape(task.probs)[0]), L.dtype)
    return mean, second, _fixed_point(L, N)


# Retraced as _operator and per number of generations.
_exact_moments = jax.jit(_exact_moments_impl, static_argnames=("generations", "pool", "loss_scale"))
