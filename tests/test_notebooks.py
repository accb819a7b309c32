"""Every notebook runs top to bottom at smoke size (COLLAPSE_JAX_SMOKE=1), one kernel process each.

The kernels (each in its own process, through nbclient) start when collection
ends (``start_in_background``, called by conftest.py) on the upper half of the
CPUs (conftest.pin_to_background_cpus: the second core of a 2-core machine), as
many at a time as that half has CPUs, at most two, so they run while this
process runs the other tests; the tests here, which conftest.py runs last, wait
for them.

At smoke size the notebooks write no figure under docs/ (they export to a temporary
folder only at full size), so CI leaves the tree clean; this is checked too.
"""

import concurrent.futures
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

from conftest import background_cpus, pin_to_background_cpus, stop_at_exit

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
GALLERY = {"shumailov", "dohmatob", "replace_accumulate", "topology", "iclr_public_private",
           "design_graph", "collapse_boundary", "quickstart"}

CONCURRENT = min(2, len(background_cpus()))

# Runs one notebook in a fresh process and saves it with its outputs (argv: notebook, output path, working directory).
RUN_ONE = """
import sys, nbclient, nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[3]}}).execute()
nbformat.write(nb, sys.argv[2])
"""


def _docs_mtimes():
    docs = ROOT / "docs"
    return {p: p.stat().st_mtime for p in docs.glob("*")} if docs.exists() else {}


_RUN = {}  # "done": threading.Event, "results": the fixture's value, "procs": running processes


def _run_all(out):
    env = dict(os.environ, COLLAPSE_JAX_SMOKE="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run(path):
        target = out / path.name
        proc = subprocess.Popen([sys.executable, "-c", RUN_ONE, str(path), str(target), str(path.parent)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        pin_to_background_cpus(proc.pid)  # the kernel it starts inherits the CPUs
        _RUN["procs"].add(proc)
        _, stderr = proc.communicate()
        _RUN["procs"].discard(proc)
        nb = nbformat.read(target, as_version=4) if target.exists() else None
        return path.name, (proc.returncode, stderr, nb)

    try:
        before = _docs_mtimes()
        with concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
            results = dict(pool.map(run, NOTEBOOKS))
        _RUN["results"] = results, before, _docs_mtimes()
    except BaseException as e:  # reported by the fixture
        _RUN["results"] = e
    finally:
        _RUN["done"].set()


def _stop():
    for proc in list(_RUN.get("procs", ())):
        proc.kill()
    shutil.rmtree(_RUN.get("out", ""), ignore_errors=True)


def start_in_background(item):
    """Run every notebook in a daemon thread, CONCURRENT at a time (once, whichever item asks first)."""
    if "done" in _RUN:
        return
    _RUN.update(done=threading.Event(), procs=set(), out=tempfile.mkdtemp(prefix="notebooks-"))
    stop_at_exit(_stop)
    threading.Thread(target=_run_all, args=(pathlib.Path(_RUN["out"]),), daemon=True).start()


@pytest.fixture(scope="module")
def executed():
    """Every notebook run once: ({name: (returncode, stderr, executed notebook)}, docs before, docs after)."""
    start_in_background(None)  # collected without conftest.py's hook
    _RUN["done"].wait()
    if isinstance(_RUN["results"], BaseException):
        raise _RUN["results"]
    return _RUN["results"]


def test_gallery_is_complete():
    assert GALLERY <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, executed):
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert "matplotlib.use" not in source, "notebooks must not force a matplotlib backend"
    results, before, after = executed
    returncode, stderr, nb = results[path.name]
    assert returncode == 0 and nb is not None, stderr[-3000:]
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "a notebook shows its figures inline"
    assert after == before, "at smoke size no notebook may write under docs/"
