"""Linear regression: the task (:mod:`.task`) and its exact fixed-design theory (:mod:`.fixed_design`)."""

from collapse_jax.tasks.linear_regression.task import (
    SOLVERS, DesignLaw, GaussianLaw, LinearRegression, RegressionStats,
)

__all__ = ["LinearRegression", "RegressionStats", "GaussianLaw", "DesignLaw", "SOLVERS"]
