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


def test_standard(tmp_path):
    out = _run("standard", tmp_path)
    # the RNG floor counts exactly the data sets the engine draws
    assert out["normals"] == out["datasets"] * out["normals_per_dataset"]
    run = out["runs"]["threefry2x32"]
    for value in (run["updates_per_s"], run["vs_numpy"], run["vs_floor"], run["floor"]["wall_s"],
                  run["first"]["first_result_s"], out["reference"]["scaled_wall_s"]):
        assert _positive(value)
    assert run["first"]["compile_s"] <= run["first"]["first_result_s"]


def test_analytic(tmp_path):
    out = _run("analytic", tmp_path)
    for r in out["results"]:
        assert r["grad_finite"] and _positive(r["value"]) and _positive(r["wall_s"]) and r["grad_norm"] > 0


def test_scaling(tmp_path):
    out = _run("scaling", tmp_path)
    assert {r["varied"] for r in out["speed"]} == {"K", "d", "T", "R"}
    assert all(_positive(r["updates_per_s"]) for r in out["speed"])
    modes = {r["mode"] for r in out["memory"]["runs"]}
    assert modes == {"summary", "trajectory"}
    for r in out["memory"]["runs"]:
        assert r["peak_mb"] >= r["before_run_mb"] > 0


@pytest.mark.parametrize("name", ["reference", "standard", "analytic", "scaling"])
def test_scripts_document_themselves(name):
    module = _script(name)
    assert module.__doc__ and "Run:" in module.__doc__
