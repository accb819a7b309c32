"""SimulationResult: labelled exports (to_xarray, to_dataframe) and the summary's verdicts."""

import jax
import numpy as np
import pytest

import collapse_jax as cj
from collapse_jax.engine.results import DIVERGE_FACTOR, SimulationResult

R, T, K = 4, 3, 3


@pytest.fixture(scope="module")
def tiny():
    """One real run (R=4, T=3, K=3) shared by the export tests."""
    eco = cj.graphs.ring(K, alpha=0.5, real=(0,), n=8, m=8)
    return cj.simulate(eco, cj.LinearRegression(dim=2), jax.random.key(0), generations=T, replicates=R,
                       diagnostics=True)


def test_to_xarray_labels_every_axis(tiny):
    ds = tiny.to_xarray()
    assert ds["error"].dims == ("replicate", "generation", "model")
    assert list(ds["model"].values) == ["m0", "m1", "m2"]
    assert (ds.sizes["replicate"], ds.sizes["generation"], ds.sizes["model"]) == (R, T + 1, K)
    np.testing.assert_array_equal(ds["error"].values, np.asarray(tiny.error))
    for name, value in tiny.metrics.items():
        assert ds[name].dims[:2] == ("replicate", "generation")
        np.testing.assert_array_equal(ds[name].values, np.asarray(value))
    # The run's options are attributes; scalar diagnostics too, per-model ones are variables.
    for name in ("generations", "regime", "pool", "loss_scale", "engine", "replicates"):
        assert ds.attrs[name] == tiny.config[name]
    assert "diagnostic_rho_W" in ds.attrs
    if "stationary_error" in tiny.diagnostics:
        assert ds["diagnostic_stationary_error"].dims == ("model",)


def test_metric_axes_get_their_own_dims():
    err = np.zeros((2, 3, 4))
    res = SimulationResult(error=err, metrics={"cosine": np.ones((2, 3)), "task_error": np.ones((2, 3, 4, 5)),
                                               "per_model": np.ones((2, 3, 4))},
                           models=("a", "b", "c", "d"), config={"generations": 2, "nested": {"x": 1}})
    ds = res.to_xarray()
    assert ds["task_error"].dims == ("replicate", "generation", "model", "task_error_dim3")
    assert ds["per_model"].dims == ("replicate", "generation", "model")
    assert ds.attrs["nested"] == '{"x": 1}'
    with pytest.raises(ValueError, match="bad"):
        SimulationResult(error=err, metrics={"bad": np.ones((3, 2))}, models=tuple("abcd"), config={}).to_xarray()


def test_to_dataframe_is_tidy(tiny):
    df = tiny.to_dataframe()
    assert list(df.columns[:4]) == ["replicate", "generation", "model", "error"]
    assert len(df) == R * (T + 1) * K
    row = df[(df.replicate == 1) & (df.generation == 2) & (df.model == "m2")]
    assert float(row["error"].iloc[0]) == pytest.approx(float(np.asarray(tiny.error)[1, 2, 2]))
    # A per-generation metric repeats along the models.
    assert float(row["cosine"].iloc[0]) == pytest.approx(float(np.asarray(tiny.metrics["cosine"])[1, 2]))
    assert df.attrs["regime"] == "replace"
    means = df.groupby(["generation", "model"])["error"].mean().unstack()
    np.testing.assert_allclose(means.values, tiny.mean, rtol=1e-6)


# ------------------------------------------------------------------ summary
def _geometric(start_exp, rate, seed=0, R=64, T=40):
    """float64 errors growing geometrically (x10^rate per generation) with replicate noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(T + 1)
    log10 = start_exp + rate * t[None, :, None] + 0.05 * rng.standard_normal((R, T + 1, 1))
    return 10.0 ** log10


def test_huge_finite_float64_errors_diverge():
    """Issue 12: finite float64 errors near 1e307 made the slope NaN or its s.e. inf, so grows=False."""
    err = _geometric(300, 0.17)  # 1e300 .. 1e306.8: finite, but (e - mean) @ t overflows
    assert np.isfinite(err).all() and err.max() > 1e306
    res = SimulationResult(error=err, metrics={}, models=("m0",), config={})
    row = res.summary()["m0"]
    assert row["grows"] and row["verdict"] == "diverges"
    assert row["factor"] >= DIVERGE_FACTOR
    assert np.isfinite(row["slope_se"]) and np.isfinite(row["final_se"]) and np.isfinite(row["final_mean"])
    np.testing.assert_allclose(row["final_mean"], err[:, -1, 0].mean(dtype=np.longdouble), rtol=1e-9)
    assert "diverges" in str(res.summary())


def test_verdicts_bounded_grows_diverges():
    rng = np.random.default_rng(1)
    t = np.arange(41)[None, :]
    bounded = 1.0 + 0.1 * rng.standard_normal((64, 41))
    linear = 1.0 + 0.05 * t + 0.1 * rng.standard_normal((64, 41))          # x 2 over the last half
    overflow = np.where(t >= 30, np.inf, 1.0 + t + 0 * rng.standard_normal((64, 41)))
    err = np.stack([bounded, linear, _geometric(0, 0.1)[..., 0], overflow], -1)
    s = SimulationResult(error=err, metrics={}, models=("b", "g", "d", "o"), config={}).summary()
    assert [s[m]["verdict"] for m in "bgdo"] == ["bounded", "grows", "diverges", "diverges"]
    assert [s[m]["grows"] for m in "bgdo"] == [False, True, True, True]
    assert s["o"]["overflow_generation"] == 30
    text = str(s)
    assert "excess risk" in text and "risk grows" in text and "overflow at t=30" in text


def test_summary_names_its_quantity():
    res = SimulationResult(error=np.ones((2, 3, 1)), metrics={}, models=("m0",), config={})
    assert str(res.summary(quantity="KL divergence")).startswith("KL divergence per model")


def test_fitted_parameters_become_variables():
    """A run that kept its fitted parameters (``params``, a pytree with leading (R, T+1, K) axes)."""
    import typing

    class Params(typing.NamedTuple):
        mean: np.ndarray
        cov: np.ndarray

    res = SimulationResult(error=np.zeros((2, 3, 4)), metrics={}, models=tuple("abcd"), config={})
    object.__setattr__(res, "params", Params(np.ones((2, 3, 4, 5)), np.ones((2, 3, 4, 5, 5))))
    ds = res.to_xarray()
    assert ds["param_mean"].dims == ("replicate", "generation", "model", "param_mean_dim3")
    assert ds["param_cov"].dims == ("replicate", "generation", "model", "param_cov_dim3", "param_cov_dim4")
    df = res.to_dataframe()
    assert set(df.attrs["not_in_table"]) == {"param_mean", "param_cov"} and len(df) == 2 * 3 * 4


def test_float64_collapsing_run_with_huge_finite_errors(x64):
    """Issue 12 on a real run: a self-loop whose float64 errors reach ~5e307, all finite.

    Before: slope NaN, s.e. NaN, final mean inf, ``grows=False``. The risk grows linearly with
    slope noise^2 d/(m-d-1) (THEORY: one self-loop), which the summary now recovers.
    """
    noise, d, m = 1e153, 3, 10
    res = cj.simulate(cj.graphs.ring(1, real=(), m=m), cj.LinearRegression(dim=d, noise=noise),
                      jax.random.key(15), generations=20, replicates=200)
    err = np.asarray(res.error)
    assert err.dtype == np.float64 and np.isfinite(err).all() and err.max() > 1e307
    row = res.summary()["m0"]
    assert row["grows"] and row["verdict"] == "grows"            # linear: about x2 over the last half
    assert np.isfinite(row["final_mean"]) and np.isfinite(row["slope_se"])
    assert abs(row["slope"] - noise**2 * d / (m - d - 1)) < 5 * row["slope_se"]
