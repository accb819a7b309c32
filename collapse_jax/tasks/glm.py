"""Generalized linear models fit by damped Newton (IRLS): logistic and Poisson regression.

THEORY.md sections 2 and 6. A model is ``theta (d,)``; covariates are
``x ~ N(0, cov)`` (a node's ``cov`` attribute, default the task's); labels are
``y | x ~ Bernoulli(sigmoid(x' theta))`` or ``Poisson(exp(x' theta))``. There
are no finite sufficient statistics (``additive = False``): a model is fit
from its weighted samples by :meth:`fit_samples`, minimizing

    sum_i w_i (b(x_i' theta) - y_i x_i' theta) + (ridge / 2) |theta|^2

(``b`` = softplus or exp) with a fixed number of Newton steps, each damped by
a vectorized line search, so the fit is jit-, vmap- and grad-friendly.

A fit that has not converged after ``newton_steps`` steps (separable labels,
whose maximum likelihood estimate is at infinity; a singular Hessian; an
overflow) returns ``theta`` filled with NaN: its risk is ``inf`` and the
``failed`` metric is 1. Synthetic labels of a failed model are NaN, so its
consumers fail too (a diverged model poisons what trains on it).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.tasks.samplers import psd_factor  # the one import of the samplers
from collapse_jax.tasks import _nodes
from collapse_jax.tasks.base import Task, task_dataclass

__all__ = ["LogisticRegression", "PoissonRegression", "GLMData", "CovariateLaw", "NEWTON_STEPS", "LINE_SEARCH",
           "QUADRATURE_POINTS", "POISSON_MAX_RATE"]

# Newton from theta = 0 converges quadratically once near the optimum. Measured
# (float64, 20 data sets each of d in {1, 2, 8}, n in {50, 2000}, |theta*| in
# {0, 1.5}, ridge in {0, 0.1}, mean-loss weights): every non-separable fit
# meets the convergence test of `newton` within 8 steps, logistic and Poisson
# alike; tests/test_glm.py checks the result against scipy.optimize. 20 leaves
# room for synthetic data of drifted models.
NEWTON_STEPS = 20
# Step sizes tried per Newton step: 1, 1/2, ..., 2^-(LINE_SEARCH - 1); the largest with Armijo decrease.
LINE_SEARCH = 12
# Points of the trapezoidal rule for the logistic Fisher information along x' theta.
QUADRATURE_POINTS = 2001
# Poisson rates above this (x' theta > 16.6) are treated as an overflow: the
# label is NaN. float32 counts are exact up to 2^24.
POISSON_MAX_RATE = 2.0 ** 24


class GLMData(NamedTuple):
    """A materialized regression data set."""

    x: jax.Array  # (n, d) covariates
    y: jax.Array  # (n,)   labels (0/1 or counts, as floats; NaN from a failed model)


class CovariateLaw(NamedTuple):
    """Fresh Gaussian covariates ``x = factor @ z``; ``factor=None`` is the identity."""

    factor: Optional[jax.Array]  # (d, d) or None


@dataclasses.dataclass(frozen=True)
class _GLM(Task):
    """Shared fields and machinery; subclasses give the cumulant ``b``, its derivatives and the labels.

    Fields (dataclass fields of both subclasses): see :class:`LogisticRegression`.
    """

    dim: int
    theta: Optional[jax.Array] = None
    cov: Optional[jax.Array] = None
    ridge: float = 0.0
    newton_steps: int = NEWTON_STEPS

    additive = False
    supports_suffstat = False
    data_attributes = ("theta", "cov")
    model_attributes = ("cov",)
    metric_definitions = {
        "failed": ("risk_diverges", "1 when the fit did not converge (separation, overflow): its risk is inf"),
    }
    risk_definition = "risk_diverges: (theta_hat - theta*)' Sigma (theta_hat - theta*)"

    # subclass hooks: cumulant b(eta), mean b'(eta), variance b''(eta), label sampler
    @staticmethod
    def _b(eta):
        raise NotImplementedError

    @staticmethod
    def _mean(eta):
        raise NotImplementedError

    @staticmethod
    def _var(eta):
        raise NotImplementedError

    def _db(self, eta, d):
        """``b(eta + d) - b(eta)`` per sample (a subclass may give a cancellation-free form)."""
        return self._b(eta + d) - self._b(eta)

    def _labels(self, key, eta):
        raise NotImplementedError

    # ------------------------------------------------------------ checks
    def check(self, eco) -> None:
        """Raise ``ValueError`` naming the node and attribute if (eco, task) is ill-posed."""
        d = self.dim
        _nodes.check_dim(d)
        name = type(self).__name__
        if _concrete(self.ridge) and not (np.isfinite(self.ridge) and float(self.ridge) >= 0):
            raise ValueError(f"ridge must be finite and >= 0, got {self.ridge}")
        steps = self.newton_steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"newton_steps must be a positive integer, got {steps!r}")
        _nodes.check_vector(self.theta, d, "task", "theta")
        _nodes.check_cov(self.cov, d, "task")
        _nodes.refuse_unknown(eco, name, {"data": self.data_attributes, "model": self.model_attributes})
        for s, (th, cov) in enumerate(zip(_nodes.node_attr(eco, "data", "theta"), _nodes.node_attr(eco, "data", "cov"))):
            where = _nodes.node_label(eco, "data", s)
            _nodes.check_vector(th, d, where, "theta")
            _nodes.check_cov(cov, d, where)
        for k, cov in enumerate(_nodes.node_attr(eco, "model", "cov")):
            _nodes.check_cov(cov, d, _nodes.node_label(eco, "model", k))
        if _concrete(self.ridge) and float(self.ridge) > 0:
            return
        # Without ridge the Hessian X' diag(w v) X is singular with fewer than d samples.
        has_real = eco.has_real()
        for k in range(eco.K):
            real = [eco.n[s] for kk, s in eco.real_edges if kk == k]
            syn = [eco.n_synthetic[j] for kk, j in eco.model_edges if kk == k]
            for when, count in (("generation 0", sum(real) if has_real[k] else eco.n0[k]),
                                ("generations >= 1", sum(real) + sum(syn))):
                if count < d:
                    raise ValueError(f"{_nodes.node_label(eco, 'model', k)}: fits on {count} samples at {when} "
                                     f"< dim = {d}; set ridge > 0 or raise the sample sizes")

    # ---------------------------------------------------- truth and laws
    @property
    def theta_star(self) -> jax.Array:
        """True parameter theta* (d,); default zeros."""
        return jnp.zeros(self.dim, _float()) if self.theta is None else jnp.asarray(self.theta, _float())

    @property
    def cov_star(self) -> jax.Array:
        """Covariate covariance of the truth and of the risk (d, d); default the identity."""
        return jnp.eye(self.dim, dtype=_float()) if self.cov is None else jnp.asarray(self.cov, _float())

    def truth_param(self) -> jax.Array:
        """theta*."""
        return self.theta_star

    def _law(self, cov) -> CovariateLaw:
        cov = self.cov if cov is None else cov
        return CovariateLaw(None if cov is None else psd_factor(jnp.asarray(cov, _float())))

    def data_params(self, eco) -> jax.Array:
        """``(S, d)`` true parameter of every data node."""
        rows = [self.theta_star if t is None else jnp.asarray(t, _float()) for t in _nodes.node_attr(eco, "data", "theta")]
        return jnp.stack(rows) if rows else jnp.zeros((0, self.dim), _float())

    def data_laws(self, eco) -> list:
        """Covariate law of every data node."""
        return [self._law(c) for c in _nodes.node_attr(eco, "data", "cov")]

    def synthetic_laws(self, eco) -> list:
        """Covariate law of every model's synthetic data."""
        return [self._law(c) for c in _nodes.node_attr(eco, "model", "cov")]

    def truth_law(self) -> CovariateLaw:
        """Covariate law of the generation-0 truth samples."""
        return self._law(None)

    # ---------------------------------------------------------- sampling
    def sample(self, key: jax.Array, law: CovariateLaw, theta: jax.Array, n: int) -> GLMData:
        """``n`` samples: ``x = factor z`` (n, d), ``y`` (n,) from the model at ``theta``."""
        k_x, k_y = jax.random.split(key)
        x = jax.random.normal(k_x, (n, self.dim), theta.dtype)
        if law.factor is not None:
            x = x @ law.factor.T.astype(theta.dtype)
        return GLMData(x, self._labels(k_y, x @ theta))

    # --------------------------------------------------------------- fit
    def fit_samples(self, data: GLMData, weights: jax.Array) -> jax.Array:
        """Weighted (ridge-penalized) maximum likelihood: ``theta (d,)``, NaN if not converged."""
        theta, converged = self.newton(data, weights)
        return jnp.where(converged, theta, jnp.nan)

    def newton(self, data: GLMData, weights: jax.Array):
        """``newton_steps`` damped Newton steps from 0; returns ``(theta, converged)``.

        Each step solves ``H delta = g`` (Cholesky of ``X' diag(w b'') X + ridge I``)
        takes the largest ``s`` in ``1, 1/2, ..., 2^-(LINE_SEARCH-1)`` with the
        Armijo decrease ``loss(theta - s delta) - loss(theta) <= -1e-4 s g'delta``
        (up to rounding), else stays (so an overflowing candidate is never taken). ``converged``: the
        Newton step at the final iterate is finite and at most
        ``sqrt(eps) (1 + |theta|)``; under separation full steps stay O(1)
        while ``|theta|`` grows, so it is False. Zero weights remove samples
        (their ``x`` and ``y`` are never read, so padding may hold anything).

        The line search sums the per-sample *changes* of the loss,
        ``w_i (b(eta_i + s u_i) - b(eta_i) - y_i s u_i)`` with ``u = -X delta``,
        never the difference of two totals: near the optimum the decrease
        (about ``g'delta / 2``, 1e-6 for a fit at 1e-3 from 0) is below the
        rounding of a float32 total (``eps sqrt(n)``, 1e-6 at n = 2000), and
        two totals summed in different orders (XLA reduces a ``vmap``-ed and an
        unbatched loss differently) then reject every step.
        """
        w = jnp.asarray(weights)
        dtype = w.dtype
        active = w > 0
        x = jnp.where(active[:, None], data.x.astype(dtype), 0.0)
        y = jnp.where(active, data.y.astype(dtype), 0.0)
        w = jnp.where(active, w, 0.0)
        ridge = jnp.asarray(self.ridge, dtype)
        eye = jnp.eye(self.dim, dtype=dtype)
        sizes = 0.5 ** jnp.arange(LINE_SEARCH, dtype=dtype)
        eps = np.finfo(dtype).eps

        def change(eta, u, theta, delta, s):
            """``loss(theta + s delta) - loss(theta)`` from per-sample changes (``u = X delta``); NaN -> inf."""
            value = jnp.sum(w * (self._db(eta, s * u) - y * (s * u))) + ridge * (
                s * (theta @ delta) + 0.5 * s * s * (delta @ delta))
            return jnp.where(jnp.isnan(value), jnp.inf, value)

        def direction(theta):
            eta = x @ theta
            g = x.T @ (w * (self._mean(eta) - y)) + ridge * theta
            H = (x * (w * self._var(eta))[:, None]).T @ x + ridge * eye
            return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(H, lower=True), g), g

        def step(theta, _):
            delta, g = direction(theta)
            eta, u = x @ theta, -(x @ delta)
            changes = jax.vmap(change, (None, None, None, None, 0))(eta, u, theta, -delta, sizes)
            # Armijo with a rounding slack (the per-sample b's are rounded to eps |b|):
            # near the optimum full steps must still be taken.
            slack = 8 * eps * jnp.sum(w * jnp.abs(self._b(eta)))
            ok = changes <= -1e-4 * sizes * (g @ delta) + slack
            first = jnp.argmax(ok)  # the largest acceptable step
            return jnp.where(ok[first], theta - sizes[first] * delta, theta), None

        theta, _ = jax.lax.scan(step, jnp.zeros(self.dim, dtype), None, length=self.newton_steps)
        delta, _ = direction(theta)
        tol = np.sqrt(eps)
        converged = jnp.all(jnp.isfinite(delta)) & jnp.all(jnp.isfinite(theta)) & (
            jnp.linalg.norm(delta) <= tol * (1.0 + jnp.linalg.norm(theta)))
        return theta, converged

    # ----------------------------------------------------------- outputs
    def risk(self, theta: jax.Array) -> jax.Array:
        """``(theta - theta*)' cov (theta - theta*)``; ``inf`` for a failed (non-finite) fit."""
        e = theta - self.theta_star.astype(theta.dtype)
        r = e @ (self.cov_star.astype(theta.dtype) @ e)
        return jnp.where(jnp.all(jnp.isfinite(theta)) & ~jnp.isnan(r), r, jnp.inf)

    def vector(self, theta: jax.Array) -> jax.Array:
        """theta."""
        return theta

    def metrics(self, theta: jax.Array) -> dict:
        """``failed``: 1.0 when the fit did not converge, else 0.0."""
        return {"failed": jnp.where(jnp.all(jnp.isfinite(theta)), 0.0, 1.0).astype(theta.dtype)}

    def fisher_information(self) -> jax.Array:
        """Per-sample Fisher information ``E[b''(x' theta*) x x']`` at the truth, ``(d, d)``."""
        raise NotImplementedError

    @jax.jit  # compiled once per task structure and shapes (eager primitives are one XLA compile each)
    def asymptotic_covariance(self) -> jax.Array:
        """``I(theta*)^-1`` (d, d): the per-sample covariance of the (correctly specified) MLE."""
        return jnp.linalg.inv(self.fisher_information())

    def risk_metric(self) -> jax.Array:
        """``Sigma`` (d, d): the risk is exactly ``e' Sigma e``."""
        return self.cov_star


# Both GLMs have the same fields: task_dataclass keeps their tree structures apart.
_glm_dataclass = task_dataclass(data_fields=("theta", "cov", "ridge"), meta_fields=("dim", "newton_steps"))


@_glm_dataclass
class LogisticRegression(_GLM):
    """Logistic regression ``y | x ~ Bernoulli(sigmoid(x' theta*))``, ``x ~ N(0, cov)``.

    Args:
        dim: parameter dimension d.
        theta: true parameter theta* (d,); default zeros.
        cov: covariate covariance (d, d), PSD; default the identity. The law of
            every node without a ``cov`` of its own and the metric of the risk.
        ridge: ridge penalty >= 0 (per unit of the weighted loss), which keeps
            the fit finite on separable synthetic labels.
        newton_steps: damped Newton steps per fit (static), default :data:`NEWTON_STEPS`.

    Asymptotic covariance: ``I(theta*)^-1`` with ``I = E[s (1 - s) x x']``.
    Along ``u = x' theta* = tau z``, ``z ~ N(0, 1)``, it reduces to two 1-D
    expectations: with ``a = Sigma theta* / tau`` and ``v = s'(tau z)``,
    ``I = E[v] Sigma + (E[v z^2] - E[v]) a a'`` (``I = Sigma / 4`` at
    ``theta* = 0``). They are computed by the trapezoidal rule on
    :data:`QUADRATURE_POINTS` points over ``|z| <= min(10, 40 / tau)``: for
    these analytic, fast-decaying integrands it is exponentially accurate
    (float64 rounding for any ``tau``), where Gauss-Hermite loses digits once
    ``tau`` exceeds 1 (the poles of the sigmoid at ``+-i pi / tau``).

    Example:
        >>> import jax
        >>> task = LogisticRegression(dim=2)
        >>> data = task.sample(jax.random.key(0), task.truth_law(), task.truth_param(), 500)
        >>> theta = task.fit_samples(data, jnp.full(500, 1 / 500))
        >>> theta.shape, bool(task.risk(theta) < 0.1)
        ((2,), True)
    """

    @staticmethod
    def _b(eta):
        return jax.nn.softplus(eta)

    @staticmethod
    def _mean(eta):
        return jax.nn.sigmoid(eta)

    @staticmethod
    def _var(eta):
        s = jax.nn.sigmoid(eta)
        return s * (1.0 - s)

    def _labels(self, key, eta):
        # NaN from a failed model's theta stays NaN (its consumers then fail too).
        y = jax.random.bernoulli(key, jax.nn.sigmoid(eta)).astype(eta.dtype)
        return jnp.where(jnp.isnan(eta), jnp.nan, y)

    @jax.jit  # compiled once per task structure and shapes (eager primitives are one XLA compile each)
    def fisher_information(self) -> jax.Array:
        """``E[s(x'theta*)(1 - s(x'theta*)) x x']`` by the trapezoidal rule along ``x' theta*``."""
        S, theta = self.cov_star, self.theta_star
        St = S @ theta
        tau = jnp.sqrt(jnp.maximum(theta @ St, 0.0))
        # Beyond |tau z| = 40 the sigmoid's variance is below e^-40; beyond |z| = 10, the density.
        half = jnp.minimum(10.0, 40.0 / jnp.maximum(tau, 1e-3))
        grid = jnp.linspace(-1.0, 1.0, QUADRATURE_POINTS, dtype=S.dtype)
        z = half * grid
        pw = (half * 2.0 / (QUADRATURE_POINTS - 1)) * jnp.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
        v = self._var(tau * z)
        ev, evz2 = pw @ v, pw @ (v * z * z)
        a = St / jnp.where(tau > 0, tau, 1.0)
        return ev * S + (evz2 - ev) * jnp.outer(a, a)


@_glm_dataclass
class PoissonRegression(_GLM):
    """Poisson regression ``y | x ~ Poisson(exp(x' theta*))``, ``x ~ N(0, cov)``.

    Args: as :class:`LogisticRegression`. Rates above :data:`POISSON_MAX_RATE`
    (only reached by a diverged model) give NaN labels (an overflow).

    Asymptotic covariance: ``I(theta*)^-1`` with the closed form
    ``I = E[exp(x' theta) x x'] = exp(theta' Sigma theta / 2) (Sigma + Sigma theta theta' Sigma)``
    (at ``theta* = 0``: ``Sigma``).

    Example:
        >>> import jax
        >>> task = PoissonRegression(dim=2)
        >>> data = task.sample(jax.random.key(0), task.truth_law(), task.truth_param(), 500)
        >>> theta = task.fit_samples(data, jnp.full(500, 1 / 500))
        >>> theta.shape, bool(task.risk(theta) < 0.1)
        ((2,), True)
    """

    @staticmethod
    def _b(eta):
        return jnp.exp(eta)

    @staticmethod
    def _mean(eta):
        return jnp.exp(eta)

    @staticmethod
    def _var(eta):
        return jnp.exp(eta)

    def _db(self, eta, d):
        """``exp(eta) expm1(d)``: relative accuracy for small steps."""
        return jnp.exp(eta) * jnp.expm1(d)

    def _labels(self, key, eta):
        rate = jnp.exp(eta)
        ok = rate <= POISSON_MAX_RATE  # False for NaN and inf too
        y = jax.random.poisson(key, jnp.where(ok, rate, 0.0), dtype=jnp.int32).astype(eta.dtype)
        return jnp.where(ok, y, jnp.nan)

    @jax.jit  # compiled once per task structure and shapes (eager primitives are one XLA compile each)
    def fisher_information(self) -> jax.Array:
        """``exp(theta' S theta / 2) (S + S theta theta' S)`` (closed form for Gaussian x)."""
        S, theta = self.cov_star, self.theta_star
        St = S @ theta
        return jnp.exp(0.5 * (theta @ St)) * (S + jnp.outer(St, St))


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _float():
    return jnp.result_type(float)
