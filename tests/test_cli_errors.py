"""The command line's bad-input battery (issue 12, DESIGN "Reliability").

Every case must end with exit code 2 and exactly one line on stderr,
``collapse-jax <command>: error: ...``, that names the culprit; no traceback.
Output paths are checked before any computation: ``collapse_jax.simulate``,
``diagnose``, ``optimize`` and ``sweep`` are replaced by functions that fail
the test if they are reached. Nothing here compiles a simulation.
"""

import re

import pytest

import collapse_jax as cj
import collapse_jax.study
from collapse_jax import cli

TRUNCATED_GRAPHML = """<?xml version='1.0' encoding='utf-8'?>
<graphml xmlns="http://graphml.graphdrawing.org/xmlns">
  <key id="d0" for="node" attr.name="kind" attr.type="string" />
  <graph edgedefault="directed">
    <node id="a"><data key="d0">model</data></node>
    <node id="b"><data key="d0">mod"""

UNDIRECTED_GRAPHML = """<?xml version='1.0' encoding='utf-8'?>
<graphml xmlns="http://graphml.graphdrawing.org/xmlns">
  <key id="d0" for="node" attr.name="kind" attr.type="string" />
  <key id="d1" for="node" attr.name="n_synthetic" attr.type="long" />
  <graph edgedefault="undirected">
    <node id="a"><data key="d0">model</data><data key="d1">20</data></node>
    <node id="b"><data key="d0">model</data><data key="d1">20</data></node>
    <edge source="a" target="b" />
  </graph>
</graphml>
"""

PARALLEL_GRAPHML = """<?xml version='1.0' encoding='utf-8'?>
<graphml xmlns="http://graphml.graphdrawing.org/xmlns">
  <key id="d0" for="node" attr.name="kind" attr.type="string" />
  <key id="d1" for="node" attr.name="n_synthetic" attr.type="long" />
  <graph edgedefault="directed">
    <node id="a"><data key="d0">model</data><data key="d1">20</data></node>
    <node id="b"><data key="d0">model</data><data key="d1">20</data></node>
    <edge source="a" target="b" />
    <edge source="a" target="b" />
    <edge source="b" target="a" />
  </graph>
</graphml>
"""

UNKNOWN_KIND_GRAPHML = UNDIRECTED_GRAPHML.replace('edgedefault="undirected"', 'edgedefault="directed"').replace(
    '<data key="d0">model</data>', '<data key="d0">robot</data>', 1)

UNDIRECTED_GML = 'graph [\n  node [ id 0 label "a" kind "model" n_synthetic 20 ]\n' \
                 '  node [ id 1 label "b" kind "model" n_synthetic 20 ]\n  edge [ source 0 target 1 ]\n]\n'

SWEEP_TOML = """replicates = 4
chunk = 4
[graph]
spec = "ring:{K}"
n = 20
m = 20
[task]
dim = DIM
[simulate]
generations = 2
[grid]
K = [2, 3]
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _cases(tmp_path):
    """(argv, words the error line must contain) for every bad input."""
    p = lambda name, text: _write(tmp_path, name, text)  # noqa: E731
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    afile = str(tmp_path / "afile")
    good_toml = p("ok.toml", SWEEP_TOML.replace("DIM", "2"))
    return {
        "truncated graphml": (["simulate", p("t.graphml", TRUNCATED_GRAPHML)], ["t.graphml", "GraphML"]),
        "truncated gml": (["simulate", p("t.gml", UNDIRECTED_GML[:60])], ["t.gml", "GML"]),
        "truncated json": (["simulate", p("t.json", '{"directed": true, "nodes": [{"id": "a"')], ["t.json", "JSON"]),
        "empty json file": (["simulate", p("e.json", "")], ["e.json", "empty"]),
        "empty json object": (["diagnose", p("o.json", "{}")], ["o.json", "nodes"]),
        "json list": (["diagnose", p("l.json", "[1, 2]")], ["l.json"]),
        "edge list bad weight": (["simulate", p("g.edges", "web a 1.0\na b heavy\n")], ["g.edges", "heavy"]),
        "edge list bad line": (["simulate", p("h.edges", "web a 1.0 2.0 3.0\n")], ["h.edges", "line 1"]),
        "directory as graph": (["simulate", str(tmp_path / "adir")], ["adir", "directory"]),
        "missing graph file": (["simulate", str(tmp_path / "nope.graphml")], ["nope.graphml", "no such file"]),
        "missing edge list": (["diagnose", "graphs/nope.txt"], ["nope.txt", "no such file"]),
        "undirected graphml": (["simulate", p("u.graphml", UNDIRECTED_GRAPHML)], ["u.graphml", "undirected"]),
        "undirected gml": (["simulate", p("u.gml", UNDIRECTED_GML)], ["u.gml", "undirected"]),
        "undirected json": (["simulate", p("u.json", '{"directed": false, "multigraph": false, "graph": {}, '
                                                      '"nodes": [{"id": "a", "kind": "model", "n_synthetic": 5}], '
                                                      '"links": []}')], ["u.json", "undirected"]),
        "parallel edges": (["simulate", p("m.graphml", PARALLEL_GRAPHML.replace(
            'edgedefault="directed"', 'edgedefault="directed" parse.edges="3"'))], ["m.graphml"]),
        "unknown node kind": (["simulate", p("k.graphml", UNKNOWN_KIND_GRAPHML)], ["k.graphml", "robot"]),
        "p out of range": (["simulate", "erdos_renyi:5:2:0"], ["erdos_renyi:5:2:0", "p must be in [0, 1]"]),
        "K not an integer": (["simulate", "ring:x"], ["ring:x", "ring:K"]),
        "K too small": (["diagnose", "ring:0"], ["ring:0", "K"]),
        "unknown family": (["simulate", "hexagon:5"], ["hexagon", "ring:K", "erdos_renyi:K:p:seed"]),
        "alpha out of range": (["simulate", "ring:3", "--alpha", "1.5"], ["alpha", "1.5"]),
        "bad choice": (["simulate", "ring:3", "--regime", "bogus"], ["regime", "bogus"]),
        "bad integer option": (["simulate", "ring:3", "--replicates", "many"], ["replicates", "many"]),
        "zero replicates": (["simulate", "ring:3", "--replicates", "0"], ["replicates"]),
        "n too small for OLS": (["simulate", "ring:3", "--dim", "10", "--n", "5", "--m", "5"], ["n"]),
        "missing toml": (["sweep", str(tmp_path / "nope.toml")], ["nope.toml", "no such file"]),
        "toml is a directory": (["sweep", str(tmp_path / "adir")], ["adir", "directory"]),
        "toml wrong type": (["sweep", p("bad.toml", SWEEP_TOML.replace("DIM", '"ten"'))], ["dim", "ten", "integer"]),
        "toml float for int": (["sweep", p("f.toml", SWEEP_TOML.replace("DIM", "2.5"))], ["dim", "2.5"]),
        "toml bad replicates": (["sweep", p("r.toml", SWEEP_TOML.replace("replicates = 4", 'replicates = "4"')
                                            .replace("DIM", "2"))], ["replicates"]),
        "toml invalid": (["sweep", p("i.toml", "replicates = \n")], ["i.toml", "TOML"]),
        "toml grid not a list": (["sweep", p("g.toml", SWEEP_TOML.replace("K = [2, 3]", "K = 2")
                                             .replace("DIM", "2"))], ["K", "list"]),
        "bad grid point": (["sweep", p("z.toml", SWEEP_TOML.replace("K = [2, 3]", "K = [2, 0]")
                                        .replace("DIM", "2"))], ["grid point", "'K': 0", "ring:0"]),
        "toml unknown task": (["sweep", p("t.toml", SWEEP_TOML.replace("DIM", '2\nname = "llm"'))], ["name", "llm"]),
        "task option that does not apply": (["simulate", "ring:3", "--vocab", "5"], ["--vocab", "categorical"]),
        "topology-only with a task option": (["diagnose", "ring:3", "--topology-only", "--dim", "3"],
                                             ["--topology-only", "--dim"]),
        "bad probs": (["simulate", "ring:3", "--task", "categorical", "--probs", "0.5,0.2"], ["--probs"]),
        "bad plot extension": (["simulate", "ring:3", "--plot", str(tmp_path / "p.xyz")], ["--plot", ".png"]),
        "bad result extension": (["simulate", "ring:3", "--out", str(tmp_path / "r.txt")], ["--out", ".npz"]),
        "simulate --out unwritable": (["simulate", "ring:3", "--out", str(tmp_path / "no" / "dir" / "r.npz")],
                                      ["--out", "r.npz"]),
        "simulate --out is a directory": (["simulate", "ring:3", "--out", str(tmp_path / "adir")], ["--out", "adir"]),
        "simulate --plot under a file": (["simulate", "ring:3", "--plot", afile + "/p.png"], ["--plot", "p.png"]),
        "diagnose --json unwritable": (["diagnose", "ring:3", "--json", str(tmp_path / "no" / "d.json")],
                                       ["--json", "d.json"]),
        "optimize --out bad extension": (["optimize", "ring:3", "--out", str(tmp_path / "g.txt")], ["--out", ".graphml"]),
        "optimize --out unwritable": (["optimize", "ring:3", "--out", str(tmp_path / "no" / "g.json")],
                                      ["--out", "g.json"]),
        "demo --out is a file": (["demo", "--out", afile], ["--out", "afile"]),
        "sweep --out unwritable": (["sweep", good_toml, "--out", str(tmp_path / "no" / "s.nc")], ["--out", "s.nc"]),
        "sweep --path is a file": (["sweep", good_toml, "--path", afile], ["--path", "afile"]),
    }


def _names():
    import pathlib
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return list(_cases(pathlib.Path(d)))


@pytest.fixture
def no_compute(monkeypatch):
    """Make every computation fail the test: errors must come before it."""
    def boom(*a, **k):
        raise AssertionError("the computation started before the bad input was refused")

    for name in ("simulate", "diagnose", "optimize", "sweep"):
        monkeypatch.setattr(cj, name, boom)
    monkeypatch.setattr(collapse_jax.study, "sweep", boom)


def run_cli(argv, capsys):
    """Run the CLI in-process: (exit code, stdout, stderr); an escaping exception is a traceback."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's own exit
        rc = e.code
    except BaseException as e:  # noqa: BLE001 - a traceback is exactly what the test looks for
        out, err = capsys.readouterr()
        return "traceback", out, err + f"Traceback: {type(e).__name__}: {e}"
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("name", _names())
def test_bad_input_is_one_line_naming_the_culprit(name, tmp_path, capsys, no_compute):
    argv, words = _cases(tmp_path)[name]
    rc, out, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 2, f"exit {rc}; stderr: {err}"
    assert len(lines) == 1, f"stderr is not one line: {err}"
    assert re.match(rf"collapse-jax {argv[0]}: error: ", lines[0]), lines[0]
    assert "Traceback" not in err
    for w in words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in {lines[0]!r}"


def test_ctrl_c_is_exit_130_and_one_line(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cj, "diagnose", interrupted)
    rc, out, err = run_cli(["diagnose", "ring:3", "--topology-only"], capsys)
    assert rc == 130
    assert err.strip().splitlines() == ["collapse-jax diagnose: interrupted"]


def test_a_bug_is_not_swallowed(monkeypatch, capsys):
    """Only bad input (ValueError, OSError) becomes one line; a genuine bug still tracebacks."""
    def bug(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cj, "diagnose", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main(["diagnose", "ring:3", "--topology-only"])


def test_missing_optional_package_is_one_line(monkeypatch, capsys):
    def missing(*a, **k):
        raise ModuleNotFoundError("No module named 'xarray'", name="xarray")

    monkeypatch.setattr(cj, "diagnose", missing)
    rc, out, err = run_cli(["diagnose", "ring:3", "--topology-only"], capsys)
    assert rc == 2 and err.strip().splitlines() == [
        "collapse-jax diagnose: error: this needs the package 'xarray', which is not installed (pip install xarray)"]
