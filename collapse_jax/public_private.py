"""The public/private model (Vu et al., ICLR 2026) and exact moments for fixed designs.

THEORY.md section 5 is the contract. Two parts:

* :func:`ecosystem` (also ``cj.graphs.public_private``) builds the paper's
  ecosystem: K models, one fixed private data node per model, one fixed
  public data node shared by all, and a fixed synthetic design per model.
  Under ``cj.simulate(..., loss_scale="sum", pool="shared")`` model k then
  minimizes exactly

      (1-a) b ||y~_k - X~_k th||^2 + (1-a)(1-b) ||y* - X* th||^2 + (a/K) sum_j ||y_tj - X_tj th||^2

  (self-loops included: model k reads its own output with weight a/K), and
  generation 0 fits ``b ||y~_k - X~_k th||^2 + (1-b) ||y* - X* th||^2``
  (a_0 = 0: the engine renormalizes the real weights). The label noise sigma
  of real and synthetic data and the true theta are the *task's*
  (``LinearRegression(noise=..., theta=...)``): the function returns an
  Ecosystem like every graph family, so it takes no ``noise`` argument.
  Low-rank designs make the Gram singular at generation 0: use
  ``LinearRegression(solver="min_norm")`` (the paper's ``G^+``).

* :func:`moments_fixed` gives the exact moments of *any* ecosystem whose data
  nodes and synthetic designs are all fixed (``cj.moments`` dispatches here).
  With fixed designs every Gram is deterministic, so the dynamics are linear
  Gaussian (THEORY 5, Theorem 1 form, written once for every such graph)::

      theta_0 = P0 z,   theta_t = P z + Q theta_{t-1} + xi_t,   Cov xi_t = N,
      M_0 = P0, C_0 = 0, M_t = P + Q M_{t-1}, C_t = Q C_{t-1} Q' + N,

  where ``z`` stacks the per-data-node least-squares estimates
  ``X_s^+ y_s`` (S blocks of d). Blocks, with ``G_k`` model k's weighted Gram
  (``c`` the loss coefficients: effective weight, divided by the sample count
  under ``loss_scale="mean"``) and ``fit`` the task's solver (``G^+``)::

      P[k, s] = G_k^+ c_ks S_s,   Q[k, j] = G_k^+ c_kj Sbar_j,
      N[k, l] = sigma^2 sum_j c_kj c_lj G_k^+ Sbar_j G_l^+   (pool="shared"; k == l only when "independent")

  which for :func:`ecosystem` under ("sum", "shared") are the paper's P_t,
  Q_t and ``Q_t sigma^2 S_t^+ Q_t'``. Unconditionally (Theorem 2)
  ``E theta_t = M_t E z`` and ``Cov theta_t = sigma^2 M_t blkdiag(S_s^+) M_t' + C_t``
  (the paper's display drops the sigma^2). Theorem 3 (constant weights,
  rho(Q) < 1): ``M = (I - Q)^{-1} P`` and ``C = Q C Q' + N``.

Everything is computed in JAX's default float (enable ``jax_enable_x64`` for
float64, which the tests use) and is differentiable in the ecosystem's
weights. A new topology, design shape, ``generations`` or option retraces.

Example:
    >>> import jax, collapse_jax as cj
    >>> eco = cj.graphs.public_private(4, 0.5, 0.5, dim=15, n_private=20, rank_private=5,
    ...                                n_public=20, rank_public=5, n_synthetic=20,
    ...                                key=jax.random.key(0))
    >>> task = cj.LinearRegression(dim=15, solver="min_norm")
    >>> mom = cj.public_private.moments_fixed(eco, task, 50, loss_scale="sum", pool="shared")
    >>> mom.error.shape, mom.limit.error.shape
    ((51, 4), (4,))
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

from collapse_jax.ecosystem import Ecosystem
from collapse_jax.lyapunov import solve_discrete_lyapunov
from collapse_jax.sampling import psd_factor
from collapse_jax.simulate import make_config
from collapse_jax.tasks.linear_regression import LinearRegression, RegressionStats

__all__ = [
    "ecosystem", "random_design", "moments_fixed", "relative_efficiency",
    "operators_fixed", "FixedOperators", "FixedMoments",
]


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

    G = nx.DiGraph()
    for k in range(K):
        G.add_node(f"private{k}", kind="data", fresh=False, design=private[k])
    G.add_node("public", kind="data", fresh=False, design=public)
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


# -------------------------------------------------------- fixed-design dynamics
class FixedOperators(NamedTuple):
    """The linear dynamics of a fixed-design ecosystem (shapes with K models, S data nodes, dim d).

    ``theta_0 = P0 z``; for t >= 1 ``theta_t = P z + Q theta_{t-1} + xi_t`` with
    ``Cov xi_t = noise``; ``z`` has mean ``z_mean`` and covariance ``z_cov``.
    """

    P0: jax.Array      # (K d, S d) generation 0
    P: jax.Array       # (K d, S d)
    Q: jax.Array       # (K d, K d)
    noise: jax.Array   # (K d, K d)
    z_mean: jax.Array  # (S d,)  X_s^+ X_s theta_s stacked
    z_cov: jax.Array   # (S d, S d)  sigma^2 blkdiag(S_s^+)


class FixedMoments(NamedTuple):
    """Exact moments of a fixed-design ecosystem (:func:`moments_fixed`).

    Trajectory fields have a leading generation axis ``T + 1``; ``limit`` has
    the same fields without it (Theorem 3; ``inf`` where rho(Q) >= 1) and
    ``limit.limit`` is None.

    Attributes:
        M: ``(T+1, K d, S d)`` conditional mean map: ``E[theta_t | z] = M_t z``.
        C: ``(T+1, K d, K d)`` conditional covariance given the real data.
        mean: ``(T+1, K, d)`` unconditional ``E theta_t``.
        cov: ``(T+1, K d, K d)`` unconditional ``Cov theta_t``.
        error: ``(T+1, K)`` expected excess risk per model (the MSE
            ``E||theta_k - theta*||^2`` with the task's default identity cov);
            the expectation of ``cj.simulate``'s ``error``.
        mspe: ``(T+1, K, S)`` ``E||X_s (theta_k - theta_s)||^2``: model k on
            data node s's design (the paper's MSPE of model k on task m).
        spread: ``(T+1,)`` homogenization of the conditional map: mean over k of
            ``||M_t[k] - mean_j M_t[j]||_F^2`` (row blocks, d x S d).
        dispersion: ``(T+1,)`` expected mean squared distance of the models to
            their average (the expectation of ``cj.simulate``'s ``dispersion``).
        rho: ``()`` spectral radius of Q.
        limit: the Theorem 3 limit, or None.
    """

    M: jax.Array
    C: jax.Array
    mean: jax.Array
    cov: jax.Array
    error: jax.Array
    mspe: jax.Array
    spread: jax.Array
    dispersion: jax.Array
    rho: jax.Array
    limit: Optional["FixedMoments"]


def _validate(eco: Ecosystem, task, generations, regime, pool, loss_scale) -> None:
    """Options as in ``cj.simulate``; every source the dynamics use must have a fixed design."""
    if not isinstance(task, LinearRegression):
        raise ValueError(f"fixed-design moments need a LinearRegression task, got {type(task).__name__}")
    make_config(eco, task, generations, regime, pool, loss_scale, "auto")
    if regime != "replace":
        raise ValueError(f"fixed-design moments support regime='replace' only, got {regime!r}")
    for k, name in enumerate(eco.models):
        if not eco.has_real()[k]:
            raise ValueError(
                f"model node {name!r} has no real in-edge: its generation-0 fit uses fresh samples, "
                "not a fixed design")
    for _, s in eco.real_edges:
        if eco.fresh[s] or eco.data_design[s] is None:
            raise ValueError(f"data node {eco.data[s]!r}: fixed-design moments need fresh=False and a design")
    for _, j in eco.model_edges:
        if eco.model_design[j] is None:
            raise ValueError(f"model node {eco.models[j]!r}: its synthetic data need a fixed design")


def operators_fixed(eco: Ecosystem, task: LinearRegression, *, pool: str = "independent",
                    loss_scale: str = "mean") -> FixedOperators:
    """The operators ``P0, P, Q, noise`` and the law of ``z`` (see the module docstring).

    The solves go through ``task.fit`` (linear in its moment), so they use the
    task's solver and ridge: ``G^+`` with ``solver="min_norm"``. Options and
    requirements as in :func:`moments_fixed`.
    """
    _validate(eco, task, 0, "replace", pool, loss_scale)
    return _operators(eco, task, pool, loss_scale)


def _operators(eco: Ecosystem, task: LinearRegression, pool: str, loss_scale: str) -> FixedOperators:
    K, S, d = eco.K, eco.S, task.dim
    dtype = jnp.result_type(float)
    sigma2 = jnp.asarray(task.noise, dtype) ** 2
    data_gram = _grams(eco.data_design, d, dtype)                                       # (S, d, d)
    syn_gram = _grams(eco.model_design, d, dtype)                                       # (K, d, d)
    syn_factor = jax.vmap(psd_factor)(syn_gram)                                         # F F' = Sbar
    n = jnp.asarray(eco.n, dtype)
    m = jnp.asarray(eco.n_synthetic, dtype)
    real_rel = eco.real_weights.astype(dtype)
    real_rel = real_rel / real_rel.sum(1, keepdims=True)  # generation 0 (every model has real data)
    R, W = eco.R.astype(dtype), eco.W.astype(dtype)
    if loss_scale == "mean":
        real_rel, R, W = real_rel / n[None, :], R / n[None, :], W / m[None, :]

    def blocks(coef, mats):  # (K, J), (J, d, e) -> (K, d, J e): row k is [coef_kj mats_j]_j
        return jnp.einsum("kj,jab->kajb", coef, mats).reshape(K, d, -1)

    def solve(gram, rhs):  # (K, d, d), (K, d, n) -> (K d, n): G_k^+ rhs_k stacked
        return jax.vmap(lambda g, b: task.fit(RegressionStats(g, b)))(gram, rhs).reshape(K * d, -1)

    G0 = jnp.einsum("ks,sab->kab", real_rel, data_gram)
    G = jnp.einsum("ks,sab->kab", R, data_gram) + jnp.einsum("kj,jab->kab", W, syn_gram)
    P0 = solve(G0, blocks(real_rel, data_gram))
    P = solve(G, blocks(R, data_gram))
    Q = solve(G, blocks(W, syn_gram))
    A = solve(G, blocks(W, syn_factor)).reshape(K, d, K, d)  # A[k, :, j] = G_k^+ c_kj F_j
    if pool == "shared":
        noise = sigma2 * jnp.einsum("kajc,lbjc->kalb", A, A)
    else:  # every edge its own batch: the models' noises are independent
        noise = sigma2 * jnp.einsum("kajc,kbjc,kl->kalb", A, A, jnp.eye(K, dtype=dtype))
    noise = noise.reshape(K * d, K * d)

    theta = task.data_params(eco).astype(dtype)                                         # (S, d)
    gram_pinv = jnp.linalg.pinv(data_gram, hermitian=True)
    z_mean = jnp.einsum("sab,sbc,sc->sa", gram_pinv, data_gram, theta).reshape(S * d)
    z_cov = sigma2 * jax.scipy.linalg.block_diag(*gram_pinv)
    return FixedOperators(P0, P, Q, noise, z_mean, z_cov)


def _grams(designs, d: int, dtype) -> jax.Array:
    """``(len(designs), d, d)`` Grams ``X'X``; zero for nodes without a design (no edge uses them)."""
    return jnp.stack([jnp.zeros((d, d), dtype) if x is None else jnp.asarray(x, dtype).T @ jnp.asarray(x, dtype)
                      for x in designs])


def _state(M, C, ops: FixedOperators, task: LinearRegression, data_gram, data_theta, K, d):
    """Unconditional summaries of one generation from its conditional moments ``(M, C)``."""
    mean = (M @ ops.z_mean).reshape(K, d)
    cov = M @ ops.z_cov @ M.T + C
    blocks = cov.reshape(K, d, K, d)
    diag = jnp.einsum("kakb->kab", blocks)                                              # (K, d, d)
    risk_cov = jnp.eye(d, dtype=M.dtype) if task.cov is None else jnp.asarray(task.cov, M.dtype)
    bias = mean - task.theta_star.astype(M.dtype)[None, :]
    error = jnp.einsum("ab,kba->k", risk_cov, diag) + jnp.einsum("ka,ab,kb->k", bias, risk_cov, bias)
    gap = mean[:, None, :] - data_theta[None, :, :]                                     # (K, S, d)
    mspe = jnp.einsum("sab,kba->ks", data_gram, diag) + jnp.einsum("ksa,sab,ksb->ks", gap, data_gram, gap)
    rows = M.reshape(K, d, -1)
    spread = jnp.mean(jnp.sum((rows - rows.mean(0, keepdims=True)) ** 2, axis=(1, 2)))
    # E mean_k ||theta_k - theta_bar||^2: the covariance part and the spread of the means.
    dispersion = (jnp.einsum("kaka->", blocks) / K - jnp.einsum("kala->", blocks) / K**2
                  + jnp.mean(jnp.sum((mean - mean.mean(0, keepdims=True)) ** 2, axis=1)))
    return mean, cov, error, mspe, spread, dispersion


def moments_fixed(
    eco: Ecosystem,
    task: LinearRegression,
    generations: int,
    *,
    regime: str = "replace",
    pool: str = "independent",
    loss_scale: str = "mean",
) -> FixedMoments:
    """Exact moments of a fixed-design ecosystem: Theorems 1-3 of THEORY section 5.

    Needs every data node a model reads to be fixed (``fresh=False``) with a
    design, every model to have a real in-edge, and every producer a fixed
    synthetic design. The options mean what they mean in ``cj.simulate``
    (same defaults); the paper's model is ``loss_scale="sum", pool="shared"``.
    The conditional moments (``M``, ``C``) hold for any real labels; the
    unconditional ones average over real labels ``y_s = X_s theta_s + sigma eps``
    (``theta_s`` the data node's theta, default the task's).

    Args:
        eco: the ecosystem, e.g. from ``cj.graphs.public_private``.
        task: a :class:`LinearRegression` (``solver="min_norm"`` for singular Grams).
        generations: T, the number of generations after generation 0.
        regime: "replace" (the only one with a fixed-operator recursion).
        pool: "independent" or "shared" synthetic batches.
        loss_scale: "mean" or "sum".

    Returns:
        A :class:`FixedMoments` (trajectories over ``T + 1`` generations and the limit).

    Raises:
        ValueError: for an unsupported ecosystem, task or option (naming it).

    Example:
        >>> import jax, collapse_jax as cj
        >>> eco = cj.graphs.public_private(2, 0.5, 0.5, dim=3, n_private=5, n_public=5,
        ...                                n_synthetic=5, key=jax.random.key(0))
        >>> mom = moments_fixed(eco, cj.LinearRegression(dim=3), 10, loss_scale="sum", pool="shared")
        >>> mom.M.shape, mom.C.shape
        ((11, 6, 9), (11, 6, 6))
    """
    _validate(eco, task, generations, regime, pool, loss_scale)
    return _moments_jit(eco, task, int(generations), pool, loss_scale)


def _moments_impl(eco, task, T: int, pool: str, loss_scale: str) -> FixedMoments:
    K, d = eco.K, task.dim
    dtype = jnp.result_type(float)
    ops = _operators(eco, task, pool, loss_scale)
    data_gram = _grams(eco.data_design, d, dtype)
    theta = task.data_params(eco).astype(dtype)

    def step(carry, _):  # Theorem 1: the one recursion every fixed-design graph follows
        M, C = carry
        nxt = (ops.P + ops.Q @ M, ops.Q @ C @ ops.Q.T + ops.noise)
        return nxt, nxt

    first = (ops.P0, jnp.zeros_like(ops.Q))
    _, (Ms, Cs) = jax.lax.scan(step, first, None, length=T)
    Ms = jnp.concatenate([first[0][None], Ms])
    Cs = jnp.concatenate([first[1][None], Cs])
    state = functools.partial(_state, ops=ops, task=task, data_gram=data_gram, data_theta=theta, K=K, d=d)
    traj = jax.vmap(state)(Ms, Cs)

    # Theorem 3: the fixed point of the same recursion (inf when rho(Q) >= 1).
    C_inf = solve_discrete_lyapunov(ops.Q, ops.noise)
    finite = jnp.all(jnp.isfinite(C_inf))
    eye = jnp.eye(K * d, dtype=dtype)
    M_inf = jnp.linalg.solve(eye - jnp.where(finite, ops.Q, 0.0), ops.P)
    lim = (M_inf, C_inf) + state(M_inf, jnp.where(finite, C_inf, 0.0))
    lim = [jnp.where(finite, x, jnp.inf) for x in lim]
    rho = jnp.max(jnp.abs(jnp.linalg.eigvals(ops.Q)))
    return FixedMoments(Ms, Cs, *traj, rho=rho, limit=FixedMoments(*lim, rho=rho, limit=None))


_moments_jit = jax.jit(_moments_impl, static_argnums=(2, 3, 4))


def relative_efficiency(
    eco: Ecosystem,
    task: LinearRegression,
    *,
    pool: str = "independent",
    loss_scale: str = "mean",
) -> jax.Array:
    """Per model, the risk of least squares on all real data over the model's long-run risk (THEORY 5).

    ``RE_k = sigma^2 tr((sum_s S_s)^{-1}) / MSE_k`` for a common theta (1 is
    optimal; 0 when the ecosystem collapses): the numerator is the expected
    risk of (min-norm) least squares on every data node pooled once, the
    denominator the Theorem 3 limit of :func:`moments_fixed` with the same
    options (the paper's: ``loss_scale="sum", pool="shared"``). Risks use the
    task's ``cov`` (identity by default: the MSE).

    Returns:
        ``(K,)`` relative efficiency.

    Example:
        >>> import numpy as np, collapse_jax as cj
        >>> X = [np.eye(2)[:1], np.eye(2)[1:]]  # each model sees one coordinate
        >>> eco = cj.graphs.public_private(2, 0.5, 1.0, private_designs=X, public_design=np.eye(2),
        ...                                synthetic_designs=X)
        >>> task = cj.LinearRegression(dim=2, solver="min_norm")
        >>> cj.relative_efficiency(eco, task, loss_scale="sum", pool="shared").shape
        (2,)
    """
    mom = moments_fixed(eco, task, 0, pool=pool, loss_scale=loss_scale)
    dtype = mom.limit.error.dtype
    d = task.dim
    data_gram = _grams(eco.data_design, d, dtype)
    total = data_gram.sum(0)
    total_pinv = jnp.linalg.pinv(total, hermitian=True)
    theta = task.data_params(eco).astype(dtype)
    bias = total_pinv @ jnp.einsum("sab,sb->a", data_gram, theta) - task.theta_star.astype(dtype)
    risk_cov = jnp.eye(d, dtype=dtype) if task.cov is None else jnp.asarray(task.cov, dtype)
    pooled = jnp.asarray(task.noise, dtype) ** 2 * jnp.trace(risk_cov @ total_pinv) + bias @ risk_cov @ bias
    return pooled / mom.limit.error
