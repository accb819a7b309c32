"""Plots (matplotlib, imported lazily so the core has no plotting cost)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["plot_error"]


def plot_error(results: Mapping[str, "object"], path: str, *, log: bool = True) -> None:
    """Mean error against generation, one panel per result, one line per model.

    Args:
        results: ``{title: SimulationResult}``.
        path: where to write the figure (PNG by extension).
        log: logarithmic error axis.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.6), squeeze=False)
    for ax, (title, res) in zip(axes[0], results.items()):
        mean, sem = res.mean, res.sem
        t = np.arange(mean.shape[0])
        for k, name in enumerate(res.models):
            ax.plot(t, mean[:, k], label=str(name), lw=1.2)
            ax.fill_between(t, mean[:, k] - 2 * sem[:, k], mean[:, k] + 2 * sem[:, k], alpha=0.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("generation")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean excess risk (+- 2 s.e.)")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
