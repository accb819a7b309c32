"""Every notebook runs top to bottom at smoke size (COLLAPSE_JAX_SMOKE=1), one kernel process each.

At smoke size the notebooks write no figure under docs/ (they export to a temporary
folder only at full size), so CI leaves the tree clean; this is checked too.
"""

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
GALLERY = {"shumailov", "dohmatob", "replace_accumulate", "topology", "iclr_public_private",
           "design_graph", "collapse_boundary", "quickstart"}


def test_gallery_is_complete():
    assert GALLERY <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("COLLAPSE_JAX_SMOKE", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(path, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "matplotlib.use" not in source, "notebooks must not force a matplotlib backend"
    docs = ROOT / "docs"
    before = {p: p.stat().st_mtime for p in docs.glob("*")} if docs.exists() else {}
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "a notebook shows its figures inline"
    after = {p: p.stat().st_mtime for p in docs.glob("*")} if docs.exists() else {}
    assert after == before, "at smoke size a notebook must not write under docs/"
