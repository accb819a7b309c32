"""Diagnostics (collapse_jax.diagnostics): topology vs networkx, slopes and stationary errors vs
NumPy iterations, rho(Q) vs a dense NumPy build and a divergent simulation, the finite-sample
case of THEORY 4 (d = 50, n = 1, m = 55), simulate(diagnostics=True) and the CLI."""

import jax
import networkx as nx
import numpy as np
import pytest

import collapse_jax as cj
from collapse_jax import cli
from collapse_jax.graphs.topology import collapse_slopes, topology


# ------------------------------------------------------------ topology
def _random_ecosystem_matrix(rng):
    """A random effective (W, has_data) with rows of [R, W] summing to 1."""
    K = int(rng.integers(1, 9))
    A = rng.random((K, K)) < rng.uniform(0.05, 0.5)
    if rng.random() < 0.5:  # no self-loops and a random cycle: periodic classes become common
        np.fill_diagonal(A, False)
        cyc = rng.permutation(K)[: int(rng.integers(2, K + 1))] if K > 1 else []
        for a, b in zip(cyc, np.roll(cyc, 1)):
            A[a, b] = True
    has_data = rng.random(K) < rng.uniform(0.0, 0.6)
    W = np.zeros((K, K))
    for k in range(K):
        if not A[k].any() and not has_data[k]:
            A[k, k] = True  # something to train on
        if A[k].any():
            w = rng.random(A[k].sum()) + 0.05
            share = rng.uniform(0.1, 0.9) if has_data[k] else 1.0
            W[k, A[k]] = share * w / w.sum()
    return W, has_data


def _networkx_verdict(W, has_data):
    """Independent check: condensation of the flow graph j -> k (k reads j)."""
    K = len(W)
    G = nx.DiGraph()
    G.add_nodes_from(range(K))
    G.add_edges_from((j, k) for k in range(K) for j in range(K) if W[k, j] > 0)
    Cg = nx.condensation(G)
    closed = []
    for c in Cg.nodes:
        members = Cg.nodes[c]["members"]
        internal = len(members) > 1 or any(G.has_edge(v, v) for v in members)
        if Cg.in_degree(c) == 0 and internal and not any(has_data[v] for v in members):
            closed.append(frozenset(members))
    collapses = np.zeros(K, bool)
    for C in closed:
        for v in C:
            collapses[v] = True
            collapses[list(nx.descendants(G, v))] = True
    return set(closed), collapses, G


def test_topology_matches_networkx_condensation_on_random_graphs():
    rng = np.random.default_rng(20261121)
    n_closed = n_periodic = 0
    for _ in range(1200):
        W, has_data = _random_ecosystem_matrix(rng)
        topo = topology(W, has_data)
        closed, collapses, G = _networkx_verdict(W, has_data)
        got = {frozenset(topo.components[i].tolist()) for i in topo.closed}
        assert got == closed
        np.testing.assert_array_equal(topo.collapses, collapses)
        # THEORY 4.1: bounded iff rho(W) < 1 iff no closed class.
        rho = np.max(np.abs(np.linalg.eigvals(W)))
        assert (rho > 1 - 1e-9) == bool(closed)
        for i, p in zip(topo.closed, topo.periods):
            assert (p == 1) == nx.is_aperiodic(G.subgraph(topo.components[i].tolist()))
            n_periodic += p > 1
        n_closed += len(closed)
    assert n_closed > 200 and n_periodic > 20  # the sample exercises both kinds


def test_collapse_slopes_match_long_iteration_including_periodic_classes():
    # m0 <-> m1 (2-cycle), m3 self-loop, m2 reads m0, m3 and data, m4 reads m2 and a 3-cycle m5 -> m6 -> m7 -> m5.
    K = 8
    W = np.zeros((K, K))
    W[0, 1] = W[1, 0] = 1.0
    W[3, 3] = 1.0
    W[2, 0], W[2, 3] = 0.3, 0.2
    W[4, 2], W[4, 5] = 0.5, 0.25
    W[6, 5] = W[7, 6] = W[5, 7] = 1.0
    has_data = np.array([False, False, True, False, True, False, False, False])
    D = np.diag([0.3, 0.1, 0.2, 0.05, 0.4, 0.2, 0.6, 0.1])
    topo = topology(W, has_data)
    assert sorted(topo.periods) == [1, 2, 3]
    slope = collapse_slopes(W, D, topo)
    V = np.zeros((K, K))
    for _ in range(6000):
        V = W @ V @ W.T + D
    before = V.copy()
    for _ in range(6):  # a multiple of every period
        V = W @ V @ W.T + D
    np.testing.assert_allclose(slope, np.diag(V - before) / 6, rtol=1e-9, atol=1e-12)
    # The 2-cycle's slope is the Cesaro average (0.3 + 0.1) / 2, not pi' D pi = 0.1.
    np.testing.assert_allclose(slope[:2], 0.2, rtol=1e-12)


def test_diagnose_slopes_stationary_and_verdicts(x64):
    task = cj.LinearRegression(dim=5)
    # Complete graph, no data: THEORY 7 slope delta / K with the large-sample delta = d / (K m).
    K, m = 4, 80
    diag = cj.diagnose(cj.graphs.complete(K, m=m), task, exact=True)
    assert diag.rho_W == pytest.approx(1.0) and not diag.bounded
    assert all(r.collapses and r.diverges for r in diag.models)
    np.testing.assert_allclose([r.slope for r in diag.models], 5 / (K * m) / K, rtol=1e-10)
    assert diag.rho_L == pytest.approx(1.0, abs=1e-9)  # the all-equal direction is kept exactly
    # Self-loop: Dohmatob's linear law d / m per generation (large-sample).
    diag = cj.diagnose(cj.graphs.complete(1, m=m), task)
    assert diag.models[0].slope == pytest.approx(5 / m, rel=1e-12)
    # Chain with data: bounded, stationary (i + 1) d / n, nilpotent W.
    diag = cj.diagnose(cj.graphs.chain(3, n=100, m=100), task)
    assert diag.bounded and diag.closed_classes == () and diag.rho_L is None
    assert diag.stationary_kind == "large-sample" and "large-sample" in str(diag)
    np.testing.assert_allclose([r.stationary_error for r in diag.models], [0.05, 0.1, 0.15], rtol=1e-12)
    # exact=True: rho(L) and the exact stationary errors, pooled OLS: (i + 1) d / (n - d - 1).
    diag = cj.diagnose(cj.graphs.chain(3, n=100, m=100), task, exact=True)
    assert diag.stationary_kind == "exact" and "stationary (exact)" in str(diag)
    np.testing.assert_allclose([r.stationary_error for r in diag.models], [0.05 * 100 / 94, 0.1 * 100 / 94,
                                                                            0.15 * 100 / 94], rtol=1e-12)
    assert diag.rho_W == 0.0 and diag.rho_L == pytest.approx(0.0, abs=1e-12)
    text = str(diag)
    assert "rho(W)" in text and "m2" in text and "bounded" in text


def test_diagnose_mixed_ecosystem_bounded_part_matches_iteration(x64):
    """Collapsing and bounded models side by side: the bounded ones keep finite stationary errors."""
    task = cj.LinearRegression(dim=3)
    eco = cj.graphs.from_edges(5, [(0, 0), (0, 1), (2, 1), (3, 2), (2, 3), (3, 4)], real=(2, 4), alpha=0.5,
                               n=60, m=40)
    diag = cj.diagnose(eco, task)
    collapses = [r.collapses for r in diag.models]
    assert collapses == [True, True, False, False, False]
    assert diag.closed_classes == (("m0",),)
    W, R = np.asarray(eco.W, float), np.asarray(eco.R, float)
    D = np.diag(3 * ((R ** 2).sum(1) / 60 + (W ** 2).sum(1) / 40))
    V = np.zeros((5, 5))
    for _ in range(4000):
        V = W @ V @ W.T + D
    stat = np.array([r.stationary_error for r in diag.models])
    np.testing.assert_allclose(stat[2:], np.diag(V)[2:], rtol=1e-9)
    assert np.isinf(stat[:2]).all()
    assert "m0" in diag.models[1].reason


# ------------------------------------------------------- mean operator
def _rot(t):
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def _skewed(t, eps=0.01):
    return _rot(t) @ np.diag([1.0, eps]) @ _rot(t).T


def _misaligned():
    """Two models reading each other (alpha = 0.5) whose real and synthetic covariates are
    nearly rank one along different directions: rho(W) = 0.5 but rho(Q) = 2.11."""
    G = nx.DiGraph()
    G.add_node("da", kind="data", n=200, cov=_skewed(4 * np.pi / 8))
    G.add_node("db", kind="data", n=200, cov=_skewed(1 * np.pi / 8))
    G.add_node("a", kind="model", n_synthetic=200, cov=_skewed(0.0))
    G.add_node("b", kind="model", n_synthetic=200, cov=_skewed(5 * np.pi / 8))
    G.add_edges_from([("da", "a"), ("b", "a"), ("db", "b"), ("a", "b")], weight=1.0)
    return cj.Ecosystem.from_networkx(G, alpha=0.5)


def test_rho_q_matches_dense_numpy_and_simulation_diverges():
    eco = _misaligned()
    task = cj.LinearRegression(dim=2)
    diag = cj.diagnose(eco, task)
    SA_real, SB_real = _skewed(np.pi / 2), _skewed(np.pi / 8)
    SA, SB = _skewed(0.0), _skewed(5 * np.pi / 8)
    PA, PB = 0.5 * SA_real + 0.5 * SB, 0.5 * SB_real + 0.5 * SA
    Q = np.block([[np.zeros((2, 2)), 0.5 * np.linalg.solve(PA, SB)],
                  [0.5 * np.linalg.solve(PB, SA), np.zeros((2, 2))]])
    assert diag.rho_Q == pytest.approx(np.max(np.abs(np.linalg.eigvals(Q))), rel=1e-9)
    assert diag.rho_W == pytest.approx(0.5) and diag.rho_Q > 2
    assert not diag.bounded and "rho(Q)" in diag.verdict
    assert all(r.diverges and not r.collapses for r in diag.models)
    assert diag.models[0].slope is None  # no K x K theory for non-isotropic covariates
    res = cj.simulate(eco, task, jax.random.key(0), generations=8, replicates=200)
    med = np.median(np.asarray(res.error, float), axis=0)
    assert (med[-1] > 1e3 * med[1]).all()


def test_isotropic_mean_operator_is_w_kron_identity(x64):
    from collapse_jax.theory.spectral import mean_operator

    eco = cj.graphs.erdos_renyi(5, 0.5, seed=1, n=30, m=50, alpha=0.4)
    task = cj.LinearRegression(dim=3)
    for scale in ("mean", "sum"):
        W = np.asarray(eco.W, float)
        if scale == "sum":
            R = np.asarray(eco.R, float)
            tot = (R * 30).sum(1) + (W * 50).sum(1)
            W = W * 50 / tot[:, None]
        np.testing.assert_allclose(np.asarray(mean_operator(eco, task, scale)), np.kron(W, np.eye(3)),
                                   rtol=1e-12, atol=1e-15)


# ------------------------------------------------- finite-sample case (THEORY 4)
def test_finite_sample_operator_diverges_although_topology_is_fine():
    """d = 50, one model with n = 1 real sample and m = 55 synthetic (pooled: loss_scale="sum").

    rho(W) = 55/56 = 0.982 < 1 yet rho(L) > 1 and the Monte Carlo error diverges. Generation 0
    (one real sample in 50 dimensions) is made well-defined by a tiny ridge (1e-3 against a
    summed loss over 56 samples); it does not change the fits noticeably afterwards.
    """
    G = nx.DiGraph()
    G.add_node("web", kind="data", n=1)
    G.add_node("a", kind="model", n_synthetic=55)
    G.add_edges_from([("web", "a"), ("a", "a")], weight=1.0)
    eco = cj.Ecosystem.from_networkx(G, normalize=True)
    task = cj.LinearRegression(dim=50, ridge=1e-3)
    diag = cj.diagnose(eco, task, loss_scale="sum", mc_samples=512, exact=True)
    assert diag.rho_W == pytest.approx(55 / 56)
    assert diag.rho_L > 1.05
    assert not diag.bounded and "rho(L)" in diag.verdict
    assert diag.models[0].diverges and not diag.models[0].collapses
    T = 12
    res = cj.simulate(eco, task, jax.random.key(1), generations=T, replicates=200, loss_scale="sum")
    err = np.asarray(res.error, float)[:, :, 0]
    # The large-sample theory would predict a bounded error of
    # delta / (1 - w^2) with delta = d (1/56^2 + 55/56^2) = 50/56: about 25.
    bounded_prediction = (50 / 56) / (1 - (55 / 56) ** 2)
    assert err[:, -1].mean() > 5 * bounded_prediction
    growth = err[:, -1] - err[:, T // 2]
    assert growth.mean() / (growth.std(ddof=1) / np.sqrt(len(growth))) > 4


# ------------------------------------------------- simulate(diagnostics=True), CLI
@pytest.mark.default_compiler
def test_simulate_attaches_spectral_diagnostics(x64):
    task = cj.LinearRegression(dim=3)
    eco = cj.graphs.ring(4, n=40, m=40, alpha=0.5)
    res = cj.simulate(eco, task, jax.random.key(0), generations=3, replicates=4, diagnostics=True)
    d = res.diagnostics
    W = np.asarray(eco.W, float)
    mods = np.sort(np.abs(np.linalg.eigvals(W)))[::-1]
    assert float(d["rho_W"]) == pytest.approx(mods[0], rel=1e-9)
    assert float(d["slem_W"]) == pytest.approx(mods[1], rel=1e-9)
    assert float(d["rho_Q"]) == pytest.approx(mods[0], rel=1e-9)  # isotropic: Q = W (x) I
    # Large-sample stationary error: V = W V W' + D, D = d (R^2 / n + W^2 / m), by iteration.
    R = np.asarray(eco.R, float)
    D = np.diag(3 * ((R ** 2).sum(1) / 40 + (W ** 2).sum(1) / 40))
    V = np.zeros((4, 4))
    for _ in range(2000):
        V = W @ V @ W.T + D
    np.testing.assert_allclose(np.asarray(d["stationary_error"]), np.diag(V), rtol=1e-9)
    plain = cj.simulate(eco, task, jax.random.key(0), generations=3, replicates=4)
    assert plain.diagnostics is None
    np.testing.assert_array_equal(np.asarray(plain.error), np.asarray(res.error))


def test_cli_diagnose(capsys, tmp_path):
    out = tmp_path / "d.json"
    assert cli.main(["diagnose", "complete:3", "--topology-only", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "closed classes without data: {m0, m1, m2}" in text and "collapses" in text
    assert out.exists()
    assert cli.main(["diagnose", "nonsense:3"]) == 2


def test_diagnose_bad_input():
    with pytest.raises(ValueError, match="LinearRegression"):
        cj.diagnose(cj.graphs.chain(2), task="not a task")
    with pytest.raises(ValueError, match="pool"):
        cj.diagnose(cj.graphs.chain(2), pool="everyone")
    with pytest.raises(ValueError, match="Ecosystem"):
        cj.diagnose(np.eye(2))


def test_large_k_diagnose_uses_sparse_spectra_and_matches_dense(x64):
    """K = 300 (sparse ARPACK path) against dense NumPy eigenvalues and an independent Lyapunov solve."""
    import scipy.linalg

    eco = cj.graphs.erdos_renyi(300, 0.02, seed=4, n=100, m=100, alpha=0.5)
    task = cj.LinearRegression(dim=4)
    diag = cj.diagnose(eco, task)
    W, R = np.asarray(eco.W, float), np.asarray(eco.R, float)
    mods = np.sort(np.abs(np.linalg.eigvals(W)))[::-1]
    assert diag.rho_W == pytest.approx(mods[0], rel=1e-8) and diag.slem_W == pytest.approx(mods[1], rel=1e-8)
    stat = np.array([m.stationary_error for m in diag.models])
    bounded = np.isfinite(stat)
    D = np.diag(4 * ((R ** 2).sum(1) / 100 + (W ** 2).sum(1) / 100))
    B = np.flatnonzero(bounded)
    V = scipy.linalg.solve_discrete_lyapunov(W[np.ix_(B, B)], D[np.ix_(B, B)])
    np.testing.assert_allclose(stat[B], np.diag(V), rtol=1e-8)
    assert [m.collapses for m in diag.models] == list(~bounded)
