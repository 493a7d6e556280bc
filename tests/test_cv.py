"""LassoCV / ElasticNetCV from per-fold moments: = scikit-learn on the same folds, streamed = in
memory, 2 ranks = 1, exact held-out errors, the 1se rule and bad input."""

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sklearn.linear_model as skl
import torch
from sklearn.datasets import load_diabetes, make_regression
from sklearn.model_selection import KFold, ShuffleSplit

import regtorch.distributed as dist_mod
from regtorch import ElasticNetCV, LassoCV
from regtorch.data import TableSource
from regtorch.data.split import assign, fold_of
from regtorch.data.table import Batch
from regtorch.linear.cv import choose, cv_states, stream_fit_cv
from regtorch.linear.folds import fold_states_in_memory
from regtorch.linear.solvers import gram_state
from tests.thread_ranks import _Ranks

RNG = np.random.default_rng(0)
N, P = 400, 5
X = RNG.normal(size=(N, P)) * [1.0, 2.0, 3.0, 0.5, 1.0] + [5.0, -5.0, 0.0, 100.0, 1.0]
Y = X @ [1.5, -2.0, 0.0, 3.0, 0.0] + 7.0 + 2.0 * RNG.normal(size=N)
W = RNG.uniform(0.2, 3.0, size=N)
W[::13] = 0.0  # zero weights count for nothing

TIGHT = {"tol": 1e-12, "max_iter": 100_000}


def _data(name):
    if name == "diabetes":
        Xd, yd = load_diabetes(return_X_y=True)
        return Xd, yd, None
    Xd, yd = make_regression(
        n_samples=300, n_features=20, n_informative=8, noise=10.0, random_state=0
    )
    if name == "regression":
        return Xd, yd, None
    return Xd, yd, np.random.default_rng(1).uniform(0.2, 3.0, size=len(yd))  # weighted


PAIRS = {
    "lasso": (LassoCV, skl.LassoCV, {}),
    "enet": (ElasticNetCV, skl.ElasticNetCV, {"l1_ratio": [0.2, 0.8]}),
}


def _same_choice(a, b):
    """The same alpha (grids from the same formula agree to rounding) and l1_ratio."""
    assert a.alpha_ == pytest.approx(b.alpha_, rel=1e-12)
    if hasattr(b, "l1_ratio_"):
        assert a.l1_ratio_ == b.l1_ratio_


@pytest.mark.parametrize("data", ["diabetes", "regression", "weighted"])
@pytest.mark.parametrize("kind", list(PAIRS))
def test_agrees_with_sklearn_on_the_same_folds(data, kind):
    Xd, yd, sw = _data(data)
    folds = list(KFold(5, shuffle=True, random_state=0).split(Xd))
    ours, theirs, extra = PAIRS[kind]
    a = ours(cv=folds, **TIGHT, **extra).fit(Xd, yd, sample_weight=sw)
    b = theirs(cv=folds, **TIGHT, **extra).fit(Xd, yd, sample_weight=sw)
    _same_choice(a, b)
    assert a.mse_path_.shape == b.mse_path_.shape
    np.testing.assert_allclose(a.alphas_, b.alphas_, rtol=1e-12)
    np.testing.assert_allclose(a.mse_path_, b.mse_path_, rtol=1e-6)
    scale = np.abs(b.coef_).max()
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-6, atol=1e-6 * scale)
    assert a.intercept_ == pytest.approx(b.intercept_, rel=1e-6, abs=1e-6 * scale)
    assert a.cv_folds_ == 5 and a.coef_path_.shape == (a.alphas_.shape[-1], Xd.shape[1])
    assert hasattr(a, "l1_ratio_") == hasattr(b, "l1_ratio_")


@pytest.mark.parametrize(
    "params",
    [{"fit_intercept": False}, {"positive": True}, {"alphas": [1.0, 0.1, 10.0, 0.01]}],
    ids=["no-intercept", "positive", "given-alphas"],
)
def test_agrees_with_sklearn_options_and_overlapping_splits(params):
    Xd, yd, sw = _data("weighted")
    # ShuffleSplit: test sets overlap and do not cover the rows (training states from indices)
    for folds in (
        list(KFold(4, shuffle=True, random_state=2).split(Xd)),
        list(ShuffleSplit(4, test_size=0.3, random_state=0).split(Xd)),
    ):
        a = ElasticNetCV(l1_ratio=[0.3, 1.0], cv=folds, **TIGHT, **params).fit(Xd, yd, sw)
        b = skl.ElasticNetCV(l1_ratio=[0.3, 1.0], cv=folds, **TIGHT, **params).fit(Xd, yd, sw)
        _same_choice(a, b)
        np.testing.assert_allclose(a.alphas_, b.alphas_, rtol=1e-12)
        np.testing.assert_allclose(a.mse_path_, b.mse_path_, rtol=1e-6)
        np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", list(PAIRS))
def test_intercept_keeps_float64_precision_under_a_large_offset(kind):
    # the intercept was once stored through a float32 tensor: 1e7 + 0.29 became 1e7 + 0.0
    Xd, yd, _ = _data("regression")
    yd = yd + 1e7 + 0.3
    folds = list(KFold(5, shuffle=True, random_state=0).split(Xd))
    ours, theirs, extra = PAIRS[kind]
    a = ours(cv=folds, **TIGHT, **extra).fit(Xd, yd)
    b = theirs(cv=folds, **TIGHT, **extra).fit(Xd, yd)
    _same_choice(a, b)
    assert a.intercept_ == pytest.approx(b.intercept_, rel=1e-13)
    np.testing.assert_allclose(a.predict(Xd), b.predict(Xd), rtol=1e-13)


def test_heldout_mse_and_training_states_are_exact():
    st = fold_states_in_memory(
        torch.tensor(X), torch.tensor(Y[:, None]), torch.tensor(W), 5, 3, fit_intercept=True
    )
    folds = fold_of(np.arange(N), 3, 5)
    coef = RNG.normal(size=(7, P))  # seven coefficient vectors at once
    b0 = RNG.normal(size=7) + 7.0
    for k in range(5):
        t = folds == k
        direct = np.average((Y[t, None] - X[t] @ coef.T - b0) ** 2, weights=W[t], axis=0)
        np.testing.assert_allclose(st.heldout_mse(k, coef, b0), direct, rtol=1e-10)
        one = st.heldout_mse(k, coef[0][:, None], b0[:1])  # (p, t) form
        np.testing.assert_allclose(one, direct[:1], rtol=1e-10)
        tr = st.train(k)
        ref = gram_state(torch.tensor(X[~t]), torch.tensor(Y[~t, None]), torch.tensor(W[~t]), True)
        for name in ("G", "Xty", "yty", "X_offset", "y_offset"):
            np.testing.assert_allclose(getattr(tr, name), getattr(ref, name), rtol=1e-10, atol=1e-9)
        assert tr.weight_sum == pytest.approx(ref.weight_sum, rel=1e-14)


def test_fold_of_matches_the_split_rule():
    rows = np.arange(50_000)
    folds = fold_of(rows, 7, 4, test_fraction=0.25)
    assert np.array_equal(folds == -1, assign(rows, 7, 0.25) == 2)  # the same test rows
    shares = np.bincount(folds[folds >= 0], minlength=4) / len(rows)
    np.testing.assert_allclose(shares, 0.1875, atol=0.01)
    np.testing.assert_array_equal(fold_of(rows[123:456], 7, 4, 0.25), folds[123:456])
    with pytest.raises(ValueError, match="n_folds must be an integer >= 2"):
        fold_of(rows, 0, 1)
    with pytest.raises(ValueError, match="test_fraction"):
        fold_of(rows, 0, 5, test_fraction=1.0)


@pytest.mark.parametrize("rule", ["min", "1se"])
def test_selection_rule(rule):
    Xd, yd, _ = _data("diabetes")
    a = ElasticNetCV(l1_ratio=[0.5, 0.9], cv=5, selection_rule=rule).fit(Xd, yd)
    mean = a.mse_path_.mean(axis=2)
    se = a.mse_path_.std(axis=2, ddof=1) / np.sqrt(5)
    np.testing.assert_allclose(a.mse_se_, se)
    i, j = np.unravel_index(np.argmin(mean), mean.shape)
    if rule == "min":
        assert (a.alpha_, a.l1_ratio_) == (a.alphas_[i, j], [0.5, 0.9][i])
    else:
        # by hand: the largest alpha of that l1_ratio within one SE of the minimum
        within = [
            a.alphas_[i, m] for m in range(mean.shape[1]) if mean[i, m] <= mean[i, j] + se[i, j]
        ]
        assert a.alpha_ == max(within) and a.l1_ratio_ == [0.5, 0.9][i]
        assert a.alpha_ > a.alphas_[i, j]  # diabetes' curve is flat near its minimum
    np.testing.assert_allclose(a.coef_, a.coef_path_[list(a.alphas_[i]).index(a.alpha_)])


def test_choose_on_a_known_table():
    mse = np.array([[[5.0, 5.0], [3.0, 3.2], [2.9, 3.1], [4.0, 4.0]]])  # (1 l1, 4 alphas, 2 folds)
    alphas = np.array([[8.0, 4.0, 2.0, 1.0]])
    assert choose(mse, alphas, "min") == (0, 2)
    assert choose(mse, alphas, "1se") == (0, 1)  # 3.1 <= 3.0 + 0.1


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("cv") / "t.parquet"
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(P)]).assign(y=Y, w=W)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=90)
    return path


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize(
    "make", [lambda: LassoCV(cv=4), lambda: ElasticNetCV(cv=4, l1_ratio=[0.3, 0.9])]
)
def test_streamed_equals_in_memory(parquet, make, weighted):
    src = TableSource(
        parquet, "y", [f"x{i}" for i in range(P)], batch_rows=37, weight="w" if weighted else None
    )
    streamed, memory = make(), make().set_params(random_state=11)
    info = stream_fit_cv(streamed, src, seed=11)
    by_state = make().set_params(random_state=11)
    stream_fit_cv(by_state, src)  # the seed defaults to the estimator's random_state
    np.testing.assert_array_equal(by_state.mse_path_, streamed.mse_path_)
    memory.fit(X, Y, sample_weight=W if weighted else None)
    assert info["rows_fit"] == (N - int((W == 0).sum()) if weighted else N)
    # the same grid (from moments merged in another order: equal to rounding) and choice
    np.testing.assert_allclose(streamed.alphas_, memory.alphas_, rtol=1e-13)
    np.testing.assert_allclose(streamed.mse_path_, memory.mse_path_, rtol=1e-10)
    assert (
        np.argwhere(streamed.alphas_ == streamed.alpha_).tolist()
        == np.argwhere(memory.alphas_ == memory.alpha_).tolist()
    )
    np.testing.assert_allclose(streamed.coef_, memory.coef_, rtol=1e-9, atol=1e-9)
    assert list(streamed.feature_names_in_) == [f"x{i}" for i in range(P)]
    df = pd.DataFrame(X[:5], columns=[f"x{i}" for i in range(P)])
    np.testing.assert_allclose(streamed.predict(df), memory.predict(X[:5]), rtol=1e-9)


def test_streamed_test_fraction_holds_out_the_split_rows(parquet):
    src = TableSource(parquet, "y", [f"x{i}" for i in range(P)], batch_rows=37)
    est = LassoCV(cv=3)
    info = stream_fit_cv(est, src, seed=5, test_fraction=0.2)
    keep = assign(np.arange(N), 5, 0.2) != 2
    assert info["rows_fit"] == int(keep.sum())
    folds = fold_of(np.arange(N), 5, 3, 0.2)[keep]
    splits = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(3)]
    ref = LassoCV(cv=splits).fit(X[keep], Y[keep])
    np.testing.assert_allclose(est.mse_path_, ref.mse_path_, rtol=1e-10)
    assert est.alpha_ == pytest.approx(ref.alpha_, rel=1e-13)


class Arrays:
    """Batch source over arrays; rank ``rank`` of ``world`` reads every world-th batch."""

    def __init__(self, w, batch_rows, rank=0, world=1):
        self.Z, self.w = np.column_stack([X, Y]), w
        self.features, self.targets = [f"x{i}" for i in range(P)], ["y"]
        self.n_rows, self.batch_rows, self.path = N, batch_rows, "<arrays>"
        self.rank, self.world = rank, world

    def batches(self, missing="error", epoch_seed=None):
        for b, i in enumerate(range(0, N, self.batch_rows)):
            if b % self.world == self.rank:
                sl = slice(i, i + self.batch_rows)
                rows = np.arange(i, min(i + self.batch_rows, N))
                yield Batch(self.Z[sl], rows, P, None if self.w is None else self.w[sl])


def test_two_ranks_equal_one(monkeypatch):
    ranks = _Ranks(2)
    monkeypatch.setattr(dist_mod, "is_distributed", lambda: True)
    monkeypatch.setattr(dist_mod, "rank_world", lambda: (ranks.local.rank, 2))
    monkeypatch.setattr(dist_mod, "all_gather", ranks.all_gather)

    def fit(r):
        est = ElasticNetCV(cv=5, l1_ratio=[0.4, 1.0])
        stream_fit_cv(est, Arrays(W, 29, r, 2), seed=3)
        return est

    a, b = ranks.run(fit)
    monkeypatch.undo()
    one = ElasticNetCV(cv=5, l1_ratio=[0.4, 1.0])
    stream_fit_cv(one, Arrays(W, 29), seed=3)
    np.testing.assert_array_equal(a.mse_path_, b.mse_path_)  # every rank holds the same answer
    np.testing.assert_allclose(a.mse_path_, one.mse_path_, rtol=1e-10)
    assert a.alpha_ == pytest.approx(one.alpha_, rel=1e-13) and a.l1_ratio_ == one.l1_ratio_
    np.testing.assert_allclose(a.coef_, one.coef_, rtol=1e-9, atol=1e-9)


def test_cv_states_one_pass_counts():
    st = cv_states(Arrays(W, 50), 4, 0, fit_intercept=True)
    folds = fold_of(np.arange(N), 0, 4)
    assert [s.rows for s in st.fold] == [int(((folds == k) & (W > 0)).sum()) for k in range(4)]
    assert st.full().weight_sum == pytest.approx(W.sum(), rel=1e-14)


@pytest.mark.parametrize(
    ("est", "fit_args", "match"),
    [
        (LassoCV(), (X, np.column_stack([Y, Y])), "For multi-task outputs, use MultiTaskLassoCV"),
        (ElasticNetCV(l1_ratio=1.5), (X, Y), "'l1_ratio' parameter must be <= 1"),
        (ElasticNetCV(l1_ratio=[0.5, -0.1]), (X, Y), "'l1_ratio' parameter must be >= 0"),
        (ElasticNetCV(l1_ratio=0.0), (X, Y), "not supported for l1_ratio=0"),
        (LassoCV(alphas=[0.1, -1.0]), (X, Y), r"'alphas\[1\]' parameter must be >= 0"),
        (LassoCV(alphas=0), (X, Y), "'alphas' parameter must be >= 1"),
        (LassoCV(eps=0.0), (X, Y), "'eps' parameter must be > 0"),
        (LassoCV(selection_rule="max"), (X, Y), "'selection_rule' parameter must be one of"),
        (LassoCV(precompute="bogus"), (X, Y), "'precompute' parameter must be 'auto', a bool"),
        # bounded before any work (1e8 alphas once grew to 15 GB)
        (LassoCV(alphas=100_000_000), (X, Y), "'alphas' parameter must be <= 10000"),
        (LassoCV(alphas=np.ones(10_001)), (X, Y), "array of 1 to 10000 values"),
        (ElasticNetCV(precompute=3), (X, Y), "'precompute' parameter must be 'auto', a bool"),
        (LassoCV(cv=1), (X, Y), "'cv' parameter must be >= 2"),
        (LassoCV(cv=5), (X[:3], Y[:3]), "greater than n_samples=3"),
        (LassoCV(cv="five"), (X, Y), "cv must be None, an int"),
        (LassoCV(cv=[(np.arange(10), np.arange(10, 20))]), (X, Y), "at least 2 splits"),
        (LassoCV(cv=[(np.arange(10), [N + 3])] * 2), (X, Y), "index out of range"),
        (
            LassoCV(cv=[(np.arange(10), np.arange(3))] * 2),
            (X, Y, np.r_[np.zeros(3), np.ones(N - 3)]),
            "held-out fold 0 has no rows",
        ),
        # a hash fold left empty: the message says why and what to do
        (LassoCV(cv=5), (X[:6], Y[:6]), r"has no rows .*seeded hash.*cv=KFold\(K\)"),
        (
            LassoCV(cv=[(np.r_[np.arange(10), 4], np.arange(10, 20))] * 2),  # a bootstrap
            (X, Y),
            r"cv split 0: train repeats row 4 \(2 times\).*sample_weight",
        ),
    ],
)
def test_bad_input_errors(est, fit_args, match):
    with pytest.raises(ValueError, match=match):
        est.fit(*fit_args)


def test_streaming_refuses_splitters_and_other_estimators(parquet):
    src = TableSource(parquet, "y", [f"x{i}" for i in range(P)], batch_rows=37)
    with pytest.raises(ValueError, match="cv must be None or an int"):
        stream_fit_cv(LassoCV(cv=KFold(3)), src)
    with pytest.raises(ValueError, match="fits LassoCV, ElasticNetCV and RidgeCV"):
        stream_fit_cv(skl.Lasso(), src)
    with pytest.raises(ValueError, match="'tol' parameter"):
        stream_fit_cv(LassoCV(tol=-1.0), src)


def test_pandas_names_and_column_vector_y():
    df = pd.DataFrame(X, columns=list("abcde"))
    with pytest.warns(UserWarning, match="column-vector y"):
        a = LassoCV(cv=3).fit(df, Y[:, None])
    b = LassoCV(cv=3).fit(df, Y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert list(a.coef_frame().index) == ["intercept", *"abcde"]
    assert a.coef_.shape == (P,) and isinstance(a.intercept_, float)
    assert not hasattr(a, "l1_ratio_")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a.predict(df)


def test_heldout_mse_shapes_and_one_target_of_many():
    """(n_alphas, p, t) with p = t = 1 is read as such, and ``target=`` scores one column of a
    multi-target fold against that column's statistics."""
    import torch

    from regtorch.linear.folds import fold_states_in_memory

    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 1))
    Y = np.c_[2 * X[:, 0] + rng.normal(size=60), -X[:, 0] + 5 + rng.normal(size=60)]
    one = fold_states_in_memory(
        torch.from_numpy(X), torch.from_numpy(Y[:, :1]), None, 3, 0, fit_intercept=True
    )
    folds = fold_of(np.arange(60), 0, 3)
    held = folds == 1
    b = np.array([[[1.5]], [[2.0]]])  # (n_alphas=2, p=1, t=1)
    b0 = np.array([[0.1], [0.0]])
    want = [np.mean((Y[held, 0] - X[held, 0] * bb[0, 0] - c[0]) ** 2) for bb, c in zip(b, b0)]
    np.testing.assert_allclose(one.heldout_mse(1, b, b0).ravel(), want, rtol=1e-10)
    two = fold_states_in_memory(
        torch.from_numpy(X), torch.from_numpy(Y), None, 3, 0, fit_intercept=True
    )
    got = two.heldout_mse(1, np.array([[-1.0]]), np.array([5.0]), target=1)
    want1 = np.mean((Y[held, 1] + X[held, 0] - 5.0) ** 2)
    np.testing.assert_allclose(got.ravel(), [want1], rtol=1e-10)


def test_a_target_whose_squares_overflow_is_refused_by_name():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    y = (X @ [1.0, 0.0, 2.0] + rng.normal(size=80)) * 1e150
    with pytest.raises(ValueError, match="column 'the target': its sum of squares overflows"):
        LassoCV(cv=3).fit(X, y)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_one_pass_fold_moments_equal_each_folds_own_rows(weighted, threads, monkeypatch):
    # the one-pass gather (blocks of rows sorted by fold) gives each fold the moments of
    # exactly its rows: checked against each fold's rows taken directly, with rows in no
    # test set ("rest"), blocks smaller than the data and zero weights
    import regtorch.linear.folds as folds_mod
    from regtorch.linear.moments import MomentState

    monkeypatch.setattr(folds_mod, "FOLD_BLOCK_ROWS", 37)
    # two threads (two halves of the rows, merged in order) from any size
    monkeypatch.setattr(folds_mod, "PARALLEL_FOLD_SIZE", 0 if threads == 2 else 10**12)
    rng = np.random.default_rng(5)
    perm = rng.permutation(N)
    tests = [np.sort(perm[:90]), np.sort(perm[90:200]), np.sort(perm[200:330])]
    splits = [(np.setdiff1d(np.arange(N), te), te) for te in tests]  # 70 rows in no test set
    w = torch.from_numpy(W) if weighted else None
    Xt, yt = torch.from_numpy(X), torch.from_numpy(Y[:, None])
    st = fold_states_in_memory(Xt, yt, w, splits, None, fit_intercept=True)
    rest = np.setdiff1d(np.arange(N), np.concatenate(tests))
    for got, rows in [*zip(st.fold, tests, strict=True), (st.rest, rest)]:
        ref = MomentState()
        Z = torch.from_numpy(np.column_stack([X, Y])[rows])
        ref.update(Z, None if w is None else w[rows])
        assert got.rows == ref.rows and got.n == pytest.approx(ref.n, rel=1e-14)
        r = (ref.scale / got.scale).numpy()
        np.testing.assert_allclose(got.mean.numpy() * r, ref.mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(got.C.numpy() * np.outer(r, r), ref.C.numpy(), rtol=1e-9)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("weighted", [False, True])
def test_streamed_fold_update_equals_each_folds_own_rows(order, weighted):
    # the streamed pass gathers each batch's folds column by column into one reused buffer:
    # batches of either memory order and of growing size, rows of fold -1 (held-out test
    # rows) skipped, weights carried with their rows
    from regtorch.linear.folds import _update_by_fold
    from regtorch.linear.moments import MomentState

    rng = np.random.default_rng(11)
    Z = np.asarray(np.column_stack([X, Y]), order=order)
    w = W if weighted else None
    folds = rng.integers(-1, 4, size=N)
    states, work = [MomentState() for _ in range(4)], []
    for a, b in [(0, 40), (40, 300), (300, N)]:  # the second batch outgrows the buffer
        wb = None if w is None else w[a:b]
        _update_by_fold(states, Z[a:b], wb, folds[a:b], work)
    for k, got in enumerate(states):
        rows = np.flatnonzero(folds == k)
        ref = MomentState()
        ref.update(
            torch.from_numpy(np.ascontiguousarray(Z[rows])),
            None if w is None else torch.from_numpy(w[rows]),
        )
        assert got.rows == ref.rows and got.n == pytest.approx(ref.n, rel=1e-14)
        r = (ref.scale / got.scale).numpy()
        np.testing.assert_allclose(got.mean.numpy() * r, ref.mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(got.C.numpy() * np.outer(r, r), ref.C.numpy(), rtol=1e-9)


@pytest.mark.parametrize(
    "kind, kw",
    [
        ("LassoCV", {"alphas": 1}),
        ("LassoCV", {"alphas": 3}),
        ("ElasticNetCV", {"alphas": 1, "l1_ratio": [0.2, 0.8]}),
        ("ElasticNetCV", {"alphas": 3, "l1_ratio": [0.2, 0.8]}),
        ("ElasticNetCV", {"alphas": [1.0, 0.1, 0.01], "l1_ratio": [0.2, 0.8]}),
        ("ElasticNetCV", {"alphas": [0.1], "l1_ratio": 0.5}),
    ],
)
def test_attribute_shapes_are_scikit_learns(kind, kw):
    # one automatic alpha once lost the alpha axis of alphas_ (np.squeeze)
    folds = list(KFold(4, shuffle=True, random_state=0).split(X))
    a = {"LassoCV": LassoCV, "ElasticNetCV": ElasticNetCV}[kind](cv=folds, **kw).fit(X, Y)
    b = getattr(skl, kind)(cv=folds, **kw).fit(X, Y)
    assert a.alphas_.shape == b.alphas_.shape
    assert a.mse_path_.shape == b.mse_path_.shape
    np.testing.assert_allclose(a.alphas_, b.alphas_, rtol=1e-12)


@pytest.mark.parametrize("positive", [False, True])
def test_l1_ratio_zero_reports_a_true_duality_gap(positive):
    # scikit-learn's gap formula has dual point 0 without an L1 part: the exact ridge fit
    # warned "did not converge" with a gap of 1.72 (its primal objective)
    Xd, yd, _ = _data("regression")
    folds = list(KFold(4, shuffle=True, random_state=0).split(Xd))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = ElasticNetCV(l1_ratio=0.0, alphas=[0.1, 1.0], cv=folds, positive=positive).fit(Xd, yd)
    assert abs(m.dual_gap_) <= 1e-9 * float(np.mean((yd - yd.mean()) ** 2))
    if not positive:
        ref = skl.Ridge(alpha=m.alpha_ * len(yd)).fit(Xd, yd)
        np.testing.assert_allclose(m.coef_, ref.coef_, rtol=1e-9)
