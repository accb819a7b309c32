"""Simulation results and their per-model summary.

What each number measures (Schaeffer et al. warn that "collapse" has many
definitions, so every metric says which):

* ``error[r, t, k]``: excess risk of model k at generation t in replicate r,
  ``(theta - theta*)' cov (theta - theta*)`` for linear regression.
* ``metrics["dispersion"][r, t]``: mean over models of the squared distance of
  a model's parameter to the average parameter (homogenization: it shrinks as
  models become alike).
* ``metrics["cosine"][r, t]``: mean pairwise cosine similarity of the models'
  parameters (1 for a single model).
* ``metrics[name][r, t, k]`` for every entry of ``task.metrics`` (the task's
  ``metric_definitions`` say which definition of collapse each measures).
* ``metrics["task_error"][r, t, k, s]`` (regression tasks): the error of model
  k on data node s's task, ``(theta_k - theta_s)' Sigma_s (theta_k - theta_s)``
  with ``Sigma_s`` the node's covariate covariance or ``X_s'X_s / n_s`` for a
  fixed design (cross-task transfer; "risk grows" on another's task).
* ``summary()``'s ``grows``: an *empirical* verdict from the replicates, the
  mean error's slope over the last half of the generations being both
  significant (z > 4 across replicates) and material (the error rises by more
  than 5% of its level over that half). ``cj.diagnose`` gives the theoretical
  verdict.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["SimulationResult", "Summary"]

Z_GROWTH = 4.0
REL_GROWTH = 0.05


@dataclasses.dataclass(frozen=True)
class SimulationResult:
    """Output of :func:`collapse_jax.simulate`.

    Attributes:
        error: ``(R, T + 1, K)`` excess risk per replicate, generation, model.
        metrics: further per-generation metrics: ``dispersion`` and ``cosine``
            ``(R, T + 1)``; task metrics ``(R, T + 1, K)``; ``task_error``
            ``(R, T + 1, K, S)``.
        models: model names (the K axis).
        config: the options of the run.
        diagnostics: None, or (``simulate(..., diagnostics=True)``) the
            spectral diagnostics of :func:`collapse_jax.diagnostics.spectral`:
            ``rho_W``, ``slem_W`` and, for linear regression, ``rho_Q`` and
            (isotropic designs) the large-sample ``stationary_error`` ``(K,)``.
        params: None, or (``simulate(..., return_params=True)``) the fitted
            parameters: the task's param pytree with leading ``(R, T + 1, K)``
            axes (linear regression: ``theta (R, T + 1, K, d)``).
    """

    error: Any
    metrics: Dict[str, Any]
    models: tuple
    config: Dict[str, Any]
    diagnostics: Optional[Dict[str, Any]] = None
    params: Any = None

    @property
    def mean(self) -> np.ndarray:
        """``(T + 1, K)`` replicate mean of the error."""
        return np.asarray(self.error, float).mean(0)

    @property
    def sem(self) -> np.ndarray:
        """``(T + 1, K)`` standard error of the replicate mean."""
        e = np.asarray(self.error, float)
        if e.shape[0] < 2:
            return np.full(e.shape[1:], np.nan)
        return e.std(0, ddof=1) / np.sqrt(e.shape[0])

    def summary(self) -> "Summary":
        """Per model: final mean and s.e., median, last-half slope, growth verdict."""
        # Overflowed (inf) errors make spreads undefined; they are reported, not warned about.
        with np.errstate(invalid="ignore", over="ignore"):
            return Summary.from_error(np.asarray(self.error, float), self.models)

    def save(self, path: str) -> None:
        """Write ``error``, the metrics and the config to ``path`` (.npz, atomically)."""
        arrays = {"error": np.asarray(self.error)}
        arrays.update({f"metric_{k}": np.asarray(v) for k, v in self.metrics.items()})
        arrays.update({f"diagnostic_{k}": np.asarray(v) for k, v in (self.diagnostics or {}).items()})
        arrays["models"] = np.asarray([str(m) for m in self.models])
        arrays["config"] = np.asarray(json.dumps(self.config))
        tmp = path + ".tmp.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class Summary:
    """Per-model summary table; ``str(summary)`` prints it, ``rows`` holds dicts."""

    rows: tuple

    @classmethod
    def from_error(cls, error: np.ndarray, models) -> "Summary":
        R, T1, K = error.shape
        T = T1 - 1
        start = T // 2
        t = np.arange(start, T1, dtype=float)
        rows = []
        for k, name in enumerate(models):
            e = error[:, :, k]
            final = e[:, -1]
            finite = np.isfinite(e)
            overflow = None
            if not finite.all():
                overflow = int(np.argmax((~finite).any(0)))
            window = e[:, start:]
            if len(t) >= 2 and np.isfinite(window).all():
                tc = t - t.mean()
                slopes = (window - window.mean(1, keepdims=True)) @ tc / (tc @ tc)
                slope = float(slopes.mean())
                slope_se = float(slopes.std(ddof=1) / np.sqrt(R)) if R > 1 else float("nan")
                level = float(window[:, 0].mean())
                z = slope / slope_se if slope_se > 0 else (np.inf if slope > 0 else 0.0)
                grows = bool(z > Z_GROWTH and slope * (t[-1] - t[0]) > REL_GROWTH * max(level, 1e-300))
            elif overflow is not None:
                slope, slope_se, grows = float("inf"), float("nan"), True
            else:
                slope, slope_se, grows = float("nan"), float("nan"), False
            rows.append(dict(
                model=name,
                final_mean=float(final.mean()),
                final_se=float(final.std(ddof=1) / np.sqrt(R)) if R > 1 else float("nan"),
                final_median=float(np.median(final)),
                slope=slope,
                slope_se=slope_se,
                grows=grows,
                overflow_generation=overflow,
            ))
        return cls(tuple(rows))

    def __getitem__(self, model):
        for r in self.rows:
            if r["model"] == model:
                return r
        raise KeyError(model)

    def to_dict(self) -> list:
        return [dict(r, model=str(r["model"])) for r in self.rows]

    def __str__(self) -> str:
        head = f"{'model':>10} {'final mean':>12} {'s.e.':>10} {'median':>10} {'slope/gen':>11} {'s.e.':>9}  grows"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            verdict = "yes" if r["grows"] else "no"
            if r["overflow_generation"] is not None:
                verdict += f" (overflow at t={r['overflow_generation']})"
            lines.append(
                f"{str(r['model']):>10} {r['final_mean']:>12.4g} {r['final_se']:>10.3g} "
                f"{r['final_median']:>10.4g} {r['slope']:>11.4g} {r['slope_se']:>9.2g}  {verdict}"
            )
        return "\n".join(lines)

    __repr__ = __str__
