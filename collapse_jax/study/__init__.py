"""Monte Carlo studies at scale: :func:`sweep` over parameter grids, streaming statistics, storage.

Modules, lowest first: ``streaming`` (block statistics on the device and
their canonical merge on the host, extremes, histograms, quantiles),
``storage`` (a sweep's folder: atomic writes, manifest, chunk files, lock),
``grid`` (grid expansion, point preparation; the study's one import of the
engine), ``result`` (:class:`SweepResult`, :func:`load_sweep`, assembly) and
``sweep`` (:func:`sweep`, the chunk computation, devices). See
:mod:`collapse_jax.study.sweep` for the whole story (keys, chunks, devices,
hosts, resume).
"""

from collapse_jax.study.grid import SIMULATE_OPTIONS
from collapse_jax.study.result import DEFAULT_QUANTILES, SweepResult, load_sweep
from collapse_jax.study.streaming import DEFAULT_BINS, SERIES
from collapse_jax.study.sweep import sweep

__all__ = ["sweep", "load_sweep", "SweepResult", "DEFAULT_BINS", "DEFAULT_QUANTILES", "SIMULATE_OPTIONS", "SERIES"]
