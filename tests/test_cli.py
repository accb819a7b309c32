"""The command line: demo, simulate, graph loading."""

import json
import os

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
