"""Graph families: chain, ring, star, complete, Erdos-Renyi, public/private.

Every family names its models ``"m0" .. "m{K-1}"`` and, when some model reads
real data, adds one data node ``"data"`` (fresh by default) with an edge to
each model in ``real``. Because a fresh node is drawn independently for every
consumer, one node serves them all; with ``fresh=False`` they share one fixed
corpus. Edge weights are relative; ``alpha`` is the synthetic share of every
model that reads both real and synthetic data (THEORY section 1).

Example:
    >>> import collapse_jax as cj
    >>> eco = cj.graphs.ring(6, alpha=0.5, real=(0,), n=100, m=100)
    >>> eco.models
    ('m0', 'm1', 'm2', 'm3', 'm4', 'm5')
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import networkx as nx
import numpy as np

from collapse_jax.graphs import fixed_designs as _fixed_designs
from collapse_jax.ecosystem import Ecosystem

__all__ = ["chain", "ring", "star", "complete", "erdos_renyi", "from_edges", "public_private"]


def from_edges(
    K: int,
    model_edges: Iterable[tuple],
    *,
    real: Sequence[int] = (0,),
    alpha: float = 0.5,
    n: int = 100,
    m: int = 100,
    n0: Optional[int] = None,
    fresh: bool = True,
) -> Ecosystem:
    """An ecosystem of K models from ``(producer, consumer)`` index pairs, equal relative weights.

    Args:
        K: number of models.
        model_edges: pairs ``(j, k)``: model k trains on model j's output.
        real: indices of the models that read the data node.
        alpha: synthetic share of models with both real and model in-edges.
        n: samples per draw of the data node.
        m: synthetic samples each model publishes per generation.
        n0: generation-0 truth samples of models without real data (default m).
        fresh: whether the data node is redrawn every generation.
    """
    _check_K(K)
    real = tuple(int(k) for k in real)
    for k in real:
        if not 0 <= k < K:
            raise ValueError(f"real: model index {k} is not in 0..{K - 1}")
    G = nx.DiGraph()
    if real:
        G.add_node("data", kind="data", n=n, fresh=fresh)
    for k in range(K):
        G.add_node(f"m{k}", kind="model", n_synthetic=m, n0=m if n0 is None else n0)
    for j, k in model_edges:
        G.add_edge(f"m{j}", f"m{k}", weight=1.0)
    for k in real:
        G.add_edge("data", f"m{k}", weight=1.0)
    return Ecosystem.from_networkx(G, alpha=alpha)


def _check_K(K) -> None:
    """Raise ``ValueError`` unless ``K`` is a positive int (``3.0``, ``"3"`` and ``True`` are refused)."""
    if isinstance(K, (bool, np.bool_)) or not isinstance(K, (int, np.integer)) or K < 1:
        raise ValueError(f"K must be a positive integer, got {K!r}")


def chain(K: int, *, n: int = 100, m: int = 100, alpha: float = 0.5, real: Sequence[int] = (0,),
          n0: Optional[int] = None, fresh: bool = True) -> Ecosystem:
    """Models 0..K-1; model i reads model i-1; ``real`` models also read the data."""
    _check_K(K)
    return from_edges(K, [(i - 1, i) for i in range(1, K)], real=real, alpha=alpha, n=n, m=m, n0=n0, fresh=fresh)


def ring(K: int, *, n: int = 100, m: int = 100, alpha: float = 0.5, real: Sequence[int] = (0,),
         n0: Optional[int] = None, fresh: bool = True) -> Ecosystem:
    """A directed cycle: model i reads model i-1 (mod K); ``real=()`` leaves it without data."""
    _check_K(K)
    return from_edges(K, [((i - 1) % K, i) for i in range(K)], real=real, alpha=alpha, n=n, m=m, n0=n0, fresh=fresh)


def star(K: int, *, n: int = 100, m: int = 100, alpha: float = 0.5, real: Sequence[int] = (0,),
         hub_reads_leaves: bool = False, n0: Optional[int] = None, fresh: bool = True) -> Ecosystem:
    """Hub model 0 and K-1 leaves that read the hub; the hub optionally reads every leaf."""
    _check_K(K)
    edges = [(0, i) for i in range(1, K)]
    if hub_reads_leaves:
        edges += [(i, 0) for i in range(1, K)]
    return from_edges(K, edges, real=real, alpha=alpha, n=n, m=m, n0=n0, fresh=fresh)


def complete(K: int, *, n: int = 100, m: int = 100, alpha: float = 0.5, real: Sequence[int] = (),
             self_loops: bool = True, n0: Optional[int] = None, fresh: bool = True) -> Ecosystem:
    """Every model reads every model (itself too when ``self_loops``); no data by default."""
    _check_K(K)
    edges = [(j, k) for k in range(K) for j in range(K) if self_loops or j != k]
    return from_edges(K, edges, real=real, alpha=alpha, n=n, m=m, n0=n0, fresh=fresh)


def erdos_renyi(K: int, p: float, *, seed: int, n: int = 100, m: int = 100, alpha: float = 0.5,
                real: Optional[Sequence[int]] = None, n0: Optional[int] = None,
                fresh: bool = True) -> Ecosystem:
    """A seeded directed G(K, p) graph of model edges (``networkx.gnp_random_graph``).

    ``real`` defaults to every other model (0, 2, 4, ...). A model left with
    no in-edge at all retrains on its own output (a self-loop is added), so
    that every model has something to train on.
    """
    _check_K(K)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    real = tuple(range(0, K, 2)) if real is None else tuple(real)
    H = nx.gnp_random_graph(K, p, seed=seed, directed=True)
    edges = list(H.edges())
    fed = set(real) | {k for _, k in edges}
    edges += [(k, k) for k in range(K) if k not in fed]
    return from_edges(K, edges, real=real, alpha=alpha, n=n, m=m, n0=n0, fresh=fresh)


def public_private(K: int, alpha, beta, **designs) -> Ecosystem:
    """The ICLR 2026 public/private ecosystem (THEORY section 5), fixed designs.

    K models, a fixed private data node per model (relative weight ``beta``),
    one fixed public data node shared by all (``1 - beta``), every model
    reading every model's fixed-design synthetic output (self-loops
    included) with synthetic share ``alpha``. The label noise is the task's;
    ``theta=[...]`` gives each private task its own true parameter.
    Keyword arguments (designs, or sizes, ranks, ``dim`` and ``key`` to draw
    them; ``theta``, ``public_theta``) are those of
    :func:`collapse_jax.graphs.fixed_designs.ecosystem`.

    Example:
        >>> import jax
        >>> eco = public_private(4, 0.5, 0.5, dim=15, n_private=20, rank_private=5,
        ...                      n_public=20, rank_public=5, n_synthetic=20, key=jax.random.key(0))
        >>> eco.data
        ('private0', 'private1', 'private2', 'private3', 'public')
    """
    return _fixed_designs.ecosystem(K, alpha, beta, **designs)
