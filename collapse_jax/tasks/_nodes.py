"""Checks of per-node task attributes shared by the estimators (shapes, finiteness, covariances).

The ecosystem is task-neutral: it stores every numeric node attribute
(``eco.data_attr(name)`` / ``eco.model_attr(name)``, one entry per node, an
array or None); each task validates the ones it reads here, naming the node,
and refuses the others.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from collapse_jax.ecosystem import check_covariance
from collapse_jax.tasks.base import concrete

__all__ = ["node_attr", "present_attributes", "refuse_unknown", "check_finite", "node_label", "check_cov",
           "check_vector", "check_dim"]

def node_attr(eco, kind: str, name: str) -> tuple:
    """Attribute ``name`` of every ``kind`` ("data" or "model") node: a tuple of arrays or None."""
    return tuple(eco.data_attr(name) if kind == "data" else eco.model_attr(name))


def present_attributes(eco, kind: str) -> set:
    """Names of the task attributes that some ``kind`` node carries."""
    return set(eco.data_attribute_names() if kind == "data" else eco.model_attribute_names())


def node_label(eco, kind: str, index: int) -> str:
    """``"data node 'x'"`` / ``"model node 'm0'"`` for messages."""
    names = eco.data if kind == "data" else eco.models
    return f"{kind} node {names[index]!r}"


def refuse_unknown(eco, task_name: str, known: dict) -> None:
    """Raise ``ValueError`` naming a node that carries an attribute the task does not read.

    ``known`` maps "data" / "model" to the tuple of attribute names the task reads.
    """
    for kind in ("data", "model"):
        for name in sorted(present_attributes(eco, kind) - set(known[kind])):
            values = node_attr(eco, kind, name)
            idx = next((i for i, v in enumerate(values) if v is not None), 0)
            readable = ", ".join(known[kind]) or "none"
            raise ValueError(
                f"{node_label(eco, kind, idx)}: attribute {name!r} is not read by {task_name} "
                f"(its {kind}-node attributes: {readable})"
            )


def check_finite(value, where: str) -> Optional[np.ndarray]:
    """``value`` as a float64 host array, or None; ``ValueError`` if it has NaN or inf entries."""
    if value is None or not concrete(value):
        return None
    a = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where} has non-finite entries")
    return a


def check_cov(value, d: int, where: str, definite: bool = False) -> Optional[np.ndarray]:
    """Validate a ``(d, d)`` covariance: finite, symmetric, PSD (PD with ``definite``).

    Returns the host array, or None when ``value`` is None or traced (shape checked only).
    """
    if value is None:
        return None
    if np.shape(value) != (d, d):
        raise ValueError(f"{where}: cov must have shape ({d}, {d}), got {np.shape(value)}")
    a = check_covariance(check_finite(value, f"{where}: cov"), where)
    if a is None:
        return None
    scale = max(1.0, float(np.abs(a).max()))
    lo = float(np.linalg.eigvalsh(a).min())
    if definite and lo <= 1e-12 * scale:
        raise ValueError(f"{where}: cov must be positive definite (smallest eigenvalue {lo:.3g})")
    return a


def check_vector(value, d: int, where: str, name: str) -> Optional[np.ndarray]:
    """Validate a finite ``(d,)`` vector; returns the host array or None."""
    if value is None:
        return None
    if np.shape(value) != (d,):
        raise ValueError(f"{where}: {name} must have shape ({d},), got {np.shape(value)}")
    return check_finite(value, f"{where}: {name}")


def check_dim(d) -> None:
    """``dim`` must be a positive integer."""
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"dim must be a positive integer, got {d!r}")
