"""cj.optimize: closed-form optima, constraints, sparsity, no recompilation, CLI."""

import json

import jax
import networkx as nx
import numpy as np
import optax
import pytest

import collapse_jax as cj
from collapse_jax.cli import load_graph, main

# One model reads two fresh data nodes (n1, n2 samples) and its own output (m
# samples). With relative real weights r, 1 - r and synthetic share a, the
# large-sample recursion (THEORY 4, loss_scale="mean") is
#     V = a^2 V + sigma^2 d ((1 - a)^2 (r^2 / n1 + (1 - r)^2 / n2) + a^2 / m),
# so V(a, r) = sigma^2 d ((1 - a)^2 c(r) + a^2 / m) / (1 - a^2).
# c(r) is minimized at r = n1 / (n1 + n2), where c = 1 / N with N = n1 + n2.
# dV/da = 0  <=>  (-(1 - a) c + a / m)(1 - a^2) + a ((1 - a)^2 c + a^2 / m) = 0
#            <=>  a / m = (1 - a)^2 c  <=>  m a^2 - (2m + N) a + m = 0,
# a* = ((2m + N) - sqrt(N^2 + 4 m N)) / (2m), the root in (0, 1); a* > 0: some
# synthetic data helps, because it adds samples of a model that is already good.
N1, N2, M, DIM, SIGMA = 100, 300, 200, 4, 1.5
N = N1 + N2
A_STAR = ((2 * M + N) - np.sqrt(N ** 2 + 4 * M * N)) / (2 * M)   # = 2 - sqrt(3) here
R_STAR = N1 / N


def _V(a, r=R_STAR):
    return SIGMA ** 2 * DIM * ((1 - a) ** 2 * (r ** 2 / N1 + (1 - r) ** 2 / N2) + a ** 2 / M) / (1 - a ** 2)


def _one_model(alpha=0.5):
    G = nx.DiGraph()
    G.add_node("d1", kind="data", n=N1)
    G.add_node("d2", kind="data", n=N2)
    G.add_node("a", kind="model", n_synthetic=M)
    for u, v in (("d1", "a"), ("d2", "a"), ("a", "a")):
        G.add_edge(u, v, weight=1.0)
    return cj.Ecosystem.from_networkx(G, alpha=alpha)


TASK = cj.LinearRegression(dim=DIM, noise=SIGMA)


def test_closed_form_optimum_and_no_recompilation():
    assert abs(A_STAR - (2 - np.sqrt(3))) < 1e-12
    traces = []

    def objective(eco):
        traces.append(1)  # runs only when JAX traces the step
        return cj.long_run_error(eco, TASK)

    out = cj.optimize(_one_model(), TASK, objective=objective, optimizer=optax.adam(0.05), steps=300)
    assert len(traces) == 1, f"the step was traced {len(traces)} times"
    a = float(out.eco.alpha[0])
    r = np.asarray(out.eco.real_weights[0], float)
    assert abs(a - A_STAR) < 0.01 * A_STAR, (a, A_STAR)
    assert abs(r[0] - R_STAR) < 0.01 * R_STAR and abs(r.sum() - 1) < 1e-5, r
    assert out.history.shape == (301,)
    np.testing.assert_allclose(out.history[0], _V(0.5, 0.5), rtol=1e-5)
    np.testing.assert_allclose(out.history[-1], _V(A_STAR), rtol=1e-5)
    assert out.diagnostics.bounded
    G = out.to_networkx()
    np.testing.assert_allclose(G.edges["a", "a"]["weight"], a, rtol=1e-6)


def test_real_budget_is_enforced_by_projection_and_bounds_hold():
    # Budget: real share 1 - a <= 0.5 binds (1 - a* = 0.73), so the optimum is a = 0.5.
    out = cj.optimize(_one_model(0.2), TASK, optimizer=optax.adam(0.05), steps=200, real_budget=0.5)
    a = float(out.eco.alpha[0])
    assert 0.5 - 1e-5 <= a < 0.5 + 0.005, a
    assert abs(float(out.eco.real_weights[0, 0]) - R_STAR) < 0.01 * R_STAR
    # With r fixed at 1/2 (params=("alpha",)), c = 1/300, so a* = (700 - sqrt(330000)) / 400 = 0.314;
    # bounds (0.35, 0.9) exclude it: the optimum is the bound, approached from inside.
    # (The sigmoid saturates there, so the approach is slow: a large learning rate.)
    out = cj.optimize(_one_model(0.6), TASK, optimizer=optax.adam(0.2), steps=200, alpha_bounds=(0.35, 0.9),
                      params=("alpha",))
    a = float(out.eco.alpha[0])
    assert 0.35 <= a < 0.356, a
    assert np.all(np.diff(out.history) < 1e-9)
    # params=("alpha",) leaves the relative weights alone
    np.testing.assert_array_equal(np.asarray(out.eco.real_weights), np.asarray(_one_model().real_weights))


def test_monte_carlo_objective_keeps_sparsity():
    eco = cj.graphs.from_edges(3, [(0, 1), (1, 2), (2, 0), (1, 0), (0, 0)], real=(0, 1), alpha=0.5, n=30, m=30)
    task = cj.LinearRegression(dim=2)
    out = cj.optimize(eco, task, objective="monte_carlo", key=jax.random.key(0), steps=4,
                      optimizer=optax.adam(0.1),
                      options=dict(generations=6, replicates=8, engine="samples", reduce="max"))
    assert out.history.shape == (5,) and np.all(np.isfinite(out.history))
    before, after = np.asarray(eco.model_weights) > 0, np.asarray(out.eco.model_weights) > 0
    np.testing.assert_array_equal(before, after)   # only existing edges carry weight
    np.testing.assert_array_equal(np.asarray(eco.real_weights) > 0, np.asarray(out.eco.real_weights) > 0)
    assert float(out.eco.alpha[2]) == 1.0          # m2 has no real data: alpha forced
    assert not np.allclose(np.asarray(out.eco.alpha[:2]), 0.5)
    rows = np.asarray(out.eco.R).sum(1) + np.asarray(out.eco.W).sum(1)
    np.testing.assert_allclose(rows, 1.0, rtol=1e-6)
    assert set(out.to_networkx().edges) == set(eco.to_networkx().edges)


def test_cli_writes_graphml_and_json(tmp_path, capsys):
    for ext in ("graphml", "json"):
        path = str(tmp_path / f"opt.{ext}")
        assert main(["optimize", "ring:3", "--dim", "3", "--n", "50", "--m", "50", "--steps", "20",
                     "--lr", "0.1", "--out", path]) == 0
        eco0, eco1 = load_graph("ring:3", n=50, m=50), load_graph(path)
        assert eco1.real_edges == eco0.real_edges and eco1.model_edges == eco0.model_edges
        assert float(eco1.alpha[0]) < 0.49   # m0 (the only free alpha) moved towards more real data
        assert float(cj.long_run_error(eco1, cj.LinearRegression(dim=3))) < float(
            cj.long_run_error(eco0, cj.LinearRegression(dim=3)))
    assert "wrote" in capsys.readouterr().out
    with open(path) as f:
        assert json.load(f)["directed"]
    assert main(["optimize", "ring:3", "--out", str(tmp_path / "x.txt")]) == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(params=("weights", "edges")), "params"),
    (dict(alpha_bounds=(0.6, 0.4)), "alpha_bounds for model node 'a'"),
    (dict(alpha_bounds=(0.6, 0.9)), "outside its bounds"),
    (dict(real_budget=0.1, alpha_bounds=(0.0, 0.8)), "infeasible"),
    (dict(real_budget=0.5, params=("weights",)), "real_budget"),
    (dict(objective="monte_carlo", options=dict(generations=5, replicates=2)), "key"),
    (dict(objective="lyapunov"), "objective"),
    (dict(steps=-1), "steps"),
])
def test_bad_arguments_raise_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cj.optimize(_one_model(), TASK, **kwargs)


def test_collapsing_start_is_an_error():
    eco = cj.graphs.ring(3, real=(), n=50, m=50)   # a closed class: stationary error is inf
    with pytest.raises(ValueError, match="not finite at the start"):
        cj.optimize(eco, cj.LinearRegression(dim=3), params=("model_weights",), steps=2)
