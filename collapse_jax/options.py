"""The simulation options shared by every tool, validated in one place.

``regime``, ``pool``, ``loss_scale`` and ``engine`` (THEORY.md section 1) mean
the same thing in :func:`collapse_jax.simulate`, :func:`collapse_jax.analyze`,
:func:`collapse_jax.long_run_error`, :func:`collapse_jax.moments`,
:func:`collapse_jax.sweep` and the command line; their allowed values live
here and nowhere else (the CLI's argparse choices come from these tuples).

Example:
    >>> from collapse_jax.options import Options
    >>> Options(regime="accumulate").check()
    Options(regime='accumulate', pool='independent', loss_scale='mean', engine='auto')
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Options", "REGIMES", "POOLS", "LOSS_SCALES", "ENGINES", "check_choice"]

REGIMES = ("replace", "accumulate", "accumulate_subsample")
POOLS = ("independent", "shared")
LOSS_SCALES = ("mean", "sum")
ENGINES = ("auto", "suffstat", "samples")


def check_choice(name: str, value, allowed: tuple) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


class Options(NamedTuple):
    """How an ecosystem trains (hashable: part of every compile cache key).

    Attributes:
        regime: "replace" (only the newest synthetic batch), "accumulate"
            (every synthetic batch since generation 1) or "accumulate_subsample"
            (a uniform subsample of the accumulated batches, of constant size).
        pool: "independent" (every edge draws its own synthetic batch) or
            "shared" (a producer publishes one batch that all consumers see).
        loss_scale: "mean" (weights are shares of the training mixture) or
            "sum" (weights multiply per-sample losses; counts matter).
        engine: "suffstat" (exact sufficient statistics), "samples"
            (materialized data) or "auto" (suffstat where the task and regime allow).
    """

    regime: str = "replace"
    pool: str = "independent"
    loss_scale: str = "mean"
    engine: str = "auto"

    def check(self) -> "Options":
        """Return ``self`` after checking every field (``ValueError`` naming the field)."""
        for name, allowed in (("regime", REGIMES), ("pool", POOLS),
                              ("loss_scale", LOSS_SCALES), ("engine", ENGINES)):
            check_choice(name, getattr(self, name), allowed)
        return self
