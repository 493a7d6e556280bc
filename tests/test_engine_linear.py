"""One sufficient-statistics path: streamed (any source, weights, ranks) = in memory = references."""

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sklearn.linear_model as skl
import statsmodels.api as sm
import torch

import regtorch.distributed as dist_mod
from regtorch import ElasticNet, Lasso, LinearRegression, Ridge
from regtorch.data import TableSource
from regtorch.data.split import hash01
from regtorch.data.table import Batch
from regtorch.linear import MomentState, stream_fit_linear
from tests.thread_ranks import _Ranks

RNG = np.random.default_rng(0)
N, P = 700, 4
X = RNG.normal(size=(N, P)) * [1.0, 2.0, 3.0, 0.5] + [5.0, -5.0, 0.0, 100.0]
Y = X @ [1.5, -2.0, 0.5, 3.0] + 7.0 + RNG.normal(size=N)
W = RNG.uniform(0.2, 3.0, size=N)
W[::17] = 0.0  # zero weights count for nothing

MODELS = {
    "ols": lambda: LinearRegression(),
    "ridge": lambda: Ridge(alpha=30.0),
    "lasso": lambda: Lasso(alpha=0.05, tol=1e-10, max_iter=100_000),
    "enet": lambda: ElasticNet(alpha=0.1, l1_ratio=0.3, tol=1e-10, max_iter=100_000),
}
SKLEARN = {
    "ols": lambda: skl.LinearRegression(),
    "ridge": lambda: skl.Ridge(alpha=30.0),
    "lasso": lambda: skl.Lasso(alpha=0.05, tol=1e-12, max_iter=100_000),
    "enet": lambda: skl.ElasticNet(alpha=0.1, l1_ratio=0.3, tol=1e-12, max_iter=100_000),
}
CLOSED = ("ols", "ridge")


class Arrays:
    """Stand-in batch source over arrays (rank ``rank`` of ``world`` reads every world-th batch)."""

    def __init__(self, X, y, w=None, batch_rows=64, rank=0, world=1, names=None):
        self.Z = np.column_stack([X, y]).astype(np.float64)
        self.w = None if w is None else np.asarray(w, dtype=np.float64)
        self.p = X.shape[1]
        self.features = list(names) if names is not None else [f"x{i}" for i in range(self.p)]
        self.targets = ["y"]
        self.n_rows, self.batch_rows, self.path = len(X), batch_rows, "<arrays>"
        self.rank, self.world = rank, world

    def batches(self, missing="error", epoch_seed=None):
        for b, i in enumerate(range(0, self.n_rows, self.batch_rows)):
            if b % self.world == self.rank:
                sl = slice(i, i + self.batch_rows)
                rows = np.arange(i, min(i + self.batch_rows, self.n_rows))
                yield Batch(self.Z[sl], rows, self.p, None if self.w is None else self.w[sl])


def tol(key):
    return 1e-10 if key in CLOSED else 1e-8


def check_same(a, b, rtol, atol=0.0):
    np.testing.assert_allclose(np.ravel(a.coef_), np.ravel(b.coef_), rtol=rtol, atol=atol)
    np.testing.assert_allclose(a.intercept_, b.intercept_, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "t.parquet"
    df = pd.DataFrame(X, columns=[f"x{i}" for i in range(P)]).assign(y=Y)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=150)
    return path


@pytest.mark.parametrize("key", list(MODELS))
def test_streamed_parquet_equals_in_memory_and_sklearn(parquet, key):
    est = MODELS[key]()
    info = stream_fit_linear(est, TableSource(parquet, "y", batch_rows=50), test_fraction=0.25)
    train = hash01(np.arange(N), 0) >= 0.25
    assert info["rows_fit"] == int(train.sum())
    ref = MODELS[key]().fit(pd.DataFrame(X[train], columns=est.feature_names_in_), Y[train])
    check_same(est, ref, tol(key))
    check_same(est, SKLEARN[key]().fit(X[train], Y[train]), 1e-8)
    if key == "ols":
        s, r = est.summary(), ref.summary()
        np.testing.assert_allclose(s.bse, r.bse, rtol=1e-10)
        assert s.nobs == r.nobs == int(train.sum()) and s.rsquared == pytest.approx(r.rsquared)


@pytest.mark.parametrize("key", list(MODELS))
def test_weighted_streamed_equals_in_memory_and_sklearn(key):
    est = MODELS[key]()
    info = stream_fit_linear(est, Arrays(X, Y, W, batch_rows=37))
    assert info["rows_fit"] == int((W > 0).sum()) and info["weight_sum"] == pytest.approx(W.sum())
    ref = MODELS[key]().fit(X, Y, sample_weight=W)
    check_same(est, ref, tol(key))
    check_same(est, SKLEARN[key]().fit(X, Y, sample_weight=W), 1e-8)


@pytest.fixture(scope="module")
def weighted_onehot_parquet(tmp_path_factory):
    raw = _onehot_frame()
    raw["w"] = W[: len(raw)]
    path = tmp_path_factory.mktemp("engine") / "wc.parquet"
    pq.write_table(pa.Table.from_pandas(raw, preserve_index=False), path, row_group_size=64)
    return path, raw


@pytest.mark.parametrize("key", list(MODELS))
def test_table_weight_and_onehot_columns_equal_in_memory(weighted_onehot_parquet, key):
    path, raw = weighted_onehot_parquet
    src = TableSource(path, "y", weight="w", categorical="onehot", batch_rows=25)
    est = MODELS[key]()
    stream_fit_linear(est, src)
    # the in-memory design: the same one-hot columns (first level dropped), weights apart
    Xd = pd.get_dummies(raw.drop(columns=["w", "y"]), columns=["c"], dtype=float, drop_first=True)
    assert list(est.feature_names_in_) == ["a"] + [c.replace("c_", "c=") for c in Xd.columns[1:]]
    ref = MODELS[key]().fit(Xd.to_numpy(), raw["y"], sample_weight=raw["w"])
    check_same(est, ref, tol(key))
    check_same(est, SKLEARN[key]().fit(Xd, raw["y"], sample_weight=raw["w"]), 1e-8)
    if key == "ols":
        r = ref.summary()
        np.testing.assert_allclose(est.summary().bse, r.bse, rtol=1e-10)


def test_array_source_is_the_same_stream():
    from regtorch.data.source import ArraySource

    a, b = Ridge(alpha=2.0), Ridge(alpha=2.0)
    stream_fit_linear(a, ArraySource(X, Y, sample_weight=W, batch_rows=50))
    stream_fit_linear(b, Arrays(X, Y, W, batch_rows=50))
    check_same(a, b, 1e-12)


def test_weighted_standard_errors_match_statsmodels_wls():
    est = LinearRegression()
    stream_fit_linear(est, Arrays(X, Y, W, batch_rows=37))
    pos = W > 0  # statsmodels counts zero-weight rows as observations: leave them out there
    wls = sm.WLS(Y[pos], sm.add_constant(X[pos]), weights=W[pos]).fit()
    s = est.summary()
    np.testing.assert_allclose(s.params, wls.params, rtol=1e-10)
    np.testing.assert_allclose(s.bse, wls.bse, rtol=1e-10)
    np.testing.assert_allclose(s.pvalues, wls.pvalues, rtol=1e-8, atol=1e-300)
    assert s.df_resid == wls.df_resid and s.nobs == wls.nobs
    assert s.llf == pytest.approx(wls.llf, rel=1e-10)
    assert s.rsquared == pytest.approx(wls.rsquared, rel=1e-10)
    assert s.fvalue == pytest.approx(wls.fvalue, rel=1e-9)
    in_memory = LinearRegression().fit(X, Y, sample_weight=W).summary()
    np.testing.assert_allclose(s.bse, in_memory.bse, rtol=1e-10)


@pytest.mark.parametrize("key", list(MODELS))
def test_integer_weights_equal_repeated_rows(key):
    counts = RNG.integers(0, 4, size=N)
    weighted, repeated = MODELS[key](), MODELS[key]()
    stream_fit_linear(weighted, Arrays(X, Y, counts.astype(float), batch_rows=41))
    stream_fit_linear(repeated, Arrays(np.repeat(X, counts, 0), np.repeat(Y, counts), None, 41))
    check_same(weighted, repeated, tol(key))


@pytest.mark.parametrize(
    ("bad", "match"),
    [(-1.0, "sample_weight must be non-negative"), (np.nan, "NaN or infinite")],
)
def test_bad_weights_are_named(bad, match):
    w = W.copy()
    w[100] = bad
    with pytest.raises(ValueError, match=match):
        stream_fit_linear(LinearRegression(), Arrays(X, Y, w))


def _onehot_frame():
    rng = np.random.default_rng(1)
    n = 400
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "c": rng.choice(["red", "green", "blue"], size=n, p=[0.5, 0.3, 0.2]),
        }
    )
    effect = df["c"].map({"red": 1.0, "green": -2.0, "blue": 0.5}).to_numpy()
    y = 2.0 * df["a"].to_numpy() + effect + rng.normal(size=n)
    return df.assign(y=y)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LinearRegression(fit_intercept=False),
        lambda: Ridge(alpha=3.0),
        lambda: Lasso(alpha=0.02, tol=1e-10, max_iter=100_000),
        lambda: ElasticNet(alpha=0.05, tol=1e-10, max_iter=100_000),
    ],
)
def test_onehot_columns_streamed_equal_in_memory(make):
    df = _onehot_frame()
    enc, y = pd.get_dummies(df.drop(columns="y"), columns=["c"], dtype=float), df["y"]
    est = make()
    stream_fit_linear(est, Arrays(enc.to_numpy(), y, batch_rows=30, names=enc.columns))
    ref = make().fit(enc, y)
    check_same(est, ref, 1e-8, atol=1e-12)
    assert list(est.feature_names_in_) == list(enc.columns)


def _ill_conditioned():
    rng = np.random.default_rng(2)
    t = rng.uniform(1.0, 2.0, size=300)
    Xp = np.column_stack([t**j for j in range(1, 7)])  # polynomial: cond(scaled Gram) ~ 1e12
    return Xp, Xp @ rng.normal(size=6) + 1e-3 * rng.normal(size=300)


@pytest.mark.parametrize("key", [*MODELS, "ols-ill"])
def test_two_ranks_equal_one(monkeypatch, key):
    Xd, yd, w = (X, Y, W) if key != "ols-ill" else (*_ill_conditioned(), None)
    make = MODELS[key.split("-")[0]]
    ranks = _Ranks(2)
    monkeypatch.setattr(dist_mod, "is_distributed", lambda: True)
    monkeypatch.setattr(dist_mod, "rank_world", lambda: (ranks.local.rank, 2))
    monkeypatch.setattr(dist_mod, "all_gather", ranks.all_gather)

    def fit(r):
        est = make()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = stream_fit_linear(est, Arrays(Xd, yd, w, batch_rows=29, rank=r, world=2))
        return est, info

    (a, ia), (b, _) = ranks.run(fit)
    monkeypatch.undo()
    one = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        i1 = stream_fit_linear(one, Arrays(Xd, yd, w, batch_rows=29))
    assert ia["rows_fit"] == i1["rows_fit"] == len(yd) - (0 if w is None else int((w == 0).sum()))
    check_same(a, b, 0.0)  # every rank holds the same answer
    check_same(a, one, tol(key.split("-")[0]))
    if key.startswith("ols"):
        np.testing.assert_allclose(a.summary().bse, one.summary().bse, rtol=1e-10)


def test_weighted_ill_conditioned_second_pass_matches_in_memory():
    Xp, yp = _ill_conditioned()
    w = np.random.default_rng(3).uniform(0.5, 2.0, size=len(yp))
    est = LinearRegression()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stream_fit_linear(est, Arrays(Xp, yp, w, batch_rows=23))
    ref = LinearRegression().fit(Xp, yp, sample_weight=w)
    assert est.solver_ != "streaming-cholesky"  # the second pass ran
    check_same(est, ref, 1e-9)
    np.testing.assert_allclose(est.summary().bse, ref.summary().bse, rtol=1e-9)


def test_moment_state_weights_rows_and_merge():
    Z = torch.from_numpy(np.column_stack([X, Y]))
    w = torch.from_numpy(W)
    whole, parts = MomentState(), MomentState()
    whole.update(Z, w)
    for i in range(0, N, 100):
        part = MomentState()
        part.update(Z[i : i + 100], w[i : i + 100])
        parts.merge(MomentState.from_tensor(part.to_tensor(P + 1), P + 1))
    pos = W > 0
    assert whole.rows == parts.rows == int(pos.sum()) and whole.n == pytest.approx(W.sum())
    assert parts.log_w == pytest.approx(np.log(W[pos]).sum())
    mean = np.average(np.column_stack([X, Y]), axis=0, weights=W)
    for st in (whole, parts):
        np.testing.assert_allclose((st.mean / st.scale).numpy(), mean, rtol=1e-12)
        Zc = np.column_stack([X, Y]) - mean
        C = (Zc * W[:, None]).T @ Zc
        np.testing.assert_allclose((st.C / torch.outer(st.scale, st.scale)).numpy(), C, rtol=1e-9)


@pytest.mark.parametrize("scale", [1e300, 1e-300, 1e200])
def test_weights_beyond_the_safe_range_are_refused_in_both_modes(scale):
    from regtorch.data import ArraySource

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    y = X @ [1.0, 2.0, 3.0] + 1 + rng.normal(size=200)
    w = rng.uniform(0.1, 1, 200) * scale
    with pytest.raises(ValueError, match="between 1e-150 and 1e\\+150"):
        LinearRegression().fit(X, y, sample_weight=w)
    with pytest.raises(ValueError, match="between 1e-150 and 1e\\+150"):
        stream_fit_linear(LinearRegression(), ArraySource(X, y, sample_weight=w, batch_rows=50))


@pytest.mark.parametrize("scale", [1e149, 1e-149])
def test_weights_at_the_ends_of_the_range_fit_as_unscaled_ones(scale):
    from regtorch.data import ArraySource

    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    y = X @ [1.0, 2.0, 3.0] + 1 + rng.normal(size=200)
    u = rng.uniform(0.1, 1, 200)
    ref = LinearRegression().fit(X, y, sample_weight=u)
    mem = LinearRegression().fit(X, y, sample_weight=u * scale)
    streamed = LinearRegression()
    stream_fit_linear(streamed, ArraySource(X, y, sample_weight=u * scale, batch_rows=50))
    for est in (mem, streamed):
        np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(est.summary().bse, ref.summary().bse, rtol=1e-9)


def _exact_moments(Z, w=None):
    """Mean and centred cross-products in extended precision (the reference)."""
    Zl = np.asarray(Z, dtype=np.longdouble)
    wl = np.ones(len(Zl), dtype=np.longdouble) if w is None else np.asarray(w, np.longdouble)
    mean = (wl[:, None] * Zl).sum(0) / wl.sum()
    Zc = Zl - mean
    return mean.astype(float), ((Zc * wl[:, None]).T @ Zc).astype(float)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("magnitude", [1.0, 1e150, 1e-150])
def test_moment_state_far_means_at_extreme_magnitudes(weighted, magnitude):
    # columns whose mean dwarfs their spread (the batch is centred again) and whose
    # magnitudes leave the unscaled range (the batch is scaled first): both at once
    rng = np.random.default_rng(3)
    Z = np.column_stack([1e4 + rng.normal(size=300), rng.normal(size=300)]) * magnitude
    w = rng.uniform(0.5, 2.0, 300) if weighted else None
    st = MomentState()
    st.update(torch.from_numpy(Z), None if w is None else torch.from_numpy(w))
    mean, C = _exact_moments(Z / magnitude, w)
    sm = st.scale.numpy() * magnitude  # the state's units per unit of Z / magnitude
    np.testing.assert_allclose(st.mean.numpy() / sm, mean, rtol=1e-13)
    np.testing.assert_allclose(st.C.numpy() / np.outer(sm, sm), C, rtol=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shift", [0.0, 1e6])
def test_update_columns_equals_update_of_the_joined_batch(weighted, shift):
    rng = np.random.default_rng(4)
    Xb, yb = rng.normal(size=(257, 3)) + shift, rng.normal(size=(257, 2))
    w = rng.uniform(0.0, 2.0, 257) if weighted else None
    if w is not None:
        w[::5] = 0.0
    top = torch.from_numpy(np.abs(np.column_stack([Xb, yb])).max(0))
    a, b = MomentState(), MomentState()
    a.update(torch.from_numpy(np.column_stack([Xb, yb])), None if w is None else torch.tensor(w))
    b.update_columns(Xb, yb, w, top)
    assert a.rows == b.rows and a.n == pytest.approx(b.n, rel=1e-15)
    assert a.log_w == pytest.approx(b.log_w, rel=1e-12)
    s = (a.scale / b.scale).numpy()
    np.testing.assert_allclose((b.mean * torch.from_numpy(s)).numpy(), a.mean.numpy(), rtol=1e-13)
    np.testing.assert_allclose(
        b.C.numpy() * np.outer(s, s), a.C.numpy(), rtol=1e-10, atol=1e-12 * float(a.C.abs().max())
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_in_memory_gram_is_the_moment_state_and_centres_offset_columns(weighted):
    # in-memory fits accumulate the engine's MomentState; columns whose mean is 20 standard
    # deviations from zero (below the per-batch re-centring ratio) are formed about the
    # running mean, so the centred Gram keeps full precision (without the shift about 2.5
    # digits of it cancel)
    from regtorch.linear.solvers import gram_state

    rng = np.random.default_rng(7)
    n = 50_000
    Xo = rng.normal(size=(n, 3)) + [20.0, -20.0, 0.0]
    yo = Xo @ [1.0, 2.0, 3.0] + 5.0 + rng.normal(size=n)
    w = rng.uniform(0.5, 2.0, n) if weighted else None
    gs = gram_state(
        torch.from_numpy(Xo),
        torch.from_numpy(yo[:, None]),
        None if w is None else torch.from_numpy(w),
        True,
        block_rows=4096,
    )
    mean, C = _exact_moments(np.column_stack([Xo, yo]), w)
    np.testing.assert_allclose(gs.X_offset.numpy(), mean[:3], rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(gs.G.numpy(), C[:3, :3], rtol=5e-15, atol=5e-15 * C.max())
    np.testing.assert_allclose(gs.Xty.numpy()[:, 0], C[:3, 3], rtol=5e-15)
    assert gs.weight_sum == pytest.approx(n if w is None else w.sum(), rel=1e-15)


@pytest.mark.parametrize("weighted", [False, True])
def test_gram_state_on_two_threads_equals_one(weighted, monkeypatch):
    import regtorch.linear.solvers as solvers

    Xt, yt = torch.from_numpy(X), torch.from_numpy(Y[:, None])
    w = torch.from_numpy(W) if weighted else None
    one = solvers.gram_state(Xt, yt, w, True, block_rows=64)
    monkeypatch.setattr(solvers, "PARALLEL_GRAM_SIZE", 0)  # two halves from any size
    two = solvers.gram_state(Xt, yt, w, True, block_rows=64)
    for a, b in [(one.G, two.G), (one.Xty, two.Xty), (one.yty, two.yty)]:
        np.testing.assert_allclose(
            b.numpy(), a.numpy(), rtol=1e-12, atol=1e-12 * float(a.abs().max())
        )
    np.testing.assert_allclose(two.X_offset.numpy(), one.X_offset.numpy(), rtol=1e-14)
    assert two.weight_sum == pytest.approx(one.weight_sum, rel=1e-15)


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_fit_fingerprint_from_its_moments_matches_the_data(fit_intercept):
    # the fit takes its fingerprint from the moments it accumulated (no extra pass); a
    # summary() on the same data recomputes it from the rows and must agree, on other data not
    from regtorch._base import data_fingerprint, same_data

    est = LinearRegression(solver="cholesky", fit_intercept=fit_intercept).fit(X, Y, W)
    fp = est._fit_info["fingerprint"]
    assert same_data(fp, data_fingerprint(X, Y[:, None], W), rtol=1e-13)
    assert not same_data(fp, data_fingerprint(X, Y[:, None] + 1e-6, W))
    est.summary(X=X, y=Y, sample_weight=W, cov_type="HC1")
    with pytest.raises(ValueError, match="training data"):
        est.summary(X=X * 1.001, y=Y, sample_weight=W, cov_type="HC1")


def test_streamed_fit_of_a_huge_offset_column_equals_in_memory():
    # a column near 1e130 whose mean dwarfs its spread: the streamed fit was silently wrong
    # (0.56 for a slope of 1.98) when the batch was scaled twice before re-centring
    from regtorch.data import ArraySource

    rng = np.random.default_rng(0)
    n = 2000
    x = 1e130 * (1 + 1e-3 * rng.normal(size=n))
    X2 = np.column_stack([x, rng.normal(size=n)])
    y = 3e-130 * x + 2 * X2[:, 1] + rng.normal(size=n)
    ref = LinearRegression().fit(X2, y)
    est = LinearRegression()
    stream_fit_linear(est, ArraySource(X2, y, batch_rows=500))
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-9)
    assert est.coef_[1] == pytest.approx(1.98, abs=0.05)


def test_moment_state_torch_path_matches_numpy_path():
    # tensors that are not CPU float64 (a GPU's, or float32) take the torch branch of the
    # same formulas; float32 input agrees to its own rounding and warns about nothing
    rng = np.random.default_rng(8)
    Z = np.column_stack([rng.normal(size=(3000, 2)) + [50.0, -3.0], rng.normal(size=3000)])
    w = rng.uniform(0.0, 2.0, 3000)
    a, b = MomentState(), MomentState()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a.update(torch.from_numpy(Z).float(), torch.from_numpy(w).float())
    b.update(torch.from_numpy(Z), torch.from_numpy(w))
    r = (b.scale / a.scale).numpy()
    np.testing.assert_allclose(a.mean.numpy() * r, b.mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(a.C.numpy() * np.outer(r, r), b.C.numpy(), rtol=1e-5, atol=1e-6)
