"""Gaussian fitting: learn a mean and a covariance, publish samples of the fit.

THEORY.md sections 2, 3 and 6 (Shumailov et al.'s simplest case). A model is
:class:`GaussianParams` ``(mean (d,), cov (d, d))``; a data set is summarized
by the additive :class:`GaussianStats`; synthetic data are ``N(mean, cov)``
samples of the producer's fit. There are no covariates, so every "law" is the
empty tuple ``()``; a data node's distribution is its own param (node
attributes ``mean`` and ``cov``, default the task's).

The fit of a weighted mixture is its moment fit, ``mean = S1 / S0`` and
``cov = S2 / S0 - mean mean'``: it includes the spread between the sources'
means. The moments are taken about the truth's mean ``mu*`` (``S1 = sum w
(x - mu*)``, ...), not about 0: they stay linear in the combination
coefficients (which the engine needs), and ``S2 / S0 - m m'`` does not
cancel in float32 while the fitted means stay within a few standard
deviations of ``mu*`` (about 0 it lost every digit of a unit covariance at
``|mu*| = 1e3``). Sources whose own means lie far from ``mu*`` still cancel
in proportion to that distance (their spread is then part of the fit). ``estimator="unbiased"`` adds to it, per drawn data set, the
reliability-weights correction of that data set's own scatter (so one source
of ``n`` samples gives exactly ``scatter / (n - 1)``); see :meth:`GaussianFit.fit`.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.tasks.samplers import bartlett_factor_and_normal, psd_factor  # the one import of the samplers
from collapse_jax.tasks import _nodes
from collapse_jax.tasks.base import CovariateFree, Task, task_dataclass

__all__ = ["GaussianFit", "GaussianParams", "GaussianStats", "ESTIMATORS", "gaussian_kl"]

ESTIMATORS = ("mle", "unbiased")


class GaussianParams(NamedTuple):
    """A Gaussian model ``N(mean, cov)``."""

    mean: jax.Array  # (d,)
    cov: jax.Array   # (d, d)


class GaussianStats(NamedTuple):
    """Additive statistics of a weighted data set ``(x_i, w_i)``.

    ``correction`` is ``scatter * V2 / (V1^2 - V2)`` with ``V1 = sum w``,
    ``V2 = sum w^2`` and ``scatter = sum w (x - xbar_w)(x - xbar_w)'``: the
    amount that turns the data set's weighted MLE covariance ``scatter / V1``
    into the unbiased reliability-weights one ``scatter / (V1 - V2 / V1)``,
    times ``V1``, so it scales with the weights like the other fields
    (``scatter / (n - 1)`` for ``n`` unit weights).
    """

    weight: jax.Array      # ()      sum_i w_i
    first: jax.Array       # (d,)    sum_i w_i (x_i - mu*)
    second: jax.Array      # (d, d)  sum_i w_i (x_i - mu*)(x_i - mu*)'
    correction: jax.Array  # (d, d)  see above


@task_dataclass(data_fields=["mean", "cov"], meta_fields=["dim", "estimator"])
class GaussianFit(CovariateFree, Task):
    """Fit ``N(mean, cov)`` to weighted data; publish samples of the fit.

    Args:
        dim: dimension d.
        mean: true mean mu* (d,); default zeros.
        cov: true covariance Sigma* (d, d), positive definite; default the identity.
        estimator: "mle" (scatter / n) or "unbiased" (scatter / (n - 1) for one
            source; :meth:`fit` says what it means for a mixture). Static.

    Error: ``KL(N(mu*, Sigma*) || N(mean, cov))``, the excess expected negative
    log-likelihood of real data (``inf`` when ``cov`` is singular or not PD).

    Example:
        >>> import jax
        >>> task = GaussianFit(dim=2)
        >>> x = task.sample(jax.random.key(0), (), task.truth_param(), 1000)
        >>> fit = task.fit(task.statistics(x))
        >>> fit.cov.shape, bool(task.risk(fit) < 0.05)
        ((2, 2), True)
    """

    dim: int
    mean: Optional[jax.Array] = None
    cov: Optional[jax.Array] = None
    estimator: str = "mle"

    additive = True
    supports_suffstat = True
    data_attributes = ("mean", "cov")
    model_attributes = ()
    metric_definitions = {
        "variance_ratio": ("variance_shrinks", "tr(cov_hat) / tr(cov*)"),
        "log_det": ("variance_shrinks", "log det cov_hat (-inf when singular)"),
    }
    risk_definition = "risk_diverges: KL(N(mu*, Sigma*) || N(mean_hat, cov_hat)), inf when cov_hat is singular"

    # ------------------------------------------------------------ checks
    def check(self, eco) -> None:
        """Raise ``ValueError`` naming the node and attribute if (eco, task) is ill-posed."""
        d = self.dim
        _nodes.check_dim(d)
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        _nodes.check_vector(self.mean, d, "task", "mean")
        # The KL error needs log det Sigma*: the truth must be non-singular.
        _nodes.check_cov(self.cov, d, "task", definite=True)
        _nodes.refuse_unknown(eco, "GaussianFit", {"data": self.data_attributes, "model": self.model_attributes})
        for s, (mu, cov) in enumerate(zip(_nodes.node_attr(eco, "data", "mean"), _nodes.node_attr(eco, "data", "cov"))):
            where = _nodes.node_label(eco, "data", s)
            _nodes.check_vector(mu, d, where, "mean")
            _nodes.check_cov(cov, d, where)
        if self.estimator == "unbiased":
            # scatter / (n - 1) needs two samples in every data set drawn.
            has_real = eco.has_real()
            read = {j for _, j in eco.model_edges}
            for s, n in enumerate(eco.n):
                if n < 2 and any(ss == s for _, ss in eco.real_edges):
                    raise ValueError(f"{_nodes.node_label(eco, 'data', s)}: n = {n}; the unbiased estimator needs n >= 2")
            for k in range(eco.K):
                if k in read and eco.n_synthetic[k] < 2:
                    raise ValueError(f"{_nodes.node_label(eco, 'model', k)}: n_synthetic = {eco.n_synthetic[k]}; "
                                     "the unbiased estimator needs >= 2")
                if not has_real[k] and eco.n0[k] < 2:
                    raise ValueError(f"{_nodes.node_label(eco, 'model', k)}: n0 = {eco.n0[k]}; "
                                     "the unbiased estimator needs >= 2")

    # ---------------------------------------------------- truth and laws
    @property
    def mean_star(self) -> jax.Array:
        """True mean mu* (d,)."""
        return jnp.zeros(self.dim, _float()) if self.mean is None else jnp.asarray(self.mean, _float())

    @property
    def cov_star(self) -> jax.Array:
        """True covariance Sigma* (d, d)."""
        return jnp.eye(self.dim, dtype=_float()) if self.cov is None else jnp.asarray(self.cov, _float())

    def truth_param(self) -> GaussianParams:
        """``GaussianParams(mu*, Sigma*)``."""
        return GaussianParams(self.mean_star, self.cov_star)

    def data_params(self, eco) -> GaussianParams:
        """``GaussianParams`` of every data node, stacked: ``mean (S, d)``, ``cov (S, d, d)``."""
        means = [self.mean_star if v is None else jnp.asarray(v, _float()) for v in _nodes.node_attr(eco, "data", "mean")]
        covs = [self.cov_star if v is None else jnp.asarray(v, _float()) for v in _nodes.node_attr(eco, "data", "cov")]
        if not means:
            return GaussianParams(jnp.zeros((0, self.dim), _float()), jnp.zeros((0, self.dim, self.dim), _float()))
        return GaussianParams(jnp.stack(means), jnp.stack(covs))

    # ---------------------------------------------------------- sampling
    def sample(self, key: jax.Array, law, param: GaussianParams, n: int) -> jax.Array:
        """``n`` samples of ``N(param.mean, param.cov)``: ``(n, d)``."""
        z = jax.random.normal(key, (n, self.dim), param.mean.dtype)
        return param.mean[None, :] + z @ psd_factor(param.cov).T

    def _origin(self, dtype) -> jax.Array:
        """The point the statistics' moments are taken about: ``mu*``."""
        return self.mean_star.astype(dtype)

    def statistics(self, data: jax.Array, weights: Optional[jax.Array] = None) -> GaussianStats:
        """:class:`GaussianStats` of ``data (n, d)`` with sample weights ``(n,)`` (default 1)."""
        x = data
        w = jnp.ones(x.shape[:1], x.dtype) if weights is None else jnp.asarray(weights, x.dtype)
        v1, v2 = jnp.sum(w), jnp.sum(w * w)
        x = x - self._origin(x.dtype)[None, :]
        first = w @ x
        center = first / jnp.where(v1 > 0, v1, 1.0)
        xc = x - center[None, :]
        scatter = xc.T @ (w[:, None] * xc)   # centred first: no cancellation in float32
        second = scatter + v1 * jnp.outer(center, center)
        denom = v1 * v1 - v2
        # A data set with one weighted sample has no spread of its own to correct.
        correction = jnp.where(denom > 0, v2 / jnp.where(denom > 0, denom, 1.0), 0.0) * scatter
        return GaussianStats(v1, first, second, correction)

    def draw(self, key: jax.Array, law, param: GaussianParams, n: int, engine: str) -> GaussianStats:
        """Statistics of ``n`` samples of ``N(param.mean, param.cov)``.

        ``engine="suffstat"`` (exact, THEORY section 3): with ``cov = F F'``,
        the sample mean is ``mean + F z / sqrt(n)`` and, independently, the
        scatter is ``F A A' F'`` with ``A`` the Bartlett factor of
        Wishart(I, n - 1); it materializes the data when ``n - 1 < d``.
        """
        d, dtype = self.dim, param.mean.dtype
        if engine != "suffstat" or n - 1 < d:
            return self.statistics(self.sample(key, law, param, n))
        A, z = bartlett_factor_and_normal(key, n - 1, d, dtype)
        F = psd_factor(param.cov)
        FA = F @ A.dense()
        scatter = FA @ FA.T
        xbar = (param.mean - self._origin(dtype)) + (F @ z) / np.sqrt(n)  # about mu*, as statistics
        return GaussianStats(jnp.asarray(n, dtype), n * xbar, scatter + n * jnp.outer(xbar, xbar), scatter / (n - 1))

    # --------------------------------------------------------------- fit
    def fit(self, stats: GaussianStats) -> GaussianParams:
        """Moment fit of combined statistics ``sum_e c_e stats_e``.

        ``mean = mu* + m`` with ``m = S1 / S0`` and, for "mle", ``cov = S2 / S0 - m m'``
        (moments about ``mu*``, see :class:`GaussianStats`).
        "unbiased" adds ``correction / S0``: every drawn data set's scatter
        about its own weighted mean is divided by ``V1 - V2 / V1`` instead of
        ``V1`` (reliability weights; ``n - 1`` instead of ``n`` for ``n``
        unit-weight samples), and the spread between the data sets' means is
        kept as in the MLE. One source of ``n`` samples: exactly
        ``scatter / (n - 1)``, whatever its weight. Mixture of sources with a
        common law: the within-source part is unbiased, the between-source
        part carries the sampling noise of the source means (the MLE's
        convention). Under ``regime="accumulate"`` every accumulated batch is
        its own data set. This choice keeps the statistics linear in the
        combination coefficients, so any engine's weighted sum is exact.
        """
        s0 = stats.weight
        m = stats.first / s0
        cov = stats.second / s0 - jnp.outer(m, m)
        if self.estimator == "unbiased":
            cov = cov + stats.correction / s0
        return GaussianParams(self._origin(m.dtype) + m, 0.5 * (cov + cov.T))

    # ----------------------------------------------------------- outputs
    def risk(self, param: GaussianParams) -> jax.Array:
        """``KL(N(mu*, Sigma*) || N(param))``; ``inf`` for a singular, non-PD or non-finite cov."""
        dtype = param.mean.dtype
        return gaussian_kl(self.mean_star.astype(dtype), self.cov_star.astype(dtype), param.mean, param.cov)

    def metrics(self, param: GaussianParams) -> dict:
        """``variance_ratio`` = tr(cov) / tr(Sigma*), ``log_det`` = log det cov (-inf if singular)."""
        cov = param.cov
        sign, logdet = jnp.linalg.slogdet(cov)
        return {
            "variance_ratio": jnp.trace(cov) / jnp.trace(self.cov_star.astype(cov.dtype)),
            "log_det": jnp.where(sign > 0, logdet, -jnp.inf),
        }

    # ----------------------------------------------------------- theory
    @jax.jit  # compiled once per task structure and shapes (eager primitives are one XLA compile each)
    def asymptotic_covariance(self) -> jax.Array:
        """Per-sample covariance of the MLE in the parametrization ``(mean, vech(cov))``.

        ``vech`` lists the lower triangle row by row (``numpy.tril_indices``),
        ``q = d (d + 1) / 2`` entries. Blocks: ``Sigma`` for the mean, zero
        across (third moments vanish), and for ``vech``
        ``Cov(x_i x_j, x_k x_l) = S_ik S_jl + S_il S_jk`` (THEORY section 6:
        ``A -> 2 Sigma A Sigma``). Shape ``(p, p)``, ``p = d + q``.
        """
        S = self.cov_star
        i, j = np.tril_indices(self.dim)
        vech = S[i[:, None], i[None, :]] * S[j[:, None], j[None, :]] + S[i[:, None], j[None, :]] * S[j[:, None], i[None, :]]
        return _blockdiag(S, vech)

    @jax.jit  # compiled once per task structure and shapes (eager primitives are one XLA compile each)
    def risk_metric(self) -> jax.Array:
        """``A`` with ``KL(theta* + e) = e' A e + O(e^3)`` in the ``(mean, vech(cov))`` parametrization.

        Half the KL's Hessian at the truth: ``Sigma^-1 / 2`` for the mean and
        ``A_ab = tr(P B_a P B_b) / 4`` for the covariance (``P = Sigma^-1``,
        ``B_a`` the symmetric unit matrix of vech entry ``a``), so that
        ``tr(A C) = p / 2`` with ``p = d + d (d + 1) / 2`` (THEORY section 6).
        """
        d = self.dim
        P = jnp.linalg.inv(self.cov_star)
        i, j = np.tril_indices(d)
        B = np.zeros((len(i), d, d))
        B[np.arange(len(i)), i, j] = 1.0
        B[np.arange(len(i)), j, i] = 1.0
        B = jnp.asarray(B, P.dtype)
        PB = jnp.einsum("ij,ajk->aik", P, B)
        vech = 0.25 * jnp.einsum("aij,bji->ab", PB, PB)
        return _blockdiag(0.5 * P, vech)

    def vector(self, param: GaussianParams) -> jax.Array:
        """``(mean, vech(cov))`` (p,): the parametrization of :meth:`asymptotic_covariance` and :meth:`risk_metric`.

        The large-sample theory measures biases (data nodes with their own
        ``mean``/``cov``) and mean trajectories in it, so it must match the
        ``(p, p)`` matrices above; the homogenization metrics (dispersion,
        cosine) read it too, each covariance entry counted once.
        """
        i, j = np.tril_indices(self.dim)
        return jnp.concatenate([param.mean, param.cov[i, j]])

    param_vector = vector  # the name of the first version


def gaussian_kl(mu0: jax.Array, cov0: jax.Array, mu1: jax.Array, cov1: jax.Array) -> jax.Array:
    """``KL(N(mu0, cov0) || N(mu1, cov1))``, ``cov0`` PD; ``inf`` when ``cov1`` is not PD or not finite.

    With ``cov1 = L L'``, ``cov0 = L0 L0'`` and the lower-triangular
    ``M = L^-1 L0``, ``2 KL = sum_ij M_ij^2 - d - 2 sum_i log M_ii + |L^-1 (mu1 - mu0)|^2``,
    written as a sum of non-negative terms (``M_ii^2 - 1 - log M_ii^2``) so
    that a small KL does not drown in cancellation.

    Example:
        >>> import jax.numpy as jnp
        >>> float(gaussian_kl(jnp.zeros(1), jnp.eye(1), jnp.ones(1), jnp.eye(1)))
        0.5
    """
    L = jnp.linalg.cholesky(cov1)
    diag = jnp.diagonal(L)
    ok = jnp.all(jnp.isfinite(L)) & jnp.all(diag > 0)
    L = jnp.where(ok, L, jnp.eye(L.shape[0], dtype=L.dtype))  # keep the solves finite; masked below
    M = jax.scipy.linalg.solve_triangular(L, jnp.linalg.cholesky(cov0), lower=True)
    u = jnp.square(jnp.diagonal(M))
    off = jnp.sum(jnp.square(M)) - jnp.sum(u)
    e = jax.scipy.linalg.solve_triangular(L, mu1 - mu0, lower=True)
    kl = 0.5 * (jnp.sum(u - 1.0 - jnp.log(u)) + off + e @ e)
    return jnp.where(ok & ~jnp.isnan(kl), kl, jnp.inf)


def _blockdiag(a: jax.Array, b: jax.Array) -> jax.Array:
    za = jnp.zeros((a.shape[0], b.shape[1]), a.dtype)
    return jnp.block([[a, za], [za.T, b.astype(a.dtype)]])


def _float():
    return jnp.result_type(float)
