"""Categorical (token frequency) model: learn ``p`` over V symbols, publish multinomial draws.

THEORY.md sections 2, 3 and 6. A model is ``probs (V,)``; a data set is
summarized by its counts ``(V,)`` (additive); synthetic data are ``n``
categorical draws from the producer's fitted ``probs``. Once a symbol's
fitted probability is 0 it is never drawn again, so it comes back only
through real data: the "tails vanish" collapse of Shumailov et al. There are
no covariates, so every "law" is the empty tuple ``()``; a data node's
distribution is its own ``probs`` attribute (default the task's).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from collapse_jax.tasks import _nodes
from collapse_jax.tasks import categorical_exact
from collapse_jax.tasks.base import CovariateFree, Task, task_dataclass

__all__ = ["Categorical", "multinomial"]

_SUM_TOL = 1e-6


def multinomial(key: jax.Array, n, probs: jax.Array, dtype=None) -> jax.Array:
    """One exact multinomial count vector of ``n`` draws from ``probs (V,)``: ``(V,)`` floats.

    The conditional-binomial method (``jax.random.multinomial``):
    ``c_i ~ Binomial(n - c_1 - ... - c_{i-1}, p_i / (p_i + ... + p_V))``, one
    exact binomial per symbol (inversion for small means, BTRS rejection
    otherwise) in a ``lax.scan``; jit- and vmap-friendly, ``O(V)`` work
    whatever ``n``. The ratios renormalize ``probs``, so a fitted ``probs``
    that sums to 1 only up to rounding is fine, and the last symbol with
    positive probability takes the remainder, so the counts sum to ``n``
    exactly. Negative entries (rounding) are treated as 0.

    Example:
        >>> c = multinomial(jax.random.key(0), 100, jnp.array([0.5, 0.3, 0.2]))
        >>> float(c.sum())
        100.0
    """
    dtype = dtype or jnp.asarray(probs).dtype
    p = jnp.clip(jnp.asarray(probs, dtype), 0.0)
    return jax.random.multinomial(key, jnp.asarray(n, dtype), p, dtype=dtype)


@task_dataclass(data_fields=["probs"], meta_fields=[])
class Categorical(CovariateFree, Task):
    """Categorical distribution over ``V = len(probs)`` symbols.

    Args:
        probs: true probabilities p* (V,), non-negative, summing to 1. Its
            length fixes V (a shape, so a new V retraces).

    Statistics: counts (V,), weighted; :meth:`fit` normalizes the combined
    counts (under ``loss_scale="mean"`` that is ``sum_s w_s c_s / n_s``).
    Error: ``sum_i (p_hat_i - p*_i)^2`` (Brier excess risk; finite when a
    symbol is lost).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> task = Categorical(jnp.array([0.5, 0.3, 0.2]))
        >>> counts = task.draw(jax.random.key(0), (), task.truth_param(), 1000, "suffstat")
        >>> p = task.fit(counts)
        >>> p.shape, bool(task.risk(p) < 0.01)
        ((3,), True)
    """

    probs: jax.Array

    additive = True
    supports_suffstat = True
    data_attributes = ("probs",)
    model_attributes = ()
    metric_definitions = {
        "support": ("tails_vanish", "number of symbols with p_hat > 0"),
        "tail_mass": ("tails_vanish", "the truth's mass on the symbols with p_hat = 0"),
        "entropy": ("diversity_falls", "entropy of p_hat in nats (0 log 0 = 0)"),
    }
    risk_definition = "risk_grows: sum_i (p_hat_i - p*_i)^2 (Brier excess risk)"

    @property
    def V(self) -> int:
        """Number of symbols."""
        return int(np.shape(self.probs)[0])

    # ------------------------------------------------------------ checks
    def check(self, eco) -> None:
        """Raise ``ValueError`` naming the node and attribute if (eco, task) is ill-posed."""
        if np.ndim(self.probs) != 1 or np.shape(self.probs)[0] < 1:
            raise ValueError(f"task: probs must be a non-empty (V,) vector, got shape {np.shape(self.probs)}")
        _check_probs(self.probs, self.V, "task")
        _nodes.refuse_unknown(eco, "Categorical", {"data": self.data_attributes, "model": self.model_attributes})
        for s, p in enumerate(_nodes.node_attr(eco, "data", "probs")):
            if p is not None:
                _check_probs(p, self.V, _nodes.node_label(eco, "data", s))

    # ---------------------------------------------------- truth and laws
    @property
    def probs_star(self) -> jax.Array:
        """True probabilities p* (V,)."""
        return jnp.asarray(self.probs, _float())

    def truth_param(self) -> jax.Array:
        """p* (V,)."""
        return self.probs_star

    def data_params(self, eco) -> jax.Array:
        """``(S, V)`` probabilities of every data node."""
        rows = [self.probs_star if p is None else jnp.asarray(p, _float()) for p in _nodes.node_attr(eco, "data", "probs")]
        return jnp.stack(rows) if rows else jnp.zeros((0, self.V), _float())

    # ---------------------------------------------------------- sampling
    def sample(self, key: jax.Array, law, probs: jax.Array, n: int) -> jax.Array:
        """``n`` iid symbols from ``probs``: int32 indices ``(n,)`` (Gumbel-max; exact)."""
        p = jnp.clip(probs, 0.0)
        return jax.random.categorical(key, jnp.log(p), shape=(n,)).astype(jnp.int32)

    def statistics(self, data: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
        """Weighted counts ``(V,)`` of symbol indices ``data (n,)``."""
        dtype = _float() if weights is None else jnp.asarray(weights).dtype
        w = jnp.ones(data.shape, dtype) if weights is None else jnp.asarray(weights, dtype)
        return jnp.zeros(self.V, dtype).at[data].add(w)

    def draw(self, key: jax.Array, law, probs: jax.Array, n: int, engine: str) -> jax.Array:
        """Counts of ``n`` draws: one exact multinomial (``"suffstat"``) or materialized symbols."""
        if engine == "suffstat":
            return multinomial(key, n, probs, probs.dtype)
        return self.statistics(self.sample(key, law, probs, n), jnp.ones((n,), probs.dtype))

    # --------------------------------------------------------------- fit
    def fit(self, counts: jax.Array) -> jax.Array:
        """``counts / sum(counts)`` (V,)."""
        return counts / jnp.sum(counts)

    # ----------------------------------------------------------- outputs
    def risk(self, probs: jax.Array) -> jax.Array:
        """``sum_i (p_hat_i - p*_i)^2``; ``inf`` if ``probs`` is not finite."""
        e = probs - self.probs_star.astype(probs.dtype)
        r = e @ e
        return jnp.where(jnp.isnan(r), jnp.inf, r)

    def metrics(self, probs: jax.Array) -> dict:
        """``support``, ``tail_mass``, ``entropy`` (see ``metric_definitions``)."""
        lost = probs <= 0
        safe = jnp.where(lost, 1.0, probs)
        return {
            "support": jnp.sum(~lost).astype(probs.dtype),
            "tail_mass": jnp.sum(jnp.where(lost, self.probs_star.astype(probs.dtype), 0.0)),
            "entropy": -jnp.sum(jnp.where(lost, 0.0, probs * jnp.log(safe))),
        }

    # ----------------------------------------------------------- theory
    @jax.jit  # compiled once per task structure and shapes (eager primitives are one XLA compile each)
    def asymptotic_covariance(self) -> jax.Array:
        """``diag(p*) - p* p*'`` (V, V): the covariance of one sample's one-hot vector."""
        p = self.probs_star
        return jnp.diag(p) - jnp.outer(p, p)

    def risk_metric(self) -> jax.Array:
        """The identity (V, V): the risk is exactly ``e' e``."""
        return jnp.eye(self.V, dtype=_float())

    def exact_theory(self):
        """:mod:`collapse_jax.tasks.categorical_exact`: exact second moments (replace, fresh truth-only sources)."""
        return categorical_exact


def _check_probs(p, V: int, where: str) -> None:
    if np.shape(p) != (V,):
        raise ValueError(f"{where}: probs must have shape ({V},), got {np.shape(p)}")
    a = _nodes.check_finite(p, f"{where}: probs")
    if a is None:
        return
    if np.any(a < 0):
        raise ValueError(f"{where}: probs has negative entries (smallest {a.min():.3g})")
    if abs(a.sum() - 1.0) > _SUM_TOL * max(1, V):
        raise ValueError(f"{where}: probs must sum to 1, got {a.sum():.9g}")


def _float():
    return jnp.result_type(float)
