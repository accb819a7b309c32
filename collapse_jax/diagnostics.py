"""Collapse diagnostics: topology and spectra of an ecosystem (THEORY.md section 4).

:func:`diagnose` answers, for one ecosystem (and optionally one task), which
models collapse and why:

* **Topology** (pure NumPy, no JAX): the support of the effective mixing
  matrix ``W`` (an edge ``k -> j`` when model k reads model j,
  ``W[k, j] > 0``). A *closed class* is a strongly connected set of models
  without real data that reads only from itself; it makes ``rho(W) = 1``.
  Model k collapses iff a closed class is reachable from k against the flow
  of data (THEORY 4, items 1-2).
* **Collapse slope** (THEORY 4.3): ``V_t[k, k] ~ slope_k * t`` with
  ``slope_k = sum_lambda |r_lambda(k)|^2 l_lambda^H D l_lambda`` over the
  eigenvalues of modulus 1 of ``W`` (right/left eigenvectors ``r``, ``l`` with
  ``l' r = 1``). For an aperiodic class this is ``h_C(k)^2 pi_C' D pi_C``;
  for a periodic class (a 2-cycle, say) it is the Cesaro average of the
  increments (``(delta_1 + delta_2) / 2`` for the 2-cycle), which the
  aperiodic formula would halve. ``D`` is the large-sample noise of
  :func:`collapse_jax.moments.noise_covariance`.
* **Stationary error** of every model that does not collapse: the models
  upstream of a bounded model are bounded too, so the bounded part obeys its
  own Lyapunov equation (large-sample, :func:`collapse_jax.moments.stationary`).
* **Mean operator** ``Q`` (Kd x Kd, blocks ``Q_kj = w_kj P_k^{-1} Sigma_j``,
  population per-sample Grams: ``Sigma`` for a Gaussian law, ``X'X / n`` for a
  fixed design; :func:`mean_operator`). ``rho(Q) >= 1`` means the expected
  error diverges even when the topology is fine (misaligned covariances).
* **Exact second-moment operator** ``L`` (finite samples,
  :func:`collapse_jax.moments.exact_coefficients`; isotropic Gaussian designs,
  fixed Gaussian data nodes approximated as fresh). ``rho(L) >= 1`` means the
  error diverges: the topological condition is necessary, not sufficient.
  When every Gram is deterministic (fixed designs only), ``L = Q (x) Q``
  and ``rho(L) = rho(Q)^2``.

The verdict (``Diagnosis.verdict``) combines them. Everything is for the
replace regime.

Example:
    >>> import collapse_jax as cj
    >>> print(cj.diagnose(cj.graphs.ring(4, real=()), cj.LinearRegression(dim=5)))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import numpy as np

from collapse_jax.graphs.topology import UNIT_TOL, Topology, collapse_slopes, topology
from collapse_jax.theory.spectral import mean_operator, radius as _radius, spectral, spectral_plan
from collapse_jax.theory.moments import (
    _check_linear_regression, _to64, check_isotropic, effective_weights,
    exact_coefficients, exact_operator, noise_covariance, stationary,
)
from collapse_jax.ecosystem import Ecosystem
from collapse_jax.options import LOSS_SCALES, POOLS
from collapse_jax.options import check_choice as _option

__all__ = [
    "Diagnosis",
    "ModelDiagnosis",
    "Topology",
    "diagnose",
    "topology",
    "collapse_slopes",
    "mean_operator",
    "spectral",
    "spectral_plan",
]



# ------------------------------------------------------------------ diagnose
@dataclasses.dataclass(frozen=True)
class ModelDiagnosis:
    """Per-model diagnosis.

    Attributes:
        name: the model node.
        collapses: topological verdict (THEORY 4.2): reads from a closed class.
        reaches: the closed classes it reads from (tuples of model names).
        slope: large-sample collapse slope of its expected error per
            generation (0 when bounded; None without an isotropic task).
        stationary_error: large-sample long-run expected error when bounded,
            ``inf`` when it collapses; None when not computable.
        diverges: whether its error grows without bound once finite-sample
            (``rho(L)``) and mean-operator (``rho(Q)``) effects are counted, using the
            operators restricted to the components it reads from; None without a task.
        reason: a short explanation.
    """

    name: Any
    collapses: bool
    reaches: tuple
    slope: Optional[float]
    stationary_error: Optional[float]
    diverges: Optional[bool]
    reason: str


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """Result of :func:`diagnose`; ``print`` it for a table.

    Attributes:
        rho_W: spectral radius of the effective mixing matrix.
        slem_W: second-largest eigenvalue modulus of ``W`` (homogenization
            rate; ``nan`` for one model).
        closed_classes: closed classes without data (tuples of model names).
        periods: period of each closed class.
        models: one :class:`ModelDiagnosis` per model (the K axis).
        rho_Q: spectral radius of the mean operator (None without a task).
        rho_L: spectral radius of the exact second-moment operator (None when
            not computable; see ``notes``).
        bounded: every model's error stays bounded (topology and, with a task,
            ``rho(Q) < 1`` and ``rho(L) < 1``).
        verdict: one line.
        notes: what was approximated or left out.
    """

    rho_W: float
    slem_W: float
    closed_classes: tuple
    periods: tuple
    models: tuple
    rho_Q: Optional[float]
    rho_L: Optional[float]
    bounded: bool
    verdict: str
    notes: tuple = ()

    def __getitem__(self, name) -> ModelDiagnosis:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def to_dict(self) -> dict:
        """A JSON-friendly dict."""
        d = dataclasses.asdict(self)
        d["models"] = [dict(dataclasses.asdict(m), name=str(m.name)) for m in self.models]
        return d

    def __str__(self) -> str:
        fmt = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731
        lines = [
            f"rho(W) = {self.rho_W:.6g}   second eigenvalue modulus = {fmt(self.slem_W)}   "
            f"rho(Q) = {fmt(self.rho_Q)}   rho(L) = {fmt(self.rho_L)}",
            "closed classes without data: "
            + (", ".join("{" + ", ".join(map(str, c)) + "}" + (f" (period {p})" if p > 1 else "")
                         for c, p in zip(self.closed_classes, self.periods)) or "none"),
            f"verdict: {self.verdict}",
        ]
        head = f"{'model':>10} {'collapses':>9} {'slope/gen':>10} {'stationary':>11} {'diverges':>8}  reason"
        lines += ["", head, "-" * len(head)]
        for m in self.models:
            div = "-" if m.diverges is None else ("yes" if m.diverges else "no")
            lines.append(
                f"{str(m.name):>10} {'yes' if m.collapses else 'no':>9} {fmt(m.slope):>10} "
                f"{fmt(m.stationary_error):>11} {div:>8}  {m.reason}"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    __repr__ = __str__


def _sub_radius(Mat: np.ndarray, idx: np.ndarray) -> float:
    return _radius(Mat[np.ix_(idx, idx)]) if len(idx) else 0.0


def diagnose(
    eco: Ecosystem, task=None, *, loss_scale: str = "mean", pool: str = "independent",
    mc_samples: int = 2048, mc_seed: int = 0,
) -> Diagnosis:
    """Topological and spectral collapse diagnosis of an ecosystem (replace regime).

    Args:
        eco: the ecosystem.
        task: optional :class:`collapse_jax.LinearRegression`; with it, the
            slopes, stationary errors, ``rho(Q)`` and ``rho(L)``.
        loss_scale, pool: as in :func:`collapse_jax.simulate` (they change the
            effective weights and the noise).
        mc_samples, mc_seed: Monte Carlo over Gram matrices for ``rho(L)``
            (:func:`collapse_jax.moments.exact_coefficients`).

    Returns:
        A :class:`Diagnosis`. Computed in float64.

    Example:
        >>> diag = cj.diagnose(cj.graphs.chain(3), cj.LinearRegression(dim=5))
        >>> diag.bounded, diag["m2"].stationary_error    # (True, 3 * 5 / 100)
    """
    _option("loss_scale", loss_scale, LOSS_SCALES)
    _option("pool", pool, POOLS)
    if not isinstance(eco, Ecosystem):
        raise ValueError(f"eco must be a collapse_jax.Ecosystem, got {type(eco).__name__}")
    notes = []
    if task is not None:
        _check_linear_regression(task, "diagnose (pass task=None for the topology only)")
    with jax.enable_x64(True):
        if task is not None:
            task.check(eco)
        eco, task = _to64(eco, task)
        R, W = (np.asarray(x, float) for x in effective_weights(eco, loss_scale))
        K = eco.K
        topo = topology(W, R.sum(1) > 0 if eco.S else np.zeros(K, bool))
        mods = np.sort(np.abs(np.linalg.eigvals(W)))[::-1]
        rho_W, slem_W = float(mods[0]), (float(mods[1]) if K > 1 else float("nan"))

        slope = stat = None
        rho_Q = rho_L = None
        div_Q = div_L = np.zeros(len(topo.components), bool)
        if task is not None:
            iso_issue = None
            try:
                check_isotropic(eco, task)
            except ValueError as e:
                iso_issue = str(e)
            if iso_issue is None:
                D = np.asarray(noise_covariance(eco, task, loss_scale, pool), float)
                slope = collapse_slopes(W, D, topo)
                stat = np.diagonal(np.asarray(stationary(eco, task, False, loss_scale, pool)))
            else:
                notes.append(f"no slopes or stationary errors: {iso_issue}")
            # Mean operator, per component (block triangular along the condensation).
            d = task.dim
            Q = np.asarray(mean_operator(eco, task, loss_scale), float)
            rho_Q = _radius(Q)
            div_Q = np.array([_sub_radius(Q, (C[:, None] * d + np.arange(d)).ravel()) >= 1 - UNIT_TOL
                              for C in topo.components])
            # Exact second-moment operator.
            L, why = _exact_operator(eco, task, loss_scale, pool, mc_samples, mc_seed)
            if L is not None:
                rho_L = _radius(L)
                div_L = np.array([_sub_radius(L, (C[:, None] * K + C[None, :]).ravel()) >= 1 - UNIT_TOL
                                  for C in topo.components])
            elif _deterministic_grams(eco):
                rho_L = rho_Q ** 2
                div_L = div_Q.copy()
                notes.append("every Gram is deterministic (fixed designs): rho(L) = rho(Q)^2")
            else:
                notes.append(f"rho(L) not computed: {why}")
            if L is not None and not all(eco.fresh):
                notes.append("rho(L) treats fixed Gaussian data nodes as fresh draws (approximation)")

    names = eco.models
    comps_names = [tuple(names[i] for i in C) for C in topo.components]
    models = []
    for k, name in enumerate(names):
        reaches = tuple(comps_names[i] for i in topo.reaches[k])
        upstream = [i for i, C in enumerate(topo.components) if topo.reach[k, C].any()]
        if topo.collapses[k]:
            reason = "reads from closed class " + ", ".join("{" + ", ".join(map(str, c)) + "}" for c in reaches)
            diverges = True if task is not None else None
        elif task is None:
            reason = "reaches real data"
            diverges = None
        else:
            bad_L = [i for i in upstream if div_L[i]]
            bad_Q = [i for i in upstream if div_Q[i]]
            diverges = bool(bad_L or bad_Q)
            if bad_Q:
                reason = "reaches real data, but rho(Q) >= 1 on {" + ", ".join(map(str, comps_names[bad_Q[0]])) + "}"
            elif bad_L:
                reason = ("reaches real data, but finite samples: rho(L) >= 1 on {"
                          + ", ".join(map(str, comps_names[bad_L[0]])) + "}")
            else:
                reason = "reaches real data"
        models.append(ModelDiagnosis(
            name=name, collapses=bool(topo.collapses[k]), reaches=reaches,
            slope=None if slope is None else float(slope[k]),
            stationary_error=None if stat is None else float(stat[k]),
            diverges=diverges, reason=reason,
        ))

    closed = tuple(comps_names[i] for i in topo.closed)
    if topo.collapses.any():
        n = int(topo.collapses.sum())
        verdict = (f"collapses: {len(closed)} closed class(es) without data, rho(W) = 1; "
                   f"{n} of {K} models read from them")
        bounded = False
    elif task is None:
        verdict = f"bounded by topology (rho(W) = {rho_W:.4g} < 1); give a task for the spectral checks"
        bounded = True
    elif rho_Q is not None and rho_Q >= 1 - UNIT_TOL:
        verdict = (f"diverges: topology is fine (rho(W) = {rho_W:.4g}) but the mean operator has "
                   f"rho(Q) = {rho_Q:.4g} >= 1 (misaligned covariances)")
        bounded = False
    elif rho_L is not None and rho_L >= 1 - UNIT_TOL:
        verdict = (f"diverges: topology is fine (rho(W) = {rho_W:.4g}) but finite samples make "
                   f"rho(L) = {rho_L:.4g} >= 1")
        bounded = False
    else:
        verdict = (f"bounded: rho(W) = {rho_W:.4g}, rho(Q) = {rho_Q:.4g}"
                   + (f", rho(L) = {rho_L:.4g}" if rho_L is not None else " (rho(L) not computed)"))
        bounded = True
    return Diagnosis(
        rho_W=rho_W, slem_W=slem_W, closed_classes=closed, periods=tuple(topo.periods),
        models=tuple(models), rho_Q=rho_Q, rho_L=rho_L, bounded=bounded, verdict=verdict,
        notes=tuple(notes),
    )


MAX_EXACT_MODELS = 40  # the K^2 x K^2 eigenproblem of rho(L) grows as K^6


def _deterministic_grams(eco: Ecosystem) -> bool:
    """Every Gram a model uses at t >= 1 is a fixed design's (so L = Q (x) Q)."""
    read = {s for _, s in eco.real_edges}
    return all(x is not None for x in eco.model_attr("design")) and all(eco.data_attr("design")[s] is not None for s in read)


def _exact_operator(eco, task, loss_scale, pool, mc_samples, mc_seed):
    """``(K^2, K^2)`` exact second-moment operator, or ``(None, why)``."""
    if eco.K > MAX_EXACT_MODELS:
        return None, f"K = {eco.K} > {MAX_EXACT_MODELS} models (the K^2 x K^2 eigenproblem is too large)"
    try:
        check_isotropic(eco, task, "rho(L)", allow_ridge=True)
        coef = exact_coefficients(eco, task, loss_scale=loss_scale, pool=pool,
                                           mc_samples=mc_samples, mc_seed=mc_seed, fixed_as_fresh=True)
    except ValueError as e:
        return None, str(e)
    return np.asarray(exact_operator(eco, coef), float), None
