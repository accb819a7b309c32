"""Ecosystem construction, validation, networkx round trip and graph families."""

import math

import jax
import networkx as nx
import numpy as np
import pytest

import collapse_jax as cj


def _graph(**edge_weights):
    G = nx.DiGraph()
    G.add_node("d", kind="data", n=20)
    G.add_node("a", kind="model", n_synthetic=20)
    G.add_node("b", kind="model", n_synthetic=20)
    w = dict(da=0.5, aa=0.5, ab=1.0)
    w.update(edge_weights)
    G.add_edge("d", "a", weight=w["da"])
    G.add_edge("a", "a", weight=w["aa"])
    G.add_edge("a", "b", weight=w["ab"])
    return G


def test_effective_weights_rows_sum_to_one():
    eco = cj.Ecosystem.from_networkx(_graph())
    np.testing.assert_allclose(np.asarray(eco.R), [[0.5], [0.0]])
    np.testing.assert_allclose(np.asarray(eco.W), [[0.5, 0.0], [1.0, 0.0]])
    assert eco.models == ("a", "b") and eco.data == ("d",)


def test_alpha_parameterization():
    G = _graph(da=3.0, aa=7.0, ab=2.0)
    eco = cj.Ecosystem.from_networkx(G, alpha=0.3)
    # a mixes: R = 0.7, W = 0.3; b has no real edge so alpha_b = 1.
    np.testing.assert_allclose(np.asarray(eco.R)[:, 0], [0.7, 0.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(eco.W), [[0.3, 0.0], [1.0, 0.0]], rtol=1e-6)
    per_model = cj.Ecosystem.from_networkx(G, alpha={"a": 0.25})
    np.testing.assert_allclose(np.asarray(per_model.alpha), [0.25, 1.0])


def test_normalize():
    eco = cj.Ecosystem.from_networkx(_graph(da=1.0, aa=3.0, ab=5.0), normalize=True)
    np.testing.assert_allclose(np.asarray(eco.R)[0, 0], 0.25)
    np.testing.assert_allclose(np.asarray(eco.W), [[0.75, 0.0], [1.0, 0.0]])


@pytest.mark.parametrize("mutate,match", [
    (lambda G: G.edges["d", "a"].update(weight=-0.1), r"edge 'd' -> 'a'.*weight"),
    (lambda G: G.edges["a", "a"].update(weight=math.nan), r"edge 'a' -> 'a'.*finite"),
    (lambda G: G.edges["a", "b"].update(weight="heavy"), r"edge 'a' -> 'b'.*not a number"),
    (lambda G: G.edges["a", "a"].update(weight=0.2), r"model node 'a'.*sum to 0.7"),
    (lambda G: G.nodes["b"].update(kind="teacher"), r"node 'b'.*unknown kind"),
    (lambda G: G.add_edge("a", "d"), r"edge 'a' -> 'd'.*data nodes do not train"),
    (lambda G: G.add_node("lonely", kind="model", n_synthetic=5), r"model node 'lonely' has no in-edge"),
    (lambda G: G.nodes["d"].update(n=0), r"data node 'd'.*positive integer"),
    (lambda G: G.nodes["d"].update(n=2.5), r"data node 'd'.*positive integer"),
    (lambda G: G.nodes["a"].pop("n_synthetic"), r"model node 'a'.*n_synthetic"),
    (lambda G: G.nodes["d"].update(n="abc"), r"data node 'd'.*n must be a positive integer.*'abc'"),
    (lambda G: G.nodes["a"].update(n0="7"), r"model node 'a'.*n0 must be a positive integer"),
    (lambda G: G.nodes["d"].update(cov="eye"), r"data node 'd'.*attribute 'cov' must be a number"),
    (lambda G: G.nodes["d"].update(design=np.ones(20)), r"data node 'd'.*design must be a 2-d array"),
    (lambda G: G.nodes["a"].update(design=np.ones((7, 2))), r"model node 'a'.*n_synthetic=20 but design has 7"),
    (lambda G: G.nodes["d"].update(design=np.ones((20, 2))), r"data node 'd'.*fresh=False"),
    (lambda G: G.nodes["d"].update(theta=np.array([1.0, np.inf])), r"data node 'd'.*non-finite"),
])
def test_bad_graphs_raise_naming_the_culprit(mutate, match):
    G = _graph()
    mutate(G)
    with pytest.raises(ValueError, match=match):
        cj.Ecosystem.from_networkx(G)


@pytest.mark.parametrize("alpha,match", [
    (1.5, r"model node 'a'.*\[0, 1\]"),
    (-0.1, r"model node 'a'.*\[0, 1\]"),
    (math.nan, r"model node 'a'.*\[0, 1\]"),
    ({"a": 0.5, "b": 0.5}, r"model node 'b'.*no real in-edge"),
    ({"b": 1.0}, r"no value for model node 'a'"),
    ({"zz": 0.5}, r"unknown model node"),
    (np.ones(3), r"alpha must be"),
])
def test_bad_alpha_raises(alpha, match):
    with pytest.raises(ValueError, match=match):
        cj.Ecosystem.from_networkx(_graph(), alpha=alpha)


@pytest.mark.parametrize("mutate,match", [
    (lambda G: G.nodes["d"].update(cov=np.array([[1.0, 2.0], [2.0, 1.0]])), r"data node 'd'.*positive semi-definite"),
    (lambda G: G.nodes["d"].update(cov=np.array([[1.0, 0.5], [0.0, 1.0]])), r"data node 'd'.*symmetric"),
    (lambda G: G.nodes["a"].update(cov=np.eye(3)), r"model node 'a'.*cov has shape \(3, 3\).*task has dim=2"),
    (lambda G: G.nodes["b"].update(color=1.0), r"model node 'b'.*attribute 'color' is not read by LinearRegression"),
    (lambda G: G.nodes["d"].update(theta=np.ones(3)), r"data node 'd'.*theta has shape \(3,\)"),
])
def test_task_checks_its_node_attributes_naming_the_node(mutate, match):
    G = _graph()
    mutate(G)
    eco = cj.Ecosystem.from_networkx(G)  # task-neutral: accepted here ...
    with pytest.raises(ValueError, match=match):  # ... refused by the task, naming the node
        cj.LinearRegression(dim=2).check(eco)


def test_mismatched_covariance_dimensions_across_nodes_are_named():
    G = _graph()
    G.nodes["d"]["cov"] = np.eye(2)
    G.nodes["b"]["cov"] = np.eye(3)
    eco = cj.Ecosystem.from_networkx(G)
    with pytest.raises(ValueError, match=r"model node 'b'.*cov"):
        cj.simulate(eco, cj.LinearRegression(dim=2), jax.random.key(0), generations=1)


def test_non_finite_theta_is_refused():
    with pytest.raises(ValueError, match=r"theta has non-finite"):
        cj.simulate(cj.graphs.chain(2), cj.LinearRegression(dim=3, theta=[1.0, math.nan, 0.0]),
                    jax.random.key(0), generations=1)


def test_multidigraph_with_parallel_edges_is_refused_naming_the_edge():
    G = nx.MultiDiGraph(_graph())
    cj.Ecosystem.from_networkx(G)  # no parallel edge: fine
    G.add_edge("a", "b", weight=1.0)
    with pytest.raises(ValueError, match=r"edge 'a' -> 'b': 2 parallel edges"):
        cj.Ecosystem.from_networkx(G, normalize=True)


@pytest.mark.parametrize("kw,match", [
    (dict(normalize="no"), r"normalize must be True or False, got 'no'"),
    (dict(alpha="0.5"), r"alpha must be a number.*'0.5'"),
    (dict(alpha={"a": "0.5"}), r"alpha must be a number.*'0.5'"),
])
def test_bad_arguments_of_from_networkx(kw, match):
    with pytest.raises(ValueError, match=match):
        cj.Ecosystem.from_networkx(_graph(), **kw)


def test_ring_needs_a_positive_int():
    for bad in (3.0, "3", 0, True):
        with pytest.raises(ValueError, match=r"K must be a positive integer"):
            cj.graphs.ring(bad)


def test_task_mismatch_and_small_samples_raise():
    G = _graph()
    G.nodes["d"]["cov"] = np.eye(4)
    eco = cj.Ecosystem.from_networkx(G)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"data node 'd'.*dimension 4.*dim=3"):
        cj.simulate(eco, cj.LinearRegression(dim=3), key, generations=1)
    small = cj.graphs.chain(2, n=5, m=30)
    with pytest.raises(ValueError, match=r"model node 'm0'.*5 samples"):
        cj.simulate(small, cj.LinearRegression(dim=4), key, generations=1)
    # A ridge makes small samples well posed.
    res = cj.simulate(small, cj.LinearRegression(dim=4, ridge=0.1), key, generations=1)
    assert np.isfinite(np.asarray(res.error)).all()
    for bad, match in [(dict(noise=0.0), "noise"), (dict(noise=-1.0), "noise"), (dict(ridge=-1.0), "ridge"),
                       (dict(theta=np.ones(2)), "theta"), (dict(cov=-np.eye(3)), "positive semi-definite")]:
        with pytest.raises(ValueError, match=match):
            cj.simulate(cj.graphs.chain(2), cj.LinearRegression(dim=3, **bad), key, generations=1)


def test_networkx_round_trip_keeps_every_attribute():
    rng = np.random.default_rng(0)
    G = nx.DiGraph()
    G.add_node("web", kind="data", n=30, cov=np.diag([1.0, 2.0]))
    G.add_node("crawl", kind="data", n=4, fresh=False, design=rng.normal(size=(4, 2)), theta=np.array([1.0, -1.0]))
    G.add_node("x", kind="model", n_synthetic=12, n0=40, cov=np.eye(2) * 3)
    G.add_node("y", kind="model", design=rng.normal(size=(6, 2)))
    G.add_edges_from([("web", "x", {"weight": 1.0}), ("crawl", "y", {"weight": 2.0}),
                      ("x", "y", {"weight": 1.0}), ("y", "x", {"weight": 1.0}), ("y", "y", {"weight": 1.0})])
    eco = cj.Ecosystem.from_networkx(G, alpha=0.4)
    back = cj.Ecosystem.from_networkx(eco.to_networkx())
    np.testing.assert_allclose(np.asarray(back.R), np.asarray(eco.R), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(back.W), np.asarray(eco.W), rtol=1e-6)
    for field in ("models", "data", "n", "fresh", "n_synthetic", "n0", "real_edges", "model_edges"):
        assert getattr(back, field) == getattr(eco, field), field
    G.nodes["web"]["tag"] = 7.0  # an attribute no task reads survives too
    eco = cj.Ecosystem.from_networkx(G, alpha=0.4)
    back = cj.Ecosystem.from_networkx(eco.to_networkx())
    assert back.data_attribute_names() == ("cov", "design", "tag", "theta")
    assert back.model_attribute_names() == ("cov", "design")
    for kind in ("data", "model"):
        for a, b in zip(getattr(back, f"{kind}_attrs"), getattr(eco, f"{kind}_attrs")):
            assert sorted(a) == sorted(b), kind
            for name in a:
                np.testing.assert_array_equal(a[name], b[name])
    assert np.shape(back.data_attr("tag")[0]) == () and back.data_attr("tag")[1] is None
    H = eco.to_networkx()
    assert H.nodes["y"]["n_synthetic"] == 6 and H.nodes["x"]["n0"] == 40
    assert H.nodes["crawl"]["fresh"] is False


def test_ecosystem_is_a_pytree_with_weights_as_leaves():
    eco = cj.graphs.ring(3, alpha=0.5)
    leaves, treedef = jax.tree_util.tree_flatten(eco)
    assert len(leaves) == 3  # real_weights, model_weights, alpha (no node attributes)
    doubled = jax.tree_util.tree_unflatten(treedef, [2 * x for x in leaves])
    assert doubled.models == eco.models and doubled.real_edges == eco.real_edges
    # Effective weights are invariant to scaling the relative weights, but not alpha.
    np.testing.assert_allclose(np.asarray(doubled.R), np.asarray(eco.R) * 0 + np.asarray(
        eco.replace(alpha=2 * eco.alpha).R))


def _dense(K, pairs):
    A = np.zeros((K, K))
    for j, k in pairs:
        A[k, j] = 1.0
    return A


@pytest.mark.parametrize("family,K,pairs,real", [
    (cj.graphs.chain, 4, [(0, 1), (1, 2), (2, 3)], [0]),
    (cj.graphs.ring, 4, [(3, 0), (0, 1), (1, 2), (2, 3)], [0]),
    (cj.graphs.star, 4, [(0, 1), (0, 2), (0, 3)], [0]),
    (cj.graphs.complete, 3, [(j, k) for j in range(3) for k in range(3)], []),
])
def test_families_have_the_documented_edges(family, K, pairs, real):
    alpha = 0.3
    eco = family(K, alpha=alpha)
    A = _dense(K, pairs)
    has_real = np.isin(np.arange(K), real)
    rows = A.sum(1, keepdims=True)
    expected_alpha = np.where(has_real, np.where(rows[:, 0] > 0, alpha, 0.0), 1.0)
    expected_W = expected_alpha[:, None] * A / np.where(rows > 0, rows, 1)
    np.testing.assert_allclose(np.asarray(eco.W), expected_W, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(eco.R).sum(1), 1 - expected_alpha, rtol=1e-6, atol=1e-7)


def test_erdos_renyi_is_seeded_and_feeds_every_model():
    a = cj.graphs.erdos_renyi(16, 0.2, seed=3)
    b = cj.graphs.erdos_renyi(16, 0.2, seed=3)
    c = cj.graphs.erdos_renyi(16, 0.2, seed=4)
    assert a.model_edges == b.model_edges and a.model_edges != c.model_edges
    H = nx.gnp_random_graph(16, 0.2, seed=3, directed=True)
    assert set(H.edges()) <= {(j, k) for k, j in a.model_edges}
    assert {k for k, _ in a.real_edges} == set(range(0, 16, 2))
    fed = {k for k, _ in a.real_edges} | {k for k, _ in a.model_edges}
    assert fed == set(range(16))
    with pytest.raises(ValueError, match="p must be"):
        cj.graphs.erdos_renyi(4, 1.5, seed=0)
    with pytest.raises(ValueError, match="real: model index 9"):
        cj.graphs.ring(3, real=(9,))
