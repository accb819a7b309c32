"""The interaction graph as arrays: data nodes, model nodes, weighted edges.

THEORY.md section 1 is the contract. An :class:`Ecosystem` is a pytree whose
leaves are the differentiable weights (relative real weights, relative model
weights, synthetic share ``alpha``) and the per-node attribute mappings
(``data_attrs``, ``model_attrs``: every numeric node attribute beyond the
graph's own, as float arrays); everything that fixes shapes or the set of
edges (node names, sample sizes, fresh/fixed flags, edge lists) is static
metadata. Changing static metadata (a new topology, a new sample size)
retraces every compiled function that takes the ecosystem; so does adding or
removing a node attribute or changing its shape (the pytree structure
changes); changing weights, alpha or attribute values does not.

The ecosystem is task-neutral: it validates the graph's own attributes
(``kind``, ``n``, ``fresh``, ``n_synthetic``, ``n0``, edge ``weight``,
``alpha``) and the generic shape facts (an attribute named ``design`` is a
2-d array whose rows fix ``n`` / ``n_synthetic``, and a data node with a
``design`` must be fixed, ``fresh=False``); what the other attributes mean
(a covariance that must be PSD, a dimension that must match) is the task's
to check, in ``task.check(eco)``, which names the node.

Effective weights (THEORY section 1)::

    R[k, s] = (1 - alpha_k) * real_weights[k, s] / sum_s' real_weights[k, s']
    W[k, j] =      alpha_k  * model_weights[k, j] / sum_j' model_weights[k, j']

so every row of ``[R, W]`` sums to one, and gradients with respect to the
relative weights and to alpha are separate.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Hashable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

__all__ = ["Ecosystem"]

_ROW_TOL = 1e-6
DATA = "data"
MODEL = "model"


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "real_weights", "model_weights", "alpha", "data_attrs", "model_attrs",
    ],
    meta_fields=[
        "models", "data", "n", "fresh", "n_synthetic", "n0", "real_edges", "model_edges",
    ],
)
@dataclasses.dataclass(frozen=True)
class Ecosystem:
    """A directed interaction graph of data nodes and model nodes.

    Build it with :meth:`from_networkx` or a family in :mod:`collapse_jax.graphs`;
    the constructor stores what it is given and checks nothing (it is also
    called by JAX on unflattening).

    Attributes:
        real_weights: ``(K, S)`` relative weights of data node ``s`` for model ``k``
            (zero where there is no edge).
        model_weights: ``(K, K)`` relative weights of producer ``j`` for consumer ``k``.
        alpha: ``(K,)`` synthetic share of each model's training mixture.
        data_attrs: per data node (``S`` entries), a dict ``{name: float array}``
            of its attributes beyond the graph's own (for linear regression
            ``cov (d, d)``, ``design (n_s, d)``, ``theta (d,)``); read them with
            :meth:`data_attr`.
        model_attrs: per model node (``K`` entries), the same (regression:
            ``cov``, ``design`` of its synthetic covariates); :meth:`model_attr`.
        models: model names in graph order (the K axis of every result).
        data: data-node names in graph order (the S axis).
        n: samples per draw of each data node.
        fresh: per data node, True for a new draw every generation.
        n_synthetic: synthetic samples each model publishes per generation.
        n0: samples of the truth for a model's generation-0 fit when it has
            no real in-edge.
        real_edges: ``(k, s)`` pairs: model ``k`` reads data node ``s``.
        model_edges: ``(k, j)`` pairs: model ``k`` reads model ``j``'s output.

    Example:
        >>> import networkx as nx, collapse_jax as cj
        >>> G = nx.DiGraph()
        >>> G.add_node("web", kind="data", n=50)
        >>> G.add_node("a", kind="model", n_synthetic=50)
        >>> G.add_edge("web", "a", weight=0.5); G.add_edge("a", "a", weight=0.5)
        >>> eco = cj.Ecosystem.from_networkx(G)
        >>> eco.W
        Array([[0.5]], dtype=float32)
    """

    real_weights: jax.Array
    model_weights: jax.Array
    alpha: jax.Array
    data_attrs: tuple
    model_attrs: tuple
    models: tuple
    data: tuple
    n: tuple
    fresh: tuple
    n_synthetic: tuple
    n0: tuple
    real_edges: tuple
    model_edges: tuple

    # ------------------------------------------------------------------ sizes
    @property
    def K(self) -> int:
        """Number of model nodes."""
        return len(self.models)

    @property
    def S(self) -> int:
        """Number of data nodes."""
        return len(self.data)

    # ------------------------------------------------------ node attributes
    def data_attr(self, name: str) -> tuple:
        """Attribute ``name`` of every data node (``S`` entries; ``None`` where a node has none)."""
        return tuple(a.get(name) for a in self.data_attrs)

    def model_attr(self, name: str) -> tuple:
        """Attribute ``name`` of every model node (``K`` entries; ``None`` where a node has none)."""
        return tuple(a.get(name) for a in self.model_attrs)

    def data_attribute_names(self) -> tuple:
        """Sorted names of the attributes that at least one data node carries."""
        return tuple(sorted({name for a in self.data_attrs for name in a}))

    def model_attribute_names(self) -> tuple:
        """Sorted names of the attributes that at least one model node carries."""
        return tuple(sorted({name for a in self.model_attrs for name in a}))

    def map_attrs(self, fn) -> "Ecosystem":
        """A copy with ``fn`` applied to every node attribute array (e.g. a dtype cast)."""
        return dataclasses.replace(
            self,
            data_attrs=tuple({k: fn(v) for k, v in a.items()} for a in self.data_attrs),
            model_attrs=tuple({k: fn(v) for k, v in a.items()} for a in self.model_attrs),
        )

    # ------------------------------------------------------ effective weights
    @property
    def R(self) -> jax.Array:
        """``(K, S)`` effective real-data weights (rows of ``[R, W]`` sum to 1)."""
        return row_shares(self.real_weights, 1.0 - self.alpha)

    @property
    def W(self) -> jax.Array:
        """``(K, K)`` effective mixing matrix, rows indexed by the consumer."""
        return row_shares(self.model_weights, self.alpha)

    def has_real(self) -> np.ndarray:
        """``(K,)`` bool: which models have at least one real in-edge."""
        out = np.zeros(self.K, bool)
        for k, _ in self.real_edges:
            out[k] = True
        return out

    def replace(self, **changes: Any) -> "Ecosystem":
        """A copy with some fields replaced (for example new weights or alpha)."""
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- builders
    @classmethod
    def from_networkx(
        cls, G: nx.DiGraph, alpha: Any = None, normalize: bool = False
    ) -> "Ecosystem":
        """Read an ecosystem from a directed networkx graph (THEORY section 1).

        Node attributes: ``kind`` ("data" or "model", required). Data nodes:
        ``n`` (int; implied by ``design``), ``fresh`` (default True). Model
        nodes: ``n_synthetic`` (int; implied by ``design``), ``n0`` (default
        ``n_synthetic``). Every other node attribute must be a finite number
        or numeric array and is kept, as a float array, in ``data_attrs`` /
        ``model_attrs`` for the task to validate and read (regression: ``cov``,
        ``design``, ``theta``); a ``design`` must be 2-d, its rows fix ``n``,
        and a data node with one must be ``fresh=False``. Edge attribute
        ``weight`` (default 1.0, a finite number >= 0).

        Args:
            G: a ``networkx.DiGraph`` (or a ``MultiDiGraph`` without parallel
                edges); edges point the way data flows (``u -> v``: v trains
                on u's data).
            alpha: None (rows must already sum to 1, or use ``normalize``),
                a scalar synthetic share for every model that has both real
                and model in-edges, or a per-model sequence / ``{name: value}``
                mapping. Models without real in-edges have alpha 1, models
                without model in-edges alpha 0; an explicit per-model value
                that contradicts this is an error.
            normalize: with ``alpha=None``, divide each row by its sum instead
                of requiring it to be 1.

        Raises:
            ValueError: naming the offending node, edge or argument.
        """
        if not isinstance(G, nx.DiGraph):
            raise ValueError(f"G must be a networkx.DiGraph, got {type(G).__name__}")
        if G.is_multigraph():
            for u, v in G.edges():
                if G.number_of_edges(u, v) > 1:
                    raise ValueError(
                        f"edge {u!r} -> {v!r}: {G.number_of_edges(u, v)} parallel edges; "
                        "an ecosystem has at most one edge per ordered pair (merge their weights)"
                    )
        if not isinstance(normalize, (bool, np.bool_)):
            raise ValueError(f"normalize must be True or False, got {normalize!r}")
        data_nodes, model_nodes = [], []
        for v, attrs in G.nodes(data=True):
            kind = attrs.get("kind")
            if kind == DATA:
                data_nodes.append(v)
            elif kind == MODEL:
                model_nodes.append(v)
            else:
                raise ValueError(
                    f"node {v!r}: unknown kind {kind!r} (expected 'data' or 'model')"
                )
        if not model_nodes:
            raise ValueError("the graph has no model node (kind='model')")
        K, S = len(model_nodes), len(data_nodes)
        midx = {v: i for i, v in enumerate(model_nodes)}
        sidx = {v: i for i, v in enumerate(data_nodes)}

        # --- data nodes
        n, fresh, dattrs = [], [], []
        for v in data_nodes:
            a = G.nodes[v]
            where = f"data node {v!r}"
            is_fresh = a.get("fresh", True)
            if not isinstance(is_fresh, (bool, np.bool_)):
                raise ValueError(f"{where}: fresh must be True or False, got {is_fresh!r}")
            extra = _node_arrays(a, _DATA_OWN, where)
            design = extra.get("design")
            if design is not None and is_fresh:
                raise ValueError(
                    f"{where}: a fixed design needs fresh=False (a fresh node draws new covariates)"
                )
            n.append(_count(a.get("n"), design, where, "n"))
            fresh.append(bool(is_fresh))
            dattrs.append(extra)

        # --- model nodes
        m, n0, mattrs = [], [], []
        for v in model_nodes:
            a = G.nodes[v]
            where = f"model node {v!r}"
            extra = _node_arrays(a, _MODEL_OWN, where)
            mk = _count(a.get("n_synthetic"), extra.get("design"), where, "n_synthetic")
            m.append(mk)
            n0.append(_count(a.get("n0", mk), None, where, "n0"))
            mattrs.append(extra)

        # --- edges
        real_w = np.zeros((K, S))
        model_w = np.zeros((K, K))
        real_edges, model_edges = [], []
        for u, v, attrs in G.edges(data=True):
            if v not in midx:
                raise ValueError(f"edge {u!r} -> {v!r}: data nodes do not train; edges must end at a model node")
            w = attrs.get("weight", 1.0)
            if not _is_number(w):
                raise ValueError(f"edge {u!r} -> {v!r}: weight {w!r} is not a number")
            w = float(w)
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"edge {u!r} -> {v!r}: weight must be finite and >= 0, got {w}")
            k = midx[v]
            if u in sidx:
                real_w[k, sidx[u]] = w
                real_edges.append((k, sidx[u]))
            else:
                model_w[k, midx[u]] = w
                model_edges.append((k, midx[u]))
        real_edges.sort()
        model_edges.sort()

        has_real = np.zeros(K, bool)
        has_model = np.zeros(K, bool)
        for k, _ in real_edges:
            has_real[k] = True
        for k, _ in model_edges:
            has_model[k] = True
        for k, v in enumerate(model_nodes):
            if not has_real[k] and not has_model[k]:
                raise ValueError(f"model node {v!r} has no in-edge: it has nothing to train on")

        rs, ms = real_w.sum(1), model_w.sum(1)
        for k, v in enumerate(model_nodes):
            if has_real[k] and rs[k] <= 0:
                raise ValueError(f"model node {v!r}: its real in-edges all have weight 0")
            if has_model[k] and ms[k] <= 0 and (alpha is not None or normalize):
                raise ValueError(f"model node {v!r}: its model in-edges all have weight 0")

        forced = np.where(~has_real, 1.0, np.where(~has_model, 0.0, np.nan))
        if alpha is None:
            totals = rs + ms
            for k, v in enumerate(model_nodes):
                if normalize:
                    if totals[k] <= 0:
                        raise ValueError(f"model node {v!r}: in-edge weights sum to 0; cannot normalize")
                elif abs(totals[k] - 1.0) > _ROW_TOL:
                    raise ValueError(
                        f"model node {v!r}: in-edge weights sum to {totals[k]:.6g}, not 1; "
                        "pass alpha=... or normalize=True"
                    )
            alpha_arr = ms / totals
        else:
            alpha_arr = _alpha(alpha, model_nodes, forced)

        return cls(
            real_weights=jnp.asarray(real_w, dtype=_float()),
            model_weights=jnp.asarray(model_w, dtype=_float()),
            alpha=jnp.asarray(alpha_arr, dtype=_float()),
            data_attrs=tuple(dattrs), model_attrs=tuple(mattrs),
            models=tuple(model_nodes), data=tuple(data_nodes),
            n=tuple(n), fresh=tuple(fresh), n_synthetic=tuple(m), n0=tuple(n0),
            real_edges=tuple(real_edges), model_edges=tuple(model_edges),
        )

    def to_networkx(self) -> nx.DiGraph:
        """The graph with every attribute; edge weights are the effective ones.

        ``Ecosystem.from_networkx(eco.to_networkx())`` gives back the same
        effective weights ``R`` and ``W``, sizes, flags and every node
        attribute (as NumPy arrays).
        """
        G = nx.DiGraph()
        R, W = np.asarray(self.R, float), np.asarray(self.W, float)
        for s, v in enumerate(self.data):
            attrs = dict(kind=DATA, n=self.n[s], fresh=self.fresh[s])
            attrs.update({name: np.asarray(val) for name, val in self.data_attrs[s].items()})
            G.add_node(v, **attrs)
        for k, v in enumerate(self.models):
            attrs = dict(kind=MODEL, n_synthetic=self.n_synthetic[k], n0=self.n0[k])
            attrs.update({name: np.asarray(val) for name, val in self.model_attrs[k].items()})
            G.add_node(v, **attrs)
        for k, s in self.real_edges:
            G.add_edge(self.data[s], self.models[k], weight=float(R[k, s]))
        for k, j in self.model_edges:
            G.add_edge(self.models[j], self.models[k], weight=float(W[k, j]))
        return G

    def __repr__(self) -> str:
        return (
            f"Ecosystem(K={self.K} models, S={self.S} data nodes, "
            f"{len(self.real_edges)} real edges, {len(self.model_edges)} model edges)"
        )


# ---------------------------------------------------------------------- helpers
def _float():
    return jnp.result_type(float)


@jax.jit  # retraced per shape and dtype; eagerly each of its primitives was an XLA compile
def row_shares(w: jax.Array, scale: jax.Array) -> jax.Array:
    """``(K, N)`` ``scale[k] * w[k] / sum(w[k])``: each row's weights as shares of ``scale[k]`` (``R``, ``W``)."""
    total = w.sum(axis=1, keepdims=True)
    # Rows without edges of this kind have total 0: give them share 0, not NaN.
    safe = jnp.where(total > 0, total, 1.0)
    return scale[:, None] * w / safe


_DATA_OWN = frozenset({"kind", "n", "fresh"})
_MODEL_OWN = frozenset({"kind", "n_synthetic", "n0"})


def _is_number(x) -> bool:
    """A real number (not a bool, not a string)."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _node_arrays(attrs: Mapping, own: frozenset, where: str) -> dict:
    """The node's attributes beyond the graph's own, as finite float arrays (task-neutral checks)."""
    out = {}
    for name, value in attrs.items():
        if name in own:
            continue
        if value is None:
            continue
        if isinstance(value, (str, bytes, bool, np.bool_)):
            raise ValueError(f"{where}: attribute {name!r} must be a number or a numeric array, got {value!r}")
        try:
            a = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: attribute {name!r} must be a number or a numeric array, got {type(value).__name__}"
            ) from None
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{where}: {name} has non-finite entries")
        if name == "design" and a.ndim != 2:
            raise ValueError(f"{where}: design must be a 2-d array, got shape {a.shape}")
        out[name] = a
    return out


def _count(value, design, where: str, name: str) -> int:
    if value is None:
        if design is None:
            raise ValueError(f"{where}: missing attribute {name!r}")
        return int(design.shape[0])
    if not _is_number(value) or not float(value).is_integer() or int(value) < 1:
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    value = int(value)
    if design is not None and design.shape[0] != value:
        raise ValueError(f"{where}: {name}={value} but design has {design.shape[0]} rows")
    return value


def _array(value, where: str, ndim: int) -> Optional[np.ndarray]:
    if value is None:
        return None
    a = np.asarray(value, dtype=float)
    if a.ndim != ndim:
        raise ValueError(f"{where} must be a {ndim}-d array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where} has non-finite entries")
    return a


def _matrix(value, where: str) -> Optional[np.ndarray]:
    return _array(value, where, 2)


def _vector(value, where: str) -> Optional[np.ndarray]:
    return _array(value, where, 1)


def check_covariance(value, where: str) -> Optional[np.ndarray]:
    """Validate a covariance: square, finite, symmetric, positive semi-definite."""
    a = _matrix(value, f"{where}: cov")
    if a is None:
        return None
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"{where}: cov must be square, got shape {a.shape}")
    scale = max(1.0, float(np.abs(a).max()))
    if not np.allclose(a, a.T, atol=1e-8 * scale):
        raise ValueError(f"{where}: cov is not symmetric")
    lo = float(np.linalg.eigvalsh(a).min())
    if lo < -1e-8 * scale:
        raise ValueError(f"{where}: cov is not positive semi-definite (smallest eigenvalue {lo:.3g})")
    return a





def _alpha(alpha, model_nodes: Sequence[Hashable], forced: np.ndarray) -> np.ndarray:
    K = len(model_nodes)
    values = alpha.values() if isinstance(alpha, Mapping) else np.ravel(np.asarray(alpha, dtype=object))
    for a in values:
        if not _is_number(a):
            raise ValueError(f"alpha must be a number in [0, 1] (or one per model), got {a!r}")
    if isinstance(alpha, Mapping):
        unknown = set(alpha) - set(model_nodes)
        if unknown:
            raise ValueError(f"alpha: unknown model node(s) {sorted(map(repr, unknown))}")
        given = np.array([alpha.get(v, np.nan) for v in model_nodes], float)
        explicit = np.array([v in alpha for v in model_nodes])
    else:
        given = np.asarray(alpha, dtype=float)
        if given.ndim == 0:
            given = np.full(K, float(given))
            explicit = np.zeros(K, bool)
        elif given.shape == (K,):
            explicit = np.ones(K, bool)
        else:
            raise ValueError(f"alpha must be a scalar, a ({K},) array or a mapping, got shape {given.shape}")
    out = np.empty(K)
    for k, v in enumerate(model_nodes):
        a = given[k]
        if not np.isnan(forced[k]):  # the topology fixes this model's alpha
            if explicit[k] and a != forced[k]:
                why = "no real in-edge" if forced[k] == 1.0 else "no model in-edge"
                raise ValueError(
                    f"alpha for model node {v!r} is {a} but it has {why}, so its alpha is {forced[k]:g}"
                )
            out[k] = forced[k]
        elif isinstance(alpha, Mapping) and not explicit[k]:
            raise ValueError(f"alpha: no value for model node {v!r}, which mixes real and synthetic data")
        elif not np.isfinite(a) or not 0.0 <= a <= 1.0:
            raise ValueError(f"alpha for model node {v!r} must be in [0, 1], got {a}")
        else:
            out[k] = a
    return out
