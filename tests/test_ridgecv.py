"""RidgeCV: leave-one-out and K-fold agreement with scikit-learn, the 1se rule, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn
from sklearn.datasets import load_diabetes, make_regression
from sklearn.linear_model import Ridge
from sklearn.linear_model import RidgeCV as SkRidgeCV
from sklearn.model_selection import GridSearchCV, KFold

from regtorch.linear.ridgecv import RidgeCV, RidgeCVFit

ALPHAS = np.logspace(-3, 3, 13)


def _close(a, b, rtol=1e-8):
    """Agreement relative to the reference's largest magnitude."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape
    scale = max(float(np.max(np.abs(b))), 1e-300)
    assert float(np.max(np.abs(a - b))) <= rtol * scale


def _same_fit(ours, ref, rtol=1e-8, cv_results=False):
    np.testing.assert_array_equal(np.asarray(ours.alpha_), np.asarray(ref.alpha_))
    _close(ours.best_score_, ref.best_score_, rtol)
    _close(ours.coef_, ref.coef_, rtol)
    _close(ours.intercept_, ref.intercept_, rtol)
    if cv_results:
        _close(ours.cv_results_, ref.cv_results_, rtol)


@pytest.fixture(scope="module")
def regression():
    X, y = make_regression(300, 20, noise=5.0, random_state=0)
    w = np.random.default_rng(0).uniform(0.1, 3.0, 300)
    return X, y, w


@pytest.fixture(scope="module")
def diabetes():
    return load_diabetes(return_X_y=True)


@pytest.fixture(scope="module")
def multi():
    X, Y = make_regression(200, 10, n_targets=3, noise=10.0, random_state=1)
    Y[:, 2] *= 100.0  # targets on different scales pick different alphas
    return X, Y


# ---- leave-one-out (cv=None) = scikit-learn's GCV mode -----------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("scoring", [None, "neg_mean_squared_error", "r2"])
def test_loo_matches_sklearn(regression, weighted, fit_intercept, scoring):
    X, y, w = regression
    sw = w if weighted else None
    kw = dict(fit_intercept=fit_intercept, scoring=scoring, store_cv_results=True)
    ours = RidgeCV(ALPHAS, **kw).fit(X, y, sample_weight=sw)
    ref = SkRidgeCV(ALPHAS, **kw).fit(X, y, sample_weight=sw)
    _same_fit(ours, ref, cv_results=True)
    assert ours.cv_results_.shape == (300, len(ALPHAS))


@pytest.mark.parametrize("gcv_mode", [None, "svd"])
@pytest.mark.parametrize("weighted", [False, True])
def test_loo_diabetes(diabetes, gcv_mode, weighted):
    X, y = diabetes
    sw = np.random.default_rng(1).uniform(0.5, 2.0, len(y)) if weighted else None
    ours = RidgeCV(ALPHAS, gcv_mode=gcv_mode, store_cv_results=True).fit(X, y, sample_weight=sw)
    ref = SkRidgeCV(ALPHAS, gcv_mode=gcv_mode, store_cv_results=True).fit(X, y, sample_weight=sw)
    _same_fit(ours, ref, cv_results=True)
    np.testing.assert_allclose(ours.predict(X[:5]), ref.predict(X[:5]), rtol=1e-10)


@pytest.mark.parametrize("alpha_per_target", [False, True])
@pytest.mark.parametrize("scoring", [None, "neg_mean_squared_error"])
@pytest.mark.parametrize("weighted", [False, True])
def test_loo_multi_target(multi, alpha_per_target, scoring, weighted):
    X, Y = multi
    sw = np.random.default_rng(2).uniform(0.1, 3.0, len(Y)) if weighted else None
    kw = dict(alpha_per_target=alpha_per_target, scoring=scoring, store_cv_results=True)
    ours = RidgeCV(ALPHAS, **kw).fit(X, Y, sample_weight=sw)
    ref = SkRidgeCV(ALPHAS, **kw).fit(X, Y, sample_weight=sw)
    _same_fit(ours, ref, cv_results=True)
    assert ours.cv_results_.shape == (200, 3, len(ALPHAS))
    if alpha_per_target:
        assert ours.alpha_.shape == (3,) and len(set(ours.alpha_)) > 1


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("gcv_mode", [None, "svd"])
@pytest.mark.parametrize("weighted", [False, True])
def test_loo_more_features_than_samples(fit_intercept, gcv_mode, weighted):
    X, y = make_regression(40, 100, noise=1.0, random_state=2)
    sw = np.random.default_rng(3).uniform(0.1, 3.0, 40) if weighted else None
    alphas = np.logspace(-4, 4, 17)  # tiny alphas: the fit nearly interpolates
    kw = dict(fit_intercept=fit_intercept, gcv_mode=gcv_mode, store_cv_results=True)
    ours = RidgeCV(alphas, **kw).fit(X, y, sample_weight=sw)
    ref = SkRidgeCV(alphas, **kw).fit(X, y, sample_weight=sw)
    _same_fit(ours, ref, cv_results=True)


@pytest.mark.parametrize("shift", [0.02, 1e4])
def test_loo_offset_columns(regression, shift):
    """Columns whose mean dwarfs their spread are centred before the leverage GEMM."""
    X, y, w = regression
    Xs = X + shift * np.arange(1, 21)
    ours = RidgeCV(ALPHAS, store_cv_results=True).fit(Xs, y, sample_weight=w)
    ref = SkRidgeCV(ALPHAS, store_cv_results=True).fit(Xs, y, sample_weight=w)
    _same_fit(ours, ref, rtol=1e-8, cv_results=True)


def test_loo_is_leave_one_out():
    """The leave-one-out errors are those of n refits without each row."""
    X, y = make_regression(30, 4, noise=3.0, random_state=4)
    w = np.random.default_rng(4).uniform(0.5, 2.0, 30)
    est = RidgeCV([0.5, 5.0], scoring="neg_mean_squared_error", store_cv_results=True)
    est.fit(X, y, sample_weight=w)
    for j, alpha in enumerate([0.5, 5.0]):
        for i in (0, 7, 29):
            keep = np.arange(30) != i
            pred = Ridge(alpha=alpha).fit(X[keep], y[keep], w[keep]).predict(X[i : i + 1])[0]
            assert est.cv_results_[i, j] == pytest.approx(pred, rel=1e-10)


def test_loo_zero_weight_rows_match_sklearn(regression):
    X, y, w = regression
    w = w.copy()
    w[:5] = 0.0
    ours = RidgeCV(ALPHAS, store_cv_results=True).fit(X, y, sample_weight=w)
    ref = SkRidgeCV(ALPHAS, store_cv_results=True).fit(X, y, sample_weight=w)
    _same_fit(ours, ref, cv_results=True)


def test_loo_attributes(regression):
    X, y, _ = regression
    est = RidgeCV(ALPHAS).fit(X, y)
    n = len(y)
    assert est.cv_folds_ == n and est.mse_path_.shape == (len(ALPHAS), 1)
    assert est.mse_se_.shape == (len(ALPHAS),) and np.all(est.mse_se_ > 0)
    # unweighted: the leave-one-out MSE is minus scikit-learn's score
    np.testing.assert_allclose(est.mse_path_[:, 0], -est.score_path_, rtol=1e-12)
    assert est.best_score_ == est.score_path_.max()
    np.testing.assert_array_equal(est.alphas_, ALPHAS)
    assert not hasattr(est, "cv_results_")
    assert est.coef_path_.shape == (len(ALPHAS), X.shape[1])
    for j in (0, 6, 12):
        ref = Ridge(alpha=ALPHAS[j]).fit(X, y).coef_
        np.testing.assert_allclose(est.coef_path_[j], ref, rtol=1e-9, atol=1e-12)
    assert list(est.coef_frame().index)[:2] == ["intercept", "x0"]


# ---- K-fold --------------------------------------------------------------------------------


def _splits(n, k=5, seed=0):
    return list(KFold(k, shuffle=True, random_state=seed).split(np.zeros((n, 1))))


@pytest.mark.parametrize("scoring", [None, "neg_mean_squared_error"])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_kfold_matches_sklearn(regression, scoring, fit_intercept):
    X, y, _ = regression
    alphas = np.concatenate([[0.0], ALPHAS])
    splits = _splits(len(y))
    kw = dict(scoring=scoring, fit_intercept=fit_intercept)
    ours = RidgeCV(alphas, cv=splits, **kw).fit(X, y)
    ref = SkRidgeCV(alphas, cv=splits, **kw).fit(X, y)
    _same_fit(ours, ref)


def test_kfold_diabetes_and_splitter_object(diabetes):
    X, y = diabetes
    cv = KFold(5, shuffle=True, random_state=3)
    ours = RidgeCV(ALPHAS, cv=cv).fit(X, y)
    ref = SkRidgeCV(ALPHAS, cv=cv).fit(X, y)
    _same_fit(ours, ref)


def test_kfold_multi_target(multi):
    X, Y = multi
    splits = _splits(len(Y))
    ours = RidgeCV(ALPHAS, cv=splits).fit(X, Y)
    _same_fit(ours, SkRidgeCV(ALPHAS, cv=splits).fit(X, Y))
    assert ours.coef_path_.shape == (len(ALPHAS), 3, X.shape[1])
    np.testing.assert_allclose(
        ours.coef_path_[4], Ridge(alpha=ALPHAS[4]).fit(X, Y).coef_, rtol=1e-9
    )


def test_kfold_weighted_matches_sklearn_with_weighted_scores(regression):
    """scikit-learn weights the held-out scores only when metadata routing asks for them."""
    X, y, w = regression
    splits = _splits(len(y))
    with sklearn.config_context(enable_metadata_routing=True):
        ref = SkRidgeCV(ALPHAS, cv=splits).fit(X, y, sample_weight=w)
    _same_fit(RidgeCV(ALPHAS, cv=splits).fit(X, y, sample_weight=w), ref)


def test_kfold_mse_path_matches_grid_search(regression):
    X, y, w = regression
    splits = _splits(len(y))
    grid = GridSearchCV(Ridge(), {"alpha": ALPHAS}, cv=splits, scoring="neg_mean_squared_error")
    grid.fit(X, y)
    ref = -np.stack([grid.cv_results_[f"split{k}_test_score"] for k in range(5)], 1)
    est = RidgeCV(ALPHAS, cv=splits, scoring="neg_mean_squared_error").fit(X, y)
    _close(est.mse_path_, ref)
    np.testing.assert_allclose(est.mse_se_, ref.std(1, ddof=1) / np.sqrt(5), rtol=1e-8)
    np.testing.assert_allclose(est.score_path_, -ref.mean(1), rtol=1e-8)
    assert est.cv_folds_ == 5


def test_kfold_hash_folds_seeded(regression):
    X, y, _ = regression
    a = RidgeCV(ALPHAS, cv=5, random_state=1).fit(X, y)
    b = RidgeCV(ALPHAS, cv=5, random_state=1).fit(X, y)
    c = RidgeCV(ALPHAS, cv=5, random_state=2).fit(X, y)
    np.testing.assert_array_equal(a.mse_path_, b.mse_path_)
    assert not np.array_equal(a.mse_path_, c.mse_path_)
    # the hash folds are the splitter given by fold_of
    from regtorch.data.split import fold_of

    folds = fold_of(np.arange(len(y)), 1, 5)
    splits = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(5)]
    _same_fit(a, SkRidgeCV(ALPHAS, cv=splits).fit(X, y))


@pytest.mark.parametrize("scoring", [None, "neg_mean_squared_error"])
def test_streamed_matches_in_memory(regression, scoring):
    from regtorch.data.source import ArraySource
    from regtorch.linear.cv import stream_fit_cv

    X, y, w = regression
    mem = RidgeCV(ALPHAS, cv=5, scoring=scoring, random_state=3).fit(X, y, sample_weight=w)
    est = RidgeCV(ALPHAS, cv=5, scoring=scoring, random_state=3)
    stream_fit_cv(est, ArraySource(X, y, w, batch_rows=37))
    assert est.alpha_ == mem.alpha_ and est.n_features_in_ == X.shape[1]
    _close(est.best_score_, mem.best_score_, 1e-10)
    _close(est.mse_path_, mem.mse_path_, 1e-10)
    _close(est.coef_, mem.coef_, 1e-10)
    _close(est.intercept_, mem.intercept_, 1e-10)


def test_streamed_leave_one_out_refused(regression):
    from regtorch.data.source import ArraySource
    from regtorch.linear.cv import stream_fit_cv

    X, y, _ = regression
    with pytest.raises(ValueError, match=r"leave-one-out.*second pass.*cv=K"):
        stream_fit_cv(RidgeCV(ALPHAS), ArraySource(X, y, batch_rows=50))
    with pytest.raises(ValueError, match="cv must be an int"):
        stream_fit_cv(RidgeCV(ALPHAS, cv=KFold(3)), ArraySource(X, y, batch_rows=50))
    with pytest.raises(ValueError, match="leave-one-out"):
        RidgeCV(ALPHAS)._fit_folds(None, None)


# ---- the one-standard-error rule -----------------------------------------------------------


def _one_se(score, se, alphas):
    best = int(np.argmax(score))
    ok = np.flatnonzero(score >= score[best] - se[best])
    return alphas[ok[np.argmax(alphas[ok])]]


def test_1se_kfold(regression):
    X, y, _ = regression
    splits = _splits(len(y))
    est = RidgeCV(ALPHAS, cv=splits, scoring="neg_mean_squared_error", selection_rule="1se")
    est.fit(X, y)
    grid = GridSearchCV(Ridge(), {"alpha": ALPHAS}, cv=splits, scoring="neg_mean_squared_error")
    scores = np.stack([grid.fit(X, y).cv_results_[f"split{k}_test_score"] for k in range(5)], 1)
    expected = _one_se(scores.mean(1), scores.std(1, ddof=1) / np.sqrt(5), ALPHAS)
    assert est.alpha_ == expected
    best = RidgeCV(ALPHAS, cv=splits, scoring="neg_mean_squared_error").fit(X, y)
    assert est.alpha_ > best.alpha_  # the rule picks a larger penalty here
    np.testing.assert_allclose(est.coef_, Ridge(alpha=est.alpha_).fit(X, y).coef_, rtol=1e-9)


def test_1se_leave_one_out_uses_per_row_errors(regression):
    X, y, _ = regression
    ref = SkRidgeCV(ALPHAS, store_cv_results=True).fit(X, y)
    sq = ref.cv_results_  # (n, n_alphas): each row's squared leave-one-out error
    expected = _one_se(-sq.mean(0), sq.std(0, ddof=1) / np.sqrt(len(y)), ALPHAS)
    est = RidgeCV(ALPHAS, selection_rule="1se").fit(X, y)
    assert est.alpha_ == expected > ref.alpha_
    np.testing.assert_allclose(est.best_score_, -sq.mean(0)[ALPHAS == expected][0], rtol=1e-8)


# ---- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (dict(alphas=[1.0, 0.0]), r"alphas\[1\] == 0.0, must be finite and > 0"),
        (dict(alphas=[1.0, -1.0], cv=3), r"alphas\[1\] == -1.0, must be finite and >= 0"),
        (dict(alphas=[np.nan]), r"alphas\[0\]"),
        (dict(alphas=[]), "array of 1 to 10000 values"),
        (dict(alphas="abc"), "alphas must be a number"),
        (dict(scoring="neg_mean_absolute_error"), "'scoring' parameter must be one of"),
        (dict(scoring=lambda est, X, y: 0.0), "callables are not supported"),
        (dict(selection_rule="2se"), "'selection_rule' parameter must be one of"),
        (dict(gcv_mode="cholesky"), "'gcv_mode' parameter must be one of"),
        (dict(cv=3, store_cv_results=True), "cv!=None and store_cv_results=True are incompatible"),
        (dict(cv=3, alpha_per_target=True), "cv!=None and alpha_per_target=True are incompatible"),
        (dict(cv=1), "cv must be >= 2"),
        (dict(cv="five"), "cv must be None, an int"),
        (dict(fit_intercept="yes"), "'fit_intercept' parameter must be one of"),
    ],
)
def test_bad_parameters(regression, params, match):
    X, y, _ = regression
    with pytest.raises(ValueError, match=match):
        RidgeCV(**params).fit(X, y)


def test_bad_data(regression):
    X, y, _ = regression
    with pytest.raises(ValueError, match="at least 2 samples, got 1 sample"):
        RidgeCV().fit(X[:1], y[:1])
    with pytest.raises(ValueError, match="Input X contains NaN"):
        RidgeCV().fit(np.where(np.eye(300, 20) > 0, np.nan, X), y)
    with pytest.raises(ValueError, match="fewer than 2 rows"):
        RidgeCV(cv=[(np.arange(1, 10), np.array([0])), (np.arange(0, 9), np.array([9]))]).fit(
            X[:10], y[:10]
        )
    with pytest.raises(ValueError, match="X has 3 features, but RidgeCV is expecting 20"):
        RidgeCV().fit(X, y).predict(X[:, :3])


def test_wide_gram_limit(monkeypatch):
    from regtorch.linear import loo

    monkeypatch.setattr(loo, "GRAM_MAX_ROWS", 10)
    X, y = make_regression(20, 30, random_state=0)
    with pytest.raises(ValueError, match="n_samples x n_samples Gram.*Use cv=K"):
        RidgeCV().fit(X, y)
    RidgeCV(cv=KFold(4)).fit(X, y)  # K-fold has no such limit


def test_set_fitted_round_trip(regression):
    """io.load restores through _set_fitted: the same predictions and CV attributes."""
    import torch

    X, y, _ = regression
    est = RidgeCV(ALPHAS, cv=5).fit(X, y)
    fit = RidgeCVFit(
        torch.as_tensor(est.coef_).reshape(-1, 1),
        torch.as_tensor([est.intercept_]),
        est.alpha_,
        est.best_score_,
        est.alphas_,
        est.mse_path_,
        est.mse_se_,
        est.score_path_,
        est.cv_folds_,
    )
    new = RidgeCV(ALPHAS, cv=5)
    new.n_features_in_ = X.shape[1]
    new._set_fitted(fit, True)
    np.testing.assert_array_equal(new.predict(X), est.predict(X))
    assert new.alpha_ == est.alpha_ and new.cv_folds_ == 5


def test_1se_per_target_and_r2(multi):
    X, Y = multi
    ref = SkRidgeCV(ALPHAS, store_cv_results=True, alpha_per_target=True).fit(X, Y)
    sq = ref.cv_results_  # (n, 3, n_alphas)
    se = sq.std(0, ddof=1) / np.sqrt(len(Y))
    expected = [_one_se(-sq[:, j].mean(0), se[j], ALPHAS) for j in range(3)]
    est = RidgeCV(ALPHAS, alpha_per_target=True, selection_rule="1se").fit(X, Y)
    np.testing.assert_array_equal(est.alpha_, expected)
    # r2: each row's term 1 - n w e^2 / SST, averaged over the targets
    sst = ((Y - Y.mean(0)) ** 2).sum(0)
    terms = (1 - len(Y) * sq / sst[None, :, None]).mean(1)
    r2 = RidgeCV(ALPHAS, scoring="r2", selection_rule="1se").fit(X, Y)
    assert r2.alpha_ == _one_se(terms.mean(0), terms.std(0, ddof=1) / np.sqrt(len(Y)), ALPHAS)


@pytest.mark.parametrize("weighted", [False, True])
def test_leave_one_out_on_two_threads_equals_one(weighted, monkeypatch):
    # the blocks of the leverage pass computed on two threads, handed on in row order
    import regtorch.linear.loo as loo_mod
    import regtorch.linear.ridgecv as ridgecv_mod

    rng = np.random.default_rng(11)
    Xd = rng.normal(size=(300, 4)) + 3.0
    yd = Xd @ [1.0, -2.0, 0.5, 0.0] + rng.normal(size=300)
    sw = rng.uniform(0.5, 2.0, 300) if weighted else None
    monkeypatch.setattr(loo_mod, "LOO_BLOCK_ROWS", 17)
    kw = {"alphas": np.logspace(-2, 2, 7), "store_cv_results": True}
    one = ridgecv_mod.RidgeCV(**kw).fit(Xd, yd, sample_weight=sw)
    monkeypatch.setattr(loo_mod, "PARALLEL_LOO_SIZE", 0)
    two = ridgecv_mod.RidgeCV(**kw).fit(Xd, yd, sample_weight=sw)
    assert two.alpha_ == one.alpha_
    np.testing.assert_allclose(two.cv_results_, one.cv_results_, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(two.coef_, one.coef_, rtol=1e-13)
    sk = SkRidgeCV(**kw).fit(Xd, yd, sample_weight=sw)
    assert two.alpha_ == sk.alpha_
    np.testing.assert_allclose(two.cv_results_, sk.cv_results_, rtol=1e-8)


def _ridge_exact(X, y, alpha):
    """Ridge with an intercept by least squares on the augmented design (no Gram)."""
    m, my = X.mean(0), y.mean()
    A = np.vstack([X - m, np.sqrt(alpha) * np.eye(X.shape[1])])
    coef = np.linalg.lstsq(A, np.r_[y - my, np.zeros(X.shape[1])], rcond=None)[0]
    return coef, my - m @ coef


def _scaled_columns(scale, n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = np.c_[rng.normal(size=n), rng.normal(0, scale, size=n) + 3 * scale, rng.normal(size=n)]
    return X, X @ [1.0, 1.0 / scale, -2.0] + rng.normal(size=n)


@pytest.mark.parametrize("scale", [1e6, 1e8])
@pytest.mark.parametrize("path", ["numpy", "torch"])
def test_leave_one_out_exact_when_column_scales_differ(scale, path, monkeypatch):
    # one eigendecomposition of the unscaled Gram loses the small columns' digits (scikit-
    # learn's GCV: scores off by 2e-4 at 1e6, 96% at 1e8); regtorch's residuals come from
    # equilibrated Cholesky solves and its leverages from equilibrated factors there
    import regtorch.linear.loo as loo_mod

    if path == "torch":  # the pass CUDA tensors take, run on the CPU
        monkeypatch.setattr(loo_mod, "_numpy_pass", lambda X: False)
    X, y = _scaled_columns(scale)
    alphas = [0.01, 1.0, 100.0]
    m = RidgeCV(alphas=alphas, store_cv_results=True).fit(X, y)
    brute = np.empty((len(y), len(alphas)))
    for j, a in enumerate(alphas):
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            coef, b0 = _ridge_exact(X[keep], y[keep], a)
            brute[i, j] = (y[i] - X[i] @ coef - b0) ** 2
    np.testing.assert_allclose(m.cv_results_, brute, rtol=1e-9, atol=1e-12 * brute.max())
    coef, b0 = _ridge_exact(X, y, m.alpha_)
    np.testing.assert_allclose(m.coef_, coef, rtol=1e-10)
    assert m.intercept_ == pytest.approx(b0, rel=1e-10)


@pytest.mark.parametrize("scale", [1e5, 1e8])
def test_kfold_exact_when_column_scales_differ(scale):
    X, y = _scaled_columns(scale, n=200, seed=1)
    folds = KFold(5, shuffle=True, random_state=0)
    alphas = [0.01, 0.1, 1.0, 10.0, 100.0]
    m = RidgeCV(alphas=alphas, cv=folds).fit(X, y)
    ref = SkRidgeCV(alphas=alphas, cv=folds).fit(X, y)  # a Cholesky refit per alpha and fold
    assert m.alpha_ == ref.alpha_
    assert m.best_score_ == pytest.approx(ref.best_score_, rel=1e-10)
    coef, b0 = _ridge_exact(X, y, m.alpha_)
    np.testing.assert_allclose(m.coef_, coef, rtol=1e-10)


@pytest.mark.parametrize("weighted", [False, True])
def test_leave_one_out_torch_pass_equals_numpy_pass(weighted, monkeypatch):
    import regtorch.linear.loo as loo_mod

    rng = np.random.default_rng(5)
    Xd = rng.normal(size=(200, 4)) * [1.0, 1e7, 1.0, 3.0] + 2.0
    Y = Xd @ [[1.0, 0.5], [1e-7, 0.0], [0.5, 2.0], [0.0, -1.0]] + rng.normal(size=(200, 2))
    sw = rng.uniform(0.5, 2.0, 200) if weighted else None
    kw = {"alphas": np.logspace(-2, 2, 5), "store_cv_results": True, "alpha_per_target": True}
    one = RidgeCV(**kw).fit(Xd, Y, sample_weight=sw)
    monkeypatch.setattr(loo_mod, "_numpy_pass", lambda X: False)
    two = RidgeCV(**kw).fit(Xd, Y, sample_weight=sw)
    np.testing.assert_array_equal(two.alpha_, one.alpha_)
    np.testing.assert_allclose(two.cv_results_, one.cv_results_, rtol=1e-11)
    np.testing.assert_allclose(two.coef_, one.coef_, rtol=1e-12)


@pytest.mark.parametrize("cv", [None, 3])
def test_a_column_whose_squares_overflow_is_named(cv):
    import pandas as pd

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=30), "big": 1e200 * rng.normal(size=30)})
    y = X["a"].to_numpy() + rng.normal(size=30)
    # it once said "column 'x1'" (K folds) or LAPACK's "Eigenvalues did not converge"
    with pytest.raises(ValueError, match=r"cannot fit (input X )?column 'big'.*overflows"):
        RidgeCV(cv=cv).fit(X, y)
    # a constant column that large is dropped with the intercept, not refused (its squared
    # scale once underflowed: 0 / 0 made its Gram entry NaN)
    X["big"] = 1e300
    m = RidgeCV(cv=cv).fit(X, y)
    assert m.coef_[1] == 0.0
    ref = Ridge(alpha=m.alpha_).fit(X[["a"]], y)
    assert m.coef_[0] == pytest.approx(ref.coef_[0], rel=1e-9)


def test_moments_of_huge_columns_raise_no_overflow_warning():
    import warnings

    import torch

    from regtorch.linear.moments import MomentState

    rng = np.random.default_rng(0)
    Z = np.column_stack([1e200 * rng.normal(size=50) + 3e200, rng.normal(size=50)])
    st = MomentState()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shift's pilot once squared 1e200 unscaled
        st.update(torch.from_numpy(Z))
    mean = (st.mean / st.scale).numpy()
    np.testing.assert_allclose(mean, Z.mean(0), rtol=1e-14)


def test_alphas_are_bounded():
    with pytest.raises(ValueError, match="1-D array of 1 to 10000 values"):
        RidgeCV(alphas=np.ones(10_001)).fit(np.eye(3), np.ones(3))


def test_kfold_alpha_zero_on_collinear_columns_is_the_minimum_norm_fit():
    # a Cholesky factor that succeeds on a singular Gram by rounding gave another solution
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4))
    X[:, 3] = X[:, 0] - 2 * X[:, 1]
    y = X[:, :3] @ [1.0, 2.0, 3.0] + rng.normal(size=50)
    m = RidgeCV(alphas=[0.0], cv=5).fit(X, y)
    ref = np.linalg.lstsq(X - X.mean(0), y - y.mean(), rcond=None)[0]
    np.testing.assert_allclose(m.coef_, ref, rtol=1e-9)
