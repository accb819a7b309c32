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
* ``summary()``'s ``verdict`` (collapse as the *risk*, THEORY and
  ``tasks.base.COLLAPSE_DEFINITIONS``): an *empirical* verdict from the
  replicates over the last half of the generations. ``"grows"``
  (``risk_grows``): the mean error's slope is both significant (z > 4 across
  replicates) and material (the error rises by more than 5% of its level over
  that half). ``"diverges"`` (``risk_diverges``): it grows and the mean error
  rises by a factor of 10 or more over that half, or it overflows (``inf``).
  ``"bounded"`` otherwise. ``grows`` is True for both. The slope and its
  z-score are computed on errors rescaled by their largest value, so huge
  finite errors (float64) never overflow the statistics. ``cj.diagnose``
  gives the theoretical verdict.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional

import jax
import numpy as np

__all__ = ["SimulationResult", "Summary"]

Z_GROWTH = 4.0
REL_GROWTH = 0.05
DIVERGE_FACTOR = 10.0


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

    def summary(self, quantity: str = "excess risk") -> "Summary":
        """Per model: final mean and s.e., median, last-half slope, verdict (bounded, grows, diverges).

        ``quantity`` names what ``error`` measures, for the printed table.
        """
        # Overflowed (inf) errors make spreads undefined; they are reported, not warned about.
        with np.errstate(invalid="ignore", over="ignore"):
            return Summary.from_error(np.asarray(self.error, float), self.models, quantity)

    def to_xarray(self):
        """The results as a labelled ``xarray.Dataset``.

        ``error`` has dims ``(replicate, generation, model)`` with the model
        names as coordinates. Each metric gets ``(replicate, generation)``,
        then ``model`` for an axis of length K right after them, then
        ``<metric>_dim<i>`` for any further axis. Fitted parameters (when the
        run kept them: ``params``) become ``param_<name>`` variables with the
        same rule. Diagnostics: scalars become attributes, per-model arrays
        variables ``diagnostic_<name>`` on ``model``. The run's options
        (``config``: generations, regime, pool, loss_scale, engine,
        replicates, ...) are attributes (booleans as 0/1 and containers as
        JSON, so that ``to_netcdf`` can write them). Needs ``xarray``.

        Example:
            >>> ds = res.to_xarray()  # doctest: +SKIP
            >>> ds["error"].sel(model="m0").mean("replicate")  # doctest: +SKIP
        """
        try:
            import xarray as xr
        except ModuleNotFoundError:
            raise ModuleNotFoundError("SimulationResult.to_xarray needs xarray: pip install xarray") from None
        error = np.asarray(self.error)
        R, T1, K = error.shape
        models = [str(m) for m in self.models]

        def dims(name, shape):
            if tuple(shape[:2]) != (R, T1):
                raise ValueError(f"{name}: expected leading axes (replicate, generation) = {(R, T1)}, got {shape}")
            out = ["replicate", "generation"]
            for i, n in enumerate(shape[2:], start=2):
                out.append("model" if i == 2 and n == K else f"{name}_dim{i}")
            return out

        data = {"error": (("replicate", "generation", "model"), error)}
        for name, value in self.metrics.items():
            v = np.asarray(value)
            data[name] = (dims(name, v.shape), v)
        params = getattr(self, "params", None)
        if params is not None:
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
                name = "param_" + "_".join(str(getattr(p, "name", getattr(p, "key", getattr(p, "idx", p))))
                                           for p in path) if path else "param"
                v = np.asarray(leaf)
                data[name] = (dims(name, v.shape), v)
        attrs = {}
        for name, value in (self.diagnostics or {}).items():
            v = np.asarray(value)
            if v.ndim == 0:
                attrs[f"diagnostic_{name}"] = int(v) if v.dtype == bool else v.item()
            elif v.shape == (K,):
                data[f"diagnostic_{name}"] = (("model",), v)
            else:
                data[f"diagnostic_{name}"] = ([f"diagnostic_{name}_dim{i}" for i in range(v.ndim)], v)
        for name, value in self.config.items():  # netCDF-friendly: booleans as 0/1, containers as JSON
            if isinstance(value, (bool, np.bool_)):
                value = int(value)
            attrs[name] = value if isinstance(value, (str, int, float, np.number)) else json.dumps(value, default=str)
        return xr.Dataset(data, coords={"replicate": np.arange(R), "generation": np.arange(T1), "model": models},
                          attrs=attrs)

    def to_dataframe(self):
        """A tidy ``pandas.DataFrame``: one row per (replicate, generation, model).

        Columns: ``replicate``, ``generation``, ``model``, ``error`` and every
        metric whose dims are among those three (a per-generation metric such
        as ``cosine`` repeats along ``model``). Metrics and parameters with
        further axes are left out of the table (use :meth:`to_xarray`); their
        names are listed in ``df.attrs["not_in_table"]``. ``df.attrs`` also
        holds the run's options. Needs ``pandas`` and ``xarray``.
        """
        ds = self.to_xarray()
        base = {"replicate", "generation", "model"}
        keep = [v for v in ds.data_vars if set(ds[v].dims) <= base and {"replicate", "generation"} <= set(ds[v].dims)]
        df = ds[keep].to_dataframe().reset_index()
        df = df[["replicate", "generation", "model"] + keep]
        df.attrs.update(ds.attrs)
        df.attrs["not_in_table"] = [v for v in ds.data_vars if v not in keep]
        return df

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

    quantity: str = "excess risk"

    @classmethod
    def from_error(cls, error: np.ndarray, models, quantity: str = "excess risk") -> "Summary":
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
            factor = float("nan")
            if len(t) >= 2 and np.isfinite(window).all():
                # Rescale by the largest error: the statistics of huge (float64) errors cannot overflow.
                scale = float(np.abs(window).max())
                ws = window / scale if scale > 0 else window
                tc = t - t.mean()
                slopes = (ws - ws.mean(1, keepdims=True)) @ tc / (tc @ tc)
                mean_s = float(slopes.mean())
                se_s = float(slopes.std(ddof=1) / np.sqrt(R)) if R > 1 else float("nan")
                level = float(ws[:, 0].mean())
                z = mean_s / se_s if se_s > 0 else (np.inf if mean_s > 0 else 0.0)
                grows = bool(z > Z_GROWTH and mean_s * (t[-1] - t[0]) > REL_GROWTH * max(level, 1e-300))
                last = float(ws[:, -1].mean())
                factor = last / level if level > 0 else (float("inf") if last > 0 else float("nan"))
                with np.errstate(over="ignore"):
                    slope, slope_se = mean_s * (scale or 1.0), se_s * (scale or 1.0)
                verdict = ("diverges" if grows and factor >= DIVERGE_FACTOR else "grows") if grows else "bounded"
            elif overflow is not None:
                slope, slope_se, grows, verdict = float("inf"), float("nan"), True, "diverges"
            else:
                slope, slope_se, grows, verdict = float("nan"), float("nan"), False, "bounded"
            final_mean, final_se = _mean_se(final)
            rows.append(dict(
                model=name,
                final_mean=final_mean,
                final_se=final_se,
                final_median=float(np.median(final)),
                slope=slope,
                slope_se=slope_se,
                grows=grows,
                verdict=verdict,
                factor=factor,
                overflow_generation=overflow,
            ))
        return cls(tuple(rows), quantity)

    def __getitem__(self, model):
        for r in self.rows:
            if r["model"] == model:
                return r
        raise KeyError(model)

    def to_dict(self) -> list:
        """The rows as JSON-ready dicts (model names as strings, NaN as None; inf stays inf)."""
        return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in dict(r, model=str(r["model"])).items()}
                for r in self.rows]

    def __str__(self) -> str:
        intro = (f"{self.quantity} per model at the last generation; verdict over the last half of the "
                 f"generations: bounded, grows (risk grows) or diverges (risk rises >= {DIVERGE_FACTOR:g}x or overflows)")
        head = (f"{'model':>10} {'final mean':>12} {'s.e.':>10} {'median':>10} {'slope/gen':>11} {'s.e.':>9}"
                f"  verdict")
        lines = [intro, head, "-" * len(head)]
        for r in self.rows:
            verdict = r.get("verdict", "grows" if r["grows"] else "bounded")
            if verdict == "diverges" and np.isfinite(r.get("factor", np.nan)):
                verdict += f" (x{r['factor']:.3g} over the last half)"
            if r["overflow_generation"] is not None:
                verdict += f" (overflow at t={r['overflow_generation']})"
            lines.append(
                f"{str(r['model']):>10} {r['final_mean']:>12.4g} {r['final_se']:>10.3g} "
                f"{r['final_median']:>10.4g} {r['slope']:>11.4g} {r['slope_se']:>9.2g}  {verdict}"
            )
        return "\n".join(lines)

    __repr__ = __str__


def _mean_se(x: np.ndarray) -> tuple:
    """Mean and standard error of ``x``, rescaled so that huge finite values do not overflow."""
    n = x.shape[0]
    scale = float(np.abs(x).max()) if np.isfinite(x).all() else 0.0
    if not scale:
        scale = 1.0
    xs = x / scale
    with np.errstate(over="ignore"):
        mean = float(xs.mean()) * scale
        se = float(xs.std(ddof=1) / np.sqrt(n)) * scale if n > 1 else float("nan")
    return mean, se
