"""Plots: functions that return a ``matplotlib.figure.Figure``.

They never select a matplotlib backend and never import ``pyplot``: the
figure is built with ``matplotlib.figure.Figure`` directly and, given a path,
saved with ``Figure.savefig`` (which picks a file writer for the extension
without touching the global backend). In a notebook, display the returned
figure (``display(fig)`` or make it the cell's value), or draw into your own
pyplot figure with ``fig=plt.figure()``.

Example:
    >>> import jax, collapse_jax as cj
    >>> from collapse_jax import plotting
    >>> res = cj.simulate(cj.graphs.ring(3, n=20, m=20), cj.LinearRegression(dim=3),
    ...                   jax.random.key(0), generations=5, replicates=8)
    >>> fig = plotting.plot_error({"ring of 3": res})  # doctest: +SKIP
"""

from __future__ import annotations

import textwrap
from typing import Mapping, Optional

import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_error"]


def plot_error(
    results: Mapping[str, "object"],
    path: Optional[str] = None,
    *,
    log: bool = True,
    reference: Optional[tuple] = None,
    title: Optional[str] = None,
    mark: Optional[Mapping[str, Mapping[str, str]]] = None,
    notes: Optional[Mapping[str, str]] = None,
    ylabel: str = "mean excess risk (band: +- 2 s.e.)",
    fig: Optional[Figure] = None,
) -> Figure:
    """Mean error against generation: one panel per result, one line per model.

    Panels share the error axis (logarithmic by default), so a collapsing
    ecosystem stands out from bounded ones; every panel has its own legend.

    Args:
        results: ``{panel title: SimulationResult}``.
        path: if given, also write the figure there (format by extension).
        log: logarithmic error axis.
        reference: ``(value, label)``: a dashed horizontal reference line in
            every panel (e.g. the risk of one fit, ``d/(n-d-1)``).
        title: the figure's title (state the study's parameters here).
        mark: ``{panel title: {model: note}}``: models drawn in black, thick,
            labelled ``"model (note)"`` (e.g. the hub of a star).
        notes: ``{panel title: text}``: a boxed note in the panel's lower
            right corner (e.g. the summary's verdicts).
        ylabel: the error axis label.
        fig: draw into this figure (e.g. ``plt.figure()``) instead of a new one.

    Returns:
        The figure.
    """
    if not results:
        raise ValueError("results is empty: nothing to plot")
    mark = dict(mark or {})
    notes = dict(notes or {})
    for what, given in (("mark", mark), ("notes", notes)):
        unknown = set(given) - set(results)
        if unknown:
            raise ValueError(f"{what}: no panel titled {sorted(unknown)}")
    P = len(results)
    if fig is None:
        fig = Figure(figsize=(4.6 * P + 0.4, 4.4), layout="constrained")
    axes = fig.subplots(1, P, sharey=True, squeeze=False)[0]
    for ax, (panel, res) in zip(axes, results.items()):
        mean, sem = np.asarray(res.mean, float), np.asarray(res.sem, float)
        t = np.arange(mean.shape[0])
        K = len(res.models)
        colors = _colors(K)
        marked = mark.get(panel, {})
        bad = set(marked) - {str(m) for m in res.models}
        if bad:
            raise ValueError(f"mark[{panel!r}]: no model {sorted(bad)}")
        for k, name in enumerate(res.models):
            note = marked.get(str(name))
            style = dict(color="black", lw=2.6, zorder=5) if note else dict(color=colors[k], lw=1.3)
            label = f"{name} ({note})" if note else str(name)
            ax.plot(t, mean[:, k], label=label, **style)
            with np.errstate(invalid="ignore"):
                lo, hi = mean[:, k] - 2 * sem[:, k], mean[:, k] + 2 * sem[:, k]
            if log:
                lo = np.where(lo > 0, lo, np.nan)
            ax.fill_between(t, lo, hi, color=style["color"], alpha=0.15, lw=0)
        if reference is not None:
            ax.axhline(reference[0], color="0.3", ls="--", lw=1.2, label=reference[1], zorder=4)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("generation")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both" if log else "major", lw=0.5)
        ax.legend(fontsize=7, ncol=2, loc="upper left", framealpha=0.85)
        if panel in notes:
            ax.text(0.98, 0.03, notes[panel], transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.6", alpha=0.9), zorder=6)
    axes[0].set_ylabel(ylabel + (" (log scale, shared)" if log and P > 1 else " (log scale)" if log else ""))
    if title:
        fig.suptitle(textwrap.fill(title, width=int(13 * fig.get_figwidth())), fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _colors(K: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if K <= 10 else "viridis"]
    return [cmap(k if K <= 10 else k / max(K - 1, 1)) for k in range(K)]
