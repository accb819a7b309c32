"""Tests of collapse_jax.study (cj.sweep) and the `collapse-jax sweep` command.

Compiles dominate the cost, so every test reuses one tiny problem (a chain
of two models, d = 2, n = m = 8, T = 3) with chunk 16 and block 8 where it can:
the reference sweep compiles it once for the whole module.
"""

import importlib
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import collapse_jax as cj
from collapse_jax import study
from collapse_jax.cli import main
from collapse_jax.study.streaming import Accumulator, chunk_record

# Results that different programs must reproduce bit for bit (another chunk width, another device count,
# cj.simulate) are checked with XLA's default flags (conftest.py): those tests carry the `default_compiler`
# mark. A resumed or shared sweep reruns the same program, so the rest run under the suite's fast flags.

# The module (not the function that collapse_jax.study.sweep names): where the chunk function lives.
sweep_module = importlib.import_module("collapse_jax.study.sweep")

xr = pytest.importorskip("xarray")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GRID = {"alpha": [0.3, 0.7]}
R, CHUNK, BLOCK, T, DIM, N = 40, 16, 8, 3, 2, 8
SEED = 0


def build(alpha, noise=1.0):
    """The module's tiny problem; alpha and noise are leaves (no recompile)."""
    eco = cj.graphs.chain(2, n=N, m=N, alpha=alpha)
    return eco, cj.LinearRegression(dim=DIM, noise=noise), dict(generations=T)


def run(**kw):
    args = dict(replicates=R, chunk=CHUNK, block=BLOCK, trajectories=True, progress=False)
    args.update(kw)
    return cj.sweep(build, GRID, jax.random.key(SEED), **args)


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted, in-memory, one-device sweep every other test compares with."""
    return run(devices=jax.local_devices()[:1])


@pytest.fixture
def calls(monkeypatch):
    """Records the first replicate of every chunk the sweep computes (test_study_reliability uses it too)."""
    seen = []
    real = sweep_module._run_chunk

    def counting(*args, **kw):
        seen.append(int(args[3]))
        return real(*args, **kw)

    monkeypatch.setattr(sweep_module, "_run_chunk", counting)
    return seen


def _subprocess(script, env_extra=None, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + HERE, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------- correctness
@pytest.mark.default_compiler
def test_replicates_match_simulate_and_summaries_match_numpy(reference):
    ds = reference.dataset
    assert ds["mean"].dims == ("alpha", "generation", "model")
    edges32 = study.DEFAULT_BINS.astype(np.float32)
    for p, alpha in enumerate(GRID["alpha"]):
        eco, task, kw = build(alpha)
        # Point p uses fold_in(key, p): the sweep replays cj.simulate replicate for replicate.
        res = cj.simulate(eco, task, jax.random.fold_in(jax.random.key(SEED), p), replicates=R, **kw)
        e = np.asarray(res.error)
        traj = ds["error_trajectory"].sel(alpha=alpha).values
        np.testing.assert_array_equal(traj, e.astype(np.float64))
        np.testing.assert_array_equal(ds["dispersion_trajectory"].sel(alpha=alpha).values,
                                      np.asarray(res.metrics["dispersion"], np.float64))
        # Summaries against NumPy float64 on the same replicates (float32 block sums: rtol 1e-5).
        e64 = e.astype(np.float64)
        pt = ds.sel(alpha=alpha)
        np.testing.assert_allclose(pt["mean"].values, e64.mean(0), rtol=1e-5)
        np.testing.assert_allclose(pt["var"].values, e64.var(0, ddof=1), rtol=1e-5)
        np.testing.assert_allclose(pt["sem"].values, e64.std(0, ddof=1) / np.sqrt(R), rtol=1e-5)
        np.testing.assert_allclose(pt["cosine_mean"].values, np.asarray(res.metrics["cosine"], float).mean(0),
                                   rtol=1e-5)
        np.testing.assert_array_equal(pt["count"].values, np.full((T + 1, 2), R))
        np.testing.assert_array_equal(pt["min"].values, e64.min(0))
        np.testing.assert_array_equal(pt["max"].values, e64.max(0))
        # Histogram: exact counts, bins [e_i, e_i+1) with under- and overflow bins.
        idx = np.searchsorted(edges32, e, side="right")
        expect = np.stack([np.bincount(idx[:, t, k], minlength=len(edges32) + 1)
                           for t in range(T + 1) for k in range(2)]).reshape(T + 1, 2, -1)
        np.testing.assert_array_equal(pt["hist"].values, expect)
        # Quantiles from the histogram lie within one bin of the order statistics around rank qR.
        srt = np.sort(e64, 0)
        for j, q in enumerate(ds["quantile"].values):
            est = pt["quantiles"].values[..., j]
            k = q * R
            lo_stat = srt[max(int(np.floor(k)) - 1, 0)]
            hi_stat = srt[min(int(np.ceil(k)), R - 1)]
            lo_edge = np.concatenate([[0.0], study.DEFAULT_BINS])[np.searchsorted(study.DEFAULT_BINS, lo_stat, "right")]
            hi_edge = np.concatenate([study.DEFAULT_BINS, [np.inf]])[np.searchsorted(study.DEFAULT_BINS, hi_stat, "right")]
            assert np.all(est >= np.minimum(lo_edge, lo_stat) * (1 - 1e-6)), (q, est, lo_edge)
            assert np.all(est <= np.maximum(hi_edge, hi_stat) * (1 + 1e-6)), (q, est, hi_edge)


def test_generation0_error_matches_ols_theory(reference):
    """Generation 0 is one OLS fit on n = 8 Gaussian samples: E risk = sigma^2 d / (n - d - 1)."""
    ds = reference.dataset
    expected = DIM / (N - DIM - 1)
    for model in ("m0", "m1"):  # m0 reads fresh data, m1 fits on n0 = m samples of the truth
        g0 = ds.sel(generation=0, model=model)
        # The two grid points are independent (different keys): pool them.
        mean = float(g0["mean"].mean())
        sem = float(np.sqrt((g0["sem"].values ** 2).sum()) / 2)
        z = (mean - expected) / sem
        assert abs(z) < 4, (model, mean, expected, z)


@pytest.mark.default_compiler
def test_bit_identical_for_any_chunk_size(reference):
    other = run(chunk=24)  # 40 replicates as 24 + 16 instead of 16 + 16 + 8
    xr.testing.assert_equal(other.dataset, reference.dataset)
    assert other.dataset.attrs["chunk"] == 24


def on_devices(count, script, **kw):
    """Run ``script`` (which may import test_study) in a fresh process with ``count`` CPU devices."""
    check = f"import jax\nassert len(jax.devices()) == {count}, jax.devices()\n"
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
    return _subprocess(check + textwrap.dedent(script), {"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}, **kw)


# 2 devices with chunk 16: 8 replicates per device, against 16 in the one-device reference (other widths, other
# device count); the program compiles once per device, so 8 devices (chunk 32: 8 each, padded to 64) are slow.
@pytest.mark.default_compiler
@pytest.mark.parametrize("count,chunk", [(2, 16), pytest.param(8, 32, marks=pytest.mark.slow)])
def test_bit_identical_on_other_device_counts(reference, tmp_path, count, chunk):
    out = tmp_path / "other.nc"
    proc = on_devices(count, f"""
        import test_study
        test_study.run(chunk={chunk}).save({str(out)!r})
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    other = cj.SweepResult.open(str(out)).dataset
    xr.testing.assert_equal(other, reference.dataset)


def test_canonical_merge_ignores_chunking_and_arrival_order():
    """Host side alone (NumPy): block summaries merged from any chunking, in any order, agree bitwise."""
    rng = np.random.default_rng(0)
    block, nblocks = 4, 13  # 52 replicates, the last block short
    x = rng.lognormal(size=(nblocks * block, 3)) * 1e3
    x[-2:] = np.nan  # past the end: not in any block
    n = np.full((nblocks, 3), block)
    n[-1] = block - 2
    xb = x.reshape(nblocks, block, 3)
    mean = np.nanmean(xb, 1)
    m2 = np.nansum((xb - mean[:, None]) ** 2, 1)

    def records(sizes):
        out, start = [], 0
        for size in sizes:
            sl = slice(start, start + size)
            stats = (n[sl], mean[sl], m2[sl], np.zeros((size, 3), np.int64))
            extremes = (np.zeros(3, np.int64), np.zeros(3), np.zeros(3))
            out.append(chunk_record({s: stats for s in study.SERIES}, {s: extremes for s in study.SERIES},
                                           np.zeros((1, 1, 2), np.int64), None, first_block=start, nblocks=size,
                                           nvalid=size * block))
            start += size
        return out

    def merged(recs):
        acc = Accumulator(False)
        for r in recs:
            acc.add(r)
        res = acc.result()
        return res["error_n"], res["error_mean"], res["error_m2"]

    base = merged(records([1] * nblocks))
    for sizes in ([13], [6, 7], [2, 2, 2, 3, 4], [5, 8]):
        recs = records(sizes)
        for order in (recs, recs[::-1], [recs[i] for i in rng.permutation(len(recs))]):
            got = merged(order)
            for a, b in zip(got, base):
                np.testing.assert_array_equal(a, b)
    valid = x[:-2]
    np.testing.assert_array_equal(base[0], np.full(3, len(valid)))
    np.testing.assert_allclose(base[1], valid.mean(0), rtol=1e-13)
    np.testing.assert_allclose(base[2] / (len(valid) - 1), valid.var(0, ddof=1), rtol=1e-12)


# ------------------------------------------------------------------ resume
def test_killed_sweep_resumes_without_recomputing(reference, tmp_path, calls):
    path = tmp_path / "sweep"
    # The child dies by SIGKILL while writing its third chunk: after the temporary
    # file is complete, before os.replace publishes it.
    proc = _subprocess(f"""
        import os, signal
        import test_study
        real_replace, calls = os.replace, []
        def replace(src, dst):
            if "chunks" in str(dst):
                calls.append(dst)
                if len(calls) == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
        os.replace = replace
        test_study.run(path={str(path)!r})
    """)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    chunk_dir = path / "chunks"
    done = sorted(f for f in os.listdir(chunk_dir) if f.endswith(".npz") and not f.startswith(".tmp"))
    assert len(done) == 2
    assert [f for f in os.listdir(chunk_dir) if f.startswith(".tmp")]  # the interrupted write
    stamps = {f: os.stat(chunk_dir / f).st_mtime_ns for f in done}

    with pytest.warns(UserWarning, match="took over the stale lock .*sweep/lock of process"):  # the dead child's
        resumed = run(path=str(path))
    assert not (path / "lock").exists()
    assert len(calls) == 2 * 3 - 2  # 2 points x 3 chunks, 2 finished before the kill
    assert {f: os.stat(chunk_dir / f).st_mtime_ns for f in done} == stamps
    xr.testing.assert_equal(resumed.dataset, reference.dataset)
    on_disk = cj.SweepResult.open(str(path / "result.nc")).dataset
    xr.testing.assert_equal(on_disk, reference.dataset)

    # A third call computes nothing.
    calls.clear()
    xr.testing.assert_equal(run(path=str(path)).dataset, reference.dataset)
    assert calls == []
    xr.testing.assert_equal(cj.load_sweep(str(path)).dataset, reference.dataset)


def test_different_configuration_at_same_path_is_an_error(reference, tmp_path):
    path = str(tmp_path / "sweep")
    run(path=path)
    with pytest.raises(ValueError, match="different configuration: chunk"):
        run(path=path, chunk=2 * CHUNK)
    with pytest.raises(ValueError, match="different configuration: grid"):
        cj.sweep(build, {"alpha": [0.3, 0.8]}, jax.random.key(SEED), replicates=R, chunk=CHUNK, block=BLOCK,
                 trajectories=True, progress=False, path=path)
    with pytest.raises(ValueError, match="key"):
        cj.sweep(build, GRID, jax.random.key(SEED + 1), replicates=R, chunk=CHUNK, block=BLOCK,
                 trajectories=True, progress=False, path=path)
    # Same grid and options, but build now returns another task: never a silent mix.
    with pytest.raises(ValueError, match=r"build returns a different ecosystem, task or options at points \[0, 1\]"):
        cj.sweep(lambda alpha: build(alpha, noise=2.0), GRID, jax.random.key(SEED), replicates=R, chunk=CHUNK,
                 block=BLOCK, trajectories=True, progress=False, path=path)


def test_process_shares_then_assemble(reference, tmp_path):
    """Array-job style: each share runs its chunks; the last complete call assembles."""
    path = str(tmp_path / "sweep")
    assert run(path=path, process_index=0, process_count=2) is None
    n_files = len([f for f in os.listdir(os.path.join(path, "chunks")) if f.endswith(".npz")])
    assert n_files == 3  # tasks 0, 2, 4 of 6
    with pytest.raises(ValueError, match="unfinished: 3 chunks missing"):
        cj.load_sweep(path)
    last = run(path=path, process_index=1, process_count=2)
    xr.testing.assert_equal(last.dataset, reference.dataset)
    xr.testing.assert_equal(cj.load_sweep(path).dataset, reference.dataset)


@pytest.mark.slow
def test_two_processes_with_jax_distributed(reference, tmp_path):
    """The documented multi-host recipe, as two CPU processes of one machine."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    path, script = str(tmp_path / "sweep"), tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import sys, jax
        jax.distributed.initialize(coordinator_address="localhost:{port}", num_processes=2,
                                   process_id=int(sys.argv[1]))
        import test_study
        res = test_study.run(path={path!r})
        res.save({str(tmp_path)!r} + f"/p{{jax.process_index()}}.nc")
    """))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + HERE, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, str(script), str(i)], env=env, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    for i in range(2):
        xr.testing.assert_equal(cj.SweepResult.open(str(tmp_path / f"p{i}.nc")).dataset, reference.dataset)


# ---------------------------------------------------------------- retrace
def test_static_signatures_compile_once_each(reference, monkeypatch):
    traced = []
    real = sweep_module.simulate_replicate

    def spy(eco, *args):
        traced.append(eco.K)  # runs once per trace, not per replicate
        return real(eco, *args)

    monkeypatch.setattr(sweep_module, "simulate_replicate", spy)

    def build_k(K, alpha):
        eco = cj.graphs.chain(K, n=N, m=N, alpha=alpha)
        return eco, cj.LinearRegression(dim=DIM), dict(generations=T)

    res = cj.sweep(build_k, {"alpha": [0.3, 0.5, 0.7], "K": [2, 3]}, jax.random.key(SEED), replicates=R,
                   chunk=CHUNK, block=BLOCK, trajectories=True, progress=False)
    ds = res.dataset
    assert ds.attrs["signatures"] == 2
    assert traced.count(3) == 1  # K = 3 is new: one trace for all three alphas
    assert traced.count(2) <= 1  # K = 2 matches the reference's compiled function
    # Variable K: the model axis is the union; K = 2 points have no m2.
    assert list(ds["model"].values) == ["m0", "m1", "m2"]
    assert np.all(np.isnan(ds["mean"].sel(K=2, model="m2").values))
    assert np.all(ds["count"].sel(K=3).values == R)
    # Point (alpha, K) = (0.7, 2) has flat index 4: key fold_in(key, 4).
    e = cj.simulate(*build_k(2, 0.7)[:2], jax.random.fold_in(jax.random.key(SEED), 4), generations=T,
                    replicates=R).error
    np.testing.assert_array_equal(ds["error_trajectory"].sel(alpha=0.7, K=2, model=["m0", "m1"]).values,
                                  np.asarray(e, np.float64))


# ----------------------------------------------------------------- results
def test_progress_bar_and_silence(reference, capsys):
    run(progress=False)
    assert capsys.readouterr().err == ""
    run(progress=True)
    err = capsys.readouterr().err
    assert "sweep" in err and "6/6" in err and "chunk" in err


def test_dataframe_and_netcdf_round_trip(reference, tmp_path):
    df = reference.to_dataframe()
    assert len(df) == len(GRID["alpha"]) * (T + 1) * 2
    for col in ("alpha", "generation", "model", "mean", "sem", "count", "q0.5", "cosine_mean"):
        assert col in df.columns
    row = df[(df.alpha == 0.7) & (df.generation == 2) & (df.model == "m1")].iloc[0]
    assert row["mean"] == float(reference.dataset["mean"].sel(alpha=0.7, generation=2, model="m1"))
    assert row["q0.5"] == float(reference.dataset["quantiles"].sel(alpha=0.7, generation=2, model="m1",
                                                                   quantile=0.5))
    for engine in ("h5netcdf", "netcdf4", "scipy"):
        if engine == "netcdf4":
            pytest.importorskip("netCDF4")
        else:
            pytest.importorskip(engine)
        file = str(tmp_path / f"r_{engine}.nc")
        reference.save(file, engine=engine)
        back = cj.SweepResult.open(file).dataset
        np.testing.assert_array_equal(back["mean"].values, reference.dataset["mean"].values)
        np.testing.assert_array_equal(back["hist"].values, reference.dataset["hist"].values)


def test_overflow_is_reported_as_inf(reference):
    """Label noise 1.3e19 puts the error near float32's limit: some replicates overflow to inf."""
    res = cj.sweep(lambda alpha: build(alpha, noise=1.3e19), GRID, jax.random.key(SEED), replicates=R,
                   chunk=CHUNK, block=BLOCK, trajectories=True, progress=False)
    ds = res.dataset
    e = ds["error_trajectory"].values  # (alpha, replicate, generation, model)
    bad = ~np.isfinite(e)
    assert bad.any() and not bad.all(axis=1).any()  # some, never all, replicates of a cell overflow
    assert np.all(np.isinf(e[bad]))  # the engine reports inf, never NaN
    n_bad = bad.sum(1)
    np.testing.assert_array_equal(ds["nonfinite"].values, n_bad)
    np.testing.assert_array_equal(ds["count"].values, R - n_bad)
    some = n_bad > 0
    assert np.all(ds["mean"].values[some] == np.inf) and np.all(ds["var"].values[some] == np.inf)
    clean = e.mean(1)  # NumPy: inf where a replicate overflowed
    np.testing.assert_allclose(ds["mean"].values[~some], clean[~some], rtol=1e-5)
    # Sums of squares near 1e76 are not float32 numbers; the host assembles them in float64.
    with np.errstate(invalid="ignore"):
        var = e.var(1, ddof=1)
    np.testing.assert_allclose(ds["var"].values[~some], var[~some], rtol=1e-5)
    finite = np.where(bad, np.nan, e)
    np.testing.assert_array_equal(ds["max"].values, np.nanmax(finite, 1))
    # The top quantiles fall among the overflowed replicates exactly when q R > R - nonfinite.
    for j, q in enumerate(ds["quantile"].values):
        inside = q * R > R - n_bad
        assert np.all(np.isinf(ds["quantiles"].values[..., j][inside]))
        assert np.all(np.isfinite(ds["quantiles"].values[..., j][~inside]))


# --------------------------------------------------------------------- CLI
def tiny_config(file, out, spec="chain:2", grid_extra="", simulate_extra=""):
    """Write the module's tiny problem as a `collapse-jax sweep` TOML config (results to ``out``)."""
    file.write_text(textwrap.dedent(f"""
        seed = {SEED}
        replicates = {R}
        chunk = {CHUNK}
        block = {BLOCK}
        trajectories = true
        path = "{out}"
        [graph]
        spec = "{spec}"
        n = {N}
        m = {N}
        [task]
        dim = {DIM}
        [simulate]
        generations = {T}
        {simulate_extra}
        [grid]
        {grid_extra}
        alpha = {GRID["alpha"]}
    """))
    return file


def test_cli_sweep_tiny_config(reference, tmp_path, capsys):
    out = tmp_path / "cli"
    cfg = tiny_config(tmp_path / "tiny.toml", out, spec="chain:{K}", grid_extra="K = [2]")
    assert main(["sweep", str(cfg), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "final generation 3" in text and "m1" in text
    res = cj.SweepResult.open(str(out / "result.nc")).dataset
    assert res["mean"].dims == ("K", "alpha", "generation", "model")
    # Same problem, keys and labels as the reference (its grid point p is (K=2, alpha_p)).
    xr.testing.assert_equal(res.sel(K=2, drop=True), reference.dataset)
    assert (out / "summary.csv").exists()

    cfg.write_text(cfg.read_text().replace("[grid]", "[grid]\nbogus = [1]"))
    assert main(["sweep", str(cfg)]) == 2
    assert "grid parameter 'bogus' is used nowhere" in capsys.readouterr().err


def test_example_config_parses():
    from collapse_jax.cli import sweep_config

    kw = sweep_config(os.path.join(ROOT, "examples", "sweep.toml"))
    assert kw["grid"] == {"K": [4, 8], "alpha": [0.25, 0.5, 0.75]}
    eco, task, opts = kw["build"](K=8, alpha=0.25)
    assert eco.K == 8 and task.dim == 10 and opts["generations"] == 50
    np.testing.assert_allclose(np.asarray(eco.alpha)[0], 0.25)  # m0 reads data and m7


# --------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(block=6, chunk=12), "block must be a power of two"),
    (dict(replicates=0), "replicates must be a positive integer"),
    (dict(quantiles=(0.5, 1.5)), "quantiles must lie in"),
    (dict(bins=[1.0, 0.5]), "bins must be"),
    (dict(process_index=2, process_count=2), "process_index"),
    (dict(process_index=0, process_count=2), "needs path"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(**kwargs)


@pytest.mark.parametrize("grid, match", [
    ({"alpha": []}, r"grid\['alpha'\] is empty"),
    ({"alpha": [0.3, 0.3]}, "duplicate"),
    ({"alpha": [np.eye(2)]}, "not a scalar label"),
    ({"model": [1]}, "reserved"),
    ({"alpha": 0.3}, "must be a list"),
])
def test_bad_grids(grid, match):
    with pytest.raises(ValueError, match=match):
        cj.sweep(build, grid, jax.random.key(0), replicates=R, chunk=CHUNK, block=BLOCK, progress=False)


def test_bad_build_results():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"grid point \{'alpha': 0.3\}: build must return"):
        cj.sweep(lambda alpha: build(alpha)[:2], GRID, key, R, CHUNK, block=BLOCK, progress=False)
    with pytest.raises(ValueError, match=r"simulate_kwargs \['replicates'\] are not allowed"):
        cj.sweep(lambda alpha: build(alpha)[:2] + (dict(generations=T, replicates=5),), GRID, key, R, CHUNK,
                 block=BLOCK, progress=False)
    with pytest.raises(ValueError, match="must set 'generations'"):
        cj.sweep(lambda alpha: build(alpha)[:2] + ({},), GRID, key, R, CHUNK, block=BLOCK, progress=False)
    with pytest.raises(ValueError, match=r"grid point \{'alpha': 0.3\}: regime must be"):
        cj.sweep(lambda alpha: build(alpha)[:2] + (dict(generations=T, regime="keep"),), GRID, key, R, CHUNK,
                 block=BLOCK, progress=False)
