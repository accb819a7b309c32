"""Topology of an interaction graph: closed classes, reachability, periods (THEORY.md section 4).

Pure NumPy. The support of the effective mixing matrix ``W`` (``W[k, j] > 0``:
model k reads model j) decides who collapses: a *closed class* is a strongly
connected set of models without real data that reads only from itself; model
k collapses iff a closed class is reachable from k against the flow of data.

Example:
    >>> import numpy as np
    >>> topo = topology(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([False, False]))
    >>> topo.collapses.tolist()
    [True, True]
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["Topology", "topology", "collapse_slopes", "UNIT_TOL"]

UNIT_TOL = 1e-9  # |lambda| >= 1 - UNIT_TOL counts as modulus 1


class Topology(NamedTuple):
    """The topological verdict of THEORY section 4 (NumPy).

    Attributes:
        reach: ``(K, K)`` bool, ``reach[k, j]``: k reads (directly or not, or
            k == j) from j.
        components: strongly connected components, each an index array, in
            order of their smallest member.
        closed: indices into ``components`` of the closed classes.
        periods: period of every closed class (1: aperiodic).
        collapses: ``(K,)`` bool.
        reaches: per model, the indices into ``components`` of the closed
            classes it reads from.
    """

    reach: np.ndarray
    components: tuple
    closed: tuple
    periods: tuple
    collapses: np.ndarray
    reaches: tuple


def _closure(A: np.ndarray) -> np.ndarray:
    """Reflexive-transitive closure of a boolean adjacency matrix (repeated squaring)."""
    Rm = A | np.eye(len(A), dtype=bool)
    while True:
        f = Rm.astype(np.float32)
        nxt = (f @ f) > 0
        if (nxt == Rm).all():
            return Rm
        Rm = nxt


def _period(A: np.ndarray, nodes: np.ndarray) -> int:
    """Period of a strongly connected set: gcd of ``level(u) + 1 - level(v)`` over its edges."""
    sub = A[np.ix_(nodes, nodes)]
    level = np.full(len(nodes), -1)
    level[0] = 0
    frontier = [0]
    while frontier:
        nxt = []
        for u in frontier:
            for v in np.flatnonzero(sub[u]):
                if level[v] < 0:
                    level[v] = level[u] + 1
                    nxt.append(v)
        frontier = nxt
    g = 0
    for u, v in np.argwhere(sub):
        g = math.gcd(g, int(abs(level[u] + 1 - level[v])))
    return g


def topology(W: np.ndarray, has_data: np.ndarray) -> Topology:
    """Closed classes and collapse verdicts from the support of ``W`` (pure NumPy).

    Args:
        W: ``(K, K)`` effective mixing matrix (rows: consumers); an entry > 0 is an edge.
        has_data: ``(K,)`` bool, whether model k has a real-data share > 0.

    Example:
        >>> topology(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([False, False])).collapses
        array([ True,  True])
    """
    W = np.asarray(W, float)
    has_data = np.asarray(has_data, bool)
    A = W > 0
    K = len(W)
    reach = _closure(A)
    mutual = reach & reach.T
    label = np.argmax(mutual, axis=1)  # smallest member of each model's component
    comps = tuple(np.flatnonzero(label == r) for r in np.unique(label))
    closed, periods = [], []
    for i, C in enumerate(comps):
        inside = np.zeros(K, bool)
        inside[C] = True
        if has_data[C].any() or A[C][:, ~inside].any() or not A[np.ix_(C, C)].any():
            continue
        closed.append(i)
        periods.append(_period(A, C))
    reaches = tuple(tuple(i for i in closed if reach[k, comps[i]].any()) for k in range(K))
    collapses = np.array([bool(r) for r in reaches], bool)
    return Topology(reach, comps, tuple(closed), tuple(periods), collapses, reaches)


def collapse_slopes(W: np.ndarray, D: np.ndarray, topo: Topology) -> np.ndarray:
    """``(K,)`` large-sample collapse slope ``lim V_t[k, k] / t`` (0 for bounded models).

    ``V_t = sum_{s<t} W^s D W'^s + W^t V_0 W'^t``; the eigenvalues of modulus
    1 are semisimple (``W`` is substochastic), so the Cesaro average of the
    increments is ``sum_lambda |r_lambda(k)|^2 l_lambda^H D l_lambda``: per
    closed class C, the eigenvectors of ``W_CC`` for its unit eigenvalues
    (left ones supported on C; right ones extended to the transient models
    T by ``r_T = (lambda I - W_TT)^{-1} W_TC r_C``).
    """
    W = np.asarray(W, float)
    D = np.asarray(D, float)
    K = len(W)
    in_closed = np.zeros(K, bool)
    for i in topo.closed:
        in_closed[topo.components[i]] = True
    T = np.flatnonzero(~in_closed)
    slope = np.zeros(K)
    for i in topo.closed:
        C = topo.components[i]
        WC = W[np.ix_(C, C)]
        vals, right = np.linalg.eig(WC)
        valsL, left = np.linalg.eig(WC.T)
        for a in np.flatnonzero(np.abs(vals) >= 1 - 1e-8):
            lam = vals[a]
            b = int(np.argmin(np.abs(valsL - lam)))
            rC, lC = right[:, a], left[:, b]
            lC = lC / (lC @ rC)
            r = np.zeros(K, complex)
            r[C] = rC
            if len(T):
                r[T] = np.linalg.solve(lam * np.eye(len(T)) - W[np.ix_(T, T)], W[np.ix_(T, C)] @ rC)
            quad = float(np.real(np.conj(lC) @ D[np.ix_(C, C)] @ lC))
            slope += np.abs(r) ** 2 * quad
    return slope

