"""The public/private model (THEORY 5): builder, min-norm solver, Theorems 1-3, relative efficiency.

Expected values come from independent NumPy float64 code written from the
paper's block formulas (G_t, P_t, Q_t with Kronecker products), from
``numpy.linalg.lstsq`` fits of materialized data, or from Monte Carlo runs of
the engine compared by z-score.
"""

import jax
import numpy as np
import pytest

import collapse_jax as cj
from collapse_jax.graphs.fixed_designs import random_design
from collapse_jax.tasks.linear_regression import fixed_design
from collapse_jax.tasks.linear_regression import RegressionStats

K, D = 3, 4
SIGMA = 0.7
# Tests share T = 5 (or 0 through relative_efficiency) and these shapes, so moments compile few times.


def _designs(seed=0, n=3, rank=2, m=6):
    """Private rank 2 and public rank 1 in d = 4: every generation-0 Gram is singular."""
    key = jax.random.key(seed)
    priv = [random_design(jax.random.fold_in(key, k), n, D, rank) for k in range(K)]
    pub = random_design(jax.random.fold_in(key, 10), n, D, 1)
    syn = [random_design(jax.random.fold_in(key, 20 + k), m, D) for k in range(K)]
    return priv, pub, syn


def _pinv(A):
    return np.linalg.pinv(A, rcond=1e-10, hermitian=True)


def _block_diag(mats):
    n = sum(m.shape[0] for m in mats)
    out = np.zeros((n, n))
    i = 0
    for m in mats:
        out[i:i + len(m), i:i + len(m)] = m
        i += len(m)
    return out


def _paper(priv, pub, syn, a, b, sigma):
    """THEORY 5's operators, literally: G_t, P_t, Q_t, noise Q S^+ Q' and the law of z."""
    St = _block_diag([X.T @ X for X in priv])
    Ss = pub.T @ pub
    S = _block_diag([X.T @ X for X in syn])
    Sbar = sum(X.T @ X for X in syn) / K
    Pi = np.kron(np.ones((K, K)) / K, np.eye(D))
    IK = np.eye(K)

    def G(a):
        return (1 - a) * b * St + (1 - a) * (1 - b) * np.kron(IK, Ss) + a * np.kron(IK, Sbar)

    def P(a):
        return (1 - a) * _pinv(G(a)) @ np.hstack([b * St, (1 - b) * np.kron(np.ones((K, 1)), Ss)])

    Q = a * _pinv(G(a)) @ Pi @ S
    return dict(G0=G(0.0), P0=P(0.0), P=P(a), Q=Q, N=sigma**2 * Q @ _pinv(S) @ Q.T,
                Zcov=sigma**2 * _block_diag([_pinv(X.T @ X) for X in priv] + [_pinv(Ss)]))


def _eco(a=0.6, b=0.4, **kw):
    priv, pub, syn = _designs(**kw)
    return cj.graphs.public_private(K, a, b, private_designs=priv, public_design=pub,
                                    synthetic_designs=syn), (priv, pub, syn)


TASK = dict(dim=D, noise=SIGMA, solver="min_norm")


# ------------------------------------------------------------------ builder
def test_builder_weights_nodes_and_designs(x64):
    eco, (priv, pub, syn) = _eco(a=0.6, b=0.25)
    R, W = np.asarray(eco.R), np.asarray(eco.W)
    expect_R = np.zeros((K, K + 1))
    expect_R[np.arange(K), np.arange(K)] = 0.4 * 0.25
    expect_R[:, K] = 0.4 * 0.75
    np.testing.assert_allclose(R, expect_R, atol=1e-15)
    np.testing.assert_allclose(W, np.full((K, K), 0.6 / K), atol=1e-15)
    assert sorted(eco.model_edges) == [(k, j) for k in range(K) for j in range(K)]  # self-loops too
    assert eco.data == ("private0", "private1", "private2", "public")
    assert eco.fresh == (False,) * (K + 1)
    np.testing.assert_array_equal(eco.data_attr("design")[K], pub)
    np.testing.assert_array_equal(eco.model_attr("design")[1], syn[1])


def test_builder_draws_low_rank_designs_from_key():
    kw = dict(dim=6, n_private=[5, 7], rank_private=2, n_public=4, rank_public=3, n_synthetic=9)
    eco = cj.graphs.public_private(2, 0.5, 0.5, key=jax.random.key(3), **kw)
    assert [np.linalg.matrix_rank(x) for x in eco.data_attr("design")] == [2, 2, 3]
    assert [x.shape for x in eco.data_attr("design")] == [(5, 6), (7, 6), (4, 6)]
    assert [np.linalg.matrix_rank(x) for x in eco.model_attr("design")] == [6, 6]
    again = cj.graphs.public_private(2, 0.5, 0.5, key=jax.random.key(3), **kw)
    np.testing.assert_array_equal(again.data_attr("design")[0], eco.data_attr("design")[0])
    with pytest.raises(ValueError, match="key is required"):
        cj.graphs.public_private(2, 0.5, 0.5, **kw)


@pytest.mark.parametrize("change, match", [
    (dict(beta=1.5), "beta"),
    (dict(alpha=-0.1), "alpha"),
    (dict(public_design=np.ones((3, 5))), "public_design"),
    (dict(private_designs=[np.ones((3, 4))]), "private_designs"),
    (dict(K=0), "K must"),
])
def test_builder_rejects_bad_input(change, match):
    priv, pub, syn = _designs()
    args = dict(K=K, alpha=0.5, beta=0.5, private_designs=priv, public_design=pub, synthetic_designs=syn)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        cj.graphs.public_private(args.pop("K"), args.pop("alpha"), args.pop("beta"), **args)


# ----------------------------------------------------------- min-norm solver
def test_min_norm_fit_matches_lstsq_on_rank_deficient_generation0(x64):
    priv, pub, _ = _designs()
    rng = np.random.default_rng(0)
    X = np.concatenate([np.sqrt(0.3) * priv[0], np.sqrt(0.7) * pub])  # weighted generation-0 design
    y = rng.normal(size=len(X))
    assert np.linalg.matrix_rank(X) < D
    theta = cj.LinearRegression(**TASK).fit(RegressionStats(jax.numpy.asarray(X.T @ X), jax.numpy.asarray(X.T @ y)))
    np.testing.assert_allclose(theta, np.linalg.lstsq(X, y, rcond=None)[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(theta, np.linalg.pinv(X) @ y, rtol=1e-10, atol=1e-12)


def test_solver_checks():
    eco, _ = _eco()
    with pytest.raises(ValueError, match="generation 0 its fixed designs have rank 3 < dim"):  # count check passes, the rank check does not
        cj.LinearRegression(dim=D).check(cj.graphs.public_private(
            K, 0.5, 0.5, **dict(zip(("private_designs", "public_design", "synthetic_designs"),
                                    _designs(n=9)))))
    few = cj.graphs.public_private(K, 0.5, 0.5, **dict(zip(
        ("private_designs", "public_design", "synthetic_designs"), _designs(n=2))))
    with pytest.raises(ValueError, match="samples <= dim"):
        cj.LinearRegression(dim=D).check(few)
    cj.LinearRegression(**TASK).check(few)  # min-norm: no count or rank error
    with pytest.raises(ValueError, match="solver"):
        cj.LinearRegression(dim=D, solver="qr").check(eco)


# --------------------------------------------------------------- Theorems
def test_theorem2_closed_form_and_operators(x64):
    """Operators vs the paper's block formulas; E theta_t and Cov theta_t vs Theorem 2; MSPE."""
    a, b, T = 0.6, 0.4, 5
    eco, designs = _eco(a, b)
    task = cj.LinearRegression(**TASK)
    ref = _paper(*designs, a, b, SIGMA)
    ops = fixed_design.operators_fixed(eco, task, pool="shared", loss_scale="sum")
    for name, key in (("P0", "P0"), ("P", "P"), ("Q", "Q"), ("noise", "N"), ("z_cov", "Zcov")):
        np.testing.assert_allclose(getattr(ops, name), ref[key], atol=1e-9, err_msg=name)

    mom = cj.moments_fixed(eco, task, T, pool="shared", loss_scale="sum")
    theta = np.asarray(task.theta_star)
    one = np.tile(theta, K)
    M, C = ref["P0"], np.zeros((K * D, K * D))
    Qt = np.eye(K * D)
    for t in range(T + 1):
        if t:
            M, C = ref["P"] + ref["Q"] @ M, ref["Q"] @ C @ ref["Q"].T + ref["N"]
            Qt = ref["Q"] @ Qt
        mean = one - Qt @ (np.eye(K * D) - ref["G0"] @ _pinv(ref["G0"])) @ one  # Theorem 2
        cov = M @ ref["Zcov"] @ M.T + C
        np.testing.assert_allclose(mom.M[t], M, atol=1e-9)
        np.testing.assert_allclose(mom.C[t], C, atol=1e-9)
        np.testing.assert_allclose(mom.mean[t].ravel(), mean, atol=1e-9)
        np.testing.assert_allclose(mom.cov[t], cov, atol=1e-9)
        bias = mean.reshape(K, D) - theta
        blocks = [cov[k * D:(k + 1) * D, k * D:(k + 1) * D] for k in range(K)]
        np.testing.assert_allclose(mom.error[t], [np.trace(B) + e @ e for B, e in zip(blocks, bias)], rtol=1e-9)
        grams = [X.T @ X for X in designs[0]] + [designs[1].T @ designs[1]]
        mspe = [[np.trace(S @ B) + e @ S @ e for S in grams] for B, e in zip(blocks, bias)]
        np.testing.assert_allclose(mom.mspe[t], mspe, rtol=1e-9)
    assert np.linalg.norm(mom.mean[0].ravel() - one) > 0.1  # generation 0 is biased (rank-deficient)


def test_theorem1_conditional_moments_vs_lstsq_monte_carlo(x64):
    """Given fixed real labels, theta_T ~ N(M_T z, C_T): materialized data, numpy lstsq, shared pool."""
    a, b, T, reps = 0.6, 0.4, 5, 20000
    eco, (priv, pub, syn) = _eco(a, b)
    mom = cj.moments_fixed(eco, cj.LinearRegression(**TASK), T, pool="shared", loss_scale="sum")
    rng = np.random.default_rng(5)
    theta = np.asarray(cj.LinearRegression(**TASK).theta_star)
    y_priv = [X @ theta + SIGMA * rng.normal(size=len(X)) for X in priv]
    y_pub = pub @ theta + SIGMA * rng.normal(size=len(pub))
    z = np.concatenate([np.linalg.pinv(X) @ y for X, y in zip(priv + [pub], y_priv + [y_pub])])

    def fit(weights, designs, targets):  # min-norm weighted least squares, one column per replicate
        A = np.concatenate([np.sqrt(w) * X for w, X in zip(weights, designs)])
        Y = np.concatenate([np.sqrt(w) * y for w, y in zip(weights, targets)])
        return np.linalg.lstsq(A, Y, rcond=None)[0]

    col = lambda v: np.repeat(v[:, None], reps, 1)  # noqa: E731
    th = [fit([b, 1 - b], [priv[k], pub], [col(y_priv[k]), col(y_pub)]) for k in range(K)]
    for _ in range(T):
        pool = [X @ th[j] + SIGMA * rng.normal(size=(len(X), reps)) for j, X in enumerate(syn)]  # shared
        w = [(1 - a) * b, (1 - a) * (1 - b)] + [a / K] * K
        th = [fit(w, [priv[k], pub] + syn, [col(y_priv[k]), col(y_pub)] + pool) for k in range(K)]
    sample = np.concatenate(th)  # (K d, reps)
    mean, C = np.asarray(mom.M[T]) @ z, np.asarray(mom.C[T])
    z_mean = (sample.mean(1) - mean) / np.sqrt(np.diag(C) / reps)
    S = np.cov(sample)
    se = np.sqrt((np.outer(np.diag(C), np.diag(C)) + C**2) / (reps - 1))
    z_cov = (S - C) / se
    assert np.abs(z_mean).max() < 4, z_mean
    assert np.abs(z_cov).max() < 4.5, np.abs(z_cov).max()


@pytest.mark.parametrize("pool, loss_scale", [("shared", "sum"), ("independent", "mean")])
def test_unconditional_moments_vs_simulate(x64, pool, loss_scale):
    """Theorem 2 via the engine: mean error per (generation, model) and mean dispersion, by z-score."""
    a, b, T, reps = 0.6, 0.4, 5, 4000
    eco, _ = _eco(a, b)
    task = cj.LinearRegression(**TASK)
    mom = cj.moments_fixed(eco, task, T, pool=pool, loss_scale=loss_scale)
    other = cj.moments_fixed(eco, task, T, pool="independent" if pool == "shared" else "shared",
                             loss_scale=loss_scale)
    res = cj.simulate(eco, task, jax.random.key(7), generations=T, replicates=reps,
                      pool=pool, loss_scale=loss_scale)
    err = np.asarray(res.error)
    z_err = (err.mean(0) - np.asarray(mom.error)) / (err.std(0, ddof=1) / np.sqrt(reps))
    disp = np.asarray(res.metrics["dispersion"])
    se_disp = disp.std(0, ddof=1) / np.sqrt(reps)
    z_disp = (disp.mean(0) - np.asarray(mom.dispersion)) / se_disp
    assert np.abs(z_err).max() < 4, z_err
    assert np.abs(z_disp).max() < 4, z_disp
    # The test can tell the pools apart: the other pool's dispersion is far off.
    assert abs(disp.mean(0)[-1] - float(other.dispersion[-1])) / se_disp[-1] > 10


def _private_synthetic_eco(a, b=0.4):
    """Synthetic designs equal to the private ones (S proportional to S~): rho(Q) < 1."""
    priv, pub, _ = _designs()
    return cj.graphs.public_private(K, a, b, private_designs=priv, public_design=pub,
                                    synthetic_designs=priv), (priv, pub, priv)


def test_theorem3_limit_vs_kronecker_formula_and_long_iteration(x64):
    a, b = 0.6, 0.4
    eco, designs = _private_synthetic_eco(a, b)
    task = cj.LinearRegression(**TASK)
    mom = cj.moments_fixed(eco, task, 200, pool="shared", loss_scale="sum")
    ref = _paper(*designs, a, b, SIGMA)
    n = K * D
    M = np.linalg.solve(np.eye(n) - ref["Q"], ref["P"])
    S = _block_diag([X.T @ X for X in designs[2]])
    vecC = SIGMA**2 * np.linalg.solve(np.eye(n * n) - np.kron(ref["Q"], ref["Q"]),
                                      (ref["Q"] @ _pinv(S) @ ref["Q"].T).ravel())
    C = vecC.reshape(n, n)
    assert float(mom.rho) == pytest.approx(np.abs(np.linalg.eigvals(ref["Q"])).max(), rel=1e-10)
    assert float(mom.rho) < 0.9
    np.testing.assert_allclose(mom.limit.M, M, atol=1e-9)
    np.testing.assert_allclose(mom.limit.C, C, atol=1e-9)
    np.testing.assert_allclose(mom.limit.cov, M @ ref["Zcov"] @ M.T + C, atol=1e-9)
    for field in ("M", "C", "mean", "cov", "error", "mspe", "task_error", "spread", "dispersion"):
        np.testing.assert_allclose(getattr(mom, field)[-1], getattr(mom.limit, field), atol=1e-8, err_msg=field)


def test_limit_is_inf_when_rho_exceeds_one(x64):
    # Misaligned full-rank synthetic designs: rho(Q) > 1 although a < 1 (THEORY 4, mean operator).
    eco = cj.graphs.public_private(K, 0.6, 0.4, dim=D, n_private=3, rank_private=2, n_public=3,
                                   rank_public=2, n_synthetic=6, key=jax.random.key(1))
    mom = cj.moments_fixed(eco, cj.LinearRegression(**TASK), 5, pool="shared", loss_scale="sum")
    assert float(mom.rho) > 1
    assert np.all(np.isinf(mom.limit.error)) and np.all(np.isfinite(mom.error))
    assert np.isinf(mom.limit.dispersion) and np.isinf(mom.limit.spread)  # these diverge too here
    for error in ("mse", "prediction"):
        assert np.all(np.asarray(cj.relative_efficiency(eco, cj.LinearRegression(**TASK), error=error)) == 0)


def test_relative_efficiency_vs_numpy(x64):
    a, b = 0.5, 0.5
    eco, designs = _private_synthetic_eco(a, b)
    task = cj.LinearRegression(**TASK)
    ref = _paper(*designs, a, b, SIGMA)
    n = K * D
    M = np.linalg.solve(np.eye(n) - ref["Q"], ref["P"])
    C = np.linalg.solve(np.eye(n * n) - np.kron(ref["Q"], ref["Q"]), ref["N"].ravel()).reshape(n, n)
    cov = M @ ref["Zcov"] @ M.T + C
    theta = np.asarray(task.theta_star)
    grams = [X.T @ X for X in designs[0]] + [designs[1].T @ designs[1]]
    z_mean = np.concatenate([_pinv(S) @ S @ theta for S in grams])
    bias = (M @ z_mean).reshape(K, D) - theta
    mse = [np.trace(cov[k * D:(k + 1) * D, k * D:(k + 1) * D]) + bias[k] @ bias[k] for k in range(K)]
    expected = SIGMA**2 * np.trace(np.linalg.inv(sum(grams))) / np.asarray(mse)
    got = cj.relative_efficiency(eco, task, pool="shared", loss_scale="sum")
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert np.all((0 < expected) & (expected < 1))


def test_homogenization_grows_with_alpha(x64):
    """The row blocks of M (and the models) draw together as a grows (THEORY 5)."""
    task = cj.LinearRegression(**TASK)
    lims = [cj.moments_fixed(_private_synthetic_eco(a)[0], task, 0, pool="shared", loss_scale="sum").limit
            for a in (0.2, 0.4, 0.6, 0.8)]
    spread = [float(m.spread) for m in lims]
    disp = [float(m.dispersion) for m in lims]
    assert all(x > y for x, y in zip(spread, spread[1:])), spread
    assert all(x > y for x, y in zip(disp, disp[1:])), disp


def _figure2_designs(seed):
    """ICLR Figure 2 sizes: K = 4, d = 15, private and public n = 20 of rank 5.

    THEORY does not give the paper's designs; here each model publishes on its
    own private covariates (S proportional to S~).
    """
    key = jax.random.key(seed)
    priv = [random_design(jax.random.fold_in(key, k), 20, 15, 5) for k in range(4)]
    pub = random_design(jax.random.fold_in(key, 9), 20, 15, 5)
    return cj.graphs.public_private(4, 0.5, 0.5, private_designs=priv, public_design=pub, synthetic_designs=priv)


GRID = np.round(np.linspace(0.0, 1.0, 11), 2)  # alpha = 0 and alpha = 1 included


def _grid(eco, noise, error):
    task = cj.LinearRegression(dim=15, noise=noise, solver="min_norm")
    return np.asarray(fixed_design.relative_efficiency_grid(eco, task, GRID, GRID, error=error))


def test_figure2_maps_with_alpha_zero(x64):
    """The ICLR Figure 2 claim, stated as what holds on the full grid, alpha = 0 included.

    * alpha = 1 (synthetic only) collapses: RE = 0.
    * For alpha > 0 the long-run models are unbiased (Theorem 2: Q^t -> 0), so
      RE does not depend on the noise level; at alpha = 0 the min-norm fits on
      rank-deficient data are biased, and their RE does.
    * Over alpha > 0 the optimum of the models' mean RE is interior for both
      errors: parameter MSE near (0.4, 0.7), prediction error near (0.3, 0.4),
      and a = b = 0.5 (the paper's optimum) is within 6% of it.
    * Whether alpha = 0 beats every mixture depends on the noise: at sigma = 0.5
      (||theta*|| = 1) the interior optimum wins for both errors; at sigma = 2
      the biased alpha = 0 fits win the MSE (they shrink like a ridge).
    """
    eco = _figure2_designs(0)
    low = {e: _grid(eco, 0.5, e) for e in ("mse", "prediction")}
    high = {e: _grid(eco, 2.0, e) for e in ("mse", "prediction")}
    for e in ("mse", "prediction"):
        assert np.all(low[e][-1] == 0) and np.all(high[e][-1] == 0)
        np.testing.assert_allclose(low[e][1:], high[e][1:], rtol=1e-8)         # alpha > 0: noise-free ratio
        assert np.abs(low[e][0] - high[e][0]).max() > 0.05                      # alpha = 0: it is not
        mean = low[e].mean(-1)
        i, j = np.unravel_index(np.argmax(mean[1:]), mean[1:].shape)
        a, b = GRID[1:][i], GRID[j]
        assert 0 < a < 1 and 0 < b < 1, (e, a, b)
        expect = {"mse": (0.4, 0.7), "prediction": (0.3, 0.4)}[e]
        assert abs(a - expect[0]) <= 0.1 and abs(b - expect[1]) <= 0.1, (e, a, b)
        assert mean[5, 5] > 0.94 * mean[1:].max(), (e, mean[5, 5] / mean[1:].max())
        assert mean[1:].max() > mean[0].max(), e                                # sigma = 0.5: mixing wins
    assert high["mse"].mean(-1)[0].max() > high["mse"].mean(-1)[1:].max()      # sigma = 2: alpha = 0 wins the MSE


@pytest.mark.parametrize("seed", [1, 2])
def test_prediction_error_optimum_is_interior_across_designs(x64, seed):
    """On other random designs the prediction-error optimum stays interior, with (0.5, 0.5) within 6%."""
    mean = _grid(_figure2_designs(seed), 0.5, "prediction").mean(-1)
    i, j = np.unravel_index(np.argmax(mean), mean.shape)
    assert 0.1 <= GRID[i] <= 0.5 and 0.2 <= GRID[j] <= 0.6, (GRID[i], GRID[j])
    assert mean[5, 5] > 0.94 * mean.max()


def test_relative_efficiency_prediction_vs_numpy(x64):
    a, b = 0.5, 0.5
    eco, designs = _private_synthetic_eco(a, b)
    task = cj.LinearRegression(**TASK)
    ref = _paper(*designs, a, b, SIGMA)
    n = K * D
    M = np.linalg.solve(np.eye(n) - ref["Q"], ref["P"])
    C = np.linalg.solve(np.eye(n * n) - np.kron(ref["Q"], ref["Q"]), ref["N"].ravel()).reshape(n, n)
    cov = M @ ref["Zcov"] @ M.T + C
    theta = np.asarray(task.theta_star)
    grams = [X.T @ X for X in designs[0]] + [designs[1].T @ designs[1]]
    z_mean = np.concatenate([_pinv(S) @ S @ theta for S in grams])
    bias = (M @ z_mean).reshape(K, D) - theta
    pooled_cov = SIGMA**2 * _pinv(sum(grams))
    pooled_bias = _pinv(sum(grams)) @ sum(grams) @ theta - theta
    expected = []
    for k in range(K):
        S = grams[k] / len(designs[0][k])
        model = np.trace(S @ cov[k * D:(k + 1) * D, k * D:(k + 1) * D]) + bias[k] @ S @ bias[k]
        expected.append((np.trace(S @ pooled_cov) + pooled_bias @ S @ pooled_bias) / model)
    got = cj.relative_efficiency(eco, task, error="prediction")  # defaults: the paper's sum / shared
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    with pytest.raises(ValueError, match="error must be"):
        cj.relative_efficiency(eco, task, error="mspe")
    chain = cj.graphs.public_private(K, a, b, **dict(zip(("private_designs", "public_design", "synthetic_designs"),
                                                         designs)))
    with pytest.raises(ValueError, match="own_task"):
        cj.relative_efficiency(chain, task, error="prediction", own_task=(0, 1))


# ------------------------------------------------ cross-task error and transfer
def _hetero_eco(a, thetas=None):
    priv, pub, _ = _designs()
    return cj.graphs.public_private(K, a, 0.5, private_designs=priv, public_design=pub,
                                    synthetic_designs=priv, theta=thetas)


def test_task_error_is_per_sample_mspe_with_each_tasks_theta(x64):
    rng = np.random.default_rng(0)
    thetas = [rng.normal(size=D) for _ in range(K)]
    eco = _hetero_eco(0.5, thetas)
    task = cj.LinearRegression(**TASK)
    mom = cj.moments_fixed(eco, task, 3, pool="shared", loss_scale="sum")
    n = np.asarray(eco.n, float)
    np.testing.assert_allclose(mom.task_error, np.asarray(mom.mspe) / n, rtol=1e-12)
    # Direct formula at the last generation: E (theta_k - theta_s)' S_s (theta_k - theta_s).
    all_thetas = np.stack(thetas + [np.asarray(task.theta_star)])
    cov = np.asarray(mom.cov[-1]).reshape(K, D, K, D)
    for k in range(K):
        for s, X in enumerate(eco.data_attr("design")):
            S = X.T @ X / len(X)
            gap = np.asarray(mom.mean[-1, k]) - all_thetas[s]
            assert float(mom.task_error[-1, k, s]) == pytest.approx(np.trace(S @ cov[k, :, k]) + gap @ S @ gap,
                                                                    rel=1e-9)


def test_simulated_task_error_matches_moments_with_heterogeneous_tasks(x64):
    """res.metrics["task_error"] (engine) against moments_fixed.task_error, by z-score, per (t, k, s)."""
    rng = np.random.default_rng(2)
    thetas = [rng.normal(size=D) for _ in range(K)]
    eco = _hetero_eco(0.5, thetas)
    task = cj.LinearRegression(**TASK)
    T, reps = 3, 4000
    mom = cj.moments_fixed(eco, task, T, pool="shared", loss_scale="sum")
    res = cj.simulate(eco, task, jax.random.key(11), generations=T, replicates=reps, pool="shared", loss_scale="sum",
                      metrics=("task_error",))
    te = np.asarray(res.metrics["task_error"], float)                           # (R, T+1, K, S)
    assert te.shape == (reps, T + 1, K, K + 1)
    z = (te.mean(0) - np.asarray(mom.task_error)) / (te.std(0, ddof=1) / np.sqrt(reps))
    assert np.abs(z).max() < 4.5, np.abs(z).max()


def test_transfer_mechanism_mixing_lowers_error_on_other_tasks(x64):
    """Vu et al.'s transfer: a model's error on another model's task falls with mixing, not without.

    Common theta; rank-2 private designs in d = 4. At alpha = 0 a model never
    sees the other tasks' directions beyond the public data, so its error on
    them stays at its generation-0 value; with alpha = 0.5 it falls.
    """
    task = cj.LinearRegression(**TASK)
    T = 30
    off = ~np.eye(K, dtype=bool)
    res = {}
    for a in (0.0, 0.5):
        mom = cj.moments_fixed(_hetero_eco(a), task, T, pool="shared", loss_scale="sum")
        te = np.asarray(mom.task_error)[:, :, :K]                               # (T+1, K, K) private tasks
        res[a] = te
    np.testing.assert_allclose(res[0.0][-1], res[0.0][0], rtol=1e-10)           # without mixing: no transfer
    assert np.all(res[0.5][-1][off] < 0.8 * res[0.0][-1][off]), (res[0.5][-1], res[0.0][-1])
    assert np.all(res[0.5][0] == res[0.0][0])                                   # same generation 0


def test_heterogeneous_tasks_networkx_round_trip_at_alpha_zero(x64):
    rng = np.random.default_rng(1)
    thetas = [rng.normal(size=D) for _ in range(K)]
    task = cj.LinearRegression(**TASK)
    eco = _hetero_eco(0.0, thetas)
    back = cj.Ecosystem.from_networkx(eco.to_networkx())
    np.testing.assert_allclose(back.R, eco.R)
    np.testing.assert_allclose(back.W, eco.W)
    np.testing.assert_allclose(back.alpha, np.zeros(K))
    for t0, t1 in zip(eco.data_attr("theta"), back.data_attr("theta")):
        assert (t0 is None and t1 is None) or np.array_equal(t0, t1)
    np.testing.assert_allclose(task.data_params(back)[:K], np.stack(thetas))
    m0 = cj.moments_fixed(eco, task, 3, pool="shared", loss_scale="sum")
    m1 = cj.moments_fixed(back, task, 3, pool="shared", loss_scale="sum")
    np.testing.assert_allclose(m1.task_error, m0.task_error, rtol=1e-12)
    with pytest.raises(ValueError, match="theta"):
        _hetero_eco(0.0, thetas[:2])


# ------------------------------------------------------------------ limit
@pytest.mark.parametrize("pool", ["shared", "independent"])
def test_limit_finite_for_converging_quantities_at_alpha_one(x64, pool):
    """alpha = 1: rho(Q) = 1 and the error grows without bound, but the models' differences converge."""
    eco = _hetero_eco(1.0)
    task = cj.LinearRegression(**TASK)
    mom = cj.moments_fixed(eco, task, 60, pool=pool, loss_scale="sum")
    assert float(mom.rho) == pytest.approx(1.0, abs=1e-9)
    assert np.all(np.isinf(mom.limit.error)) and np.all(np.isinf(mom.limit.task_error))
    assert mom.error[-1, 0] > mom.error[30, 0] + 1                               # it does grow
    for field in ("spread", "dispersion"):
        lim = float(getattr(mom.limit, field))
        assert np.isfinite(lim), field
        assert lim == pytest.approx(float(getattr(mom, field)[-1]), rel=1e-8, abs=1e-12), field
    if pool == "shared":  # every model fits the same pool: identical from generation 1 on
        assert float(mom.limit.dispersion) == pytest.approx(0.0, abs=1e-12)
    else:
        assert float(mom.limit.dispersion) > 0.01


def test_limit_gradient_matches_finite_differences(x64):
    """Long-run error is differentiable in alpha and the relative model weights."""
    eco, _ = _private_synthetic_eco(0.6)
    task = cj.LinearRegression(**TASK)

    def f(alpha, weights):
        mom = cj.moments_fixed(eco.replace(alpha=alpha, model_weights=weights), task, 5,
                               pool="shared", loss_scale="sum")
        return mom.limit.error.sum() + mom.error[-1].sum()

    a0, w0 = eco.alpha, eco.model_weights
    ga, gw = jax.grad(f, argnums=(0, 1))(a0, w0)
    h = 1e-6
    for i in range(K):
        fd = (f(a0.at[i].add(h), w0) - f(a0.at[i].add(-h), w0)) / (2 * h)
        assert float(ga[i]) == pytest.approx(float(fd), rel=1e-5)
    fd = (f(a0, w0.at[0, 1].add(h)) - f(a0, w0.at[0, 1].add(-h))) / (2 * h)
    assert float(gw[0, 1]) == pytest.approx(float(fd), rel=1e-5)


def test_moments_fixed_rejects_unsupported_ecosystems():
    task = cj.LinearRegression(dim=D, solver="min_norm")
    with pytest.raises(ValueError, match="data node 'data'"):
        cj.moments_fixed(cj.graphs.chain(2, n=10, m=10, real=(0, 1)), task, 3)
    eco, _ = _eco()
    with pytest.raises(ValueError, match="regime"):
        cj.moments_fixed(eco, task, 3, regime="accumulate")
    with pytest.raises(ValueError, match="pool"):
        cj.moments_fixed(eco, task, 3, pool="both")
