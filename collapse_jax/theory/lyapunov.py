"""Differentiable discrete Lyapunov solver: ``V = A V A' + Q``.

Forward: the doubling (Smith) iteration ``V <- V + A V A'``, ``A <- A A``,
which after k steps sums ``2^k`` terms of ``sum_t A^t Q A'^t`` and stops when
``A^(2^k)`` is negligible. Reverse: implicit differentiation, one adjoint
solve ``Lam = A' Lam A + Vbar`` per cotangent, so the gradient costs about one
more solve and no memory for the iterations:

    dL/dQ = Lam,    dL/dA = Lam A V' + Lam' A V.

When ``rho(A) >= 1`` the series diverges and the result is ``inf`` (the
stationary error of a collapsing ecosystem is unbounded).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

__all__ = ["solve_discrete_lyapunov"]

_MAX_DOUBLINGS = 64  # sums 2^64 terms: enough for any rho(A) < 1 - 1e-18


def _doubling_impl(A, Q):
    tol = jnp.finfo(A.dtype).eps

    def cond(c):
        Ak, _, i = c
        return (i < _MAX_DOUBLINGS) & (jnp.max(jnp.abs(Ak)) > tol)

    def body(c):
        Ak, V, i = c
        return Ak @ Ak, V + Ak @ V @ Ak.T, i + 1

    Ak, V, _ = jax.lax.while_loop(cond, body, (A, Q, jnp.zeros((), jnp.int32)))
    converged = jnp.all(jnp.isfinite(V)) & (jnp.max(jnp.abs(Ak)) <= tol)
    return jnp.where(converged, V, jnp.inf)


# Compiled once per (shape, dtype): called eagerly (the diagnostics, the backward pass of an
# eager gradient), the loop and the checks around it were XLA compiles of their own.
_doubling = jax.jit(_doubling_impl)


@jax.custom_vjp
def solve_discrete_lyapunov(A: jax.Array, Q: jax.Array) -> jax.Array:
    """Solve ``V = A V A' + Q`` for square ``A`` (n, n) and ``Q`` (n, n).

    Returns ``inf`` everywhere when the series does not converge (rho(A) >= 1).

    Example:
        >>> import jax.numpy as jnp
        >>> solve_discrete_lyapunov(jnp.array([[0.5]]), jnp.array([[3.0]]))
        Array([[4.]], dtype=float32)
    """
    return _doubling(A, Q)


def _fwd(A, Q):
    V = _doubling(A, Q)
    return V, (A, V)


def _bwd_impl(res, Vbar):
    A, V = res
    Lam = _doubling_impl(A.T, Vbar)
    dA = Lam @ A @ V.T + Lam.T @ A @ V
    return dA, Lam


# Retraced as _doubling: an eager jax.grad runs the backward pass eagerly too.
_bwd = jax.jit(_bwd_impl)

solve_discrete_lyapunov.defvjp(_fwd, _bwd)
