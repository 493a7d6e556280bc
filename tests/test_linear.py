"""Linear estimators against scikit-learn, certified values and bad input."""

import numpy as np
import pandas as pd
import pytest
import sklearn.linear_model as sk
import torch
from sklearn.base import clone
from sklearn.datasets import load_diabetes, make_regression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from regtorch import ElasticNet, Lasso, LinearRegression, Ridge
from regtorch.linear.solvers import RankWarning
from tests.conftest import cuda

X_DIA, Y_DIA = load_diabetes(return_X_y=True)
X_MR, Y_MR = make_regression(n_samples=300, n_features=8, n_targets=3, noise=5.0, random_state=0)
W = np.random.default_rng(0).uniform(0.2, 3.0, size=len(Y_DIA))
CLOSED = ["auto", "qr", "svd", "cholesky"]


def rel_err(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("solver", CLOSED)
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_ols_matches_sklearn_diabetes(solver, fit_intercept, weighted):
    sw = W if weighted else None
    ours = LinearRegression(solver=solver, fit_intercept=fit_intercept).fit(X_DIA, Y_DIA, sw)
    ref = sk.LinearRegression(fit_intercept=fit_intercept).fit(X_DIA, Y_DIA, sw)
    assert rel_err(ours.coef_, ref.coef_) < 1e-10
    assert ours.intercept_ == pytest.approx(ref.intercept_, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("solver", CLOSED)
def test_multi_output_matches_sklearn(solver):
    ours = LinearRegression(solver=solver).fit(X_MR, Y_MR)
    ref = sk.LinearRegression().fit(X_MR, Y_MR)
    assert ours.coef_.shape == (3, 8) and ours.intercept_.shape == (3,)
    assert rel_err(ours.coef_, ref.coef_) < 1e-10
    assert rel_err(ours.intercept_, ref.intercept_) < 1e-10
    np.testing.assert_allclose(ours.predict(X_MR), ref.predict(X_MR), rtol=1e-10)


@pytest.mark.parametrize("solver", CLOSED)
def test_rank_deficient_gives_min_norm_with_rank_warning(solver):
    X = np.column_stack([X_DIA, X_DIA[:, 2]])  # a duplicated column
    with pytest.warns(RankWarning, match="rank 10 < 11"):
        ours = LinearRegression(solver=solver).fit(X, Y_DIA)
    ref = sk.LinearRegression().fit(X, Y_DIA)
    assert rel_err(ours.coef_, ref.coef_) < 1e-10
    assert ours.coef_[2] == pytest.approx(ours.coef_[10], rel=1e-10)
    assert ours.rank_ == 10


@pytest.mark.parametrize("alpha", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("solver", CLOSED)
def test_ridge_matches_sklearn(alpha, solver):
    for X, y in [(X_DIA, Y_DIA), (X_MR, Y_MR)]:
        ours = Ridge(alpha=alpha, solver=solver).fit(X, y)
        ref = sk.Ridge(alpha=alpha).fit(X, y)
        assert rel_err(ours.coef_, ref.coef_) < 1e-10
    ours = Ridge(alpha=alpha, solver=solver).fit(X_DIA, Y_DIA, W)
    ref = sk.Ridge(alpha=alpha, solver="svd").fit(X_DIA, Y_DIA, W)
    assert rel_err(ours.coef_, ref.coef_) < 1e-10


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0])
def test_lasso_and_elastic_net_match_sklearn(alpha):
    for Est, SkEst, kw in [(Lasso, sk.Lasso, {}), (ElasticNet, sk.ElasticNet, {"l1_ratio": 0.3})]:
        ours = Est(alpha=alpha, **kw).fit(X_DIA, Y_DIA)
        ref = SkEst(alpha=alpha, tol=1e-14, max_iter=200_000, **kw).fit(X_DIA, Y_DIA)
        assert rel_err(ours.coef_, ref.coef_) < 1e-6
        assert ours.intercept_ == pytest.approx(ref.intercept_, rel=1e-6)
        ours = Est(alpha=alpha, **kw).fit(X_DIA, Y_DIA, sample_weight=W)
        ref = SkEst(alpha=alpha, tol=1e-14, max_iter=200_000, **kw).fit(
            X_DIA, Y_DIA, sample_weight=W
        )
        assert rel_err(ours.coef_, ref.coef_) < 1e-6
    ours = Lasso(alpha=alpha * 10, positive=True).fit(X_MR, Y_MR[:, 0])
    ref = sk.Lasso(alpha=alpha * 10, positive=True, tol=1e-14, max_iter=200_000).fit(
        X_MR, Y_MR[:, 0]
    )
    assert rel_err(ours.coef_, ref.coef_) < 1e-6 and (ours.coef_ >= 0).all()


def test_lasso_multi_output_and_sparsity():
    ours = Lasso(alpha=5.0).fit(X_MR, Y_MR)
    ref = sk.Lasso(alpha=5.0, tol=1e-14, max_iter=100_000).fit(X_MR, Y_MR)
    assert rel_err(ours.coef_, ref.coef_) < 1e-6
    assert np.array_equal(ours.coef_ == 0, ref.coef_ == 0)


@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_gradient_solvers_match_closed_form(solver):
    ours = LinearRegression(solver=solver, random_state=0).fit(X_DIA, Y_DIA)
    ref = sk.LinearRegression().fit(X_DIA, Y_DIA)
    assert rel_err(ours.coef_, ref.coef_) < 1e-4
    assert len(ours.history_) == ours.n_iter_ > 0
    ridge = Ridge(alpha=0.1, solver=solver).fit(X_DIA, Y_DIA)
    assert rel_err(ridge.coef_, sk.Ridge(alpha=0.1).fit(X_DIA, Y_DIA).coef_) < 1e-4


def test_float32_input_computes_in_float64():
    X32 = X_MR.astype(np.float32)
    ours = LinearRegression().fit(X32, Y_MR[:, 0].astype(np.float32))
    ref = sk.LinearRegression().fit(
        X32.astype(np.float64), Y_MR[:, 0].astype(np.float32).astype(np.float64)
    )
    assert rel_err(ours.coef_, ref.coef_) < 1e-10
    assert ours.coef_.dtype == np.float64


def test_pandas_and_torch_inputs():
    df = pd.DataFrame(X_DIA, columns=[f"f{i}" for i in range(10)])
    m = LinearRegression().fit(df, pd.Series(Y_DIA))
    assert list(m.feature_names_in_) == list(df.columns)
    mt = LinearRegression().fit(torch.as_tensor(X_DIA), torch.as_tensor(Y_DIA))
    np.testing.assert_allclose(mt.coef_, m.coef_, rtol=1e-12)
    np.testing.assert_allclose(mt.predict(torch.as_tensor(X_DIA)), m.predict(df), rtol=1e-12)
    assert m.summary().names[:3] == ["const", "f0", "f1"]


def test_ill_conditioned_design_falls_back_and_stays_accurate():
    rng = np.random.default_rng(1)
    n = 5000
    base = rng.normal(size=(n, 1))
    X = np.column_stack([base + 1e-7 * rng.normal(size=(n, 1)), rng.normal(size=(n, 3)), base])
    X = X[:, :4]
    X[:, 0] = base[:, 0] + 1e-6 * rng.normal(size=n)
    X = np.column_stack([X, base[:, 0]])  # nearly collinear with column 0 (cond ~ 1e6)
    y = X @ np.array([1.0, 2.0, -1.0, 0.5, 3.0]) + 0.01 * rng.normal(size=n)
    ref = np.linalg.lstsq(np.column_stack([np.ones(n), X]), y, rcond=None)[0]
    for solver in CLOSED:
        m = LinearRegression(solver=solver).fit(X, y)
        assert rel_err(m.coef_, ref[1:]) < 1e-7, solver


def test_pipeline_gridsearch_clone():
    pipe = make_pipeline(StandardScaler(), Ridge())
    gs = GridSearchCV(
        pipe, {"ridge__alpha": [0.1, 1.0, 10.0], "ridge__solver": ["qr", "cholesky"]}, cv=3
    )
    gs.fit(X_DIA, Y_DIA)
    assert gs.best_params_["ridge__alpha"] in (0.1, 1.0, 10.0)
    ref = GridSearchCV(
        make_pipeline(StandardScaler(), sk.Ridge()), {"ridge__alpha": [0.1, 1.0, 10.0]}, cv=3
    ).fit(X_DIA, Y_DIA)
    assert gs.best_score_ == pytest.approx(ref.best_score_, rel=1e-10)
    c = clone(Lasso(alpha=0.3, positive=True))
    assert c.get_params()["alpha"] == 0.3 and c.get_params()["positive"] is True
    assert not hasattr(c, "coef_")


BAD = [
    (
        lambda: LinearRegression().fit(np.array([[1.0], [np.nan]]), [1.0, 2.0]),
        ValueError,
        "Input X contains NaN",
    ),
    (
        lambda: LinearRegression().fit(np.array([[1.0], [np.inf]]), [1.0, 2.0]),
        ValueError,
        "Input X contains infinity",
    ),
    (
        lambda: LinearRegression().fit(np.array([[1.0], [2.0]]), [1.0, np.nan]),
        ValueError,
        "Input y contains NaN",
    ),
    (
        lambda: LinearRegression().fit(np.array([1.0, 2.0]), [1.0, 2.0]),
        ValueError,
        "Expected 2D array, got 1D array instead",
    ),
    (
        lambda: LinearRegression().fit(np.array([["a"], ["b"]]), [1.0, 2.0]),
        ValueError,
        "could not convert string to float",
    ),
    (
        lambda: LinearRegression().fit(np.ones((3, 2)), [1.0, 2.0]),
        ValueError,
        "inconsistent numbers of samples: \\[3, 2\\]",
    ),
    (lambda: LinearRegression().fit(np.ones((0, 2)), []), ValueError, "0 sample\\(s\\)"),
    (
        lambda: Ridge(alpha=-1.0).fit(np.ones((3, 2)), [1.0, 2.0, 3.0]),
        ValueError,
        "'alpha' parameter must be >= 0",
    ),
    (
        lambda: Lasso(alpha=-0.1).fit(np.ones((3, 2)), [1.0, 2.0, 3.0]),
        ValueError,
        "'alpha' parameter must be >= 0",
    ),
    (
        lambda: LinearRegression(solver="magic").fit(np.ones((3, 2)), [1.0, 2.0, 3.0]),
        ValueError,
        "'solver' parameter must be one of",
    ),
    (
        lambda: LinearRegression().fit(X_DIA, Y_DIA).predict(X_DIA[:, :3]),
        ValueError,
        "X has 3 features, but LinearRegression is expecting 10 features as input",
    ),
]


@pytest.mark.parametrize("call, exc, msg", BAD)
def test_bad_input_errors(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


@cuda
@pytest.mark.parametrize(
    "Est, kw",
    [
        (LinearRegression, {}),
        (Ridge, {"alpha": 1.0}),
        (Lasso, {"alpha": 0.1}),
        (ElasticNet, {"alpha": 0.1}),
        (LinearRegression, {"solver": "lbfgs"}),
    ],
)
def test_cuda_matches_cpu(Est, kw):
    cpu = Est(**kw).fit(X_DIA, Y_DIA)
    gpu = Est(device="cuda", **kw).fit(X_DIA, Y_DIA)
    assert rel_err(gpu.coef_, cpu.coef_) < 1e-8


def test_constant_column_with_weights_is_rank_deficient_not_huge():
    rng = np.random.default_rng(3)
    n = 40_000  # large enough for the Cholesky path
    X = rng.normal(size=(n, 6))
    X[:, 3] = 1.0 / 3.0
    y = X @ np.arange(1.0, 7.0) + rng.normal(size=n)
    w = rng.uniform(0.5, 2.0, size=n)
    with pytest.warns(RankWarning, match="rank 5 < 6"):
        ours = LinearRegression(solver="cholesky").fit(X, y, sample_weight=w)
    ref = sk.LinearRegression().fit(X, y, sample_weight=w)
    assert abs(ours.coef_[3]) < 1e-8
    np.testing.assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-10, atol=1e-9)
    ridge = Ridge(alpha=1.0).fit(X, y, sample_weight=w)
    assert abs(ridge.coef_[3]) < 1e-8


def test_nan_parameters_and_non_bool_flags_are_rejected():
    X, y = np.ones((3, 2)), [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="'alpha' parameter must be a number, not NaN"):
        Ridge(alpha=np.nan).fit(X, y)
    with pytest.raises(ValueError, match="'alpha' parameter must be a number, not NaN"):
        ElasticNet(alpha=np.nan).fit(X, y)
    with pytest.raises(ValueError, match="'positive' parameter must be one of"):
        Lasso(positive="no").fit(X, y)


def test_elastic_net_warm_start_with_changed_number_of_targets():
    m = ElasticNet(alpha=0.1, warm_start=True).fit(X_MR, Y_MR[:, 0])
    m.fit(X_MR, Y_MR[:, :2])
    ref = sk.ElasticNet(alpha=0.1, tol=1e-14, max_iter=100_000).fit(X_MR, Y_MR[:, :2])
    assert rel_err(m.coef_, ref.coef_) < 1e-6


def test_no_intercept_gives_scalar_zero_intercept():
    assert LinearRegression(fit_intercept=False).fit(X_MR, Y_MR).intercept_ == 0.0


@pytest.mark.parametrize("positive", [False, True])
def test_elastic_net_without_l1_reports_a_true_duality_gap(positive):
    # scikit-learn's gap has dual point 0 without an L1 part: an exact fit reported a gap
    # of 1.03 (4575 with y offset by 100) and warned "did not converge"
    import warnings as _w

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 5))
    y = X @ [1.0, -2.0, 3.0, 0.0, 0.5] + rng.normal(size=100) + 100
    with _w.catch_warnings():
        _w.simplefilter("error")
        m = ElasticNet(alpha=0.1, l1_ratio=0.0, positive=positive).fit(X, y)
    assert abs(m.dual_gap_) < 1e-12
    if not positive:
        ref = Ridge(alpha=0.1 * 100).fit(X, y)
        np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-10)
