"""Estimators ("tasks"): one module per estimator.

The protocol every tool talks to is :class:`collapse_jax.tasks.base.Task`
(its module docstring lists the required and optional methods). A new
estimator subclasses ``Task`` and is registered with :func:`task_dataclass`
(a frozen dataclass whose tree structure names its class).
"""

from collapse_jax.tasks.base import Task, Unsupported, task_dataclass
from collapse_jax.tasks.linear_regression import LinearRegression
from collapse_jax.tasks.gaussian import GaussianFit, GaussianParams
from collapse_jax.tasks.categorical import Categorical
from collapse_jax.tasks.glm import LogisticRegression, PoissonRegression

__all__ = ["Task", "Unsupported", "task_dataclass", "LinearRegression", "GaussianFit", "GaussianParams", "Categorical", "LogisticRegression", "PoissonRegression"]
