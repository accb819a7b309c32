"""The benchmark scripts run end to end at tiny sizes and write sane JSON (no timing asserts).

``reference.py --check`` is also a correctness test: the plain NumPy loop is an
independent implementation of the engine's semantics for the standard
study's class, so their final-generation mean errors must agree by z-score.
"""

import importlib.util
import json
import math
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _script(name):
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name, tmp_path, *extra):
    path = tmp_path / f"{name}.json"
    _script(name).main(["--smoke", "--json", str(path), *extra])
    with open(path) as f:
        out = json.load(f)
    assert out["benchmark"] == name and out["machine"]["backend"]
    return out


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_reference_agrees_with_engine(tmp_path):
    out = _run("reference", tmp_path, "--check")
    assert _positive(out["updates_per_s"])
    check = out["check"]
    assert len(check["z"]) == out["config"]["K"]
    assert check["max_abs_z"] < 4.0, check


BASELINES = ("numpy lstsq loop", "numpy cholesky loop", "numpy batched materialized f32",
             "numpy batched bartlett f32")


def test_standard(tmp_path):
    import jax

    before = jax.config.jax_threefry_partitionable
    out = _run("standard", tmp_path, "--skip", "first")  # first result: test_standard_first_result
    # the benchmark enters the engine's threefry form only while it runs (a leak changed later tests' streams)
    assert jax.config.jax_threefry_partitionable == before
    assert out["machine"]["load_average"] is None or len(out["machine"]["load_average"]) == 3
    # the RNG floor counts exactly the data sets the engine draws
    assert out["normals"] == out["datasets"] * out["normals_per_dataset"]
    run = out["runs"]["threefry2x32"]
    for value in (run["updates_per_s"], run["vs_numpy"], run["vs_floor"], run["floor"]["wall_s"],
                  run["engine"]["cpu_s"], out["reference"]["scaled_wall_s"]):
        assert _positive(value)
    # every baseline ran, was timed, and agrees with the engine's mean final error (64 replicates each)
    assert set(out["baselines"]) == set(BASELINES)
    for name, b in out["baselines"].items():
        assert _positive(b["scaled_wall_s"]) and _positive(run["vs_baselines"][name]), name
        assert abs(b["z_vs_engine"]) < 4.0, (name, b)
    # Collapse-or-Thrive: the loop and the engine agree on the error growth, and with its expectation
    cot = out["collapse_or_thrive"]
    assert _positive(cot["loop"]["updates_per_s"]) and _positive(cot["engine"]["updates_per_s"])
    assert abs(cot["z_engine_vs_loop"]) < 4.0, cot
    assert abs(cot["engine_rel_diff_vs_expected"]) < 0.3 and abs(cot["loop_rel_diff_vs_expected"]) < 0.3, cot
    # the breakdown of one engine step: every piece timed, cumulative pieces of the draw
    parts = out["breakdown"]
    assert len(parts) == 7 and all(_positive(r["cpu_ms"]) for r in parts)
    # RNG rates of the three JAX implementations and NumPy
    gens = {r["generator"] for r in out["rng_rates"]}
    assert {"jax threefry2x32", "jax rbg", "jax unsafe_rbg"} <= gens and len(gens) == 4
    assert all(_positive(r["per_s"]) and _positive(r["bits_per_s"]) for r in out["rng_rates"])
    assert "first" not in out
    assert {t["target"] for t in out["targets"]} >= {"engine time / RNG floor"}


@pytest.mark.slow  # 15-50 s: three fresh processes, each compiling the standard study
def test_standard_first_result(tmp_path):
    out = _run("standard", tmp_path, "--skip", "baselines", "cot", "breakdown", "rng")
    # first result: cold, and warm from a persistent cache that the fill process wrote
    first = out["first"]
    for name in ("cold", "fill", "warm"):
        assert _positive(first[name]["first_result_s"]) and first[name]["compile_s"] <= first[name]["first_result_s"]
        assert first[name]["from_launch_s"] >= first[name]["first_result_s"]
    assert not first["cold"]["cache"] and first["warm"]["cache"] and first["warm"]["cache_files"] > 0
    assert {t["target"] for t in out["targets"]} >= {"first result, warm cache (from call)"}


def test_baseline_check_catches_a_wrong_baseline():
    """The z-score check has power: a baseline with the wrong noise level fails it, a right one passes."""
    ref = _script("reference")
    common = _script("common")
    eco = common.standard_ecosystem(6, 0.2, 0, 16, 16, 0.5)
    import jax
    import numpy as np

    eng = np.asarray(common.cj.simulate(eco, common.cj.LinearRegression(dim=4), jax.random.key(5), generations=5,
                                        replicates=256, batch_size=64).error)[:, -1].mean(1)
    for algorithm in ("materialized", "bartlett"):
        right = ref.batched_study(eco, 4, 1.0, 5, 256, seed=1, algorithm=algorithm)[:, -1].mean(1)
        wrong = ref.batched_study(eco, 4, 1.3, 5, 256, seed=1, algorithm=algorithm)[:, -1].mean(1)
        assert abs(common.zscore(right, eng)) < 4.0, algorithm
        assert abs(common.zscore(wrong, eng)) > 4.0, algorithm


def test_analytic(tmp_path):
    out = _run("analytic", tmp_path)
    for r in out["results"]:
        assert r["grad_finite"] and _positive(r["value"]) and _positive(r["wall_s"]) and r["grad_norm"] > 0


@pytest.mark.slow
def test_scaling(tmp_path):
    out = _run("scaling", tmp_path)
    assert {r["varied"] for r in out["speed"]} == {"K", "d", "T", "R"}
    assert all(_positive(r["updates_per_s"]) for r in out["speed"])
    flops = out["per_flop"]["rows"]
    assert [r["d"] for r in flops] == [4, 8] and flops[0]["time_per_flop_vs_first"] == 1.0
    assert all(_positive(r["s_per_flop"]) and 0 < r["fraction_of_matmul_rate"] for r in flops)
    modes = {r["mode"] for r in out["memory"]["runs"]}
    assert modes == {"summary", "trajectory"}
    for r in out["memory"]["runs"]:
        assert r["peak_mb"] >= r["before_run_mb"] > 0


@pytest.mark.slow  # 25-45 s: compiles all six task engines; each task's engine is tested in its own file
def test_tasks(tmp_path):
    out = _run("tasks", tmp_path)
    names = ["linear, suffstat", "linear, samples", "gaussian", "categorical", "logistic", "poisson"]
    assert list(out["tasks"]) == names
    assert out["tasks"]["linear, suffstat"]["engine"] == "suffstat"
    assert out["tasks"]["linear, samples"]["engine"] == "samples"
    for r in out["tasks"].values():
        assert _positive(r["updates_per_s"]) and _positive(r["updates_per_cpu_s"]), r
        assert r["updates"] == out["config"]["R"] * (out["config"]["T"] + 1) * out["config"]["K"]


@pytest.mark.slow
def test_levers(tmp_path):
    out = _run("levers", tmp_path)
    assert out["setting"][2:] == [True, False] and len(out["runs"]["before"]) == len(out["runs"]["after"]) == 1
    assert all(_positive(v) for v in out["ratio"].values())


@pytest.mark.parametrize("name", ["reference", "standard", "analytic", "scaling", "tasks", "levers", "first_result"])
def test_scripts_document_themselves(name):
    module = _script(name)
    assert module.__doc__ and "Run:" in module.__doc__
