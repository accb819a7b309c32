"""Reliability of cj.sweep (issue 12): accumulate, chunk files that lie or are broken, the folder lock,
any chunk size, bad paths and grids, more replicates, dependencies.

Every test reuses test_study's tiny problem (chain of two models, d = 2,
n = m = 8, T = 3) with chunk 16 and block 8, so the compiled chunk function is
shared with test_study and across tests; a finished sweep folder is made once
per module and copied for each test that damages it.
"""

import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import tomllib

import jax
import numpy as np
import pytest

import collapse_jax as cj
from collapse_jax.cli import main
from test_study import (  # noqa: F401 (calls, reference: the shared fixtures)
    BLOCK, CHUNK, GRID, R, ROOT, SEED, T, build, calls, on_devices, reference, run, tiny_config,
)

xr = pytest.importorskip("xarray")
N_POINTS, N_CHUNKS = len(GRID["alpha"]), -(-R // CHUNK)


@pytest.fixture(scope="module")
def finished(reference, tmp_path_factory):
    """A finished sweep folder of the reference problem (copy it before damaging it)."""
    path = tmp_path_factory.mktemp("finished") / "sweep"
    xr.testing.assert_equal(run(path=str(path)).dataset, reference.dataset)
    return path


@pytest.fixture
def folder(finished, tmp_path):
    path = tmp_path / "sweep"
    shutil.copytree(finished, path)
    return path


def chunk(path, point, c):
    return path / "chunks" / f"p{point:06d}-c{c:08d}.npz"


# -------------------------------------------------------------- accumulate
def build_accumulate(alpha):
    eco, task, kw = build(alpha)
    return eco, task, dict(kw, regime="accumulate")


def run_accumulate(**kw):
    args = dict(replicates=R, chunk=CHUNK, block=BLOCK, trajectories=True, progress=False)
    args.update(kw)
    return cj.sweep(build_accumulate, GRID, jax.random.key(SEED), **args)


@pytest.fixture(scope="module")
def accumulate():
    return run_accumulate(devices=jax.local_devices()[:1])


@pytest.mark.default_compiler  # another chunk width or device count: another program
def test_accumulate_regime_runs_and_is_independent_of_the_chunk(accumulate, reference):
    """It crashed inside shard_map (a scan carry that becomes device-varying)."""
    xr.testing.assert_equal(run_accumulate(chunk=24).dataset, accumulate.dataset)  # 24 + 16, not 16 + 16 + 8
    assert np.all(accumulate.dataset["count"].values == R)
    # Accumulating keeps the first fits' data: later generations differ from replace, generation 0 does not.
    acc, rep = accumulate.dataset["mean"], reference.dataset["mean"]
    xr.testing.assert_equal(acc.sel(generation=0), rep.sel(generation=0))
    assert not np.allclose(acc.sel(generation=T).values, rep.sel(generation=T).values)


@pytest.mark.default_compiler  # another chunk width or device count: another program
@pytest.mark.slow
def test_accumulate_bit_identical_on_eight_devices(accumulate, tmp_path):
    out = tmp_path / "eight.nc"
    proc = on_devices(8, f"""
        import test_study_reliability as t
        t.run_accumulate(chunk=32).save({str(out)!r})
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    xr.testing.assert_equal(cj.SweepResult.open(str(out)).dataset, accumulate.dataset)


def test_cli_sweep_accumulate(accumulate, tmp_path, capsys):
    cfg = tiny_config(tmp_path / "acc.toml", tmp_path / "out", simulate_extra='regime = "accumulate"')
    assert main(["sweep", str(cfg), "--no-progress"]) == 0
    assert "final generation 3" in capsys.readouterr().out
    xr.testing.assert_equal(cj.load_sweep(str(tmp_path / "out")).dataset, accumulate.dataset)


# ------------------------------------------------------------- chunk sizes
def sweep_650(chunk):
    return cj.sweep(build, GRID, jax.random.key(SEED), replicates=650, chunk=chunk, progress=False)


@pytest.fixture(scope="module")
def chunk16():
    return sweep_650(16)


@pytest.mark.default_compiler  # another chunk width or device count: another program
@pytest.mark.parametrize("size", [7, 600])
def test_any_positive_chunk_gives_the_same_bits(chunk16, size):
    """chunk=7 and chunk=600 with the default block of 16 were refused; now rounded up to whole blocks."""
    other = sweep_650(size)
    xr.testing.assert_equal(other.dataset, chunk16.dataset)
    assert other.dataset.attrs["chunk"] == -(-size // 16) * 16


def test_ragged_chunk_with_path_and_resume(reference, tmp_path, calls):
    path = tmp_path / "sweep"
    xr.testing.assert_equal(run(chunk=12, path=str(path)).dataset, reference.dataset)  # chunk 12 -> 16
    assert len(calls) == N_POINTS * N_CHUNKS
    calls.clear()
    xr.testing.assert_equal(run(chunk=16, path=str(path)).dataset, reference.dataset)  # the same sweep
    assert calls == []


# ------------------------------------------------------ chunks that lie
def test_chunk_copied_over_another_is_recomputed(reference, folder, calls):
    shutil.copyfile(chunk(folder, 0, 0), chunk(folder, 0, 1))  # replicates 0..15 posing as 16..31
    shutil.copyfile(chunk(folder, 1, 2), chunk(folder, 0, 2))  # point 1 posing as point 0
    with pytest.raises(ValueError, match=r"p000000-c00000001\.npz holds point 0 chunk 0 \(replicates 0\.\.15\), "
                                         r"not point 0 chunk 1 \(replicates 16\.\.31\)\. Rerun"):
        cj.load_sweep(str(folder))
    with pytest.warns(UserWarning) as record:
        res = run(path=str(folder))
    messages = sorted(str(w.message) for w in record if "recomputing" in str(w.message))
    assert len(messages) == 2, messages
    assert "c00000001.npz holds point 0 chunk 0" in messages[0] and "not point 0 chunk 1" in messages[0]
    assert "c00000002.npz holds point 1 chunk 2" in messages[1] and "not point 0 chunk 2" in messages[1]
    assert sorted(calls) == [16, 32]  # exactly those two chunks
    xr.testing.assert_equal(res.dataset, reference.dataset)
    xr.testing.assert_equal(cj.load_sweep(str(folder)).dataset, reference.dataset)
    # The rejected files are kept aside, never deleted.
    assert (folder / "chunks" / "p000000-c00000001.npz.rejected").exists()
    assert (folder / "chunks" / "p000000-c00000002.npz.rejected").exists()


def test_chunk_from_another_sweep_is_recomputed(reference, folder, tmp_path, calls):
    other = tmp_path / "other"
    cj.sweep(lambda alpha: build(alpha, noise=2.0), GRID, jax.random.key(SEED), replicates=R, chunk=CHUNK,
             block=BLOCK, trajectories=True, progress=False, path=str(other))
    shutil.copyfile(chunk(other, 1, 1), chunk(folder, 1, 1))
    calls.clear()
    with pytest.raises(ValueError, match="p000001-c00000001.npz belongs to another sweep configuration"):
        cj.load_sweep(str(folder))
    with pytest.warns(UserWarning, match="belongs to another sweep configuration.*recomputing that chunk"):
        xr.testing.assert_equal(run(path=str(folder)).dataset, reference.dataset)
    assert calls == [16]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_broken_chunk_is_named_then_recomputed(reference, folder, calls, damage):
    file = chunk(folder, 1, 2)
    data = file.read_bytes()
    file.write_bytes({"garbage": b"not a chunk \x00\xff" * 40, "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])
    with pytest.raises(ValueError, match=r"chunk file .*p000001-c00000002\.npz is unreadable .*Rerun the same "
                                         r"cj\.sweep call"):
        cj.load_sweep(str(folder))
    with pytest.warns(UserWarning, match=r"p000001-c00000002\.npz is unreadable.*moved it to .*\.rejected and "
                                         "recomputing that chunk"):
        res = run(path=str(folder))
    assert calls == [32]
    xr.testing.assert_equal(res.dataset, reference.dataset)


def test_chunk_with_a_flipped_byte_is_recomputed(reference, folder, calls):
    """A bit flip inside a compressed member fails its CRC (or decompression): never used."""
    file = chunk(folder, 0, 0)
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="unreadable"):
        xr.testing.assert_equal(run(path=str(folder)).dataset, reference.dataset)
    assert calls == [0]


@pytest.mark.parametrize("content", [b"{not json", b'{"config": {"grid"', b"[]", b'{"hash": "x"}', b"",
                                     b"\xff\xfe\x00"])
def test_corrupt_manifest_is_a_clear_error(folder, calls, content):
    (folder / "manifest.json").write_bytes(content)
    stamp = {f: os.stat(folder / "chunks" / f).st_mtime_ns for f in os.listdir(folder / "chunks")}
    for call in (lambda: run(path=str(folder)), lambda: cj.load_sweep(str(folder))):
        with pytest.raises(ValueError, match=r"sweep manifest .*manifest\.json is corrupt .*delete it and rerun"):
            call()
    assert calls == []
    assert {f: os.stat(folder / "chunks" / f).st_mtime_ns for f in os.listdir(folder / "chunks")} == stamp
    assert (folder / "manifest.json").read_bytes() == content  # left as found


def test_manifest_of_another_format_says_so(folder):
    meta = json.loads((folder / "manifest.json").read_text())
    meta["config"]["format"] = 1
    (folder / "manifest.json").write_text(json.dumps(meta))
    for call in (lambda: run(path=str(folder)), lambda: cj.load_sweep(str(folder))):
        with pytest.raises(ValueError, match=r"manifest\.json has format 1, and this collapse_jax reads format 2"):
            call()


def test_manifest_deleted_is_rebuilt_and_chunks_reused(reference, folder, calls):
    """What the corrupt-manifest error tells the user to do: chunks check themselves against the call."""
    os.remove(folder / "manifest.json")
    xr.testing.assert_equal(run(path=str(folder)).dataset, reference.dataset)
    assert calls == []


# -------------------------------------------------------------------- lock
def test_live_lock_is_refused_and_stale_lock_taken_over(reference, folder, calls):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        lock = folder / "lock"
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        with pytest.raises(ValueError, match=rf"sweep folder .* is in use: held by running process {sleeper.pid} "
                                             rf"\(lock file {lock}\)"):
            run(path=str(folder))
        assert calls == [] and lock.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.warns(UserWarning, match=f"took over the stale lock .* of process {sleeper.pid}"):
        xr.testing.assert_equal(run(path=str(folder)).dataset, reference.dataset)
    assert not lock.exists()


def test_lock_of_another_host_is_refused(folder):
    (folder / "lock").write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
    with pytest.raises(ValueError, match="held by pid 1 on host elsewhere.example.*delete .*lock"):
        run(path=str(folder))


def test_lock_is_released_after_an_error(folder):
    with pytest.raises(ValueError, match="different configuration"):
        run(path=str(folder), chunk=2 * CHUNK)
    assert not (folder / "lock").exists()


def test_second_sweep_in_the_same_folder_is_refused(folder):
    """A real second process: while one sweep holds the folder, another gets the ValueError."""
    from collapse_jax.study.storage import FolderLock

    with FolderLock(str(folder)):
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(f"""
                import test_study
                try:
                    test_study.run(path={str(folder)!r})
                except ValueError as e:
                    print("REFUSED", e)
            """)],
            env=dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "tests")),
            capture_output=True, text=True, timeout=300)
    assert f"REFUSED sweep folder {str(folder)!r} is in use: held by running process {os.getpid()}" in proc.stdout, \
        proc.stderr[-2000:]


# ------------------------------------------------------- paths and grids
def test_path_that_is_a_file_is_refused_before_anything_runs(tmp_path):
    built = []

    def counting_build(alpha):
        built.append(alpha)
        return build(alpha)

    file = tmp_path / "taken"
    file.write_text("x")
    for bad, match in ((file, "is a file, not a folder"), (file / "sub", "cannot be created: .* is a file")):
        with pytest.raises(ValueError, match=f"sweep path '{bad}' {match}"):
            cj.sweep(counting_build, GRID, jax.random.key(SEED), R, CHUNK, path=str(bad), block=BLOCK,
                     progress=False)
    assert built == []
    assert file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_path_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=f"sweep path '{ro / 'sweep'}' is not writable"):
            run(path=str(ro / "sweep"))
    finally:
        ro.chmod(0o700)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_path_on_a_pseudo_file_system_is_refused():
    """Unwritable even for root (os.access would say yes to root)."""
    with pytest.raises(ValueError, match=r"sweep path '/proc/collapse_jax_sweep/x' is not writable \('/proc'"):
        run(path="/proc/collapse_jax_sweep/x")


def test_folder_that_is_not_a_sweep_folder_is_refused(tmp_path):
    (tmp_path / "x" / "manifest.json").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"is not a sweep folder: .*manifest\.json' is a folder"):
        run(path=str(tmp_path / "x"))


def test_grid_parameter_that_build_does_not_take():
    with pytest.raises(ValueError, match=r"grid parameter 'beta' is not a keyword argument of build\(alpha, "
                                         r"noise=1\.0\)"):
        cj.sweep(build, {"alpha": [0.3], "beta": [1, 2]}, jax.random.key(SEED), R, CHUNK, block=BLOCK,
                 progress=False)

    def build_k(K, alpha):
        return build(alpha)

    with pytest.raises(ValueError, match=r"build\(K, alpha\) needs the argument 'K', which is not a grid "
                                         r"parameter \(grid: \['alpha'\]\)"):
        cj.sweep(build_k, GRID, jax.random.key(SEED), R, CHUNK, block=BLOCK, progress=False)


# ---------------------------------------------------------- more replicates
def test_more_replicates_extend_a_finished_sweep(reference, folder, calls):
    more = run(replicates=R + 16)  # in memory, the fresh answer: 56 replicates
    calls.clear()
    grown = run(path=str(folder), replicates=R + 16)
    # Chunk 2 grows from 32..39 to 32..47, chunk 3 (48..55) is new, per point; chunks 0 and 1 are reused.
    assert sorted(calls) == [32, 32, 48, 48]
    xr.testing.assert_equal(grown.dataset, more.dataset)
    assert grown.dataset.attrs["replicates"] == R + 16
    xr.testing.assert_equal(cj.load_sweep(str(folder)).dataset, more.dataset)
    # And back: fewer replicates is the same sweep again (the grown last chunk is recomputed short).
    calls.clear()
    xr.testing.assert_equal(run(path=str(folder)).dataset, reference.dataset)
    assert sorted(calls) == [32, 32]
    xr.testing.assert_equal(cj.load_sweep(str(folder)).dataset, reference.dataset)


# ------------------------------------------------------------ dependencies
def test_sweep_dependencies_are_installed_by_default():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    deps = {d.split(">")[0].split("=")[0].split("<")[0].split(";")[0].strip().lower() for d in project["dependencies"]}
    assert {"xarray", "pandas", "h5netcdf", "h5py", "tqdm"} <= deps
    assert project["optional-dependencies"]["study"] == []  # kept as an alias: pip install "collapse-jax[study]"


def test_missing_dependency_fails_before_anything_is_written(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xarray" else real(name, *a))
    path = tmp_path / "sweep"
    with pytest.raises(ImportError, match=r'needs xarray \(labelled results\): pip install "collapse-jax\[study\]"'):
        run(path=str(path))
    assert not path.exists()
