"""Linear regression: weighted least squares on Gaussian or fixed designs.

THEORY.md sections 2-4. A model is ``theta`` (d,); a data set is summarized by
the additive statistics ``(X'X, X'y)``; a model publishes synthetic data
``y = z' theta + noise * eps`` with covariates from its synthetic law.

The loss of one data set is half the mean (``loss_scale="mean"``) or half the
summed squared error, so with combined statistics ``P = sum c_e X_e'X_e`` and
``b = sum c_e X_e'y_e`` the fit solves ``(P + ridge * I) theta = b``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.ecosystem import Ecosystem, check_covariance
from collapse_jax.tasks.linear_regression import exact as _exact
from collapse_jax.tasks.base import Task, task_dataclass
from collapse_jax.tasks.samplers import bartlett_factor_and_normal, psd_factor

__all__ = ["LinearRegression", "RegressionStats", "RegressionData", "GaussianLaw", "DesignLaw", "SOLVERS"]

SOLVERS = ("cholesky", "min_norm")


class RegressionStats(NamedTuple):
    """Additive sufficient statistics of a regression data set."""

    gram: jax.Array    # (d, d)  X'X
    moment: jax.Array  # (d,)    X'y


class RegressionData(NamedTuple):
    """A materialized regression data set."""

    x: jax.Array  # (n, d) covariates
    y: jax.Array  # (n,)   labels


class GaussianLaw(NamedTuple):
    """Fresh Gaussian covariates ``x = factor @ z``; ``factor=None`` is the identity."""

    factor: Optional[jax.Array]  # (d, d) or None


class DesignLaw(NamedTuple):
    """A fixed design reused at every draw (labels are new each draw)."""

    design: jax.Array       # (n, d)
    gram: jax.Array         # (d, d) design' design
    gram_factor: jax.Array  # (d, d) F with F F' = gram


@task_dataclass(data_fields=["noise", "theta", "cov", "ridge"], meta_fields=["dim", "solver"])
class LinearRegression(Task):
    """Gaussian linear regression ``y = x' theta* + noise * eps``, ``x ~ N(0, cov)``.

    Args:
        dim: parameter dimension d.
        noise: label noise standard deviation sigma (> 0).
        theta: true parameter theta* (d,); default ``ones(d) / sqrt(d)`` (unit norm).
        cov: covariate covariance (d, d), PSD; default the identity. It is the
            law of every data node and synthetic design that sets no ``cov``
            of its own, of the generation-0 truth samples, and the test
            distribution of the excess risk ``(theta - theta*)' cov (theta - theta*)``.
        ridge: ridge penalty lambda >= 0 added to the combined Gram matrix
            (its meaning follows ``loss_scale``: per unit of mean loss or of
            summed loss).
        solver: "cholesky" (default; needs a non-singular Gram) or "min_norm":
            the minimum-norm least-squares solution ``pinv(P + ridge I) b``
            (eigendecomposition; exact for singular PSD Grams, such as those
            of low-rank fixed designs, THEORY section 5's ``G^+``). With
            "min_norm" the ``n <= dim + 1`` and rank checks are skipped.
            Static: changing it retraces.

    Node attributes it reads (:meth:`check` refuses any other by name):
    data nodes ``cov (d, d)``, ``design (n, d)`` (fixed nodes), ``theta (d,)``;
    model nodes ``cov``, ``design`` (their synthetic covariates).

    Example:
        >>> task = LinearRegression(dim=4, noise=1.0)
        >>> task.risk(task.theta_star)
        Array(0., dtype=float32)
    """

    dim: int
    noise: float = 1.0
    theta: Optional[jax.Array] = None
    cov: Optional[jax.Array] = None
    ridge: float = 0.0
    solver: str = "cholesky"

    additive = True
    supports_suffstat = True
    data_attributes = ("cov", "design", "theta")
    model_attributes = ("cov", "design")
    metric_definitions = {}
    risk_definition = ("risk_diverges: excess prediction risk (theta - theta*)' cov (theta - theta*) "
                       "on the task's covariate law")

    # --------------------------------------------------------------- checks
    @staticmethod
    def dim_of(eco: Ecosystem) -> Optional[int]:
        """The dimension d implied by the ecosystem's node attributes, or None if none fixes it.

        (Replaces the former ``Ecosystem.dim``: the ecosystem no longer knows
        what its attributes mean.)
        """
        for get in (eco.data_attr, eco.model_attr):
            for name in ("cov", "design", "theta"):
                for a in get(name):
                    if a is not None:
                        return int(np.shape(a)[-1])
        return None

    def check(self, eco: Ecosystem) -> None:
        """Raise ``ValueError`` if the task or its fit to ``eco`` is ill-posed (naming the node)."""
        d = self.dim
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"dim must be a positive integer, got {d!r}")
        if not isinstance(eco, Ecosystem):
            raise ValueError(f"eco must be a collapse_jax.Ecosystem, got {type(eco).__name__}")
        if _concrete(self.noise) and not (np.isfinite(self.noise) and float(self.noise) > 0):
            raise ValueError(f"noise must be finite and > 0, got {self.noise}")
        if _concrete(self.ridge) and not (np.isfinite(self.ridge) and float(self.ridge) >= 0):
            raise ValueError(f"ridge must be finite and >= 0, got {self.ridge}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.theta is not None and np.shape(self.theta) != (d,):
            raise ValueError(f"theta must have shape ({d},), got {np.shape(self.theta)}")
        if self.theta is not None and _concrete(self.theta) and not np.all(np.isfinite(np.asarray(self.theta, float))):
            raise ValueError(f"theta has non-finite entries: {np.asarray(self.theta).tolist()}")
        if self.cov is not None:
            if _concrete(self.cov):
                cov = check_covariance(self.cov, "task")
                if cov.shape != (d, d):
                    raise ValueError(f"task: cov must have shape ({d}, {d}), got {cov.shape}")
            elif np.shape(self.cov) != (d, d):
                raise ValueError(f"task: cov must have shape ({d}, {d}), got {np.shape(self.cov)}")
        for kind, names, attrs, known in (("data node", eco.data, eco.data_attrs, self.data_attributes),
                                          ("model node", eco.models, eco.model_attrs, self.model_attributes)):
            for name, node in zip(names, attrs):
                for field, v in node.items():
                    where = f"{kind} {name!r}"
                    if field not in known:
                        raise ValueError(f"{where}: attribute {field!r} is not read by LinearRegression "
                                         f"(its {kind} attributes: {', '.join(known)})")
                    want = {"cov": (d, d), "design": (None, d), "theta": (d,)}[field]
                    shape = np.shape(v)
                    if len(shape) != len(want) or any(w is not None and s != w for s, w in zip(shape, want)):
                        raise ValueError(f"{where}: {field} has shape {shape} (dimension "
                                         f"{shape[-1] if shape else 'none'}), task has dim={d}; expected "
                                         f"{tuple('n' if w is None else w for w in want)}")
                    if field == "cov" and _concrete(v):
                        check_covariance(v, where)
                    elif _concrete(v) and not np.all(np.isfinite(np.asarray(v, float))):
                        raise ValueError(f"{where}: {field} has non-finite entries")
        if (_concrete(self.ridge) and float(self.ridge) > 0) or self.solver == "min_norm":
            return
        # Without ridge, least squares needs more than d + 1 samples for a finite
        # expected error (E (X'X)^-1 = Sigma^-1 / (n - d - 1)).
        real_of, syn_of = _in_edges(eco)
        for k, name in enumerate(eco.models):
            real = [eco.n[s] for s in real_of[k]]
            n_gen0 = sum(real) if real else eco.n0[k]
            if n_gen0 <= d + 1:
                raise ValueError(
                    f"model node {name!r}: generation 0 fits on {n_gen0} samples <= dim + 1 = {d + 1}; "
                    "least squares without ridge needs more (raise n / n0 or set ridge > 0)"
                )
            syn = [eco.n_synthetic[j] for j in syn_of[k]]
            n_gen = sum(real) + sum(syn)
            if n_gen <= d + 1:
                raise ValueError(
                    f"model node {name!r}: trains on {n_gen} samples per generation <= dim + 1 = {d + 1}; "
                    "least squares without ridge needs more (raise n / n_synthetic or set ridge > 0)"
                )
        _check_fixed_rank(eco, d)

    # ---------------------------------------------------------- the truth
    @property
    def theta_star(self) -> jax.Array:
        """The true parameter theta* (d,)."""
        if self.theta is not None:
            return jnp.asarray(self.theta, _float())
        return jnp.ones(self.dim, _float()) / np.sqrt(self.dim)

    def truth_param(self) -> jax.Array:
        """Parameter of the generation-0 truth samples: theta*."""
        return self.theta_star

    def _law(self, cov, design) -> GaussianLaw | DesignLaw:
        dtype = _float()
        if design is not None:
            X = jnp.asarray(design, dtype)
            gram = X.T @ X
            return DesignLaw(X, gram, psd_factor(gram))
        cov = cov if cov is not None else self.cov
        if cov is None:
            return GaussianLaw(None)
        return GaussianLaw(psd_factor(jnp.asarray(cov, dtype)))

    def data_laws(self, eco: Ecosystem) -> list:
        """Covariate law of every data node (S entries)."""
        return [self._law(c, x) for c, x in zip(eco.data_attr("cov"), eco.data_attr("design"))]

    def data_params(self, eco: Ecosystem) -> jax.Array:
        """``(S, d)`` true parameter of every data node."""
        rows = [self.theta_star if t is None else jnp.asarray(t, _float()) for t in eco.data_attr("theta")]
        return jnp.stack(rows) if rows else jnp.zeros((0, self.dim), _float())

    def synthetic_laws(self, eco: Ecosystem) -> list:
        """Covariate law of every model's synthetic data (K entries)."""
        return [self._law(c, x) for c, x in zip(eco.model_attr("cov"), eco.model_attr("design"))]

    def truth_law(self) -> GaussianLaw:
        """Covariate law of the generation-0 truth samples (``n0``)."""
        return self._law(None, None)

    # --------------------------------------------------------- estimator
    def draw(self, key: jax.Array, law, theta: jax.Array, n: int, engine: str) -> RegressionStats:
        """Statistics of ``n`` samples ``y = x' theta + noise * eps`` from ``law``.

        ``engine="suffstat"`` draws them exactly without materializing data
        (Bartlett factor; falls back to materializing when ``n < d``, which
        costs no more); ``"samples"`` materializes ``X`` and ``y``.
        """
        d, dtype = self.dim, theta.dtype
        noise = jnp.asarray(self.noise, dtype)
        if engine == "suffstat" and n >= d and not isinstance(law, DesignLaw):
            # The hot path: one RNG call per data set (no key split).
            A, z = bartlett_factor_and_normal(key, n, d, dtype)
            if law.factor is None:
                # X'y = G theta + noise A z = A (A' theta + noise z).
                return RegressionStats(A.gram(), A.matvec(A.rmatvec(theta) + noise * z))
            LA = law.factor @ A.dense()
            return RegressionStats(LA @ LA.T, LA @ (LA.T @ theta + noise * z))
        k_x, k_e = jax.random.split(key)
        if isinstance(law, DesignLaw):
            if engine == "samples":
                eps = jax.random.normal(k_e, (law.design.shape[0],), dtype)
                return RegressionStats(law.gram, law.gram @ theta + noise * (law.design.T @ eps))
            z = jax.random.normal(k_e, (d,), dtype)
            return RegressionStats(law.gram, law.gram @ theta + noise * (law.gram_factor @ z))
        X = jax.random.normal(k_x, (n, d), dtype)
        if law.factor is not None:
            X = X @ law.factor.T
        y = X @ theta + noise * jax.random.normal(k_e, (n,), dtype)
        return RegressionStats(X.T @ X, X.T @ y)

    def sample(self, key: jax.Array, law, theta: jax.Array, n: int) -> RegressionData:
        """``n`` materialized samples ``(x, y)`` from ``law`` and ``theta``.

        Uses the keys of ``draw(..., engine="samples")`` the same way, so
        ``statistics(sample(k, ...)) == draw(k, ..., "samples")``.
        """
        dtype = theta.dtype
        noise = jnp.asarray(self.noise, dtype)
        k_x, k_e = jax.random.split(key)
        if isinstance(law, DesignLaw):
            X = law.design.astype(dtype)
            return RegressionData(X, X @ theta + noise * jax.random.normal(k_e, (X.shape[0],), dtype))
        X = jax.random.normal(k_x, (n, self.dim), dtype)
        if law.factor is not None:
            X = X @ law.factor.T
        return RegressionData(X, X @ theta + noise * jax.random.normal(k_e, (n,), dtype))

    def statistics(self, data: RegressionData, weights: Optional[jax.Array] = None) -> RegressionStats:
        """``(X' diag(w) X, X' diag(w) y)``; ``weights (n,)`` default 1 (zero drops a sample)."""
        X, y = data
        Xw = X if weights is None else X * weights.astype(X.dtype)[:, None]
        return RegressionStats(Xw.T @ X, Xw.T @ y)

    def fit(self, stats: RegressionStats) -> jax.Array:
        """Solve ``(P + ridge I) theta = b`` for combined statistics (Cholesky or min-norm).

        Linear in ``b``: a ``(d, n)`` moment gives the ``(d, n)`` solutions column by column.
        """
        P = stats.gram + jnp.asarray(self.ridge, stats.gram.dtype) * jnp.eye(self.dim, dtype=stats.gram.dtype)
        if self.solver == "min_norm":
            return jnp.linalg.pinv(P, hermitian=True) @ stats.moment
        return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(P, lower=True), stats.moment)

    def risk(self, theta: jax.Array) -> jax.Array:
        """Excess risk ``(theta - theta*)' cov (theta - theta*)`` (cov = I by default)."""
        e = theta - self.theta_star.astype(theta.dtype)
        if self.cov is None:
            return e @ e
        return e @ (jnp.asarray(self.cov, theta.dtype) @ e)

    def vector(self, theta: jax.Array) -> jax.Array:
        """The parameter as a flat vector (for dispersion and cosine metrics)."""
        return theta

    def risk_on(self, theta: jax.Array, data_theta: jax.Array, law) -> jax.Array:
        """Error on another source's task: ``(theta - theta_s)' Sigma_s (theta - theta_s)``.

        ``Sigma_s`` is the law's covariance (``F F'`` of a Gaussian law, the
        task's default where the node sets none) or ``X'X / n`` of a fixed
        design (THEORY section 2, Vu et al.'s cross-task transfer).
        """
        e = theta - data_theta.astype(theta.dtype)
        if isinstance(law, DesignLaw):
            return (e @ (law.gram.astype(theta.dtype) @ e)) / law.design.shape[0]
        if law.factor is None:
            return e @ e
        u = law.factor.astype(theta.dtype).T @ e
        return u @ u


    # ------------------------------------------------------------ theory
    def asymptotic_covariance(self) -> jax.Array:
        """Per-sample ``H^-1 J H^-1 = sigma^2 Sigma^-1`` (d, d) (THEORY section 6)."""
        dtype = jnp.result_type(self.noise, float)
        sig2 = jnp.asarray(self.noise, dtype) ** 2
        if self.cov is None:
            return sig2 * jnp.eye(self.dim, dtype=dtype)
        return sig2 * jnp.linalg.inv(jnp.asarray(self.cov, dtype))

    def risk_metric(self) -> jax.Array:
        """``A = Sigma`` (d, d): the excess risk is ``e' Sigma e`` exactly."""
        dtype = jnp.result_type(self.noise, float)
        return jnp.eye(self.dim, dtype=dtype) if self.cov is None else jnp.asarray(self.cov, dtype)

    def exact_theory(self):
        """Linear regression's exact theory: the module :mod:`collapse_jax.tasks.linear_regression.exact`."""
        return _exact


def _float():
    return jnp.result_type(float)


def _in_edges(eco: Ecosystem) -> tuple:
    """Per model, its real sources and its model sources (lists), in one pass over the edges."""
    real_of = [[] for _ in range(eco.K)]
    syn_of = [[] for _ in range(eco.K)]
    for k, s in eco.real_edges:
        real_of[k].append(s)
    for k, j in eco.model_edges:
        syn_of[k].append(j)
    return real_of, syn_of


def _check_fixed_rank(eco: Ecosystem, d: int) -> None:
    """Cholesky needs a non-singular Gram: check models whose every source has a fixed design.

    Sample counts cannot see a low-rank fixed design (ranks ignore the edge weights).
    """
    data_design, model_design = eco.data_attr("design"), eco.model_attr("design")
    if all(x is None for x in data_design) and all(x is None for x in model_design):
        return
    real_of, syn_of = _in_edges(eco)
    for k, name in enumerate(eco.models):
        real = [data_design[s] for s in real_of[k]]
        syn = [model_design[j] for j in syn_of[k]]
        for when, designs in (("generation 0", real), ("generations >= 1", real + syn)):
            if designs and all(x is not None for x in designs) and _concrete(designs[0]):
                rank = np.linalg.matrix_rank(np.concatenate([np.asarray(x, float) for x in designs]))
                if rank < d:
                    raise ValueError(
                        f"model node {name!r}: at {when} its fixed designs have rank {rank} < dim = {d}; "
                        "use LinearRegression(solver='min_norm') or ridge > 0"
                    )


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)
