"""The public/private model (Vu et al., ICLR 2026) and exact moments for fixed designs.

THEORY.md section 5 is the contract. Two parts:

* :func:`collapse_jax.graphs.fixed_designs.ecosystem` (``cj.graphs.public_private``) builds the paper's
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
    >>> mom = cj.moments_fixed(eco, task, 50, loss_scale="sum", pool="shared")
    >>> mom.error.shape, mom.limit.error.shape
    ((51, 4), (4,))
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.ecosystem import Ecosystem
from collapse_jax.theory.lyapunov import solve_discrete_lyapunov
from collapse_jax.tasks.samplers import psd_factor
from collapse_jax.options import Options

if TYPE_CHECKING:  # the task module imports this theory (through .exact), not the other way round
    from collapse_jax.tasks.linear_regression.task import LinearRegression


class _NormalEquations(NamedTuple):
    """What ``LinearRegression.fit`` reads: combined ``gram (d, d)`` and ``moment (d, n)``."""

    gram: jax.Array
    moment: jax.Array

__all__ = [
    "moments_fixed", "relative_efficiency", "relative_efficiency_grid", "own_tasks",
    "operators_fixed", "FixedOperators", "FixedMoments",
]


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
    the same fields without it (Theorem 3) and ``limit.limit`` is None. When
    rho(Q) >= 1 a field of the limit is ``inf`` only if it diverges: the
    differences between models (``spread``, ``dispersion``) still converge
    when every mode of Q with ``|lambda| >= 1`` moves all models together (a
    consensus mode, e.g. alpha = 1: every model fits the same shared pool and
    the dispersion goes to 0 while the error grows without bound); their limit
    is then computed on Q's stable spectral subspace.

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
        task_error: ``(T+1, K, S)`` the error of model k on data node s's task,
            ``E (theta_k - theta_s)' (X_s'X_s / n_s) (theta_k - theta_s)`` =
            ``mspe / n_s`` (THEORY 2, "error on another's task"; the expectation
            of ``cj.simulate``'s ``metrics["task_error"]``).
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
    task_error: jax.Array
    spread: jax.Array
    dispersion: jax.Array
    rho: jax.Array
    limit: Optional["FixedMoments"]


def _validate(eco: Ecosystem, task, generations, regime, pool, loss_scale) -> None:
    """Options as in ``cj.simulate``; every source the dynamics use must have a fixed design."""
    if not all(hasattr(task, a) for a in ("dim", "noise", "theta_star", "solver", "fit")):
        raise ValueError(f"fixed-design moments need a LinearRegression task, got {type(task).__name__}")
    if not isinstance(eco, Ecosystem):
        raise ValueError(f"eco must be a collapse_jax.Ecosystem, got {type(eco).__name__}")
    Options(regime, pool, loss_scale).check()
    if isinstance(generations, bool) or not isinstance(generations, (int, np.integer)) or generations < 0:
        raise ValueError(f"generations must be a non-negative integer, got {generations!r}")
    task.check(eco)
    if regime != "replace":
        raise ValueError(f"fixed-design moments support regime='replace' only, got {regime!r}")
    for k, name in enumerate(eco.models):
        if not eco.has_real()[k]:
            raise ValueError(
                f"model node {name!r} has no real in-edge: its generation-0 fit uses fresh samples, "
                "not a fixed design")
    for _, s in eco.real_edges:
        if eco.fresh[s] or eco.data_attr("design")[s] is None:
            raise ValueError(f"data node {eco.data[s]!r}: fixed-design moments need fresh=False and a design")
    for _, j in eco.model_edges:
        if eco.model_attr("design")[j] is None:
            raise ValueError(f"model node {eco.models[j]!r}: its synthetic data need a fixed design")


def operators_fixed(eco: Ecosystem, task: LinearRegression, *, pool: str = "independent",
                    loss_scale: str = "mean") -> FixedOperators:
    """The operators ``P0, P, Q, noise`` and the law of ``z`` (see the module docstring).

    The solves go through ``task.fit`` (linear in its moment), so they use the
    task's solver and ridge: ``G^+`` with ``solver="min_norm"``. Options and
    requirements as in :func:`moments_fixed`.
    """
    _validate(eco, task, 0, "replace", pool, loss_scale)
    return _operators_jit(eco, task, pool, loss_scale)


def _operators(eco: Ecosystem, task: LinearRegression, pool: str, loss_scale: str) -> FixedOperators:
    K, S, d = eco.K, eco.S, task.dim
    dtype = jnp.result_type(float)
    sigma2 = jnp.asarray(task.noise, dtype) ** 2
    data_gram = _grams(eco.data_attr("design"), d, dtype)                                       # (S, d, d)
    syn_gram = _grams(eco.model_attr("design"), d, dtype)                                       # (K, d, d)
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
        return jax.vmap(lambda g, b: task.fit(_NormalEquations(g, b)))(gram, rhs).reshape(K * d, -1)

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


# Retraced per (topology, designs' shapes, task structure, pool, loss_scale); eagerly each
# primitive was an XLA compile of its own.
_operators_jit = jax.jit(_operators, static_argnums=(2, 3))


def _grams(designs, d: int, dtype) -> jax.Array:
    """``(len(designs), d, d)`` Grams ``X'X``; zero for nodes without a design (no edge uses them)."""
    return jnp.stack([jnp.zeros((d, d), dtype) if x is None else jnp.asarray(x, dtype).T @ jnp.asarray(x, dtype)
                      for x in designs])


def _state(M, C, ops: FixedOperators, task: LinearRegression, data_gram, data_theta, data_n, K, d):
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
    task_error = mspe / data_n[None, :]
    rows = M.reshape(K, d, -1)
    spread = jnp.mean(jnp.sum((rows - rows.mean(0, keepdims=True)) ** 2, axis=(1, 2)))
    # E mean_k ||theta_k - theta_bar||^2: the covariance part and the spread of the means.
    dispersion = (jnp.einsum("kaka->", blocks) / K - jnp.einsum("kala->", blocks) / K**2
                  + jnp.mean(jnp.sum((mean - mean.mean(0, keepdims=True)) ** 2, axis=1)))
    return mean, cov, error, mspe, task_error, spread, dispersion


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
    data_gram = _grams(eco.data_attr("design"), d, dtype)
    theta = task.data_params(eco).astype(dtype)

    def step(carry, _):  # Theorem 1: the one recursion every fixed-design graph follows
        M, C = carry
        nxt = (ops.P + ops.Q @ M, ops.Q @ C @ ops.Q.T + ops.noise)
        return nxt, nxt

    first = (ops.P0, jnp.zeros_like(ops.Q))
    _, (Ms, Cs) = jax.lax.scan(step, first, None, length=T)
    Ms = jnp.concatenate([first[0][None], Ms])
    Cs = jnp.concatenate([first[1][None], Cs])
    data_n = jnp.asarray(eco.n, dtype)
    state = functools.partial(_state, ops=ops, task=task, data_gram=data_gram, data_theta=theta,
                              data_n=data_n, K=K, d=d)
    traj = jax.vmap(state)(Ms, Cs)

    # Theorem 3: the fixed point of the same recursion (inf when rho(Q) >= 1).
    C_inf = solve_discrete_lyapunov(ops.Q, ops.noise)
    finite = jnp.all(jnp.isfinite(C_inf))
    eye = jnp.eye(K * d, dtype=dtype)
    M_inf = jnp.linalg.solve(eye - jnp.where(finite, ops.Q, 0.0), ops.P)
    lim = (M_inf, C_inf) + state(M_inf, jnp.where(finite, C_inf, 0.0))
    lim = [jnp.where(finite, x, jnp.inf) for x in lim]
    # When rho(Q) >= 1 the differences between models may still converge (see FixedMoments).
    consensus, M_s, C_s = _stable_part(ops, K, d)
    diff = state(M_s, C_s)
    ok = finite | consensus
    fields = dict(zip(FixedMoments._fields, lim))
    for name, value in (("spread", diff[-2]), ("dispersion", diff[-1])):
        fields[name] = jnp.where(finite, fields[name], jnp.where(ok, value, jnp.inf))
    rho = jnp.max(jnp.abs(jnp.linalg.eigvals(ops.Q)))
    fields.update(rho=rho, limit=None)
    return FixedMoments(Ms, Cs, *traj, rho=rho, limit=FixedMoments(**fields))


def _stable_part(ops: FixedOperators, K: int, d: int):
    """The dynamics of the differences between models on Q's stable spectral subspace.

    With ``E_u`` the spectral projector on the modes ``|lambda| >= 1 - tol`` and
    ``Q_s = Q (I - E_u)``: if every such mode is a consensus mode (``D V_u = 0``,
    ``D = (I_K - 11'/K) (x) I_d`` the centering), then ``D Q^i = D Q_s^i`` for
    every i, so ``D theta_t`` converges to ``D (M_s z + xi_s)`` with
    ``M_s = (I - Q_s)^{-1} P`` and ``Cov xi_s = C_s`` solving ``C = Q_s C Q_s' + N``.
    Returns (every unstable mode is a consensus mode, M_s, C_s). The projector
    is held constant under differentiation.
    """
    Q = ops.Q
    dtype = Q.dtype
    n = K * d
    tol = jnp.sqrt(jnp.finfo(dtype).eps)
    lam, V = jnp.linalg.eig(jax.lax.stop_gradient(Q))
    unstable = jnp.abs(lam) >= 1 - tol
    E_u = jnp.real((V * unstable[None, :]) @ jnp.linalg.inv(V)).astype(dtype)
    Q_s = Q @ (jnp.eye(n, dtype=dtype) - E_u)
    center = jnp.kron(jnp.eye(K, dtype=dtype) - 1.0 / K, jnp.eye(d, dtype=dtype))
    moves_apart = jnp.linalg.norm(center.astype(V.dtype) @ V, axis=0)        # V's columns have unit norm
    consensus = jnp.all(jnp.where(unstable, moves_apart, 0.0) < 100 * tol)
    C_s = solve_discrete_lyapunov(Q_s, ops.noise)
    ok = jnp.all(jnp.isfinite(C_s))
    M_s = jnp.linalg.solve(jnp.eye(n, dtype=dtype) - jnp.where(ok, Q_s, 0.0), ops.P)
    return consensus & ok, M_s, jnp.where(ok, C_s, 0.0)


_moments_jit = jax.jit(_moments_impl, static_argnums=(2, 3, 4))


def own_tasks(eco: Ecosystem) -> tuple:
    """Each model's own task: the one data node it reads that no other model reads.

    In :func:`collapse_jax.graphs.public_private` model k's own task is its
    private data node k. Raises ``ValueError`` naming a model without exactly
    one such node (pass ``own_task=`` to :func:`relative_efficiency` then).
    """
    readers = {}
    for k, s in eco.real_edges:
        readers.setdefault(s, set()).add(k)
    out = []
    for k, name in enumerate(eco.models):
        mine = [s for s, ks in sorted(readers.items()) if ks == {k}]
        if len(mine) != 1:
            raise ValueError(f"model node {name!r} reads {len(mine)} data nodes of its own; "
                             "pass own_task=(one data node index per model)")
        out.append(mine[0])
    return tuple(out)


def relative_efficiency(
    eco: Ecosystem,
    task: LinearRegression,
    *,
    error: str = "mse",
    pool: str = "shared",
    loss_scale: str = "sum",
    own_task: Optional[tuple] = None,
) -> jax.Array:
    """Per model, the error of least squares on all real data over the model's long-run error (THEORY 5).

    The defaults are the paper's setting (Vu et al., ICLR 2026): summed
    losses (``loss_scale="sum"``) and one shared synthetic pool
    (``pool="shared"``); note that these differ from ``cj.simulate``'s and
    :func:`moments_fixed`'s defaults ("mean", "independent"). The long-run
    error is the Theorem 3 limit of :func:`moments_fixed` with the same options.
    1 is optimal; 0 when the error diverges (rho(Q) >= 1, e.g. alpha = 1).

    * ``error="mse"`` (the paper's Figure 2): ``RE_k = E||theta_pool - theta*||^2 / MSE_k``
      with ``theta_pool`` the min-norm least squares on every data node pooled
      once (``sigma^2 tr((sum_s S_s)^+)`` plus its bias) and ``theta*`` the
      task's theta (risks use the task's ``cov``, identity by default). With
      rank-deficient designs this parameter MSE is dominated by directions that
      no data set identifies, which no mixing can help.
    * ``error="prediction"``: prediction error (MSPE) on each model's own task
      design: ``E (theta_pool - theta_k)' S_k (theta_pool - theta_k)`` over
      ``task_error[k, own_task[k]]`` of the limit, ``S_k = X_k'X_k / n_k`` and
      ``theta_k`` that data node's theta (heterogeneous tasks allowed).

    Args:
        eco: a fixed-design ecosystem (e.g. ``cj.graphs.public_private``).
        task: a :class:`LinearRegression` (``solver="min_norm"`` for singular Grams).
        error: "mse" or "prediction".
        pool, loss_scale: as in :func:`moments_fixed` (defaults: the paper's).
        own_task: for ``error="prediction"``, the data node index of each
            model's task; default :func:`own_tasks` (the private data node).

    Returns:
        ``(K,)`` relative efficiency.

    Example:
        >>> import numpy as np, collapse_jax as cj
        >>> X = [np.eye(2)[:1], np.eye(2)[1:]]  # each model sees one coordinate
        >>> eco = cj.graphs.public_private(2, 0.5, 1.0, private_designs=X, public_design=np.eye(2),
        ...                                synthetic_designs=X)
        >>> task = cj.LinearRegression(dim=2, solver="min_norm")
        >>> cj.relative_efficiency(eco, task).shape
        (2,)
    """
    if error not in ("mse", "prediction"):
        raise ValueError(f"error must be 'mse' or 'prediction', got {error!r}")
    _validate(eco, task, 0, "replace", pool, loss_scale)
    own = None
    if error == "prediction":
        own = own_tasks(eco) if own_task is None else tuple(int(s) for s in own_task)
        if len(own) != eco.K or not all(0 <= s < eco.S for s in own):
            raise ValueError(f"own_task must give one data node index in [0, {eco.S}) per model, got {own_task!r}")
    return _efficiencies(eco, task, pool, loss_scale, own)[error]


def _efficiencies(eco, task, pool, loss_scale, own) -> dict:
    """Both relative efficiencies from one limit (``own`` None: the MSE only)."""
    return _pooled_ratios(eco, task, _moments_jit(eco, task, 0, pool, loss_scale).limit, own)


def _pooled_ratios_impl(eco, task, limit, own) -> dict:
    dtype = limit.error.dtype
    d = task.dim
    data_gram = _grams(eco.data_attr("design"), d, dtype)
    total_pinv = jnp.linalg.pinv(data_gram.sum(0), hermitian=True)
    theta = task.data_params(eco).astype(dtype)
    pooled_mean = total_pinv @ jnp.einsum("sab,sb->a", data_gram, theta)
    pooled_cov = jnp.asarray(task.noise, dtype) ** 2 * total_pinv
    bias = pooled_mean - task.theta_star.astype(dtype)
    risk_cov = jnp.eye(d, dtype=dtype) if task.cov is None else jnp.asarray(task.cov, dtype)
    out = {"mse": (jnp.trace(risk_cov @ pooled_cov) + bias @ risk_cov @ bias) / limit.error}
    if own is not None:
        own = np.asarray(own)
        S_own = data_gram[own] / jnp.asarray(eco.n, dtype)[own][:, None, None]        # (K, d, d)
        gap = pooled_mean[None, :] - theta[own]                                      # (K, d)
        pooled = jnp.einsum("kab,ba->k", S_own, pooled_cov) + jnp.einsum("ka,kab,kb->k", gap, S_own, gap)
        out["prediction"] = pooled / limit.task_error[np.arange(eco.K), own]
    return out


# The pooled estimator's errors over the limit's, compiled once per (topology, designs' shapes,
# own tasks) apart from the moments program (not inlined into a second, larger compile).
_pooled_ratios = jax.jit(_pooled_ratios_impl, static_argnames=("own",))


def relative_efficiency_grid(
    eco: Ecosystem,
    task: LinearRegression,
    alphas,
    betas,
    *,
    error: str = "mse",
    pool: str = "shared",
    loss_scale: str = "sum",
    own_task: Optional[tuple] = None,
) -> jax.Array:
    """:func:`relative_efficiency` on an (alpha, beta) grid, in one vectorized, jitted call.

    For every ``(a, b)``: every model's synthetic share is ``a``, its own task
    (:func:`own_tasks`, the private data node in ``cj.graphs.public_private``)
    gets relative real weight ``b`` and its other real in-edges share ``1 - b``
    in proportion to their weights in ``eco`` (the public node in
    ``public_private``). Options as in :func:`relative_efficiency` (defaults:
    the paper's summed losses and shared pool).

    Returns:
        ``(len(alphas), len(betas), K)`` relative efficiency.

    Example:
        >>> import jax, collapse_jax as cj
        >>> eco = cj.graphs.public_private(2, 0.5, 0.5, dim=3, n_private=4, n_public=4,
        ...                                n_synthetic=4, key=jax.random.key(0))
        >>> task = cj.LinearRegression(dim=3, solver="min_norm")
        >>> relative_efficiency_grid(eco, task, [0.0, 0.5], [0.5], error="prediction").shape
        (2, 1, 2)
    """
    if own_task is not None:
        own = tuple(int(s) for s in own_task)
    else:
        try:
            own = own_tasks(eco)
        except ValueError:
            if error == "prediction":
                raise
            own = None  # the MSE needs no own task
    relative_efficiency(eco, task, error=error, pool=pool, loss_scale=loss_scale, own_task=own)  # validates
    dtype = jnp.result_type(float)
    return _grid_jit(eco, task, jnp.asarray(alphas, dtype), jnp.asarray(betas, dtype), pool, loss_scale, own)[error]


def _grid_impl(eco, task, alphas, betas, pool, loss_scale, own):
    dtype = alphas.dtype
    K = eco.K
    w = eco.real_weights.astype(dtype)
    mask = np.ones(w.shape, bool)
    mask[np.arange(K), np.asarray(own)] = False
    others = jnp.where(jnp.asarray(mask), w, 0.0)
    total = others.sum(1, keepdims=True)
    others = others / jnp.where(total > 0, total, 1.0)
    own_onehot = jnp.asarray(~mask, dtype)

    def one(a, b):
        e = eco.replace(alpha=jnp.full((K,), a, dtype), real_weights=b * own_onehot + (1 - b) * others)
        return _efficiencies(e, task, pool, loss_scale, own)

    A, B = jnp.meshgrid(alphas, betas, indexing="ij")
    out = jax.vmap(one)(A.ravel(), B.ravel())
    return {k: v.reshape(A.shape + (K,)) for k, v in out.items()}


_grid_jit = jax.jit(_grid_impl, static_argnums=(4, 5, 6))
