"""Drawing the data sets of one generation: one ``vmap`` per group of same-shaped sources.

Items (the data sets drawn in a generation: one per fresh real edge, per
synthetic batch, per truth sample) are grouped by sample size and law
structure so that each group is one vectorized draw; item ``i`` uses
``fold_in(key, i)`` whatever the grouping, so results do not depend on it.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["draw_items", "draw_parts", "plan_draws", "take", "combine_edges", "add", "concat",
           "sample_items", "sample_parts", "Flat"]


class _Draws(NamedTuple):
    """A static plan to draw one data set per item, grouped by source signature."""

    groups: tuple   # of (n, item positions, source ids, unique source ids)
    order: np.ndarray  # inverse permutation back to item order


def plan_draws(sources: np.ndarray, sizes, laws) -> _Draws:
    """Group items whose sources share sample size and law structure (one vmap each)."""
    sig = {}
    for pos, s in enumerate(sources):
        law = laws[s]
        leaves, tdef = jax.tree_util.tree_flatten(law)
        key = (sizes[s], tdef, tuple(np.shape(x) for x in leaves))
        sig.setdefault(key, []).append(pos)
    groups, flat = [], []
    for (n, _, _), positions in sig.items():
        positions = np.asarray(positions, int)
        src = sources[positions]
        uniq, local = np.unique(src, return_inverse=True)
        groups.append((n, positions, local, uniq))
        flat.extend(positions)
    order = np.argsort(np.asarray(flat, int)) if flat else np.zeros(0, int)
    return _Draws(tuple(groups), order)


def draw_items(task, key, plan: _Draws, item_ids, laws, params, engine):
    """Draw one data set per item; returns statistics stacked in item order."""
    outs = []
    for n, positions, local, uniq in plan.groups:
        law_stack = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[laws[s] for s in uniq])
        keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(item_ids[positions], jnp.uint32))
        theta = jax.tree_util.tree_map(lambda p: p[uniq[local]], params)

        def draw(k, li, th, law_stack=law_stack, n=n):
            law = jax.tree_util.tree_map(lambda x: x[li], law_stack)
            return task.draw(k, law, th, n, engine)

        outs.append(jax.vmap(draw)(keys, jnp.asarray(local), theta))
    stats = concat(outs)
    if np.array_equal(plan.order, np.arange(len(plan.order))):
        return stats  # one group in item order: no permutation copy
    return jax.tree_util.tree_map(lambda x: x[plan.order], stats)


class Flat(NamedTuple):
    """Materialized samples of several items, laid end to end on one sample axis.

    ``data`` leaves are ``(sum_i n_i, ...)``; item ``i``'s samples are rows
    ``offsets[i] .. offsets[i] + sizes[i] - 1`` (static NumPy arrays).
    """

    data: object
    offsets: np.ndarray
    sizes: np.ndarray


def sample_items(task, key, plan: _Draws, item_ids, laws, params) -> Flat:
    """Materialize one data set per item (``task.sample``), laid end to end in group order.

    Item ``i`` draws with ``fold_in(key, item_ids[i])``, as :func:`draw_items`
    does, so ``task.statistics`` of its samples equals its ``samples``-engine draw.
    """
    outs, offsets, sizes, start = [], np.zeros(len(item_ids), int), np.zeros(len(item_ids), int), 0
    for n, positions, local, uniq in plan.groups:
        law_stack = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[laws[s] for s in uniq])
        keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(item_ids[positions], jnp.uint32))
        theta = jax.tree_util.tree_map(lambda p: p[uniq[local]], params)

        def sample(k, li, th, law_stack=law_stack, n=n):
            law = jax.tree_util.tree_map(lambda x: x[li], law_stack)
            return task.sample(k, law, th, n)

        data = jax.vmap(sample)(keys, jnp.asarray(local), theta)  # leaves (G, n_g, ...)
        g, n_g = len(positions), jax.tree_util.tree_leaves(data)[0].shape[1]
        outs.append(jax.tree_util.tree_map(lambda x: x.reshape((g * n_g,) + x.shape[2:]), data))
        offsets[positions] = start + n_g * np.arange(g)
        sizes[positions] = n_g
        start += g * n_g
    return Flat(concat(outs), offsets, sizes)


def pool_parts(parts):
    """One ``(sources, sizes, laws, params)`` family from several whose params share a structure, else None.

    Sources are renumbered into the concatenated ``sizes``/``laws``/``params``,
    so items keep their order (and their ``fold_in`` numbers) across families.
    """
    shapes = [jax.tree_util.tree_map(lambda x: (x.shape[1:], x.dtype), p[3]) for p in parts]
    if not all(sh == shapes[0] for sh in shapes):
        return None
    offsets = np.cumsum([0] + [len(p[1]) for p in parts])
    sources = np.concatenate([np.asarray(p[0], int) + o for p, o in zip(parts, offsets)])
    sizes = [n for p in parts for n in p[1]]
    laws = [law for p in parts for law in p[2]]
    return sources, sizes, laws, concat([p[3] for p in parts])


def sample_parts(task, key, parts) -> Optional[Flat]:
    """:func:`draw_parts` for materialized samples: items numbered 0, 1, ... across ``parts``."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return None
    pooled = pool_parts(parts)
    if pooled is not None:
        sources, sizes, laws, params = pooled
        return sample_items(task, key, plan_draws(sources, sizes, laws), np.arange(len(sources)), laws, params)
    flats, start, rows = [], 0, 0
    for sources, sizes, laws, params in parts:
        ids = start + np.arange(len(sources))
        f = sample_items(task, key, plan_draws(np.asarray(sources, int), sizes, laws), ids, laws, params)
        flats.append(Flat(f.data, f.offsets + rows, f.sizes))
        start += len(sources)
        rows += int(f.sizes.sum())
    return Flat(concat([f.data for f in flats]), np.concatenate([f.offsets for f in flats]),
                np.concatenate([f.sizes for f in flats]))


def concat(trees):
    return trees[0] if len(trees) == 1 else jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *trees)


def draw_parts(task, key, parts, engine):
    """Draw the items of several source families, in order, numbered 0, 1, ... across them.

    ``parts`` is a sequence of ``(sources, sizes, laws, params)``: item ``i``
    of a part draws from source ``sources[i]`` (an index into that part's
    ``sizes``, ``laws`` and stacked ``params``). When the families' params
    have the same structure (data nodes and models do for every task here)
    they are pooled, so that items of equal signature across families share
    one ``vmap`` (one compiled draw, no concatenation). The result does not
    depend on the pooling: an item's draw depends only on
    ``fold_in(key, item)``, its law, parameter and size.
    """
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return None
    pooled = pool_parts(parts)
    if pooled is not None:
        sources, sizes, laws, params = pooled
        return draw_items(task, key, plan_draws(sources, sizes, laws), np.arange(len(sources)), laws, params, engine)
    outs, start = [], 0
    for sources, sizes, laws, params in parts:
        ids = start + np.arange(len(sources))
        outs.append(draw_items(task, key, plan_draws(np.asarray(sources, int), sizes, laws), ids, laws, params, engine))
        start += len(sources)
    return concat(outs)


def take(stats, index):
    """``stats[index]`` on every leaf; no copy when ``index`` is ``arange``."""
    if np.array_equal(index, np.arange(len(index))) and all(
            x.shape[0] == len(index) for x in jax.tree_util.tree_leaves(stats)):
        return stats
    return jax.tree_util.tree_map(lambda x: x[index], stats)


def combine_edges(stats, coef, consumers, K):
    """``sum_e coef[e] * stats[e]`` per consumer: (E, ...) -> (K, ...)."""
    consumers = np.asarray(consumers)
    ordered = bool(np.all(np.diff(consumers) >= 0))

    def one(x):
        c = coef.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
        return jax.ops.segment_sum(c * x, consumers, num_segments=K, indices_are_sorted=ordered)

    return jax.tree_util.tree_map(one, stats)


def add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


