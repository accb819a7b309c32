"""collapse_jax: a JAX-accelerated, differentiable simulator of model collapse.

Many generative models train on mixtures of real data and each other's
synthetic outputs over a directed interaction graph. See README.md, and
THEORY.md for the model.

Example:
    >>> import jax, collapse_jax as cj
    >>> eco = cj.graphs.ring(6, alpha=0.5, real=(0,), n=100, m=100)
    >>> res = cj.simulate(eco, cj.LinearRegression(dim=10), jax.random.key(0),
    ...                   generations=50, replicates=200)
    >>> print(res.summary())  # doctest: +SKIP
"""

from collapse_jax import graphs
from collapse_jax.analyze import analyze
from collapse_jax.diagnostics import Diagnosis, ModelDiagnosis, diagnose
from collapse_jax.ecosystem import Ecosystem
from collapse_jax.objectives import long_run_error
from collapse_jax.theory.moments import Moments, moments
from collapse_jax.optimize import optimize
from collapse_jax.tasks.linear_regression.fixed_design import FixedMoments, moments_fixed, relative_efficiency
from collapse_jax.engine import SimulationResult, Summary, simulate, simulate_replicate
from collapse_jax.study import SweepResult, load_sweep, sweep
from collapse_jax.tasks import Categorical, GaussianFit, LinearRegression, LogisticRegression, PoissonRegression

__version__ = "0.1.0"

__all__ = [
    "Categorical",
    "GaussianFit",
    "LogisticRegression",
    "PoissonRegression",
    "Diagnosis",
    "Ecosystem",
    "FixedMoments",
    "LinearRegression",
    "ModelDiagnosis",
    "Moments",
    "SimulationResult",
    "Summary",
    "SweepResult",
    "analyze",
    "diagnose",
    "graphs",
    "load_sweep",
    "long_run_error",
    "moments",
    "moments_fixed",
    "optimize",
    "relative_efficiency",
    "simulate",
    "simulate_replicate",
    "sweep",
]
