"""Linear models on hostile inputs: extreme scales, huge values, bad parameters,
divergence, non-convergence, foreign data for robust errors, scikit-learn's types."""

import math
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sklearn.linear_model as sk
from sklearn.datasets import load_diabetes
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score as sk_r2

import regtorch
from regtorch import ElasticNet, Lasso, LinearRegression, Ridge
from regtorch.data import TableSource
from regtorch.linear import stream_fit_linear
from regtorch.linear.solvers import RankWarning
from regtorch.metrics import mean_squared_error, r2_score, regression_report
from regtorch.nn.loop import TrainingDivergedError

X_D, Y_D = load_diabetes(return_X_y=True)
N = 200
RNG = np.random.default_rng(0)
X2 = RNG.normal(size=N)
Z = RNG.normal(size=N)
NOISE = 0.1 * RNG.normal(size=N)
# column 1 times its scale, with true coefficient 2 / scale; column 2 has coefficient -3
SCALED = {"1e200": 1e200, "1e-300": 1e-300}
Y_SCALED = 2.0 * Z - 3.0 * X2 + NOISE + 5.0
Y_CONST = -3.0 * X2 + NOISE + 5.0  # for the 1e20 + N(0, 1) column: no signal in it


def ols(X, y):
    A = np.column_stack([np.ones(len(X)), X])
    return np.linalg.lstsq(A, y, rcond=None)[0][1:]


def rel(a, b):
    return np.max(np.abs(np.asarray(a) - b) / np.abs(b))


# ---------------------------------------------------------------- 3. extreme scales


@pytest.mark.parametrize("scale", list(SCALED))
def test_linear_regression_fits_extreme_column_scales(scale):
    s = SCALED[scale]
    X = np.column_stack([s * Z, X2])
    m = LinearRegression().fit(X, Y_SCALED)
    ref = ols(np.column_stack([Z, X2]), Y_SCALED)  # the same fit in unit scale
    assert rel(m.coef_ * np.array([s, 1.0]), ref) < 1e-12
    assert (
        rel(
            m.summary().bse[1:] * np.array([s, 1.0]),
            LinearRegression().fit(np.column_stack([Z, X2]), Y_SCALED).summary().bse[1:],
        )
        < 1e-12
    )


def test_constant_to_float64_column_is_rank_deficient_and_the_other_coefficient_right():
    X = np.column_stack([1e20 + Z, X2])  # spread below float64 resolution at 1e20
    assert np.ptp(X[:, 0]) == 0.0
    for Est, kw in [(LinearRegression, {}), (Ridge, {"alpha": 1.0})]:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            m = Est(**kw).fit(X, Y_CONST)
        ref = getattr(sk, Est.__name__)(**kw).fit(X2[:, None], Y_CONST).coef_[0]
        assert m.coef_[0] == 0.0
        assert m.coef_[1] == pytest.approx(ref, rel=1e-10)
        assert m.coef_[1] == pytest.approx(-3.0, abs=0.05)
        if Est is LinearRegression:
            assert any(issubclass(r.category, RankWarning) for r in rec)


@pytest.mark.parametrize(
    "name, kw",
    [
        ("LinearRegression", {}),
        ("Lasso", {"alpha": 0.01}),
        ("ElasticNet", {"alpha": 0.01}),
        ("RidgeCV", {"alphas": [0.1, 1.0, 10.0]}),  # leave-one-out: the Gram's spectrum
    ],
)
def test_a_small_spread_on_a_large_mean_is_a_feature_not_a_constant(name, kw):
    # spread 1e-6 x the mean at 20,000 rows: float64 holds ten digits of it; a constant
    # test of sqrt(n eps) x the mean once zeroed this column (coefficient 0, no warning)
    rng = np.random.default_rng(0)
    n = 20_000
    X = np.column_stack([rng.normal(size=n), 1e6 + rng.normal(size=n)])
    y = X[:, 0] + 2.0 * (X[:, 1] - 1e6) + rng.normal(size=n)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankWarning)
        m = getattr(regtorch, name)(**kw).fit(X, y)
    ref = getattr(sk, name)(**kw).fit(X, y)
    np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-7)
    assert m.coef_[1] == pytest.approx(2.0, abs=0.02)
    if name == "RidgeCV":
        assert m.best_score_ == pytest.approx(ref.best_score_, rel=1e-8)
    # the same column exactly constant is still found constant
    X[:, 1] = 1e6
    with pytest.warns(RankWarning) if name == "LinearRegression" else warnings.catch_warnings():
        m = getattr(regtorch, name)(**kw).fit(X, y)
    assert m.coef_[1] == 0.0


@pytest.mark.parametrize("Est", [Lasso, ElasticNet])
def test_penalised_models_on_extreme_scales_match_sklearn_or_refuse(Est):
    kw = {"alpha": 0.01}
    for X, y in [
        (np.column_stack([1e20 + Z, X2]), Y_CONST),
        (np.column_stack([1e-300 * Z, X2]), Y_SCALED),
    ]:
        m = Est(**kw).fit(X, y)
        ref = getattr(sk, Est.__name__)(**kw).fit(X, y)
        np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-6, atol=1e-12)
        assert m.coef_[1] == pytest.approx(-3.0, abs=0.2)
    with pytest.raises(ValueError, match=r"column 'x0' \(max \|value\| 3.\d+e\+200\).*overflow"):
        Est(**kw).fit(np.column_stack([1e200 * Z, X2]), Y_SCALED)


def test_ridge_on_extreme_scales_matches_sklearn_where_sklearn_works():
    X = np.column_stack([1e-300 * Z, X2])
    m = Ridge(alpha=1.0).fit(X, Y_SCALED)
    ref = sk.Ridge(alpha=1.0).fit(X, Y_SCALED)
    np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-10)
    # 1e200: scikit-learn overflows; the penalty on that column is negligible (as it is at
    # 1e10, where scikit-learn works), so compare there
    m = Ridge(alpha=1.0).fit(np.column_stack([1e200 * Z, X2]), Y_SCALED)
    ref = sk.Ridge(alpha=1.0).fit(np.column_stack([1e10 * Z, X2]), Y_SCALED).coef_
    assert rel(m.coef_ * np.array([1e190, 1.0]), ref) < 1e-9


def _parquet(tmp_path, X, y, name):
    df = pd.DataFrame(X, columns=["a", "b"]).assign(y=y)
    path = tmp_path / f"{name}.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=64)
    return path


@pytest.mark.parametrize("scale", list(SCALED))
def test_streamed_fit_on_extreme_scales(tmp_path, scale):
    s = SCALED[scale]
    path = _parquet(tmp_path, np.column_stack([s * Z, X2]), Y_SCALED, scale)
    est = LinearRegression()
    stream_fit_linear(est, TableSource(path, "y", batch_rows=50))
    ref = ols(np.column_stack([Z, X2]), Y_SCALED)
    assert rel(est.coef_ * np.array([s, 1.0]), ref) < 1e-10


def test_streamed_fit_with_a_constant_to_float64_column(tmp_path):
    path = _parquet(tmp_path, np.column_stack([1e20 + Z, X2]), Y_CONST, "const")
    est = LinearRegression()
    with pytest.warns(RankWarning):
        stream_fit_linear(est, TableSource(path, "y", batch_rows=50))
    ref = sk.LinearRegression().fit(X2[:, None], Y_CONST).coef_[0]
    assert est.coef_[1] == pytest.approx(ref, rel=1e-8)


def test_streamed_ridge_refuses_overflowing_columns(tmp_path):
    path = _parquet(tmp_path, np.column_stack([1e200 * Z, X2]), Y_SCALED, "ridge")
    with pytest.raises(ValueError, match="column 'a'.*overflow"):
        stream_fit_linear(Ridge(alpha=1.0), TableSource(path, "y", batch_rows=50))


# ---------------------------------------------------------------- 4. huge values


@pytest.mark.parametrize("Est", [LinearRegression, Ridge, Lasso, ElasticNet])
def test_values_near_float64_max_are_refused(Est):
    X = np.column_stack([np.full(N, 1.7e308) * np.sign(Z), X2])
    with pytest.raises(
        ValueError, match=r"too large for float64 arithmetic \(column 'x0', max 1.7e\+308"
    ):
        Est().fit(X, Y_SCALED)
    df = pd.DataFrame({"income": X[:, 0], "b": X2})
    with pytest.raises(ValueError, match="column 'income'"):
        Est().fit(df, Y_SCALED)


def test_metrics_on_targets_near_1e300():
    y = RNG.normal(size=50)
    p = y + 0.1 * RNG.normal(size=50)
    assert r2_score(y * 1e300, p * 1e300) == pytest.approx(sk_r2(y, p), rel=1e-13)
    assert mean_squared_error(y * 1e300, p * 1e300) == math.inf  # honest: 1e598 overflows
    rep = regression_report(y * 1e300, p * 1e300)
    assert rep["r2"] == pytest.approx(sk_r2(y, p), rel=1e-13)
    assert rep["rmse"] == pytest.approx(1e300 * np.sqrt(np.mean((y - p) ** 2)), rel=1e-13)
    assert r2_score(y * 1e-300, p * 1e-300) == pytest.approx(sk_r2(y, p), rel=1e-13)


# ---------------------------------------------------------------- 5. parameters


@pytest.mark.parametrize(
    "est, name",
    [
        (Ridge(alpha=math.inf), "alpha"),
        (Lasso(alpha=math.inf), "alpha"),
        (ElasticNet(alpha=-math.inf), "alpha"),
        (ElasticNet(l1_ratio=math.inf), "l1_ratio"),
        (Ridge(alpha=math.nan), "alpha"),
    ],
)
def test_non_finite_penalties_are_refused(est, name):
    with pytest.raises(ValueError, match=f"The '{name}' parameter must"):
        est.fit(X_D, Y_D)


def test_infinite_alpha_message():
    with pytest.raises(ValueError, match="The 'alpha' parameter must be finite. Got inf"):
        Ridge(alpha=math.inf).fit(X_D, Y_D)


# ---------------------------------------------------------------- 6. divergence


def test_diverging_adam_raises():
    with pytest.raises(TrainingDivergedError, match=r"learning_rate=1e\+06") as info:
        LinearRegression(solver="adam", learning_rate=1e6, max_iter=200).fit(X_D, Y_D)
    assert len(info.value.history) > 0


def test_divergence_check_covers_lbfgs():
    import torch

    from regtorch.linear.estimators import _check_not_diverged
    from regtorch.nn.loop import History
    from regtorch.nn.modules import LinearModule

    module = LinearModule(2, 1, bias=False).to(torch.float64)
    with torch.no_grad():
        module.linear.weight.fill_(1e8)
    Xs, ys = torch.ones(10, 2, dtype=torch.float64), torch.zeros(10, 1, dtype=torch.float64)
    hist = History(train_loss=[1.0, 5.0])
    with pytest.raises(TrainingDivergedError, match=r"solver='lbfgs'.*learning_rate=3"):
        _check_not_diverged(module, Xs, ys, hist, "lbfgs", 3.0)
    with torch.no_grad():
        module.linear.weight.fill_(math.nan)
    with pytest.raises(TrainingDivergedError, match="lbfgs"):
        _check_not_diverged(module, Xs, ys, hist, "lbfgs", 3.0)


def test_healthy_gradient_fits_do_not_raise():
    for solver in ("adam", "lbfgs"):
        m = LinearRegression(solver=solver).fit(X_D, Y_D)
        assert np.isfinite(m.coef_).all()


# ---------------------------------------------------------------- 7. convergence


@pytest.mark.parametrize("y_scale", [1.0, 1e-6])
def test_lasso_non_convergence_always_warns(y_scale):
    y = Y_D * y_scale
    m = Lasso(alpha=1e-10, warm_start=True, max_iter=1)
    m.coef_ = np.full(X_D.shape[1], 1e4 * y_scale)
    with pytest.warns(ConvergenceWarning, match="duality gap"):
        m.fit(X_D, y)
    ref = sk.Lasso(alpha=1e-10, tol=1e-12, max_iter=100_000).fit(X_D, y)
    assert rel(m.coef_, ref.coef_) > 1e-3  # it really had not converged


def test_converged_lasso_does_not_warn_and_reports_the_duality_gap():
    y = Y_D * 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        m = Lasso(alpha=1e-10, max_iter=100_000).fit(X_D, y)
    ref = sk.Lasso(alpha=1e-10, tol=1e-12, max_iter=1_000_000).fit(X_D, y)
    assert rel(m.coef_, ref.coef_) < 1e-6
    assert 0 <= m.dual_gap_ <= 1e-4 * np.mean(y**2)


# ---------------------------------------------------------------- 8. robust SEs


def test_robust_errors_refuse_data_other_than_the_training_data():
    m = LinearRegression().fit(X_D, Y_D)
    m.summary(cov_type="HC3", X=X_D, y=Y_D)  # the training data: fine
    rng = np.random.default_rng(3)
    other_X = X_D + 1e-3 * rng.normal(size=X_D.shape)
    with pytest.raises(ValueError, match="must be the training data"):
        m.summary(cov_type="HC3", X=other_X, y=Y_D)
    with pytest.raises(ValueError, match="must be the training data"):
        m.summary(cov_type="HC0", X=X_D, y=Y_D[::-1])
    with pytest.raises(ValueError, match="must be the training data"):
        m.summary(cov_type="HC1", X=X_D * 2, y=Y_D * 2)


# ---------------------------------------------------------------- 9. types


@pytest.mark.parametrize("Est", [LinearRegression, Ridge, Lasso, ElasticNet])
def test_intercept_types_match_sklearn(Est, tmp_path):
    for fit_intercept in (True, False):
        ours = Est(fit_intercept=fit_intercept).fit(X_D, Y_D)
        ref = getattr(sk, Est.__name__)(fit_intercept=fit_intercept).fit(X_D, Y_D)
        assert type(ours.intercept_) is type(ref.intercept_)
        loaded = regtorch.load(regtorch.save(ours, tmp_path / f"{Est.__name__}.safetensors"))
        assert loaded.intercept_ == ours.intercept_
        np.testing.assert_array_equal(loaded.predict(X_D[:5]), ours.predict(X_D[:5]))
    two = Est().fit(X_D, np.column_stack([Y_D, Y_D]))
    assert isinstance(two.intercept_, np.ndarray) and two.intercept_.shape == (2,)


@pytest.mark.parametrize("solver", ["auto", "qr", "svd", "cholesky"])
@pytest.mark.parametrize("others", [("big", "huge"), ("big", "tiny"), ("big", "huge", "tiny")])
def test_a_constant_at_resolution_column_beside_extreme_ones_leaves_the_rest_right(solver, others):
    # 1e20 + N(0, 1) is constant in float64; beside a 1e200 column an SVD's rank tolerance
    # used to zero every coefficient (x too) with exit 0
    rng = np.random.default_rng(0)
    n = 200
    x = rng.normal(size=n)
    cols = {
        "big": 1e20 + rng.normal(size=n),
        "huge": 1e200 * rng.normal(size=n),
        "tiny": 1e-300 * rng.normal(size=n),
    }
    y = -3 * x + 0.1 * rng.normal(size=n)
    X = np.column_stack([cols[c] for c in others] + [x])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = LinearRegression(solver=solver).fit(X, y)
    messages = " ".join(str(w.message) for w in caught)
    assert "Column(s) [0] (0-based) are constant to float64 resolution" in messages
    assert m.coef_[0] == 0.0
    assert abs(m.coef_[-1] + 3) < 0.05
    assert m.score(X, y) > 0.99
    assert m.solver_.startswith("extended")


@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_gradient_solvers_zero_a_column_constant_at_resolution(solver):
    rng = np.random.default_rng(0)
    n = 200
    x = rng.normal(size=n)
    X = np.column_stack([1e20 + rng.normal(size=n), 1e200 * rng.normal(size=n), x])
    y = -3 * x + 0.1 * rng.normal(size=n)
    with pytest.warns(RankWarning, match=r"Column\(s\) \[0\]"):
        m = LinearRegression(solver=solver).fit(X, y)
    assert m.coef_[0] == 0.0 and abs(m.coef_[-1] + 3) < 0.05
    assert m.score(X, y) > 0.99  # the intercept no longer cancels a 1e20 term


def test_statistics_that_float64_cannot_hold_are_refused_not_printed_as_zero_or_inf(tmp_path):
    rng = np.random.default_rng(0)
    n = 2000
    x = rng.normal(size=n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        big_y = LinearRegression().fit(x[:, None], 1e300 * (x + 0.1 * rng.normal(size=n)))
    with pytest.raises(ValueError, match="Standard errors cannot be represented in float64"):
        big_y.summary()
    t = pa.table(
        {
            "huge": 1e200 * rng.normal(size=n),
            "tiny": 1e-300 * rng.normal(size=n),
            "x": x,
            "y": -3 * x + 0.1 * rng.normal(size=n),
        }
    )
    pq.write_table(t, tmp_path / "s.parquet")
    streamed = LinearRegression()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stream_fit_linear(streamed, TableSource(tmp_path / "s.parquet", target="y"))
    assert abs(streamed.coef_[-1] + 3) < 0.01
    with pytest.raises(ValueError, match="'huge', 'tiny'"):
        streamed.summary()
