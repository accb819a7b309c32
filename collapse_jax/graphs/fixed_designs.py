"""The public/private ecosystem of Vu et al. (ICLR 2026; THEORY.md section 5): builder and designs.

K models, each with a fixed private data set and one shared fixed public
set, all reading each other's fixed-design synthetic output. The exact
fixed-design theory of this model lives with linear regression
(:mod:`collapse_jax.tasks.linear_regression.fixed_design`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import networkx as nx
import numpy as np

from collapse_jax.ecosystem import Ecosystem

__all__ = ["ecosystem", "random_design"]


# ------------------------------------------------------------------ builder
def random_design(key: jax.Array, n: int, dim: int, rank: Optional[int] = None) -> np.ndarray:
    """A random ``(n, dim)`` design of rank ``rank``: rows ``N(0, B B')``, ``B`` a random orthonormal basis.

    Each row is a standard Gaussian vector on a uniformly random ``rank``-dim
    subspace (``rank = min(n, dim)``, the default, gives i.i.d. ``N(0, I)``
    rows in distribution). Float64 NumPy, so the rank is exact to rounding.

    Example:
        >>> X = random_design(jax.random.key(0), 20, 15, 5)
        >>> X.shape, int(np.linalg.matrix_rank(X))
        ((20, 15), 5)
    """
    rank = min(n, dim) if rank is None else rank
    for name, v, hi in (("n", n, None), ("dim", dim, None), ("rank", rank, min(n, dim))):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 or (hi and v > hi):
            bound = f" and <= min(n, dim) = {hi}" if hi else ""
            raise ValueError(f"{name} must be a positive integer{bound}, got {v!r}")
    k_z, k_b = jax.random.split(key)
    Z = np.asarray(jax.random.normal(k_z, (n, rank)), float)
    B, _ = np.linalg.qr(np.asarray(jax.random.normal(k_b, (dim, rank)), float))
    return Z @ B.T


def ecosystem(
    K: int,
    alpha: Any,
    beta: Any,
    *,
    private_designs: Optional[Sequence] = None,
    public_design: Optional[Any] = None,
    synthetic_designs: Optional[Sequence] = None,
    dim: Optional[int] = None,
    n_private: Any = None,
    rank_private: Any = None,
    n_public: Optional[int] = None,
    rank_public: Optional[int] = None,
    n_synthetic: Any = None,
    rank_synthetic: Any = None,
    theta: Optional[Sequence] = None,
    public_theta: Optional[Any] = None,
    key: Optional[jax.Array] = None,
) -> Ecosystem:
    """The public/private ecosystem of THEORY section 5 (``cj.graphs.public_private``).

    Nodes: data nodes ``"private0" .. "private{K-1}"`` then ``"public"`` (all
    ``fresh=False`` with a fixed design; the S axis follows this order), and
    models ``"m0" .. "m{K-1}"`` with fixed synthetic designs. Edges:
    ``private_k -> m_k`` (relative weight b), ``public -> m_k`` (1 - b),
    ``m_j -> m_k`` for every j and k, self-loops included (equal relative
    weights), and synthetic share ``alpha``. Effective weights:
    ``R[k, k] = (1-a) b``, ``R[k, K] = (1-a)(1-b)``, ``W[k, j] = a / K``.

    Each of the three design groups is either given as matrices or drawn with
    :func:`random_design` from sizes and ranks (``n_*``, ``rank_*``: an int or
    one per model; rank default full); drawing needs ``key`` and ``dim``.
    The label noise and the true theta are the task's (see the module docstring).

    Args:
        K: number of models.
        alpha: synthetic share a in [0, 1] (scalar or ``(K,)``).
        beta: private share b of the real data in [0, 1] (scalar or ``(K,)``).
        private_designs: K matrices ``(n_k, d)``, or None to draw them.
        public_design: a ``(n*, d)`` matrix, or None to draw it.
        synthetic_designs: K matrices ``(m_k, d)`` (model k's synthetic
            covariates, reused every generation), or None to draw them.
        dim: d, needed when drawing; must match given matrices.
        n_private, rank_private, n_public, rank_public, n_synthetic,
        rank_synthetic: sizes and ranks of drawn designs.
        theta: None (every private task has the task's theta*) or K vectors
            ``(d,)``, one per private data node (an entry may be None).
        public_theta: None or a ``(d,)`` vector for the public data node.
        key: PRNG key for drawn designs (private, public, synthetic use
            ``fold_in(key, 0 | 1 | 2)``; model k's ``fold_in(., k)``).

    Returns:
        An :class:`Ecosystem`.

    Raises:
        ValueError: naming the offending argument.

    Example:
        >>> import numpy as np
        >>> X = [np.eye(3)] * 2
        >>> eco = ecosystem(2, 0.5, 0.25, private_designs=X, public_design=np.eye(3),
        ...                 synthetic_designs=X)
        >>> np.asarray(eco.R).round(3).tolist(), np.asarray(eco.W).tolist()
        ([[0.125, 0.0, 0.375], [0.0, 0.125, 0.375]], [[0.25, 0.25], [0.25, 0.25]])
    """
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
        raise ValueError(f"K must be a positive integer, got {K!r}")
    betas = np.broadcast_to(np.asarray(beta, float), (K,)) if np.ndim(beta) == 0 else np.asarray(beta, float)
    if betas.shape != (K,) or not np.all(np.isfinite(betas)) or np.any((betas < 0) | (betas > 1)):
        raise ValueError(f"beta must be in [0, 1], a scalar or one per model ({K},), got {beta!r}")
    drawing = private_designs is None or public_design is None or synthetic_designs is None
    if drawing:
        if key is None:
            raise ValueError("key is required to draw random designs (pass key=jax.random.key(seed))")
        if dim is None:
            raise ValueError("dim is required to draw random designs")

    def group(given, n, rank, count, name, i):
        if given is not None:
            if len(given) != count:
                raise ValueError(f"{name}: expected {count} design(s), got {len(given)}")
            return [np.asarray(x, float) for x in given]
        if n is None:
            raise ValueError(f"{name}: give the matrices or their size (n_{name.split('_')[0]})")
        ns, ranks = _per_model(n, count, f"n_{name.split('_')[0]}"), _per_model(rank, count, f"rank_{name.split('_')[0]}")
        sub = jax.random.fold_in(key, i)
        return [random_design(jax.random.fold_in(sub, k), ns[k], dim, ranks[k]) for k in range(count)]

    private = group(private_designs, n_private, rank_private, K, "private_designs", 0)
    public = group(None if public_design is None else [public_design], n_public, rank_public, 1, "public_design", 1)[0]
    synthetic = group(synthetic_designs, n_synthetic, rank_synthetic, K, "synthetic_designs", 2)
    for name, xs in (("private_designs", private), ("public_design", [public]), ("synthetic_designs", synthetic)):
        for k, x in enumerate(xs):
            if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
                raise ValueError(f"{name}[{k}]: expected shape (n, {dim if dim else 'd'}), got {x.shape}")
    d = public.shape[1]
    for name, xs in (("private_designs", private), ("synthetic_designs", synthetic)):
        for k, x in enumerate(xs):
            if x.shape[1] != d:
                raise ValueError(f"{name}[{k}] has {x.shape[1]} columns, public_design has {d}")

    thetas = [None] * K if theta is None else list(theta)
    if len(thetas) != K:
        raise ValueError(f"theta: expected {K} vectors (one per private task), got {len(thetas)}")
    for name, t in [(f"theta[{k}]", t) for k, t in enumerate(thetas)] + [("public_theta", public_theta)]:
        if t is not None and np.shape(t) != (d,):
            raise ValueError(f"{name}: expected shape ({d},), got {np.shape(t)}")

    def extra(t):
        return {} if t is None else {"theta": np.asarray(t, float)}

    G = nx.DiGraph()
    for k in range(K):
        G.add_node(f"private{k}", kind="data", fresh=False, design=private[k], **extra(thetas[k]))
    G.add_node("public", kind="data", fresh=False, design=public, **extra(public_theta))
    for k in range(K):
        G.add_node(f"m{k}", kind="model", design=synthetic[k])
    for k in range(K):
        G.add_edge(f"private{k}", f"m{k}", weight=float(betas[k]))
        G.add_edge("public", f"m{k}", weight=1.0 - float(betas[k]))
        for j in range(K):
            G.add_edge(f"m{j}", f"m{k}", weight=1.0)
    return Ecosystem.from_networkx(G, alpha=alpha)


def _per_model(v, count: int, name: str) -> list:
    if v is None or np.ndim(v) == 0:
        return [v] * count
    v = list(v)
    if len(v) != count:
        raise ValueError(f"{name}: expected an int or {count} values, got {len(v)}")
    return v

