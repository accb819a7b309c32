"""Analytic moments (collapse_jax.moments) against Monte Carlo, closed forms and NumPy iterations.

Expected values come from THEORY.md section 4 written out by hand here
(delta = sigma^2 d / (N - d - 1), chain (i + 1) delta, star delta / 2 delta,
self-loop accumulate sum), from independent NumPy float64 iterations, or
from ``cj.simulate`` (z-scores of replicate means, |z| < 4, fixed keys).
"""

import importlib

import jax
import networkx as nx
import jax.numpy as jnp
import numpy as np
import pytest

import collapse_jax as cj
M = importlib.import_module("collapse_jax.theory.moments")
EX = cj.LinearRegression(dim=1).exact_theory()  # linear regression's exact theory module

Z_MAX = 4.0
D_DIM = 4        # small d, small samples: finite-sample effects are large
N = 15           # delta = d / (N - d - 1) = 0.4, while the large-sample d / N = 0.267
T = 6
REPLICATES = 4000


def _z(res, expected):
    """z-scores of the replicate means against expected (T + 1, K)."""
    return (res.mean - expected) / res.sem


# ------------------------------------------------------- exact vs Monte Carlo
def _families(m=N, n0=N):
    """One ecosystem holding four independent components (one compile for all):

    chain c0 -> c1 -> c2 (c0 reads the data), star s0 -> s1, s2 (s0 reads the
    data), ring r0 -> r1 -> r2 -> r0 with r0 also reading the data (alpha 0.5),
    complete q0, q1, q2 with self-loops and no data after generation 0. A fresh
    data node is drawn independently for every consumer, so the components
    are independent.
    """
    G = nx.DiGraph()
    G.add_node("data", kind="data", n=N)
    for name in ("c0", "c1", "c2", "s0", "s1", "s2", "r0", "r1", "r2", "q0", "q1", "q2"):
        G.add_node(name, kind="model", n_synthetic=m, n0=n0)
    edges = [("data", "c0"), ("c0", "c1"), ("c1", "c2"), ("data", "s0"), ("s0", "s1"), ("s0", "s2"),
             ("data", "r0"), ("r2", "r0"), ("r0", "r1"), ("r1", "r2")]
    edges += [(f"q{j}", f"q{k}") for j in range(3) for k in range(3)]
    G.add_edges_from(edges, weight=1.0)
    return cj.Ecosystem.from_networkx(G, alpha=0.5)


def test_exact_moments_match_monte_carlo_on_chain_star_ring_complete():
    task = cj.LinearRegression(dim=D_DIM)
    eco = _families()
    idx = {name: k for k, name in enumerate(eco.models)}
    delta = D_DIM / (N - D_DIM - 1)
    mom = cj.moments(eco, task, T)
    assert mom.mean.shape == (T + 1, eco.K, D_DIM) and mom.second.shape == (T + 1, eco.K, eco.K)
    res = cj.simulate(eco, task, jax.random.key(0), generations=T, replicates=REPLICATES)
    z = _z(res, mom.error)
    assert np.abs(z).max() < Z_MAX, z

    err, stat = mom.error, np.diag(mom.stationary)
    # THEORY 7, chain: model i has stationary error (i + 1) delta, reached after i generations.
    chain = [idx[c] for c in ("c0", "c1", "c2")]
    np.testing.assert_allclose(stat[chain], [delta, 2 * delta, 3 * delta], rtol=1e-12)
    np.testing.assert_allclose(err[-1, chain], [delta, 2 * delta, 3 * delta], rtol=1e-12)
    # Star: hub delta, leaves 2 delta.
    star = [idx[c] for c in ("s0", "s1", "s2")]
    np.testing.assert_allclose(stat[star], [delta, 2 * delta, 2 * delta], rtol=1e-12)
    # Ring with real data: bounded.
    ring = [idx[c] for c in ("r0", "r1", "r2")]
    assert np.isfinite(stat[ring]).all()
    # Complete graph: collapses linearly; pooled least squares over K m samples keeps the
    # all-equal direction exactly (sum_j G_kj = I), and THEORY 7 gives the slope
    # delta_K / K with delta_K = d / (K m - d - 1) up to O(d / N) corrections.
    q = idx["q0"]
    assert np.isinf(stat[q])
    inc = np.diff(err[:, q])
    np.testing.assert_allclose(inc[-2], inc[-1], rtol=1e-3)
    delta_K = D_DIM / (3 * N - D_DIM - 1)
    assert abs(inc[-1] / (delta_K / 3) - 1) < 0.15

    # The test has power: the large-sample recursion (delta = d / N) is rejected.
    large = cj.moments(eco, task, T, exact=False)
    np.testing.assert_allclose(large.error[-1, chain], np.arange(1, 4) * D_DIM / N, rtol=1e-12)
    z_large = _z(res, large.error)
    assert np.abs(z_large[:, chain]).max() > Z_MAX and np.abs(z_large[:, ring]).max() > Z_MAX


def test_accumulate_monte_carlo():
    """Accumulate: a self-loop model (exact closed form) and a large-sample chain, one simulation.

    Self-loop derivation (also in moments.exact_accumulate): with P_t = S_1 + ... + S_t,
    P_t e_t = P_{t-1} e_{t-1} + S_t e_{t-1} + Z_t' eps_t, so e_t = e_{t-1} + P_t^{-1} Z_t' eps_t,
    a martingale; E tr(P_t^{-1} S_t P_t^{-1}) = E tr(P_t^{-1}) / t = d / (t (t m - d - 1)).
    The chain (c0 reads data and its own output; c1 reads c0 and data) is checked
    against the large-sample state-space recursion, with n, m >> d.
    """
    d, m, big = 2, 12, 400
    task = cj.LinearRegression(dim=d)
    G = nx.DiGraph()
    G.add_node("data", kind="data", n=big)
    G.add_node("self", kind="model", n_synthetic=m, n0=m)
    G.add_node("c0", kind="model", n_synthetic=big)
    G.add_node("c1", kind="model", n_synthetic=big)
    G.add_edges_from([("self", "self"), ("data", "c0"), ("c0", "c0"), ("c0", "c1"), ("data", "c1")], weight=1.0)
    eco = cj.Ecosystem.from_networkx(G, alpha=0.5)
    res = cj.simulate(eco, task, jax.random.key(4), generations=T, replicates=REPLICATES,
                      regime="accumulate", loss_scale="sum")
    z = res.mean - 0.0
    t = np.arange(1, T + 1)
    expected = d / (m - d - 1) + np.concatenate([[0.0], np.cumsum(d / (t * (t * m - d - 1)))])
    single = cj.graphs.complete(1, m=m, n0=m)
    exact = cj.moments(single, task, T, regime="accumulate")
    np.testing.assert_allclose(exact.error[:, 0], expected, rtol=1e-12)
    z = (res.mean[:, 0] - expected) / res.sem[:, 0]
    assert np.abs(z).max() < Z_MAX, z
    # Large-sample limit of the same recursion: d / n0 + sum_s d / (m s^2).
    large_single = cj.moments(single, task, T, exact=False, regime="accumulate")
    np.testing.assert_allclose(large_single.error[:, 0],
                               d / m + np.concatenate([[0.0], np.cumsum(d / (m * t ** 2))]), rtol=1e-12)
    # Replace would instead grow by d / (m - d - 1) per generation (Dohmatob et al.).
    replace = cj.moments(single, task, T)
    np.testing.assert_allclose(np.diff(replace.error[:, 0]), d / (m - d - 1), rtol=1e-12)
    # The chain, large-sample state-space recursion (sum loss: shares follow the counts).
    large = cj.moments(eco, task, T, exact=False, regime="accumulate", loss_scale="sum")
    z = _z(res, large.error)[:, 1:]
    assert np.abs(z).max() < Z_MAX, z


@pytest.mark.slow
def test_shared_pool_sum_loss_monte_carlo():
    """Shared batches correlate the consumers of one producer (cross terms of the exact map)."""
    task = cj.LinearRegression(dim=D_DIM)
    eco = cj.graphs.star(4, n=N, m=2 * N, alpha=0.4, hub_reads_leaves=True)
    for kw in (dict(pool="shared"), dict(pool="shared", loss_scale="sum")):
        mom = cj.moments(eco, task, T, **kw)
        res = cj.simulate(eco, task, jax.random.key(6), generations=T, replicates=REPLICATES, **kw)
        assert np.abs(_z(res, mom.error)).max() < Z_MAX


@pytest.mark.slow
def test_large_sample_fixed_node_and_biased_theta_monte_carlo():
    """A fixed corpus (drawn once, shared) and a biased source: the persistent terms of the recursion."""
    d = 2
    task = cj.LinearRegression(dim=d)
    G = nx.DiGraph()
    G.add_node("corpus", kind="data", n=300, fresh=False)
    G.add_node("biased", kind="data", n=300, theta=np.array([1.0, 0.5]))
    for k in range(3):
        G.add_node(f"m{k}", kind="model", n_synthetic=300)
    G.add_edges_from([("corpus", "m0"), ("biased", "m0"), ("m2", "m0"), ("m0", "m1"), ("corpus", "m1"),
                      ("m1", "m2"), ("m2", "m2")], weight=1.0)
    eco = cj.Ecosystem.from_networkx(G, alpha=0.5)
    mom = cj.moments(eco, task, T, exact=False)
    res = cj.simulate(eco, task, jax.random.key(7), generations=T, replicates=REPLICATES)
    z = _z(res, mom.error)
    assert np.abs(z).max() < Z_MAX, z


# ------------------------------------------------ Lyapunov vs long iteration
def _numpy_noise(eco, task, loss_scale, pool):
    R, W = np.asarray(eco.R, float), np.asarray(eco.W, float)
    n, m = np.asarray(eco.n, float), np.asarray(eco.n_synthetic, float)
    if loss_scale == "sum":
        tot = (R * n).sum(1) + (W * m).sum(1)
        R, W = R * n / tot[:, None], W * m / tot[:, None]
    fresh = np.asarray(eco.fresh, bool)
    s2d = task.noise ** 2 * task.dim
    D = np.diag(s2d * (R[:, fresh] ** 2 / n[fresh]).sum(1))
    if pool == "shared":
        D += s2d * (W / m) @ W.T
    else:
        D += np.diag(s2d * (W ** 2 / m).sum(1))
    return R, W, D


@pytest.mark.parametrize("seed,loss_scale,pool,fresh", [
    (0, "mean", "independent", True), (1, "sum", "shared", True), (2, "mean", "independent", False),
])
def test_stationary_matches_long_numpy_iteration(x64, seed, loss_scale, pool, fresh):
    task = cj.LinearRegression(dim=3, noise=0.7)
    eco = cj.graphs.erdos_renyi(6, 0.4, seed=seed, n=50 + 10 * seed, m=40, alpha=0.6, fresh=fresh)
    V = np.asarray(M.stationary(eco, task, loss_scale=loss_scale, pool=pool))
    R, W, D = _numpy_noise(eco, task, loss_scale, pool)
    K, S = W.shape[0], R.shape[1]
    # Augmented state [e; p]: p is the fixed node's noise, drawn once (variance sigma^2 d / n).
    gamma = np.diag([0.0 if f else task.noise ** 2 * task.dim / n for f, n in zip(eco.fresh, eco.n)])
    F = np.block([[W, R], [np.zeros((S, K)), np.eye(S)]])
    Y = np.zeros((K + S, K + S))
    Y[K:, K:] = gamma
    N = np.zeros_like(Y)
    N[:K, :K] = D
    for t in range(3000):
        Y = F @ Y @ F.T + N
        if t == 1999:
            before = np.diag(Y[:K, :K]).copy()
    grows = np.diag(Y[:K, :K]) - before > 1e-6  # collapsing models grow linearly, the rest converged
    assert not grows.all()
    ok = ~grows
    np.testing.assert_allclose(V[np.ix_(ok, ok)], Y[:K, :K][np.ix_(ok, ok)], rtol=1e-9, atol=1e-12)
    assert np.isinf(V[grows]).all() and np.isinf(V[:, grows]).all()


def test_stationary_is_inf_when_collapsing_and_noise_diagonal_closed_form(x64):
    task = cj.LinearRegression(dim=5)
    assert np.isinf(np.asarray(M.stationary(cj.graphs.ring(4, real=()), task))).all()
    eco = cj.graphs.ring(3, n=50, m=200, alpha=0.25)
    delta = np.asarray(M.noise_diagonal(eco, task))
    np.testing.assert_allclose(delta, [5 * (0.75 ** 2 / 50 + 0.25 ** 2 / 200), 5 / 200, 5 / 200], rtol=1e-12)
    delta_sum = np.asarray(M.noise_diagonal(eco, task, loss_scale="sum"))
    # sum: shares proportional to weight x count: 0.75 * 50 : 0.25 * 200 = 3 : 4.
    np.testing.assert_allclose(delta_sum[0], 5 * ((3 / 7) ** 2 / 50 + (4 / 7) ** 2 / 200), rtol=1e-12)


def test_stationary_gradient_matches_finite_differences(x64):
    task = cj.LinearRegression(dim=3)
    eco = cj.graphs.erdos_renyi(5, 0.5, seed=3, n=60, m=40, alpha=0.5)

    def f(e):
        return jnp.trace(M.stationary(e, task))

    g = jax.grad(f)(eco)
    h = 1e-6
    for field, idx in (("alpha", (1,)), ("model_weights", tuple(eco.model_edges[0])),
                       ("real_weights", tuple(eco.real_edges[0]))):
        x = getattr(eco, field)
        up = f(eco.replace(**{field: x.at[idx].add(h)}))
        down = f(eco.replace(**{field: x.at[idx].add(-h)}))
        np.testing.assert_allclose(getattr(g, field)[idx], (up - down) / (2 * h), rtol=1e-6, atol=1e-9)


def test_exact_stationary_matches_iterated_map(x64):
    """The dense (I - L)^{-1} solve against the exact map iterated in NumPy loops."""
    task = cj.LinearRegression(dim=3)
    eco = cj.graphs.ring(3, n=12, m=12, alpha=0.5)
    coef = EX.exact_coefficients(eco, task, mc_samples=256)
    cross, noise = np.asarray(coef.cross), np.asarray(coef.noise)
    edges = eco.model_edges
    V = np.zeros((3, 3))
    for _ in range(400):
        new = noise.copy()
        for a, (k, j) in enumerate(edges):
            for b, (l, i) in enumerate(edges):
                new[k, l] += cross[a, b] * V[j, i]
        V = new
    np.testing.assert_allclose(np.asarray(EX.exact_stationary(eco, coef)), V, rtol=1e-10)


# ------------------------------------------------------------ input handling
def test_moments_rejects_what_it_cannot_do():
    task = cj.LinearRegression(dim=3)
    with pytest.raises(ValueError, match="ridge"):
        cj.moments(cj.graphs.chain(2, n=20, m=20), cj.LinearRegression(dim=3, ridge=0.1), 3)
    with pytest.raises(ValueError, match="fixed"):
        cj.moments(cj.graphs.ring(3, n=20, m=20, fresh=False), task, 3)
    with pytest.raises(ValueError, match="only in-edge"):
        cj.moments(cj.graphs.chain(2, n=20, m=20), task, 3, regime="accumulate")
    with pytest.raises(ValueError, match="regime"):
        cj.moments(cj.graphs.chain(2, n=20, m=20), task, 3, regime="bogus")
    # stationary: the answering theory (large-sample or exact) names a bad option.
    for exact in (False, True):
        with pytest.raises(ValueError, match="pool"):
            M.stationary(cj.graphs.chain(2, n=20, m=20), task, exact=exact, pool="bogus")
        with pytest.raises(ValueError, match="loss_scale"):
            M.stationary(cj.graphs.chain(2, n=20, m=20), task, exact=exact, loss_scale="bogus")


def test_fixed_designs_dispatch_to_public_private(monkeypatch):
    calls = {}

    def moments_fixed(eco, task, generations, **options):
        calls.update(generations=generations, options=options)
        return "fixed"

    monkeypatch.setattr(EX, "moments_fixed", moments_fixed)
    import networkx as nx

    G = nx.DiGraph()
    G.add_node("pub", kind="data", fresh=False, design=np.eye(3))
    G.add_node("a", kind="model", n_synthetic=10)
    G.add_edge("pub", "a", weight=0.5)
    G.add_edge("a", "a", weight=0.5)
    eco = cj.Ecosystem.from_networkx(G)
    assert cj.moments(eco, cj.LinearRegression(dim=3), 4, loss_scale="sum") == "fixed"
    assert calls == {"generations": 4, "options": {"loss_scale": "sum"}}
