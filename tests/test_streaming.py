"""Out-of-core fits: streaming equals in-memory; memory-sized batches; held-out splits."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from regtorch import LinearRegression, Ridge
from regtorch.data import DataError, TableSource, parse_memory
from regtorch.data.split import hash01 as _hash01
from regtorch.linear import stream_fit_linear
from regtorch.metrics import stream_metrics


def make_table(n=5000, p=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) * rng.uniform(0.5, 5, size=p) + rng.normal(size=p) * 10
    y = X @ rng.normal(size=p) + 3 + rng.normal(size=n)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(p)])
    df["y"] = y
    return df


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    df = make_table()
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), d / "t.parquet", row_group_size=700
    )
    (d / "parts").mkdir()
    for i, start in enumerate(range(0, len(df), 1300)):
        pq.write_table(
            pa.Table.from_pandas(df.iloc[start : start + 1300], preserve_index=False),
            d / "parts" / f"part-{i:03d}.parquet",
            row_group_size=400,
        )
    df.to_csv(d / "t.csv", index=False)
    return d, df


@pytest.mark.parametrize("name", ["t.parquet", "parts", "t.csv"])
@pytest.mark.parametrize(
    "Est, kw",
    [
        (LinearRegression, {}),
        (Ridge, {"alpha": 10.0}),
        (LinearRegression, {"fit_intercept": False}),
    ],
)
def test_streaming_equals_in_memory(files, name, Est, kw):
    d, df = files
    X, y = df.drop(columns="y"), df["y"]
    ref = Est(**kw).fit(X, y)
    est = Est(**kw)
    info = stream_fit_linear(est, TableSource(d / name, "y", batch_rows=333))
    assert info["rows_fit"] == len(df)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-10)
    assert est.intercept_ == pytest.approx(ref.intercept_, rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(est.predict(X), ref.predict(X), rtol=1e-10)
    if Est is LinearRegression:
        s, r = est.summary(), ref.summary()
        np.testing.assert_allclose(s.bse, r.bse, rtol=1e-10)
        np.testing.assert_allclose(s.pvalues, r.pvalues, rtol=1e-8, atol=1e-300)
        for attr in ("rsquared", "fvalue", "llf", "aic"):
            assert getattr(s, attr) == pytest.approx(getattr(r, attr), rel=1e-10)


def test_held_out_rows_and_metrics(files):
    d, df = files
    src = TableSource(d / "t.parquet", "y", batch_rows=500)
    est = LinearRegression()
    info = stream_fit_linear(est, src, test_fraction=0.2, seed=3)
    test = _hash01(np.arange(len(df)), 3) < 0.2
    assert info["rows_fit"] == int((~test).sum())
    ref = LinearRegression().fit(df.drop(columns="y")[~test], df.y[~test])
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-10)
    m, y_s, p_s = stream_metrics(est, src, test_fraction=0.2, seed=3)
    assert len(y_s) == int(test.sum()) and p_s.shape == y_s.shape
    from sklearn.metrics import r2_score

    assert m["r2"] == pytest.approx(
        r2_score(df.y[test], ref.predict(df.drop(columns="y")[test])), rel=1e-10
    )


def test_memory_limit_decides_batch_rows(files):
    d, _ = files
    from regtorch.data.memory import _resident_bytes

    # the first source loads the reader's code: measure what the process holds after it
    big = TableSource(d / "t.parquet", "y", memory_limit=_resident_bytes() + parse_memory("1GB"))
    held = _resident_bytes()
    small = TableSource(d / "t.parquet", "y", memory_limit=held + parse_memory("20MB"))
    assert small.batch_rows < big.batch_rows
    assert small.batch_rows * 7 * 8 * 6 <= 20 * 1024**2
    with pytest.raises(DataError, match="too small: this process already holds"):
        TableSource(d / "t.parquet", "y", memory_limit=parse_memory("10MB"))
    assert parse_memory("2GB") == 2 * 1024**3 and parse_memory("512mb") == 512 * 1024**2
    with pytest.raises(ValueError, match="memory size"):
        parse_memory("lots")


def test_streaming_errors(files, tmp_path):
    d, df = files
    with pytest.raises(DataError, match="Target column 'price' not found"):
        TableSource(d / "t.parquet", "price")
    with pytest.raises(DataError, match="no such file"):
        TableSource(tmp_path / "none.parquet", "y")
    bad = df.copy()
    bad.loc[10, "f1"] = np.nan
    pq.write_table(pa.Table.from_pandas(bad, preserve_index=False), tmp_path / "nan.parquet")
    with pytest.raises(DataError, match="Missing or infinite values in column\\(s\\) 'f1' \\(1\\)"):
        stream_fit_linear(LinearRegression(), TableSource(tmp_path / "nan.parquet", "y"))
    est = LinearRegression()
    stream_fit_linear(est, TableSource(tmp_path / "nan.parquet", "y"), missing="drop")
    ref = LinearRegression().fit(bad.dropna().drop(columns="y"), bad.dropna().y)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-10)
    from regtorch import MLPRegressor

    with pytest.raises(ValueError, match="Streaming fits LinearRegression, Ridge, Lasso and"):
        stream_fit_linear(MLPRegressor(), TableSource(d / "t.parquet", "y"))


def test_streamed_mlp_learns_and_keeps_the_best_epoch(tmp_path):
    from regtorch import MLPRegressor
    from regtorch.nn import stream_fit_mlp

    rng = np.random.default_rng(0)
    n = 6000
    X = rng.normal(size=(n, 3))
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    df["y"] = np.sin(2 * X[:, 0]) + X[:, 1] + 0.05 * rng.normal(size=n)
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), tmp_path / "m.parquet", row_group_size=700
    )
    est = MLPRegressor(max_epochs=15, batch_size=128, random_state=0, device="cpu")
    info = stream_fit_mlp(
        est,
        TableSource(tmp_path / "m.parquet", "y", batch_rows=500),
        test_fraction=0.2,
        val_fraction=0.1,
        seed=1,
    )
    assert info["epochs"] == len(est.history_) == 15 and len(est.history_.val_loss) == 15
    assert est.best_epoch_ == int(np.argmin(est.history_.val_loss)) + 1
    m, _, _ = stream_metrics(
        est, TableSource(tmp_path / "m.parquet", "y"), test_fraction=0.2, seed=1
    )
    assert m["r2"] > 0.95
    test = _hash01(np.arange(n), 1) < 0.2
    np.testing.assert_allclose(est.score(df[["a", "b", "c"]][test], df.y[test]), m["r2"], rtol=1e-9)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_streamed_mlp_on_cuda(tmp_path):
    from regtorch import MLPRegressor
    from regtorch.nn import stream_fit_mlp

    df = make_table(3000, 3)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "c.parquet")
    est = MLPRegressor(max_epochs=5, random_state=0, device="cuda")
    stream_fit_mlp(est, TableSource(tmp_path / "c.parquet", "y"))
    assert next(est.module_.parameters()).is_cuda


def test_ill_conditioned_or_perfect_fits_take_the_qr_pass(tmp_path):
    rng = np.random.default_rng(5)
    n = 4000
    base = rng.normal(size=n)
    df = pd.DataFrame(
        {"a": base, "b": base + 1e-5 * rng.normal(size=n), "c": rng.normal(size=n) + 1e3}
    )
    df["y"] = df.a - 2 * df.b + 0.5 * df.c + 0.01 * rng.normal(size=n)
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), tmp_path / "ill.parquet", row_group_size=600
    )
    ref = LinearRegression().fit(df[["a", "b", "c"]], df.y)
    est = LinearRegression()
    stream_fit_linear(est, TableSource(tmp_path / "ill.parquet", "y", batch_rows=250))
    assert est.solver_ == "streaming-tsqr"
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-8)
    np.testing.assert_allclose(est.summary().bse, ref.summary().bse, rtol=1e-8)
    ridge = Ridge(alpha=0.5)
    stream_fit_linear(ridge, TableSource(tmp_path / "ill.parquet", "y", batch_rows=250))
    np.testing.assert_allclose(
        ridge.coef_, Ridge(alpha=0.5).fit(df[["a", "b", "c"]], df.y).coef_, rtol=1e-8
    )


def test_csv_types_are_forced_to_float_and_bad_memory_sizes(tmp_path):
    n = 300_000  # more than one 8 MiB CSV block
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"a": rng.integers(0, 100, size=n).astype(float), "b": rng.normal(size=n)})
    df["y"] = 2 * df.a - df.b + rng.normal(size=n)
    text = df.to_csv(index=False, float_format="%.17g").replace(".0,", ",")  # ints first...
    lines = text.splitlines()
    lines[-1] = "1.5," + lines[-1].split(",", 1)[1]  # ...and a decimal far down
    (tmp_path / "late.csv").write_text("\n".join(lines) + "\n")
    est = LinearRegression()
    stream_fit_linear(est, TableSource(tmp_path / "late.csv", "y"))
    back = pd.read_csv(tmp_path / "late.csv")
    ref = LinearRegression().fit(back[["a", "b"]], back.y)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-10)
    for bad in ("infGB", "-1GB", "0", "lots"):
        with pytest.raises(ValueError, match="Cannot read the memory size"):
            parse_memory(bad)
