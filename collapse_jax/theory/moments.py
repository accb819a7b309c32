"""Expected trajectories of an ecosystem: the :func:`moments` dispatcher (THEORY.md sections 4-6).

:func:`moments` answers with the best theory a task has, through the estimator
protocol (:mod:`collapse_jax.tasks.base`):

* **exact** (``exact=True``, or ``None`` where the task has it): the task's
  exact theory, ``task.exact_theory()`` (linear regression:
  :mod:`collapse_jax.tasks.linear_regression.exact`, finite-sample second
  moments for Gaussian designs, and the fixed-design theory of THEORY 5 for
  any ecosystem with a fixed design);
* **large-sample** (``exact=False``, or ``None`` without an exact theory): the
  task-generic recursion of :mod:`collapse_jax.theory.large_sample`, driven by
  ``task.asymptotic_covariance()`` and ``task.risk_metric()``.

An *exact theory* is a module (or any object) with some of these functions;
the tools use the ones it has and say "n/a" for the others:

* ``check_large_sample(eco, task, where)``: raise ``ValueError`` where the
  generic K x K theory does not apply (refines the generic check);
* ``has_fixed_design(eco) -> bool`` and ``moments_fixed(eco, task, T, **options)``;
* ``exact_moments(eco, task, T, *, regime, pool, loss_scale, mc_samples, mc_seed)
  -> (mean (T + 1, K, q), second (T + 1, K, K), stationary (K, K) or None)``;
* ``stationary(eco, task, loss_scale, pool, **options) -> (K, K)`` (differentiable);
* ``mean_operator(eco, task, loss_scale) -> (K q, K q)`` (``rho(Q)``);
* ``second_moment_operator(eco, task, loss_scale, pool, mc_samples, mc_seed)
  -> (L (K^2, K^2) or None, coefficients, why)`` (``rho(L)``).

Import note: ``collapse_jax.moments`` as an *attribute* of the package is the
function :func:`moments`; import this module with
``from collapse_jax.theory import moments``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.ecosystem import Ecosystem
from collapse_jax.options import LOSS_SCALES, POOLS
from collapse_jax.options import check_choice as _option
from collapse_jax.theory import large_sample as ls
from collapse_jax.theory.large_sample import (  # re-exported: the generic theory's main pieces
    effective_weights, large_sample, noise_covariance, noise_diagonal,
)

__all__ = [
    "Moments",
    "moments",
    "stationary",
    "exact_theory",
    "to_float64",
    "effective_weights",
    "noise_diagonal",
    "noise_covariance",
    "large_sample",
]


def exact_theory(task):
    """The task's exact theory (``task.exact_theory()``), or None."""
    fn = getattr(task, "exact_theory", None)
    return None if fn is None else fn()


def _is_float(x) -> bool:
    try:
        return jnp.issubdtype(jnp.result_type(x), jnp.floating)
    except TypeError:
        return False


def to_float64(*trees):
    """Copies of pytrees (an ecosystem, a task) whose floating leaves are float64.

    Call inside ``jax.enable_x64(True)``. ``None`` stays ``None``.
    """
    # device_put, not jnp.asarray: no eager conversion to compile per leaf shape
    f64 = lambda x: jax.device_put(np.asarray(x, np.float64)) if _is_float(x) else x  # noqa: E731
    return tuple(None if t is None else jax.tree_util.tree_map(f64, t) for t in trees)


# ------------------------------------------------------------ stationary
def stationary(
    eco: Ecosystem, task, exact: bool = False, loss_scale: str = "mean", pool: str = "independent",
    **exact_options,
) -> jax.Array:
    """``(K, K)`` stationary second moments ``V_inf`` (replace regime); ``inf`` where unbounded.

    ``exact=False``: the task-generic large-sample theory
    (:func:`collapse_jax.theory.large_sample.stationary`). ``exact=True``: the
    task's exact theory (``task.exact_theory().stationary``; linear
    regression: the fixed point of the exact finite-sample map, options
    ``mc_samples``, ``mc_seed``). Differentiable in the weights and alpha.

    Example:
        >>> import collapse_jax as cj
        >>> V = stationary(cj.graphs.chain(3, n=100, m=100), cj.LinearRegression(dim=10))
        >>> V.shape
        (3, 3)

    ``loss_scale`` and ``pool`` are validated by the theory that answers
    (:func:`collapse_jax.theory.large_sample.stationary`, or the exact
    theory's ``stationary``), not here a second time.
    """
    if exact:
        theory = exact_theory(task)
        if theory is None or not hasattr(theory, "stationary"):
            raise ValueError(f"stationary(exact=True): {type(task).__name__} has no exact theory; use exact=False")
        return theory.stationary(eco, task, loss_scale, pool, **exact_options)
    if exact_options:
        raise ValueError(f"stationary: unexpected options {sorted(exact_options)} for exact=False")
    return ls.stationary(eco, task, loss_scale, pool)


# ------------------------------------------------------------ entry point
class Moments(NamedTuple):
    """Expected trajectories from :func:`moments` (NumPy float64).

    Attributes:
        error: ``(T + 1, K)`` expected error per generation and model
            (the diagonal of ``second``).
        mean: ``(T + 1, K, q)`` ``E[vector(theta_{t,k}) - vector(theta*)]`` (the bias).
        second: ``(T + 1, K, K)`` ``V_t[k, l] = E <e_{t,k}, e_{t,l}>_A``.
        stationary: ``(K, K)`` ``V_inf``, the stationary second moments of the
            replace regime (``inf`` for collapsing models); None under
            accumulate. Also available as :attr:`V_inf`.
        models: model names (the K axis).
        exact: whether the finite-sample (True) or large-sample (False) theory was used.
    """

    error: np.ndarray
    mean: np.ndarray
    second: np.ndarray
    stationary: Optional[np.ndarray]
    models: tuple
    exact: bool

    @property
    def V_inf(self) -> Optional[np.ndarray]:
        """THEORY's name for :attr:`stationary`."""
        return self.stationary


def moments(
    eco: Ecosystem, task, generations: int, exact: Optional[bool] = None, *, regime: str = "replace",
    pool: str = "independent", loss_scale: str = "mean", mc_samples: int = 4096, mc_seed: int = 0,
    **options,
) -> Moments:
    """Expected error trajectories of an ecosystem (THEORY sections 4-6), for any task.

    ``exact=False``: the large-sample recursion
    (:func:`collapse_jax.theory.large_sample.large_sample`: ``V_t = W V_{t-1} W' + D``
    scaled by ``tr(A C)``, plus fixed-node and bias terms), for both regimes;
    it needs ``task.asymptotic_covariance()`` and ``task.risk_metric()``.
    ``exact=True``: the task's exact theory (``task.exact_theory().exact_moments``;
    linear regression: finite-sample exact for Gaussian designs with fresh
    data nodes, one theta and ridge 0, the Gram Monte Carlo seeded by
    ``mc_seed``). ``exact=None`` (default): exact where the task has an exact
    theory, large-sample otherwise.

    Ecosystems with a fixed design on any node go to the task's
    ``moments_fixed(eco, task, generations, **options)`` (linear regression:
    THEORY 5), with the keyword options given here forwarded, ``exact`` excepted.

    Precision: computed in float64 whatever ``jax_enable_x64`` says (inside
    ``jax.enable_x64(True)``); the results are NumPy float64 arrays.

    Args:
        eco: the ecosystem.
        task: any task (:mod:`collapse_jax.tasks.base`).
        generations: T.
        exact: finite-sample (True), large-sample (False), or the best available (None).
        regime, pool, loss_scale: as in :func:`collapse_jax.simulate`.
        mc_samples, mc_seed: exact theory's Monte Carlo draws of Gram matrices.

    Returns:
        A :class:`Moments`.

    Raises:
        ValueError: bad options, or a theory that does not apply (named).

    Example:
        >>> import collapse_jax as cj
        >>> mom = cj.moments(cj.graphs.chain(3, n=100, m=100), cj.LinearRegression(dim=10), 20, exact=False)
        >>> [round(float(x), 6) for x in mom.error[-1]]   # (i + 1) * 10 / 100
        [0.1, 0.2, 0.3]
    """
    theory = exact_theory(task)
    if theory is not None and getattr(theory, "has_fixed_design", lambda e: False)(eco):
        forwarded = dict(regime=regime, pool=pool, loss_scale=loss_scale, **options)
        defaults = dict(regime="replace", pool="independent", loss_scale="mean")
        forwarded = {k: v for k, v in forwarded.items() if defaults.get(k, object()) != v}
        return theory.moments_fixed(eco, task, generations, **forwarded)
    if options:
        raise ValueError(f"moments: unexpected options {sorted(options)}")
    _option("regime", regime, ("replace", "accumulate"))
    _option("pool", pool, POOLS)
    _option("loss_scale", loss_scale, LOSS_SCALES)
    if isinstance(generations, bool) or not isinstance(generations, (int, np.integer)) or generations < 0:
        raise ValueError(f"generations must be a non-negative integer, got {generations!r}")
    if exact is None:
        exact = theory is not None and hasattr(theory, "exact_moments")
    if exact and (theory is None or not hasattr(theory, "exact_moments")):
        raise ValueError(f"moments(exact=True): {type(task).__name__} has no exact theory; use exact=False")
    task.check(eco)
    with jax.enable_x64(True):
        eco, task = to_float64(eco, task)
        V_inf = None
        if exact:
            mean, second, V_inf = theory.exact_moments(
                eco, task, int(generations), regime=regime, pool=pool, loss_scale=loss_scale,
                mc_samples=mc_samples, mc_seed=mc_seed)
        else:
            ls.check_large_sample(eco, task, "moments")
            mean, second = large_sample(eco, task, int(generations), regime=regime, pool=pool,
                                        loss_scale=loss_scale)
            if regime == "replace":
                V_inf = ls.stationary(eco, task, loss_scale, pool)
        second = np.asarray(second, np.float64)
        return Moments(
            error=np.diagonal(second, axis1=1, axis2=2).copy(),
            mean=np.asarray(mean, np.float64),
            second=second,
            stationary=None if V_inf is None else np.asarray(V_inf, np.float64),
            models=eco.models,
            exact=bool(exact),
        )
