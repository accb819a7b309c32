"""Linear regression's exact theory: finite-sample second moments, fixed designs, the mean operator.

What :meth:`LinearRegression.exact_theory` returns. The task-generic
large-sample theory (:mod:`collapse_jax.theory.large_sample`, scaled by
``tr(Sigma sigma^2 Sigma^-1) = sigma^2 d``) covers every task; this module adds
what only linear regression has (THEORY.md sections 4 and 5):

* :func:`check_large_sample`: when the K x K theory applies (one covariance,
  no fixed design, ridge 0): :func:`check_isotropic`;
* the **exact finite-sample second-moment map** (isotropic Gaussian design):
  with ``G_kj = c_kj P_k^{-1} S_kj`` the error obeys
  ``e_t,k = sum_j G_kj e_{t-1,j} + u_k`` and, Gram matrices being rotation
  invariant, ``V_t = L(V_{t-1}) + N`` with
  ``L(V)[k, l] = sum_{e into k, f into l} cross[e, f] V[j_e, j_f]``. The
  coefficients (:func:`exact_coefficients`) have closed forms for pooled least
  squares (``N_k`` samples: ``d / (N_k - d - 1)``) and single-source models
  (``G = I``); the others are a seeded Monte Carlo over Gram matrices only.
  :func:`exact_replace`, :func:`exact_stationary`, :func:`exact_accumulate`
  (closed form for self-loop-only models), :func:`exact_moments`;
* the **mean operator** ``Q`` (:func:`mean_operator`) for non-isotropic and
  fixed designs, and the fixed-design theory of THEORY 5
  (:func:`moments_fixed`, from :mod:`.fixed_design`).

The functions the generic tools call (the "exact theory" interface of
:mod:`collapse_jax.theory.moments`): :func:`check_large_sample`,
:func:`has_fixed_design`, :func:`moments_fixed`, :func:`exact_moments`,
:func:`stationary`, :func:`mean_operator`, :func:`second_moment_operator`.

Layering: this module imports the ecosystem, the graph topology, the options,
the low theory helpers (:mod:`collapse_jax.theory.weights`,
:mod:`collapse_jax.theory.lyapunov`) and its sibling :mod:`.fixed_design`;
not the task module (which imports this one) nor the generic theory.

Example:
    >>> import collapse_jax as cj
    >>> ex = cj.LinearRegression(dim=5).exact_theory()
    >>> coef = ex.exact_coefficients(cj.graphs.complete(3, n=40, m=40), cj.LinearRegression(dim=5))
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.ecosystem import Ecosystem
from collapse_jax.graphs.topology import topology
from collapse_jax.options import LOSS_SCALES, POOLS
from collapse_jax.options import check_choice as _option
from collapse_jax.tasks.linear_regression.fixed_design import moments_fixed
from collapse_jax.theory.weights import effective_weights, generation0_weights

__all__ = [
    "check_isotropic",
    "check_large_sample",
    "has_fixed_design",
    "moments_fixed",
    "mean_operator",
    "ExactCoefficients",
    "exact_coefficients",
    "exact_operator",
    "exact_stationary",
    "exact_replace",
    "exact_accumulate",
    "exact_moments",
    "stationary",
    "second_moment_operator",
    "deterministic_grams",
]


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


# ------------------------------------------------------------------ checks
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


def check_large_sample(eco: Ecosystem, task, where: str = "moments") -> None:
    """Raise ``ValueError`` unless the task-generic K x K large-sample theory applies (:func:`check_isotropic`)."""
    check_isotropic(eco, task, where)


def has_fixed_design(eco: Ecosystem) -> bool:
    """Whether any node has a fixed design (then :func:`moments_fixed` is the theory)."""
    return any(x is not None for x in (*eco.data_attr("design"), *eco.model_attr("design")))


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
        >>> import collapse_jax as cj
        >>> Q = mean_operator(cj.graphs.ring(3), cj.LinearRegression(dim=2))   # = W (x) I
        >>> Q.shape
        (6, 6)
    """
    _option("loss_scale", loss_scale, LOSS_SCALES)
    return _mean_operator(eco, task, loss_scale)


def _mean_operator_impl(eco: Ecosystem, task, loss_scale: str) -> jax.Array:
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
        R1, W1 = effective_weights(eco, "mean")
        Z = ((R1 * jnp.asarray(eco.n, dtype)[None, :]).sum(1)
             + (W1 * jnp.asarray(eco.n_synthetic, dtype)[None, :]).sum(1))
    P = P + (jnp.asarray(task.ridge, dtype) / Z)[:, None, None] * jnp.eye(d, dtype=dtype)[None]
    blocks = W[:, :, None, None] * jnp.linalg.solve(P[:, None], syn_g[None])  # (K, K, d, d)
    return blocks.transpose(0, 2, 1, 3).reshape(K * d, K * d)


# Retraced per (topology, sizes, task and node covariances' shapes, dtype, loss_scale).
_mean_operator = jax.jit(_mean_operator_impl, static_argnames=("loss_scale",))


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
        >>> import collapse_jax as cj
        >>> coef = exact_coefficients(cj.graphs.complete(3, n=40, m=40), cj.LinearRegression(dim=5))
        >>> [round(float(g), 4) for g in coef.gain]   # 1/3 per incidence (pooled: 40 of 120 samples)
        [0.3333, 0.3333, 0.3333, 0.3333, 0.3333, 0.3333, 0.3333, 0.3333, 0.3333]
    """
    _option("loss_scale", loss_scale, LOSS_SCALES)
    _option("pool", pool, POOLS)
    check_isotropic(eco, task, "exact moments", allow_ridge=True)
    no_ridge = _concrete(task.ridge) and float(task.ridge) == 0.0
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, (int, np.integer)) or mc_samples < 2:
        raise ValueError(f"mc_samples must be an integer >= 2, got {mc_samples!r}")
    K, d = eco.K, task.dim
    c, c0 = _loss_coefficients(eco, loss_scale)
    dtype = c.dtype
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
    pairs = np.argwhere(inc_i[:, None] == inc_i[None, :])  # incidences sharing one batch
    p_idx, q_idx = pairs[:, 0], pairs[:, 1]

    inc0_k = np.concatenate([real_e[:, 0], no_real])
    inc0_i = np.concatenate([np.arange(Er), truth_inst]).astype(int)

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
        mc = _gram_averages(task, c, c0, jax.random.key(mc_seed), plan)
    else:
        mc = None
    closed = tuple(np.asarray(x, dtype) for x in (
        np.nan_to_num(closed_gain), np.diag(np.nan_to_num(closed_noise)), np.nan_to_num(closed_noise0)))
    masks = (np.isnan(closed_gain), np.diag(~np.isnan(closed_noise)), np.isnan(closed_noise0),
             np.diag(unit_cross), ~same_batch)
    return _with_closed_forms(mc, sig2, closed, masks, K, E)


@functools.partial(jax.jit, static_argnames=("K", "E"))  # retraced per (K, E, dtype, Monte Carlo or not)
def _with_closed_forms(mc, sig2, closed, masks, K: int, E: int) -> ExactCoefficients:
    """The coefficients: closed forms where ``masks`` say so, the Monte Carlo averages ``mc`` elsewhere."""
    dtype = sig2.dtype
    if mc is None:
        mc = (jnp.zeros(E, dtype), jnp.zeros((E, E), dtype), jnp.zeros((K, K), dtype), jnp.zeros(K, dtype))
    gain, cross, noise, noise0 = mc
    closed_gain, closed_noise, closed_noise0 = closed
    mc_gain, known_noise, mc_noise0, unit_cross, independent = masks
    gain = jnp.where(mc_gain, gain, closed_gain)
    noise = jnp.where(known_noise, closed_noise, noise)
    noise0 = jnp.where(mc_noise0, noise0, closed_noise0)
    noise, noise0 = sig2 * noise, sig2 * noise0
    cross = jnp.where(unit_cross, 1.0, cross)
    # Different models whose batches are independent: E[G_e' G_f] = E[G_e]' E[G_f].
    cross = jnp.where(independent, gain[:, None] * gain[None, :], cross)
    return ExactCoefficients(gain, cross, noise, noise0)


@functools.partial(jax.jit, static_argnames=("loss_scale",))  # retraced per (topology, sizes, dtype, loss_scale)
def _loss_coefficients(eco: Ecosystem, loss_scale: str) -> tuple:
    """``(c, c0)``: per-sample loss coefficient of every incidence (real edges, then model edges;
    generation 0: real edges, then the truth samples of the models without real data)."""
    R, W = effective_weights(eco, "mean")  # alphas fixed by definition pinned
    dtype = W.dtype
    n = np.asarray(eco.n, int)
    m = np.asarray(eco.n_synthetic, int)
    real_e = np.asarray(eco.real_edges, int).reshape(-1, 2)
    model_e = np.asarray(eco.model_edges, int).reshape(-1, 2)
    n0 = np.asarray(eco.n0, int)[np.flatnonzero(~eco.has_real())]
    c = jnp.concatenate([
        _coef(R[real_e[:, 0], real_e[:, 1]], jnp.asarray(n[real_e[:, 1]], dtype), loss_scale),
        _coef(W[model_e[:, 0], model_e[:, 1]], jnp.asarray(m[model_e[:, 1]], dtype), loss_scale),
    ]).astype(dtype)
    R0 = generation0_weights(eco, "mean").astype(dtype)  # relative real weights, rows sum to 1
    c0 = jnp.concatenate([
        _coef(R0[real_e[:, 0], real_e[:, 1]], jnp.asarray(n[real_e[:, 1]], dtype), loss_scale),
        jnp.asarray(1.0 / n0 if loss_scale == "mean" else np.ones(len(n0)), dtype),
    ]).astype(dtype)
    return c, c0


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


def _wishart_identity(key, n: int, d: int, dtype) -> jax.Array:
    """``X'X`` of ``n`` standard normal rows: the same draws as the samples engine's Gram (isotropic law)."""
    k_x, _ = jax.random.split(key)
    X = jax.random.normal(k_x, (n, d), dtype)
    return X.T @ X


def _gram_averages_impl(task, c, c0, key, plan: _GramPlan):
    """Monte Carlo averages of tr(G), tr(G'G), and the label-noise traces (sigma = 1)."""
    K, d, Er, E = plan.K, plan.d, plan.Er, plan.E
    dtype = c.dtype
    sizes = np.asarray(plan.sizes, int)
    inc_k, inc_i = np.asarray(plan.inc_k, int), np.asarray(plan.inc_i, int)
    inc0_k, inc0_i = np.asarray(plan.inc0_k, int), np.asarray(plan.inc0_i, int)
    p_idx, q_idx = np.asarray(plan.p_idx, int), np.asarray(plan.q_idx, int)
    ridge = jnp.asarray(task.ridge, dtype) * jnp.eye(d, dtype=dtype)
    groups = [(int(size), np.flatnonzero(sizes == size)) for size in np.unique(sizes)]

    def grams(key):
        S = jnp.zeros((len(sizes), d, d), dtype)
        for size, ids in groups:
            keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(ids, jnp.uint32))
            draw = jax.vmap(lambda k, size=size: _wishart_identity(k, size, d, dtype))
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
    return _scatter_square(coef.cross.ravel(), rows, cols, K * K)


# Compiled once per shape (retraced for a new K, number of pairs or dtype): applied eagerly,
# each primitive of the scatter and of the block solve below is an XLA compile of its own,
# about 40 of the 107 compiles of a first exact diagnose of a 6-ring.
@functools.partial(jax.jit, static_argnames=("size",))
def _scatter_square(values, rows, cols, size: int):
    """``(size, size)`` zeros with ``values`` added at ``(rows, cols)`` (repeated pairs sum)."""
    return jnp.zeros((size, size), values.dtype).at[rows, cols].add(values)


@functools.partial(jax.jit, static_argnames=("K",))
def _bounded_block(Lmat, noise, B, K: int):
    """``(K, K)`` ``V`` with ``V[B, B]`` solving ``V = L(V) + noise`` on the pairs of ``B``; ``inf`` elsewhere."""
    pairs = (B[:, None] * K + B[None, :]).ravel()
    sub = Lmat[pairs[:, None], pairs[None, :]]
    VB = jnp.linalg.solve(jnp.eye(pairs.size, dtype=Lmat.dtype) - sub, noise[B[:, None], B[None, :]].reshape(-1))
    return jnp.full((K, K), jnp.inf, Lmat.dtype).at[B[:, None], B[None, :]].set(VB.reshape(B.size, B.size))


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
        if not len(B):
            return jnp.full((K, K), jnp.inf, Lmat.dtype)
        return _bounded_block(Lmat, coef.noise, B, K)
    rho = jnp.max(jnp.abs(jnp.linalg.eigvals(jax.lax.stop_gradient(Lmat))))
    ok = rho < 1.0 - 1e-12
    A = jnp.eye(K * K, dtype=Lmat.dtype) - jnp.where(ok, Lmat, 0.0)
    V = jnp.linalg.solve(A, coef.noise.reshape(-1)).reshape(K, K)
    return jnp.where(ok, V, jnp.inf)


def exact_replace(eco: Ecosystem, coef: ExactCoefficients, generations: int) -> jax.Array:
    """``(T + 1, K, K)`` exact second moments ``V_0 = diag(noise0)``, ``V_t = L(V_{t-1}) + noise``."""
    return _exact_replace(eco, coef, int(generations))


def _exact_replace_impl(eco: Ecosystem, coef: ExactCoefficients, generations: int) -> jax.Array:
    L = _apply_exact(eco, coef)
    V0 = jnp.diag(coef.noise0)

    def step(V, _):
        V = L(V) + coef.noise
        return V, V

    _, Vs = jax.lax.scan(step, V0, None, length=generations)
    return jnp.concatenate([V0[None], Vs])


# Retraced per (topology, dtype, generations).
_exact_replace = jax.jit(_exact_replace_impl, static_argnames=("generations",))


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
    return _exact_accumulate(eco, task, int(generations))


def _exact_accumulate_impl(eco: Ecosystem, task, generations: int) -> jax.Array:
    dtype = jnp.result_type(float)
    d = task.dim
    sig2d = jnp.asarray(task.noise, dtype) ** 2 * d
    m = jnp.asarray(eco.n_synthetic, dtype)
    n0 = jnp.asarray(eco.n0, dtype)
    t = jnp.arange(1, generations + 1, dtype=dtype)
    inc = sig2d / (t[:, None] * (t[:, None] * m[None, :] - d - 1))
    err = (sig2d / (n0 - d - 1))[None, :] + jnp.concatenate([jnp.zeros((1, eco.K), dtype), jnp.cumsum(inc, 0)])
    return jax.vmap(jnp.diag)(err)


# Retraced per (K, sizes, task structure, generations).
_exact_accumulate = jax.jit(_exact_accumulate_impl, static_argnames=("generations",))



# --------------------------------------------- the interface of theory.moments
def exact_moments(eco: Ecosystem, task, generations: int, *, regime: str = "replace",
                  pool: str = "independent", loss_scale: str = "mean", mc_samples: int = 4096,
                  mc_seed: int = 0) -> tuple:
    """Finite-sample exact trajectories (isotropic Gaussian design, fresh data nodes, one theta, ridge 0).

    Replace: the exact second-moment map (:func:`exact_coefficients`,
    :func:`exact_replace`, :func:`exact_stationary`); accumulate: the closed
    form of :func:`exact_accumulate` (self-loop-only models). Least squares is
    unbiased with one theta, so the mean is 0.

    Returns:
        ``(mean (T + 1, K, d), second (T + 1, K, K), stationary (K, K) or None)``.
    """
    check_isotropic(eco, task, "moments")
    if any(t is not None and not np.allclose(t, task.theta_star) for t in eco.data_attr("theta")):
        raise ValueError("exact moments need one theta for every data node (use exact=False)")
    V_inf = None
    if regime == "accumulate":
        second = exact_accumulate(eco, task, int(generations))
    else:
        coef = exact_coefficients(eco, task, loss_scale=loss_scale, pool=pool,
                                  mc_samples=mc_samples, mc_seed=mc_seed)
        second = exact_replace(eco, coef, int(generations))
        V_inf = exact_stationary(eco, coef)
    mean = jnp.zeros((int(generations) + 1, eco.K, task.dim), second.dtype)
    return mean, second, V_inf


def stationary(eco: Ecosystem, task, loss_scale: str = "mean", pool: str = "independent",
               **options) -> jax.Array:
    """``(K, K)`` exact finite-sample stationary second moments (replace), ``inf`` where they diverge.

    The fixed point of ``V = L(V) + N`` (:func:`exact_coefficients` with
    ``options`` ``mc_samples``, ``mc_seed``; :func:`exact_stationary`).
    Differentiable in the weights (common random numbers).
    """
    coef = exact_coefficients(eco, task, loss_scale=loss_scale, pool=pool, **options)
    return exact_stationary(eco, coef)


MAX_EXACT_MODELS = 40  # the K^2 x K^2 eigenproblem of rho(L) grows as K^6


def deterministic_grams(eco: Ecosystem) -> bool:
    """Every Gram a model uses at t >= 1 is a fixed design's (so ``L = Q (x) Q``)."""
    read = {s for _, s in eco.real_edges}
    return (all(x is not None for x in eco.model_attr("design"))
            and all(eco.data_attr("design")[s] is not None for s in read))


def second_moment_operator(eco: Ecosystem, task, loss_scale: str = "mean", pool: str = "independent",
                           mc_samples: int = 2048, mc_seed: int = 0):
    """``(L (K^2, K^2) or None, coefficients or None, why)``: the exact operator for ``rho(L)``.

    Fixed Gaussian data nodes are approximated as fresh draws. ``None`` with a
    reason when it does not apply (fixed designs, other covariances, more
    than :data:`MAX_EXACT_MODELS` models).
    """
    if eco.K > MAX_EXACT_MODELS:
        return None, None, f"K = {eco.K} > {MAX_EXACT_MODELS} models (the K^2 x K^2 eigenproblem is too large)"
    try:
        check_isotropic(eco, task, "rho(L)", allow_ridge=True)
        coef = exact_coefficients(eco, task, loss_scale=loss_scale, pool=pool,
                                  mc_samples=mc_samples, mc_seed=mc_seed, fixed_as_fresh=True)
    except ValueError as e:
        return None, None, str(e)
    return exact_operator(eco, coef), coef, None


def stationary_from_operator(eco: Ecosystem, task, coef: ExactCoefficients) -> jax.Array:
    """``(K, K)`` exact stationary moments from :func:`second_moment_operator`'s coefficients.

    Raises ``ValueError`` where they are not exact (fixed data nodes, data
    nodes with their own theta, ridge > 0).
    """
    if not all(eco.fresh):
        raise ValueError("fixed data nodes: the exact map is not Markov in V_t")
    if any(t is not None and not np.allclose(t, task.theta_star) for t in eco.data_attr("theta")):
        raise ValueError("data nodes with their own theta")
    if _concrete(task.ridge) and float(task.ridge) != 0.0:
        raise ValueError("ridge > 0")
    return exact_stationary(eco, coef)
