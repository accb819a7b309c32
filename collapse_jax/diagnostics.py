"""Collapse diagnostics: topology and spectra of an ecosystem (THEORY.md sections 4 and 6).

:func:`diagnose` answers, for one ecosystem (and optionally one task), which
models collapse and why. Everything goes through the estimator protocol, so it
works for any task; lines a task cannot answer say "n/a".

* **Topology** (pure NumPy, no JAX): the support of the effective mixing
  matrix ``W`` (an edge ``k -> j`` when model k reads model j,
  ``W[k, j] > 0``). A *closed class* is a strongly connected set of models
  without real data that reads only from itself; it makes ``rho(W) = 1``.
  Model k collapses iff a closed class is reachable from k against the flow
  of data (THEORY 4, items 1-2).
* **Collapse slope** (THEORY 4.3, large-sample): ``V_t[k, k] ~ slope_k * t``
  with ``slope_k = sum_lambda |r_lambda(k)|^2 l_lambda^H D l_lambda`` over the
  eigenvalues of modulus 1 of ``W``; ``D`` is the large-sample noise of
  :func:`collapse_jax.theory.large_sample.noise_covariance` (scaled by
  ``tr(A C)``: the task's risk metric and asymptotic covariance).
* **Stationary error** of every model that does not collapse: large-sample
  (:func:`collapse_jax.theory.large_sample.stationary`), or with
  ``exact=True`` the task's exact value where it has one (linear regression
  with fresh data nodes: the fixed point of the exact finite-sample map).
  ``Diagnosis.stationary_kind`` says which.
* **Mean operator** ``Q`` (tasks whose exact theory has ``mean_operator``:
  linear regression). ``rho(Q) >= 1`` means the expected error diverges even
  when the topology is fine (misaligned covariances). When the large-sample
  theory applies (one covariate law, no ridge) ``Q = W (x) I`` and
  ``rho(Q) = rho(W)`` is not recomputed; otherwise ``Q`` is built per strongly
  connected component (block triangular along the condensation).
* **Exact second-moment operator** ``L`` (finite samples; only with
  ``exact=True``, tasks whose exact theory has ``second_moment_operator``).
  ``rho(L) >= 1`` means the error diverges: the topological condition is
  necessary, not sufficient. It costs a Monte Carlo over Gram matrices and a
  ``K^2 x K^2`` eigenproblem per component, so it is not computed by default.

The verdict (``Diagnosis.verdict``) combines them. Everything is for the
replace regime.

Example:
    >>> import collapse_jax as cj
    >>> print(cj.diagnose(cj.graphs.ring(4, real=()), cj.LinearRegression(dim=5)))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Optional

import jax
import numpy as np

from collapse_jax.graphs.topology import UNIT_TOL, Topology, collapse_slopes, topology
from collapse_jax.theory import large_sample as ls
from collapse_jax.theory.moments import exact_theory, to_float64
from collapse_jax.theory.spectral import mean_operator, radius as _radius, spectral, spectral_plan
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
            generation (0 when bounded; None when the task has no large-sample theory).
        stationary_error: long-run expected error when bounded (large-sample,
            or exact: see ``Diagnosis.stationary_kind``), ``inf`` when it
            collapses; None when not computable.
        diverges: whether its error grows without bound once the mean
            operator (``rho(Q)``) and, with ``exact=True``, finite samples
            (``rho(L)``) are counted, on the components it reads from; None
            without a task, or when the task offers neither operator and the
            topology does not decide.
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
        rho_Q: spectral radius of the mean operator (None: "n/a", the task has none).
        rho_L: spectral radius of the exact second-moment operator (None when
            not computed: ``exact=False``, or the task has none; see ``notes``).
        bounded: every model's error stays bounded (topology and, where
            computed, ``rho(Q) < 1`` and ``rho(L) < 1``).
        verdict: one line.
        notes: what was approximated or left out.
        slope_kind: ``"large-sample"`` or None (no slopes).
        stationary_kind: ``"exact"``, ``"large-sample"`` or None.
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
    slope_kind: Optional[str] = None
    stationary_kind: Optional[str] = None

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
        fmt = lambda x: "n/a" if x is None else f"{x:.4g}"  # noqa: E731
        lines = [
            f"rho(W) = {self.rho_W:.6g}   second eigenvalue modulus = {fmt(self.slem_W)}   "
            f"rho(Q) = {fmt(self.rho_Q)}   rho(L) = {fmt(self.rho_L)}",
            "closed classes without data: "
            + (", ".join("{" + ", ".join(map(str, c)) + "}" + (f" (period {p})" if p > 1 else "")
                         for c, p in zip(self.closed_classes, self.periods)) or "none"),
            f"verdict: {self.verdict}",
        ]
        slope_h = f"slope/gen ({self.slope_kind})" if self.slope_kind else "slope/gen"
        stat_h = f"stationary ({self.stationary_kind})" if self.stationary_kind else "stationary"
        ws, wt = max(10, len(slope_h)), max(11, len(stat_h))
        head = f"{'model':>10} {'collapses':>9} {slope_h:>{ws}} {stat_h:>{wt}} {'diverges':>8}  reason"
        lines += ["", head, "-" * len(head)]
        for m in self.models:
            div = "n/a" if m.diverges is None else ("yes" if m.diverges else "no")
            lines.append(
                f"{str(m.name):>10} {'yes' if m.collapses else 'no':>9} {fmt(m.slope):>{ws}} "
                f"{fmt(m.stationary_error):>{wt}} {div:>8}  {m.reason}"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    __repr__ = __str__


def _sub_radius(Mat: np.ndarray, idx: np.ndarray) -> float:
    return _radius(Mat[np.ix_(idx, idx)]) if len(idx) else 0.0


#: With ``progress=None``, stage lines are shown (on a terminal) from this many models on, or with ``exact=True``.
PROGRESS_MIN_K = 200


class _Progress:
    """Stage lines on stderr, ``diagnose: <stage> (<seconds since the start>)``; silent when off."""

    def __init__(self, on: bool):
        self.on, self.start = on, time.perf_counter()

    def __call__(self, stage: str) -> None:
        if self.on:
            print(f"diagnose: {stage} ({time.perf_counter() - self.start:.1f} s)", file=sys.stderr, flush=True)


def _progress_on(progress, K: int, exact: bool) -> bool:
    """``progress`` True/False as given; None: on for long work (many models or ``exact``) on a terminal."""
    if progress is not None:
        return bool(progress)
    long_work = exact or K >= PROGRESS_MIN_K
    return long_work and bool(getattr(sys.stderr, "isatty", lambda: False)())


SPARSE_EIGS_MIN = 256  # from this many models on, rho(W) and slem(W) come from ARPACK on sparse W


def _leading_moduli(W: np.ndarray) -> tuple:
    """``(rho(W), second eigenvalue modulus)``: dense for small K, ARPACK (2 eigenvalues) for large K."""
    K = len(W)
    if K >= SPARSE_EIGS_MIN:
        import scipy.sparse  # here, not at import: SciPy's sparse stack costs 0.3-0.6 s of `import collapse_jax`
        import scipy.sparse.linalg

        try:
            vals = scipy.sparse.linalg.eigs(scipy.sparse.csr_matrix(W), k=2, which="LM",
                                            return_eigenvectors=False, tol=1e-12, maxiter=20 * K)
            mods = np.sort(np.abs(vals))[::-1]
            return float(mods[0]), float(mods[1])
        except (scipy.sparse.linalg.ArpackNoConvergence, scipy.sparse.linalg.ArpackError):
            pass
    mods = np.sort(np.abs(np.linalg.eigvals(W)))[::-1]
    return float(mods[0]), (float(mods[1]) if K > 1 else float("nan"))


def _component_radii(components, block) -> np.ndarray:
    """``(C,)`` spectral radius of ``block(C)`` per component (0 for an empty block)."""
    return np.array([_radius(block(C)) for C in components]) if components else np.zeros(0)


def diagnose(
    eco: Ecosystem, task=None, *, loss_scale: str = "mean", pool: str = "independent",
    exact: bool = False, mc_samples: int = 2048, mc_seed: int = 0, progress: Optional[bool] = None,
) -> Diagnosis:
    """Topological and spectral collapse diagnosis of an ecosystem (replace regime), for any task.

    Args:
        eco: the ecosystem.
        task: optional task (:mod:`collapse_jax.tasks.base`); with it, the
            large-sample slopes and stationary errors (tasks with an
            asymptotic covariance) and ``rho(Q)`` (tasks with a mean operator).
        loss_scale, pool: as in :func:`collapse_jax.simulate` (they change the
            effective weights and the noise).
        exact: also the task's finite-sample theory where it has one (linear
            regression: ``rho(L)`` and the exact stationary errors), at the
            cost of a Monte Carlo over Gram matrices (``mc_samples`` draws,
            seed ``mc_seed``) and a ``K^2 x K^2`` eigenproblem per component.
        progress: print a line on stderr as each stage starts (what it
            computes, seconds elapsed). None (default): only for long work
            (``exact=True`` or at least ``PROGRESS_MIN_K`` = 200 models) and
            only when stderr is a terminal; True: always; False: never.

    Returns:
        A :class:`Diagnosis`. Computed in float64.

    Example:
        >>> import collapse_jax as cj
        >>> diag = cj.diagnose(cj.graphs.chain(3), cj.LinearRegression(dim=5))
        >>> diag.bounded, round(diag["m2"].stationary_error, 6)    # 3 * 5 / 100
        (True, 0.15)
    """
    _option("loss_scale", loss_scale, LOSS_SCALES)
    _option("pool", pool, POOLS)
    if not isinstance(eco, Ecosystem):
        raise ValueError(f"eco must be a collapse_jax.Ecosystem, got {type(eco).__name__}")
    if not isinstance(exact, (bool, np.bool_)):
        raise ValueError(f"exact must be True or False, got {exact!r}")
    if progress is not None and not isinstance(progress, (bool, np.bool_)):
        raise ValueError(f"progress must be None, True or False, got {progress!r}")
    if task is not None and not callable(getattr(task, "check", None)):
        raise ValueError("diagnose: task must be an estimator (e.g. collapse_jax.LinearRegression, or a "
                         f"collapse_jax.tasks.base.Task), got {type(task).__name__}; pass task=None for the topology only")
    notes = []
    slope_kind = stationary_kind = None
    with jax.enable_x64(True):
        if task is not None:
            task.check(eco)
        eco, task = to_float64(eco, task)
        R, W = (np.asarray(x, float) for x in ls.effective_weights(eco, loss_scale))
        K = eco.K
        say = _Progress(_progress_on(progress, K, bool(exact)))
        say(f"topology and the spectrum of W ({K} models)")
        topo = topology(W, R.sum(1) > 0 if eco.S else np.zeros(K, bool))
        rho_W, slem_W = _leading_moduli(W)

        slope = stat = None
        rho_Q = rho_L = None
        div_Q = div_L = None
        if task is not None:
            theory = exact_theory(task)
            why = ls.supports(eco, task)
            if why is None:
                say("large-sample noise, collapse slopes and stationary errors")
                D, V = ls.noise_and_stationary(eco, task, loss_scale, pool,
                                               bounded=tuple(np.flatnonzero(~topo.collapses)))
                D = np.asarray(D, float)
                slope = collapse_slopes(W, D, topo)
                stat = np.diagonal(np.asarray(V, float)).copy()
                slope_kind = stationary_kind = "large-sample"
            else:
                notes.append(f"no slopes or stationary errors: {why}")
            # Mean operator, per component (block triangular along the condensation).
            if theory is not None and hasattr(theory, "mean_operator"):
                if why is None:  # one covariate law, no ridge: Q = W (x) I
                    # W is substochastic: rho(W_CC) = 1 exactly on the closed classes.
                    rho_Q = rho_W
                    div_Q = np.isin(np.arange(len(topo.components)), topo.closed)
                else:
                    say("mean operator Q and its spectral radius per component")
                    Q = np.asarray(theory.mean_operator(eco, task, loss_scale), float)
                    d = Q.shape[0] // K
                    radii = _component_radii(topo.components,
                                             lambda C: Q[np.ix_(*(2 * ((C[:, None] * d + np.arange(d)).ravel(),)))])
                    rho_Q = float(radii.max()) if len(radii) else 0.0
                    div_Q = radii >= 1 - UNIT_TOL
            else:
                notes.append(f"rho(Q) n/a: {type(task).__name__} has no mean operator")
            # Exact second-moment operator (finite samples): only when asked.
            if not exact:
                if theory is not None and hasattr(theory, "second_moment_operator"):
                    notes.append("rho(L) not computed (finite-sample Monte Carlo): pass exact=True")
            elif theory is None or not hasattr(theory, "second_moment_operator"):
                notes.append(f"rho(L) n/a: {type(task).__name__} has no exact finite-sample theory")
            else:
                say(f"exact second-moment operator L: Monte Carlo over {mc_samples} Gram draws, "
                    f"then a {K * K} x {K * K} eigenproblem per component")
                L, coef, why_L = theory.second_moment_operator(eco, task, loss_scale, pool, mc_samples, mc_seed)
                if L is not None:
                    L = np.asarray(L, float)
                    radii = _component_radii(topo.components,
                                             lambda C: L[np.ix_(*(2 * ((C[:, None] * K + C[None, :]).ravel(),)))])
                    rho_L = float(radii.max()) if len(radii) else 0.0
                    div_L = radii >= 1 - UNIT_TOL
                    if not all(eco.fresh):
                        notes.append("rho(L) treats fixed Gaussian data nodes as fresh draws (approximation)")
                    try:
                        say("exact stationary errors from L")
                        stat = np.diagonal(np.asarray(theory.stationary_from_operator(eco, task, coef))).copy()
                        stationary_kind = "exact"
                    except (ValueError, AttributeError) as e:
                        notes.append(f"stationary errors are large-sample: no exact value ({e})")
                elif getattr(theory, "deterministic_grams", lambda e: False)(eco) and rho_Q is not None:
                    rho_L = rho_Q ** 2
                    div_L = div_Q.copy()
                    notes.append("every Gram is deterministic (fixed designs): rho(L) = rho(Q)^2")
                else:
                    notes.append(f"rho(L) not computed: {why_L}")

    names = eco.models
    comps_names = [tuple(names[i] for i in C) for C in topo.components]
    models = []
    for k, name in enumerate(names):
        reaches = tuple(comps_names[i] for i in topo.reaches[k])
        upstream = [i for i, C in enumerate(topo.components) if topo.reach[k, C].any()]
        if topo.collapses[k]:
            reason = "reads from closed class " + ", ".join("{" + ", ".join(map(str, c)) + "}" for c in reaches)
            diverges = True if task is not None else None
            if div_L is not None and not any(div_L[i] for i in upstream):
                # the exact second moments settle although the model lost its real data: its
                # error is bounded (a categorical model fixates on a few symbols, say)
                diverges = False
                reason += " (error bounded: rho(L) < 1 there)"
        elif task is None:
            reason = "reaches real data"
            diverges = None
        else:
            bad_L = [i for i in upstream if div_L is not None and div_L[i]]
            bad_Q = [i for i in upstream if div_Q is not None and div_Q[i]]
            diverges = bool(bad_L or bad_Q) if (div_Q is not None or div_L is not None) else None
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

    say("done")
    fmt = lambda x: "n/a" if x is None else f"{x:.4g}"  # noqa: E731
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
        verdict = (f"bounded: rho(W) = {rho_W:.4g}, rho(Q) = {fmt(rho_Q)}"
                   + (f", rho(L) = {rho_L:.4g}" if rho_L is not None else " (rho(L) not computed)"))
        bounded = True
    return Diagnosis(
        rho_W=rho_W, slem_W=slem_W, closed_classes=closed, periods=tuple(topo.periods),
        models=tuple(models), rho_Q=rho_Q, rho_L=rho_L, bounded=bounded, verdict=verdict,
        notes=tuple(notes), slope_kind=slope_kind, stationary_kind=stationary_kind,
    )
