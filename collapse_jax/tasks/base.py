"""The estimator protocol: what a model is, how it is fit, what it publishes, what its error is.

Every tool of the library (the engine, the theory, the diagnostics, the
gradients, the sweep and the command line) talks to an estimator only through
the methods below, so a new estimator is one module under ``tasks/``.

A task is a frozen dataclass registered as a pytree by :func:`task_dataclass`:
its numbers (``noise``, ``theta``,
``cov``, ``probs``...) are leaves, so new values do not recompile, and its
shape-fixing choices (``dim``, a solver, an estimator variant) are static.

Vocabulary:

* a **param** is a fitted (or true) model: a pytree, e.g. ``theta (d,)`` for a
  regression, ``(mean (d,), cov (d, d))`` for a Gaussian, ``probs (V,)``;
* a **law** is the covariate law of a source (a data node, a model's synthetic
  output, or the generation-0 truth): a pytree the task builds from node
  attributes; laws of one tree structure are stacked and ``vmap``-ed over;
* **data** is a materialized data set: a pytree whose leaves have a leading
  sample axis ``(n, ...)``;
* **stats** are the statistics ``fit`` reads. For an *additive* task
  (``additive = True``) they add across data sets and the engine forms, per
  model, ``sum_e c_e * stats_e`` with ``c_e = w_e / n_e`` (``loss_scale="mean"``)
  or ``w_e`` (``"sum"``), then calls ``fit``. A task without finite sufficient
  statistics (``additive = False``, the GLMs) is fit from weighted samples by
  :meth:`Task.fit_samples`.

Required methods: :meth:`check`, :meth:`truth_param`, :meth:`data_params`,
:meth:`data_laws`, :meth:`synthetic_laws`, :meth:`truth_law`, :meth:`sample`,
:meth:`statistics` (additive tasks) or :meth:`fit_samples` (others), :meth:`fit`
(additive tasks), :meth:`risk`. Optional capabilities, each with a clear
answer where absent: :meth:`draw` with an exact sufficient-statistic path
(``supports_suffstat``), :meth:`metrics`, :meth:`asymptotic_covariance`
(drives the task-generic large-sample theory), :meth:`exact_theory`.

Every method except :meth:`check` must be traceable (``jnp`` on the task's
leaves, no Python branching on their values): the engine and the theories
call them inside ``jax.jit``, ``vmap`` and ``jax.eval_shape``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Task", "CovariateFree", "Unsupported", "COLLAPSE_DEFINITIONS"]

# Schaeffer et al. (arXiv 2503.03150) list many meanings of "collapse"; every
# metric names the one it measures, with one of these keys.
COLLAPSE_DEFINITIONS = {
    "risk_diverges": "the error grows without bound",
    "risk_grows": "the error grows (maybe to a finite level) compared with one fit on real data",
    "variance_shrinks": "the fitted distribution loses its spread",
    "tails_vanish": "rare outcomes disappear from the fitted distribution",
    "diversity_falls": "the fitted distribution concentrates (entropy, Gini-Simpson index)",
    "models_homogenize": "the models become alike",
}



def task_dataclass(data_fields: Sequence[str], meta_fields: Sequence[str] = ()) -> Callable[[type], type]:
    """Class decorator: a frozen dataclass registered as a pytree whose structure names its class.

    ``data_fields`` are leaves (new values do not recompile); ``meta_fields``
    are static (hashable; a new value retraces). Use it for every task,
    including a subclass that only overrides methods: register it again.

    Why not ``jax.tree_util.register_dataclass``: with it (JAX 0.10) the tree
    structures of two classes with equal fields compare equal whatever the
    class, so a jit cache can serve one task the other's compiled function
    (seen with the two GLMs, whose fields are the same). Here the class is
    part of the structure.

    Example:
        >>> @task_dataclass(data_fields=["mu"], meta_fields=["dim"])
        ... class Toy:
        ...     dim: int
        ...     mu: float = 0.0
        >>> jax.tree_util.tree_leaves(Toy(dim=2, mu=1.5))
        [1.5]
    """
    data_fields, meta_fields = tuple(data_fields), tuple(meta_fields)

    def register(cls: type) -> type:
        cls = dataclasses.dataclass(frozen=True)(cls)

        def flatten_with_keys(task):
            return ([(jax.tree_util.GetAttrKey(f), getattr(task, f)) for f in data_fields],
                    tuple(getattr(task, f) for f in meta_fields))

        def flatten(task):
            return [getattr(task, f) for f in data_fields], tuple(getattr(task, f) for f in meta_fields)

        def unflatten(meta, children):
            return cls(**dict(zip(data_fields, children)), **dict(zip(meta_fields, meta)))

        jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
        return cls

    return register


class Unsupported(Exception):
    """Raised by an optional capability that a task does not have.

    Tools catch it and report "n/a" (diagnose) or raise a ``ValueError`` that
    names the task and the missing capability (moments, long_run_error).
    """


class Task(abc.ABC):
    """Abstract base of every estimator. Subclasses are frozen, registered dataclasses.

    Class attributes:
        additive: statistics add across data sets (``fit(sum_e c_e stats_e)``);
            False: the task is fit from weighted samples (``fit_samples``).
        supports_suffstat: ``draw(..., engine="suffstat")`` draws the statistics
            exactly without materializing data.
        data_attributes / model_attributes: the node attributes this task reads
            from data / model nodes (beyond the graph's own ``n``, ``fresh``,
            ``n_synthetic``, ``n0``); :meth:`check` refuses others by name.
        metric_definitions: ``{metric name: (collapse definition key, one-line meaning)}``
            for every entry of :meth:`metrics`; keys of :data:`COLLAPSE_DEFINITIONS`.
        risk_definition: which collapse definition the error measures and how.
    """

    additive: ClassVar[bool] = True
    supports_suffstat: ClassVar[bool] = False
    data_attributes: ClassVar[tuple] = ()
    model_attributes: ClassVar[tuple] = ()
    metric_definitions: ClassVar[Mapping[str, tuple]] = {}
    risk_definition: ClassVar[str] = "excess risk of the fitted model"

    # ------------------------------------------------------------- checks
    @abc.abstractmethod
    def check(self, eco) -> None:
        """Raise ``ValueError`` naming the node, attribute or field if (eco, task) is ill-posed."""

    # ------------------------------------------------ truth and laws
    @abc.abstractmethod
    def truth_param(self) -> Any:
        """The true model (param pytree): what generation-0 truth samples come from."""

    @abc.abstractmethod
    def data_params(self, eco) -> Any:
        """The generating param of every data node, stacked on a leading ``(S,)`` axis."""

    @abc.abstractmethod
    def data_laws(self, eco) -> list:
        """The covariate law of every data node (``S`` entries)."""

    @abc.abstractmethod
    def synthetic_laws(self, eco) -> list:
        """The covariate law of every model's synthetic output (``K`` entries)."""

    @abc.abstractmethod
    def truth_law(self) -> Any:
        """The covariate law of the generation-0 truth samples."""

    # ------------------------------------------------------ sampling
    @abc.abstractmethod
    def sample(self, key: jax.Array, law, param, n: int) -> Any:
        """Materialize ``n`` samples from ``param`` under ``law``: leaves ``(n, ...)``."""

    def statistics(self, data, weights: Optional[jax.Array] = None) -> Any:
        """Additive statistics of a data set, each sample weighted by ``weights (n,)`` (default 1)."""
        raise Unsupported(f"{type(self).__name__} has no additive statistics")

    def draw(self, key: jax.Array, law, param, n: int, engine: str) -> Any:
        """Statistics of ``n`` fresh samples (``engine="samples"``: materialized, then summarized).

        Tasks with ``supports_suffstat`` override this with an exact path for
        ``engine="suffstat"`` that never materializes the data. For a task that
        is not additive it returns the data itself.
        """
        data = self.sample(key, law, param, n)
        return self.statistics(data) if self.additive else data

    def combine(self, stats, coef: jax.Array) -> Any:
        """``sum_e coef[e] * stats[e]`` over a leading edge axis (additive tasks)."""
        return jax.tree_util.tree_map(lambda x: jnp.tensordot(coef.astype(x.dtype), x, axes=1), stats)

    # ---------------------------------------------------------- fit
    def fit(self, stats) -> Any:
        """The estimate from combined statistics (additive tasks)."""
        raise Unsupported(f"{type(self).__name__} is fit from samples (fit_samples)")

    def fit_samples(self, data, weights: jax.Array) -> Any:
        """The estimate from a weighted sample ``data`` (leaves ``(N, ...)``), ``weights (N,)``.

        A zero weight removes a sample (used for padding). The default, for
        additive tasks, is ``fit(statistics(data, weights))``.

        How the engine calls it (``additive = False``): ``vmap``-ed over the
        K models, each with its in-edges' samples gathered into one padded
        set; a sample's weight is its edge's coefficient (``w_e / n_e`` under
        ``loss_scale="mean"``, ``w_e`` under "sum"). Padding rows, and under
        "accumulate" the not-yet-drawn generations of the sample buffer
        (zeros), carry weight 0, so an implementation must ignore zero-weight
        rows whatever they hold (mask with ``jnp.where``, never divide by a
        per-row weight).
        """
        return self.fit(self.statistics(data, weights))

    # ------------------------------------------------------ outputs
    @abc.abstractmethod
    def risk(self, param) -> jax.Array:
        """The error of one model, a scalar (``inf`` on overflow, never NaN)."""

    def vector(self, param) -> jax.Array:
        """The param as one flat vector (homogenization metrics: dispersion, cosine)."""
        return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(param)])

    def metrics(self, param) -> Mapping[str, jax.Array]:
        """Task-specific scalar metrics of one model (see ``metric_definitions``)."""
        return {}

    def risk_on(self, param, data_param, law) -> jax.Array:
        """Error of ``param`` on another source's task (its param and covariate law).

        Regression tasks implement it (THEORY section 2: cross-task error).
        """
        raise Unsupported(f"{type(self).__name__} has no cross-task error")

    # ------------------------------------------ optional theory
    def asymptotic_covariance(self) -> jax.Array:
        """Per-sample asymptotic covariance ``H^-1 J H^-1`` at the truth, ``(p, p)``.

        In the parametrization of :meth:`vector` (``p`` its length), as is
        :meth:`risk_metric`: the theory measures biases and means in it.

        With :meth:`risk_metric` it drives the task-generic large-sample theory
        (THEORY section 6): ``E risk_k ~ tr(A C) * v_k``, ``v`` from
        ``V_t = W V_{t-1} W' + diag(kappa)``.
        """
        raise Unsupported(f"{type(self).__name__} has no asymptotic covariance")

    def risk_metric(self) -> jax.Array:
        """``(p, p)`` matrix A with ``risk(theta* + e) ~ e' A e`` to second order."""
        raise Unsupported(f"{type(self).__name__} has no local quadratic risk")

    def exact_theory(self):
        """The task's exact finite-sample theory module, or ``None``."""
        return None


class CovariateFree:
    """Mixin for distribution-fitting tasks whose samples have no covariates: every law is ``()``."""

    def data_laws(self, eco) -> list:
        """No covariates: ``()`` per data node."""
        return [()] * eco.S

    def synthetic_laws(self, eco) -> list:
        """No covariates: ``()`` per model."""
        return [()] * eco.K

    def truth_law(self):
        """No covariates: ``()``."""
        return ()


def concrete(x) -> bool:
    """True when ``x`` is not a tracer (so it can be checked on the host)."""
    return not isinstance(x, jax.core.Tracer)


def as_float(x, dtype=None) -> np.ndarray:
    """``x`` as a float array (host), for checks."""
    return np.asarray(x, dtype=float if dtype is None else dtype)
