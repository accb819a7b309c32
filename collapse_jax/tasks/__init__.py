"""Estimators ("tasks"): one module per estimator.

A task is a pytree (frozen dataclass) with these methods, which the engines
call; any object that provides them plugs into :func:`collapse_jax.simulate`:

* ``check(eco)``: raise ``ValueError`` for an ill-posed (ecosystem, task) pair.
* ``data_laws(eco)`` / ``synthetic_laws(eco)`` / ``truth_law()``: the sampling
  law of every data node, of every model's synthetic data, and of the
  generation-0 truth samples (pytrees; laws of one structure are stacked).
* ``data_params(eco)`` / ``truth_param()``: the generating parameters of the
  data nodes (stacked on a leading S axis) and of the truth.
* ``draw(key, law, param, n, engine)``: additive statistics of ``n`` samples.
* ``fit(stats)``: the estimate from weighted, combined statistics.
* ``risk(param)``: the error reported per model; ``vector(param)``: the
  parameter as a flat vector for the homogenization metrics.
* ``supports_suffstat``: whether ``draw`` has an exact sufficient-statistic path.
"""

from collapse_jax.tasks.linear_regression import LinearRegression
from collapse_jax.tasks.gaussian import GaussianFit, GaussianParams
from collapse_jax.tasks.categorical import Categorical
from collapse_jax.tasks.glm import LogisticRegression, PoissonRegression

__all__ = ["LinearRegression", "GaussianFit", "GaussianParams", "Categorical", "LogisticRegression", "PoissonRegression"]
