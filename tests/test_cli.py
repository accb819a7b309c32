"""The command line: demo, simulate, graph loading."""

import json

import networkx as nx
import numpy as np
import pytest

from collapse_jax import cli


def test_demo_writes_table_plot_and_results(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--replicates", "20", "--generations", "6"]) == 0
    printed = capsys.readouterr().out
    assert "ring6_no_real" in printed and "grows" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"ring6_real_at_m0", "ring6_no_real", "star6"}
    assert [r["model"] for r in summary["star6"]] == [f"m{k}" for k in range(6)]
    assert (out / "error_vs_generation.png").stat().st_size > 10_000
    saved = np.load(out / "star6.npz")
    assert saved["error"].shape == (20, 7, 6)
    assert np.allclose(saved["error"][:, -1].mean(0), [r["final_mean"] for r in summary["star6"]], rtol=1e-5)


def test_simulate_family_spec_and_graph_files(tmp_path, capsys):
    assert cli.main(["simulate", "star:3", "--dim", "3", "--n", "20", "--m", "20",
                     "--generations", "3", "--replicates", "10", "--out", str(tmp_path / "r.npz")]) == 0
    assert "m2" in capsys.readouterr().out
    assert np.load(tmp_path / "r.npz")["error"].shape == (10, 4, 3)

    G = nx.DiGraph()
    G.add_node("data", kind="data", n=30)
    G.add_node("a", kind="model", n_synthetic=30)
    G.add_node("b", kind="model", n_synthetic=30)
    G.add_edges_from([("data", "a", {"weight": 1.0}), ("a", "a", {"weight": 1.0}), ("a", "b", {"weight": 2.0})])
    paths = {"g.graphml": nx.write_graphml, "g.gml": nx.write_gml}
    for name, write in paths.items():
        write(G, tmp_path / name)
    with open(tmp_path / "g.json", "w") as f:
        json.dump(nx.node_link_data(G, edges="links"), f)
    for name in [*paths, "g.json"]:
        eco = cli.load_graph(str(tmp_path / name))
        assert eco.models == ("a", "b") and eco.data == ("data",)
        np.testing.assert_allclose(np.asarray(eco.W), [[0.5, 0.0], [1.0, 0.0]], rtol=1e-6)


def test_bad_graph_spec_is_a_clear_error(capsys):
    assert cli.main(["simulate", "hexagon:5", "--generations", "1", "--replicates", "1"]) == 2
    assert "hexagon:5" in capsys.readouterr().err
    with pytest.raises(ValueError, match="ring:K"):
        cli.load_graph("ring:x")


# ------------------------------------------------------------ graph files
def _model_graph():
    G = nx.DiGraph()
    G.add_node("web", kind="data", n=30)
    G.add_node("a", kind="model", n_synthetic=30)
    G.add_node("b", kind="model", n_synthetic=30)
    G.add_edges_from([("web", "a", {"weight": 1.0}), ("b", "a", {"weight": 3.0}),
                      ("web", "b", {"weight": 1.0}), ("a", "b", {"weight": 1.0})])
    return G


def test_graph_file_applies_n_m_alpha(tmp_path):
    path = tmp_path / "g.graphml"
    nx.write_graphml(_model_graph(), path)
    own = cli.load_graph(str(path))                         # the file's own: weights normalized per model
    assert own.n == (30,) and own.n_synthetic == (30, 30)
    np.testing.assert_allclose(np.asarray(own.alpha), [0.75, 0.5], rtol=1e-6)
    eco = cli.load_graph(str(path), n=40, m=25, alpha=0.2)  # overrides every node's and re-mixes
    assert eco.n == (40,) and eco.n_synthetic == (25, 25) and eco.n0 == (25, 25)
    np.testing.assert_allclose(np.asarray(eco.alpha), [0.2, 0.2], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(eco.W), [[0.0, 0.2], [0.2, 0.0]], rtol=1e-6)


def test_edge_list_kinds_from_in_edges(tmp_path):
    """Edge lists: a node without in-edges is a data node; --n, --m, --alpha set the sizes and the mix."""
    path = tmp_path / "g.txt"
    path.write_text("# producer consumer [weight]\nweb a 2\nweb b\nbooks b 1.0\na b 1\nb a 3  # a reads b\n")
    eco = cli.load_graph(str(path), n=60, m=40, alpha=0.25)
    assert eco.data == ("web", "books") and eco.models == ("a", "b")
    assert eco.n == (60, 60) and eco.n_synthetic == (40, 40)
    np.testing.assert_allclose(np.asarray(eco.alpha), [0.25, 0.25], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(eco.R), [[0.75, 0.0], [0.375, 0.375]], rtol=1e-6)
    default = cli.load_graph(str(path))
    assert default.n == (100, 100) and default.n_synthetic == (100, 100)
    np.testing.assert_allclose(np.asarray(default.alpha), [0.5, 0.5], rtol=1e-6)


# ------------------------------------------------------------------- help
def _subparsers():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return parser, sub.choices


def test_every_option_documents_its_default(capsys):
    parser, subs = _subparsers()
    assert set(subs) == {"demo", "simulate", "diagnose", "optimize", "sweep"}
    for name, p in subs.items():
        assert cli.main([name, "--help"]) == 0
        text = capsys.readouterr().out
        assert "example:" in text and "collapse-jax " + name in text
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                helped = p.formatter_class("x")._get_help_string(action) or ""
                assert action.help, f"{name} {action.option_strings} has no help"
                assert "default" in helped or action.required, f"{name} {action.option_strings}: no default in {helped!r}"
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for syntax, _ in cli.FAMILIES.values():
        assert syntax in text
    assert "no in-edges" in text.replace("\n", " ").replace("without in-edges", "no in-edges")


# ------------------------------------------------------------------- tasks
class _Fake:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


@pytest.mark.parametrize("name, cls", [(n, c) for n, (c, _) in cli.TASKS.items()])
def test_make_task_builds_or_says_unavailable(name, cls, monkeypatch):
    import collapse_jax as cj

    args = dict(task=name)
    if hasattr(cj, cls):
        task = cli.make_task(type("A", (), args))
        assert type(task).__name__ == cls
    else:
        with pytest.raises(ValueError, match=f"task '{name}' is not available in this version"):
            cli.make_task(type("A", (), args))
    monkeypatch.setattr(cj, cls, _Fake, raising=False)
    fake = cli.make_task(type("A", (), dict(args, dim=3) if name != "categorical" else dict(args, vocab=4)))
    if name == "categorical":
        p = fake.kwargs["probs"]
        np.testing.assert_allclose(p, np.array([1, 1 / 2, 1 / 3, 1 / 4]) / (25 / 12))   # Zipf, exponent 1
    else:
        assert fake.args[:1] == (3,) or fake.kwargs.get("dim") == 3


def test_task_options_that_do_not_apply_are_refused(monkeypatch):
    import collapse_jax as cj

    monkeypatch.setattr(cj, "GaussianFit", _Fake, raising=False)
    monkeypatch.setattr(cj, "Categorical", _Fake, raising=False)
    with pytest.raises(ValueError, match="--noise does not apply to --task gaussian"):
        cli.make_task(type("A", (), dict(task="gaussian", noise=2.0)))
    with pytest.raises(ValueError, match="--dim does not apply to --task categorical"):
        cli.make_task(type("A", (), dict(task="categorical", dim=3)))
    assert cli.make_task(type("A", (), dict(task="gaussian", estimator="unbiased"))).kwargs == {"estimator": "unbiased"}
    np.testing.assert_allclose(cli.make_task(type("A", (), dict(task="categorical", probs="0.5,0.5"))).kwargs["probs"],
                               [0.5, 0.5])
    with pytest.raises(ValueError, match="--probs"):
        cli.make_task(type("A", (), dict(task="categorical", probs="0.5,x")))


# ----------------------------------------------------- simulate outputs
def test_simulate_states_its_study_and_writes_plot_and_tables(tmp_path, capsys):
    args = ["simulate", "ring:3", "--dim", "2", "--n", "8", "--m", "8", "--alpha", "0.3",
            "--generations", "2", "--replicates", "4"]
    assert cli.main(args + ["--plot", str(tmp_path / "p.png"), "--out", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out
    for words in ("LinearRegression d=2", "n=8", "m=8", "alpha=0.3", "T=2", "R=4", "d/(n-d-1)", "verdict"):
        assert words in out, words
    assert (tmp_path / "p.png").stat().st_size > 10_000
    import pandas as pd

    df = pd.read_csv(tmp_path / "r.csv")
    assert list(df.columns[:4]) == ["replicate", "generation", "model", "error"] and len(df) == 4 * 3 * 3
    assert cli.main(args + ["--out", str(tmp_path / "r.nc")]) == 0
    import xarray as xr

    ds = xr.open_dataset(tmp_path / "r.nc", engine="h5netcdf")
    assert ds["error"].dims == ("replicate", "generation", "model") and ds.attrs["graph"] == "ring:3"
    np.testing.assert_allclose(ds["error"].values, df["error"].values.reshape(4, 3, 3), rtol=1e-6)


# ------------------------------------------------------------- sweep config
def test_sweep_config_types_tasks_and_grids(tmp_path, monkeypatch):
    import collapse_jax as cj

    cfg = tmp_path / "s.toml"
    cfg.write_text('replicates = 4\nchunk = 4\n[graph]\nspec = "ring:{K}"\nn = 20\n[task]\ndim = 2\n'
                   '[simulate]\ngenerations = 2\n[grid]\nK = [2, 3]\ndim = [2, 3]\nalpha = [0.25, 0.5]\n')
    kw = cli.sweep_config(str(cfg))
    eco, task, opts = kw["build"](K=3, dim=3, alpha=0.25)
    assert eco.K == 3 and eco.n == (20,) and eco.n_synthetic == (20, 20, 20)   # m defaults to n
    assert type(task).__name__ == "LinearRegression" and task.dim == 3 and opts == {"generations": 2}
    np.testing.assert_allclose(float(eco.alpha[0]), 0.25)
    # --task overrides [task] name; the task options are checked against it.
    with pytest.raises(ValueError, match="--dim does not apply to --task categorical"):
        cli.sweep_config(str(cfg), task="categorical")["build"](K=2, dim=2, alpha=0.5)
    monkeypatch.setattr(cj, "GaussianFit", _Fake, raising=False)
    _, fake, _ = cli.sweep_config(str(cfg), task="gaussian")["build"](K=2, dim=3, alpha=0.5)
    assert fake.args == (3,) and fake.kwargs == {"estimator": "mle"}
    cfg.write_text(cfg.read_text().replace("alpha = [0.25, 0.5]", 'alpha = [0.25, "half"]'))
    with pytest.raises(ValueError, match=r"\[grid\] alpha must be a number, got 'half'"):
        cli.sweep_config(str(cfg))
