"""Elastic-net paths on the Gram form against scikit-learn's coordinate descent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes, make_regression
from sklearn.linear_model import ElasticNet as SkElasticNet
from sklearn.linear_model import enet_path as sk_enet_path
from sklearn.linear_model import lasso_path as sk_lasso_path
from sklearn.linear_model._coordinate_descent import _alpha_grid

from regtorch.linear.path import (
    _path_kkt,
    alpha_grid,
    enet_path,
    gram_path,
    lasso_path,
    path_c_max,
    path_duality_gaps,
)
from regtorch.linear.pathsolve import _face_solve, _pad, gram_paths
from regtorch.linear.solvers import enet_duality_gap

SK = {"tol": 1e-12, "max_iter": 200_000}


def _close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-6) -> None:
    assert np.all(np.abs(a - b) <= rtol * np.abs(b).max() + 1e-300), np.abs(a - b).max()


def _kkt(
    X: np.ndarray,
    y: np.ndarray,
    alphas: np.ndarray,
    l1_ratio: float,
    coefs: np.ndarray,
    positive: bool,
) -> float:
    n = X.shape[0]
    G, c = X.T @ X / n, X.T @ y / n
    viol = _path_kkt(G, c[:, None], alphas, l1_ratio, coefs.T[:, :, None], positive)
    return float(viol.max() / np.abs(c).max())


def _objective(
    X: np.ndarray, y: np.ndarray, a: np.ndarray, l1_ratio: float, W: np.ndarray
) -> np.ndarray:
    r = y[:, None] - X @ W
    pen = a * l1_ratio * np.abs(W).sum(0) + 0.5 * a * (1 - l1_ratio) * (W**2).sum(0)
    return (r**2).sum(0) / (2 * len(y)) + pen


def _diabetes() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_diabetes(return_X_y=True)
    return X - X.mean(0), y - y.mean()


def _regression() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_regression(
        n_samples=200, n_features=30, n_informative=10, noise=10.0, random_state=0
    )
    return X, y


@pytest.mark.parametrize("data", [_diabetes, _regression])
@pytest.mark.parametrize("l1_ratio", [0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("positive", [False, True])
def test_enet_path_matches_sklearn(data, l1_ratio, positive):
    X, y = data()
    a, coefs, gaps, iters = enet_path(
        X, y, l1_ratio=l1_ratio, alphas=40, positive=positive, return_n_iter=True
    )
    a_sk, coefs_sk, _ = sk_enet_path(X, y, l1_ratio=l1_ratio, alphas=40, positive=positive, **SK)
    np.testing.assert_allclose(a, a_sk, rtol=1e-14)
    assert coefs.shape == coefs_sk.shape == (X.shape[1], 40)
    _close(coefs, coefs_sk)
    assert _kkt(X, y, a, l1_ratio, coefs, positive) <= 1e-9
    assert np.all(np.abs(gaps) <= 1e-9 * (y @ y / len(y)))
    assert len(iters) == 40 and min(iters) >= 1
    if positive:
        assert coefs.min() >= 0


def test_lasso_path_matches_sklearn_with_explicit_alphas():
    X, y = _diabetes()
    grid = [0.01, 1.0, 0.1, 0.5]
    a, coefs, _ = lasso_path(X, y, alphas=grid)
    a_sk, coefs_sk, _ = sk_lasso_path(X, y, alphas=grid, **SK)
    np.testing.assert_array_equal(a, a_sk)
    _close(coefs, coefs_sk)


def test_multitask_path_matches_sklearn():
    X, Y = make_regression(n_samples=100, n_features=10, n_targets=3, noise=5.0, random_state=1)
    a, coefs, gaps = enet_path(X, Y, l1_ratio=0.7, alphas=20)
    a_sk, coefs_sk, _ = sk_enet_path(X, Y, l1_ratio=0.7, alphas=20, **SK)
    np.testing.assert_allclose(a, a_sk, rtol=1e-14)
    assert coefs.shape == coefs_sk.shape == (3, 10, 20)
    _close(coefs, coefs_sk)
    assert np.all(np.abs(gaps) <= 1e-9 * (Y**2).sum() / len(Y))


@pytest.mark.parametrize("l1_ratio", [0.5, 1.0])
def test_alpha_grid_matches_sklearn_weighted(l1_ratio):
    X, y = _regression()
    w = np.random.default_rng(0).uniform(0.1, 3.0, len(y))
    ref = _alpha_grid(X, y, l1_ratio=l1_ratio, sample_weight=w, fit_intercept=True, n_alphas=50)
    xm, ym = np.average(X, axis=0, weights=w), np.average(y, weights=w)
    c = (X - xm).T @ (w * (y - ym)) / w.sum()
    np.testing.assert_allclose(alpha_grid(path_c_max(c), l1_ratio, 1e-3, 50), ref, rtol=1e-13)
    ref_pos = _alpha_grid(X, y, l1_ratio=l1_ratio, fit_intercept=False, positive=True)
    np.testing.assert_allclose(
        alpha_grid(path_c_max(X.T @ y / len(y), True), l1_ratio), ref_pos, rtol=1e-13
    )


def test_alpha_grid_refuses_l1_ratio_zero_and_handles_zero_target():
    with pytest.raises(ValueError, match="l1_ratio=0"):
        alpha_grid(1.0, 0.0)
    with pytest.raises(ValueError, match="l1_ratio=0"):
        enet_path(np.eye(3), np.ones(3), l1_ratio=0.0, alphas=5)
    X = np.random.default_rng(0).standard_normal((10, 3))
    ref = _alpha_grid(X, np.zeros(10), fit_intercept=False, n_alphas=4)
    np.testing.assert_array_equal(alpha_grid(0.0, 1.0, n_alphas=4), ref)


def test_gram_path_weighted_matches_sklearn_elasticnet():
    X, y = _regression()
    w = np.random.default_rng(2).uniform(0.2, 4.0, len(y))
    xm, ym = np.average(X, axis=0, weights=w), np.average(y, weights=w)
    Xc, yc = X - xm, y - ym
    G = torch.tensor(Xc.T @ (w[:, None] * Xc) / w.sum())
    c = torch.tensor(Xc.T @ (w * yc) / w.sum())
    alphas = np.array([5.0, 1.0, 0.2])
    coefs, iters, gaps = gram_path(G, c, alphas, 0.5, yty=float(yc @ (w * yc)) / w.sum())
    assert isinstance(coefs, torch.Tensor) and coefs.shape == (3, 30)
    for i, alpha in enumerate(alphas):
        sk = SkElasticNet(alpha=alpha, l1_ratio=0.5, **SK).fit(X, y, sample_weight=w)
        _close(coefs[i].numpy(), sk.coef_)
        assert gaps[i] == pytest.approx(
            enet_duality_gap(
                G, c, float(yc @ (w * yc)) / w.sum(), alpha * 0.5, alpha * 0.5, coefs[i]
            ),
            abs=1e-9,
        )


def test_gram_path_multi_column_is_one_path_per_column():
    X, Y = make_regression(n_samples=80, n_features=6, n_targets=2, noise=1.0, random_state=3)
    G, C = X.T @ X / 80, X.T @ Y / 80
    alphas = alpha_grid(np.abs(C).max(), 0.9, 1e-2, 15)
    both, _, _ = gram_path(G, C, alphas, 0.9)
    for j in range(2):
        one, _, _ = gram_path(G, C[:, j], alphas, 0.9)
        np.testing.assert_array_equal(both[:, :, j].numpy(), one.numpy())


@pytest.mark.parametrize("shape", ["duplicated", "wide"])
def test_degenerate_designs_satisfy_kkt_and_match_objective(shape):
    rng = np.random.default_rng(4)
    if shape == "duplicated":
        X = rng.standard_normal((60, 5))
        X = np.column_stack([X, X[:, 0]])
    else:
        X = rng.standard_normal((20, 50))
    y = X[:, :3] @ np.array([3.0, -2.0, 1.0]) + 0.1 * rng.standard_normal(len(X))
    for l1_ratio in (0.5, 1.0):
        a, coefs, _ = enet_path(X, y, l1_ratio=l1_ratio, alphas=30, eps=1e-2)
        _, coefs_sk, _ = sk_enet_path(X, y, l1_ratio=l1_ratio, alphas=30, eps=1e-2, **SK)
        assert _kkt(X, y, a, l1_ratio, coefs, False) <= 1e-9

        ours = _objective(X, y, a, l1_ratio, coefs)
        theirs = _objective(X, y, a, l1_ratio, coefs_sk)
        assert np.all(ours <= theirs + 1e-9 * theirs)
        _close(X @ coefs, X @ coefs_sk, rtol=1e-5)


def test_extreme_scale():
    X, y = _diabetes()
    # the lasso is scale-equivariant: X * s gives alphas * s and coefficients / s
    a, coefs, _ = lasso_path(X * 1e6, y, alphas=30)
    a0, coefs0, _ = lasso_path(X, y, alphas=30)
    np.testing.assert_allclose(a, a0 * 1e6, rtol=1e-12)
    _close(coefs * 1e6, coefs0, rtol=1e-8)
    a, coefs, _ = enet_path(X * 1e6, y, l1_ratio=0.5, alphas=30)
    _, coefs_sk, _ = sk_enet_path(X * 1e6, y, l1_ratio=0.5, alphas=30, **SK)
    _close(coefs, coefs_sk)
    assert _kkt(X * 1e6, y, a, 0.5, coefs, False) <= 1e-9


def test_path_duality_gaps_agree_with_solver_gap():
    X, y = _regression()
    n = len(y)
    G, c, yty = X.T @ X / n, X.T @ y / n, y @ y / n
    rng = np.random.default_rng(5)
    W = rng.standard_normal((4, 30))
    alphas = np.array([3.0, 1.0, 0.3, 0.1])
    ours = path_duality_gaps(G, c, yty, alphas, 0.3, W)
    for i in range(4):
        ref = enet_duality_gap(
            torch.tensor(G),
            torch.tensor(c),
            yty,
            alphas[i] * 0.3,
            alphas[i] * 0.7,
            torch.tensor(W[i]),
        )
        assert ours[i] == pytest.approx(ref, rel=1e-12)


def test_float32_input_keeps_dtype_and_coef_init_is_used():
    X, y = _diabetes()
    a, coefs, _ = enet_path(X.astype(np.float32), y.astype(np.float32), alphas=5)
    assert coefs.dtype == np.float32
    _, ref, _ = enet_path(X, y, alphas=[a[-1]])
    _, warm, _, iters = enet_path(X, y, alphas=[a[-1]], coef_init=ref[:, 0], return_n_iter=True)
    _close(warm, ref, rtol=1e-12)
    assert iters == [1]


def test_bad_input_errors():
    X, y = _diabetes()
    with pytest.raises(ValueError, match="NaN"):
        enet_path(np.where(X > 0.1, np.nan, X), y, alphas=3)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        enet_path(X, y[:-1], alphas=3)
    with pytest.raises(ValueError, match="positive=True is not allowed for multi-output"):
        enet_path(X, np.column_stack([y, y]), alphas=3, positive=True)
    with pytest.raises(ValueError, match="Unexpected parameters"):
        enet_path(X, y, alphas=3, bogus=1)
    with pytest.raises(ValueError, match="sample_weight"):
        enet_path(X, y, alphas=3, sample_weight=np.ones(len(y)))
    with pytest.raises(ValueError, match="l1_ratio must be"):
        enet_path(X, y, alphas=3, l1_ratio=1.5)
    with pytest.raises(ValueError, match="eps must be"):
        enet_path(X, y, alphas=3, eps=0)
    with pytest.raises(ValueError, match="non-negative"):
        enet_path(X, y, alphas=[1.0, -1.0])
    with pytest.raises(ValueError, match="int >= 1"):
        enet_path(X, y, alphas=0)
    with pytest.raises(ValueError, match="coef_init must have"):
        enet_path(X, y, alphas=3, coef_init=np.zeros(3))
    with pytest.raises(ValueError, match="Gram matrix"):
        enet_path(X, y, alphas=3, precompute=np.eye(4))
    with pytest.raises(ValueError, match="G must have shape"):
        gram_path(np.eye(3), np.ones(4), [1.0], 0.5)


def test_deprecated_n_alphas_and_alphas_none_warn_like_sklearn():
    X, y = _diabetes()
    with pytest.warns(FutureWarning, match="'n_alphas' was deprecated"):
        a, _, _ = enet_path(X, y, n_alphas=7)
    assert a.shape == (7,)
    with pytest.warns(FutureWarning, match="'alphas=None' is deprecated"):
        a, _, _ = enet_path(X, y, alphas=None)
    assert a.shape == (100,)


def test_precomputed_gram_and_xy_give_the_same_path():
    X, y = _regression()
    a, coefs, _ = enet_path(X, y, alphas=20)
    a2, coefs2, _ = enet_path(X, y, alphas=20, precompute=X.T @ X, Xy=X.T @ y)
    np.testing.assert_allclose(a2, a, rtol=1e-14)
    _close(coefs2, coefs, rtol=1e-12)


def _fold_problems(X: np.ndarray, y: np.ndarray, ratios: tuple[float, ...], positive: bool):
    """(G, c, alphas, l1_ratios, yty) of 4 folds x ratios, each fold's own grid."""
    fold = np.arange(len(y)) % 4
    out: list[list] = [[], [], [], [], []]
    for k in range(4):
        Xt, yt = X[fold != k], y[fold != k]
        Xt, yt = Xt - Xt.mean(0), yt - yt.mean()
        n = len(yt)
        G, c = Xt.T @ Xt / n, Xt.T @ yt / n
        for r in ratios:
            grid = alpha_grid(path_c_max(c, positive), max(r, 0.1), 1e-3, 40)
            for lst, v in zip(out, (G, c, grid, r, yt @ yt / n), strict=True):
                lst.append(v)
    return tuple(np.array(v) for v in out)


def _batch_kkt(G, c, A, R, coefs, positive) -> float:
    return max(
        float(_path_kkt(G[i], c[i][:, None], A[i], R[i], coefs[i][:, :, None], positive).max())
        / np.abs(c[i]).max()
        for i in range(len(R))
    )


@pytest.mark.parametrize("positive", [False, True])
def test_gram_paths_equals_gram_path_problem_by_problem(positive):
    X, y = _regression()
    ratios = (0.1, 0.5, 0.9, 1.0) if positive else (0.0, 0.1, 0.5, 0.9, 1.0)
    G, c, A, R, yty = _fold_problems(X, y, ratios, positive)
    coefs, n_iter, gaps = gram_paths(G, c, A, R, positive=positive, yty=yty)
    assert coefs.shape == (len(R), 40, X.shape[1]) and n_iter.shape == gaps.shape == (len(R), 40)
    for i in range(len(R)):
        ref, ref_iter, ref_gaps = gram_path(G[i], c[i], A[i], R[i], positive=positive, yty=yty[i])
        _close(coefs[i], ref.numpy(), rtol=1e-10)
        assert list(n_iter[i]) == ref_iter
        np.testing.assert_allclose(gaps[i], ref_gaps, rtol=1e-6, atol=1e-12 * yty[i])
    assert _batch_kkt(G, c, A, R, coefs, positive) <= 1e-9
    if positive:
        assert coefs.min() >= 0


def test_gram_paths_degenerate_problem_does_not_disturb_the_others():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((80, 6))
    y = X[:, :3] @ np.array([2.0, -1.0, 0.5]) + 0.1 * rng.standard_normal(80)
    Xd = X.copy()
    Xd[:, 5] = Xd[:, 0]  # duplicated column: the lasso's G is singular, ties in the KKT
    Xz = X.copy()
    Xz[:, 2] = 0.0  # a constant (here zero) feature
    Gs = [M.T @ M / 80 for M in (X, Xd, Xz, X)]
    cs = [M.T @ y / 80 for M in (X, Xd, Xz, X)]
    cs[3] = np.zeros(6)  # zero target
    G, c = np.array(Gs), np.array(cs)
    A = np.array([alpha_grid(max(path_c_max(ci), 1e-3), 1.0, 1e-3, 30) for ci in cs])
    R = np.array([0.5, 1.0, 1.0, 0.9])
    coefs, _, gaps = gram_paths(G, c, A, R)
    assert np.all(np.isfinite(coefs)) and np.all(np.isfinite(gaps))
    assert _batch_kkt(G[:3], c[:3], A[:3], R[:3], coefs[:3], False) <= 1e-9
    assert np.all(coefs[3] == 0) and np.all(coefs[2][:, 2] == 0)
    for i in (0, 2):
        _close(coefs[i], gram_path(G[i], c[i], A[i], R[i])[0].numpy(), rtol=1e-10)
    # the duplicated pair: the same fit and objective as gram_path (the split may differ)
    ref = gram_path(G[1], c[1], A[1], 1.0)[0].numpy()
    _close(coefs[1] @ G[1] @ coefs[1].T, ref @ G[1] @ ref.T, rtol=1e-9)


def test_gram_paths_fallback_and_singular_face(monkeypatch):
    import regtorch.linear.pathsolve as pathsolve

    X, y = _regression()
    G, c, A, R, _ = _fold_problems(X, y, (0.5, 1.0), False)
    monkeypatch.setattr(pathsolve, "STEPS_PER_FEATURE", 0)  # every slow point: the fallback
    coefs, n_iter, _ = gram_paths(G, c, A[:, -3:], R)
    assert n_iter.max() > 10  # the iterative solver's count, not active-set steps
    for i in range(len(R)):
        _close(coefs[i], gram_path(G[i], c[i], A[i, -3:], R[i])[0].numpy(), rtol=1e-9)
    assert _batch_kkt(G, c, A[:, -3:], R, coefs, False) <= 1e-9
    # one exactly singular face in a batched solve: the other rows are solved as usual
    Gb = np.stack([np.eye(3), np.diag([1.0, 0.0, 1.0]), 2 * np.eye(3)])
    M = np.array([[True, False, True], [True, True, False], [True, True, True]])
    x, ok = _face_solve(_pad(Gb), np.ones((3, 3)), M, np.ones((3, 3)), np.zeros(3), np.zeros(3))
    assert list(ok) == [True, False, True]
    np.testing.assert_array_equal(x[[0, 2]], [[1.0, 0.0, 1.0], [0.5, 0.5, 0.5]])


def test_gram_paths_bad_input_errors():
    G, c, A = np.stack([np.eye(3)] * 2), np.ones((2, 3)), np.ones((2, 4))
    with pytest.raises(ValueError, match="c must have shape"):
        gram_paths(G, np.ones(3), A, 0.5)
    with pytest.raises(ValueError, match="G must have shape"):
        gram_paths(G[:, :2], c, A, 0.5)
    with pytest.raises(ValueError, match="alphas must have shape"):
        gram_paths(G, c, np.ones(4), 0.5)
    with pytest.raises(ValueError, match="l1_ratios must be"):
        gram_paths(G, c, A, [0.5, 1.5])
    with pytest.raises(ValueError, match="l1_ratios must be"):
        gram_paths(G, c, A, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        gram_paths(G, c, -A, 0.5)
    with pytest.raises(ValueError, match="finite"):
        gram_paths(G, c * np.nan, A, 0.5)
    with pytest.raises(ValueError, match="yty must have shape"):
        gram_paths(G, c, A, 0.5, yty=np.ones(3))
    coefs, n_iter, gaps = gram_paths(G, c, A[:, :0], 0.5)  # no alphas
    assert coefs.shape == (2, 0, 3) and n_iter.shape == gaps.shape == (2, 0)
