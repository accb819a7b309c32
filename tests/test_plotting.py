"""Plotting: figures returned, no backend chosen, a demo plot that reads well."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from matplotlib.figure import Figure

from collapse_jax import plotting
from collapse_jax.engine.results import SimulationResult

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _result(K=3, T=10, grow=False, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(T + 1)[None, :, None]
    err = 0.2 + (0.1 * t if grow else 0) + 0.01 * rng.random((8, T + 1, K))
    return SimulationResult(error=err, metrics={}, models=tuple(f"m{k}" for k in range(K)), config={})


def test_library_never_sets_a_backend():
    """No ``matplotlib.use`` anywhere in the package, and no pyplot import (pyplot picks a backend)."""
    for path in (ROOT / "collapse_jax").rglob("*.py"):
        text = path.read_text()
        assert "matplotlib.use(" not in text, path
        assert "import matplotlib.pyplot" not in text and "from matplotlib import pyplot" not in text, path


def test_backend_unchanged_after_import_and_plot(tmp_path):
    """In a fresh process with a user-chosen backend: importing, plotting and the CLI's plot keep it."""
    script = textwrap.dedent(f"""
        import sys
        import matplotlib
        before = matplotlib.get_backend()
        import collapse_jax, collapse_jax.cli
        from collapse_jax import plotting
        from collapse_jax.engine.results import SimulationResult
        import numpy as np
        res = SimulationResult(error=np.ones((2, 3, 2)), metrics={{}}, models=("a", "b"), config={{}})
        fig = plotting.plot_error({{"panel": res}}, {str(tmp_path / "p.png")!r})
        print(before, matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules, type(fig).__name__)
    """)
    env = dict(os.environ, MPLBACKEND="svg", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["svg", "svg", "False", "Figure"]
    assert (tmp_path / "p.png").stat().st_size > 5000


def test_plot_error_panels_legends_reference_and_mark(tmp_path):
    results = {"Ring of 3, real data": _result(), "Ring of 3, no real data": _result(grow=True, seed=1)}
    path = tmp_path / "e.png"
    fig = plotting.plot_error(results, str(path), reference=(0.25, "one fit: d/(n-d-1)"),
                              title="d=3, n=20, alpha=0.5, T=10, R=8",
                              mark={"Ring of 3, real data": {"m0": "hub"}})
    assert isinstance(fig, Figure) and path.stat().st_size > 10_000
    axes = fig.axes
    assert len(axes) == 2
    assert all(ax.get_legend() is not None for ax in axes)                      # a legend in every panel
    assert axes[0].get_ylim() == axes[1].get_ylim()                             # shared scale
    assert [ax.get_title() for ax in axes] == list(results)                     # readable titles
    assert fig._suptitle.get_text() == "d=3, n=20, alpha=0.5, T=10, R=8"        # the parameters
    for ax in axes:
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "one fit: d/(n-d-1)" in labels
    labels0 = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert "m0 (hub)" in labels0


def test_plot_error_draws_into_a_given_figure_and_checks_its_input():
    fig = Figure()
    assert plotting.plot_error({"a": _result()}, fig=fig) is fig
    with pytest.raises(ValueError, match="empty"):
        plotting.plot_error({})
    with pytest.raises(ValueError, match="no panel"):
        plotting.plot_error({"a": _result()}, mark={"b": {"m0": "hub"}})
    with pytest.raises(ValueError, match="no model"):
        plotting.plot_error({"a": _result()}, mark={"a": {"m9": "hub"}})
