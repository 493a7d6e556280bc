"""One engine, part 1: every fit's data sources, the one split rule, weights, one-hot streamed."""

import re

import numpy as np
import pandas as pd
import pytest
import torch

from regtorch.data import ArraySource, DataError, TableSource, assign, hash01
from regtorch.data import source as array_source
from regtorch.data import table as streaming
from regtorch.data.schema import prepare, read_table, sample_weights


def make_frame(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "city": rng.choice(["paris", "lyon", "nice", "brest"], size=n),
            "b": rng.normal(size=n),
            "kind": rng.choice(["x", "y y", "z"], size=n),
            "w": rng.uniform(0.5, 2.0, size=n),
        }
    )
    df["y"] = df.a - 2 * df.b + (df.city == "nice") + rng.normal(size=n)
    return df


def collect(src, **kw):
    """Every batch of ``src`` stacked in row order: rows, Z, w."""
    batches = list(src.batches(**kw))
    rows = np.concatenate([b.rows for b in batches])
    Z = np.vstack([b.Z for b in batches])
    w = np.concatenate([b.w for b in batches]) if batches[0].w is not None else None
    order = np.argsort(rows)
    return rows[order], Z[order], None if w is None else w[order]


# 1. the split rule


def test_assign_follows_the_rule_and_the_fractions():
    rows = np.arange(100_000)
    parts = assign(rows, seed=3, test_fraction=0.2, val_fraction=0.15)
    assert parts.dtype == np.int8
    h = hash01(rows, 3)
    np.testing.assert_array_equal(parts == 2, h < 0.2)
    np.testing.assert_array_equal(parts == 1, (h >= 0.2) & (h < 0.35))
    for code, share in ((0, 0.65), (1, 0.15), (2, 0.2)):
        assert abs((parts == code).mean() - share) < 0.006
    assert not (assign(rows, 3, 0.0) != 0).any()


def test_assign_depends_on_seed_and_index_only():
    rows = np.arange(50_000)
    whole = assign(rows, 7, 0.25, 0.1)
    cuts = np.sort(np.random.default_rng(0).choice(np.arange(1, len(rows)), 40, replace=False))
    chunked = np.concatenate([assign(c, 7, 0.25, 0.1) for c in np.split(rows, cuts)])
    np.testing.assert_array_equal(whole, chunked)
    shuffled = np.random.default_rng(1).permutation(rows)
    np.testing.assert_array_equal(assign(shuffled, 7, 0.25, 0.1), whole[shuffled])
    np.testing.assert_array_equal(assign(rows, 7, 0.25, 0.1), whole)
    assert (assign(rows, 8, 0.25, 0.1) != whole).mean() > 0.3


@pytest.mark.parametrize(
    ("test", "val", "match"),
    [
        (-0.1, 0.0, "test_fraction must be a number >= 0, got -0.1"),
        (0.1, -0.2, "val_fraction must be a number >= 0, got -0.2"),
        (0.6, 0.4, "test_fraction \\+ val_fraction must be below 1"),
        (float("nan"), 0.0, "test_fraction must be a number >= 0"),
    ],
)
def test_assign_refuses_bad_fractions(test, val, match):
    with pytest.raises(ValueError, match=match):
        assign(np.arange(10), 0, test, val)


def test_split_is_the_same_whatever_the_batch_size(tmp_path):
    df = make_frame(n=5000).drop(columns=["city", "kind"])
    df.to_parquet(tmp_path / "t.parquet", row_group_size=700)
    parts = {}
    for batch_rows in (64, 999, 5000):
        src = TableSource(tmp_path / "t.parquet", "y", batch_rows=batch_rows)
        for b in src.batches():
            for r, k in zip(b.rows, assign(b.rows, 11, 0.3, 0.1)):
                assert parts.setdefault(int(r), int(k)) == k
    mem = ArraySource(df.drop(columns="y"), df.y, batch_rows=123)
    for b in mem.batches():
        assert all(parts[int(r)] == k for r, k in zip(b.rows, assign(b.rows, 11, 0.3, 0.1)))
    assert len(parts) == len(df)


# 2. sample weights


def test_weight_column_is_read_with_the_batch_and_is_no_feature(tmp_path):
    df = make_frame().drop(columns=["city", "kind"])
    df.to_parquet(tmp_path / "t.parquet", row_group_size=500)
    src = TableSource(tmp_path / "t.parquet", "y", weight="w", batch_rows=400)
    assert src.features == ["a", "b"] and src.weight == "w"
    rows, Z, w = collect(src)
    np.testing.assert_array_equal(rows, np.arange(len(df)))
    np.testing.assert_array_equal(w, df.w.to_numpy())
    np.testing.assert_array_equal(Z, df[["a", "b", "y"]].to_numpy())
    assert TableSource(tmp_path / "t.parquet", "y").features == ["a", "b", "w"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"weight": "y"}, "Column 'y' cannot be both the sample weights and the target."),
        (
            {"weight": "w", "features": ["a", "w"]},
            "Column 'w' cannot be both the sample weights and a feature.",
        ),
        ({"weight": "nope"}, "Weight column 'nope' not found; the columns are:"),
        ({"weight": "city"}, "Weight column 'city' is not numeric"),
    ],
)
def test_bad_weight_columns_are_refused_as_in_memory(tmp_path, kw, match):
    df = make_frame(n=200)
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=match):
        TableSource(tmp_path / "t.csv", "y", categorical="onehot", **kw)
    mem = read_table(tmp_path / "t.csv")
    with pytest.raises(DataError, match=match):
        prepare(mem, "y", kw.get("features"), categorical="onehot", weight=kw["weight"])


def test_missing_and_negative_weights(tmp_path):
    df = make_frame(n=300).drop(columns=["city", "kind"])
    df.loc[41, "w"] = np.nan
    df.to_csv(tmp_path / "t.csv", index=False)
    src = TableSource(tmp_path / "t.csv", "y", weight="w")
    with pytest.raises(DataError, match=r"column\(s\) 'w' \(1\).* at .*t\.csv line 43; fix them"):
        collect(src)
    rows, Z, w = collect(src, missing="drop")
    np.testing.assert_array_equal(rows, np.delete(np.arange(300), 41))
    np.testing.assert_array_equal(w, df.w.drop(index=41).to_numpy())
    # the same rows in memory
    X, y, _, kept = prepare(read_table(tmp_path / "t.csv"), "y", missing="drop", weight="w")
    np.testing.assert_array_equal(np.flatnonzero(kept), rows)
    np.testing.assert_array_equal(sample_weights(read_table(tmp_path / "t.csv"), "w", kept), w)

    df.loc[41, "w"] = 1.0
    df.loc[250, "w"] = -2.0
    df.to_csv(tmp_path / "neg.csv", index=False)
    msg = "Weight column 'w': sample weights must be finite and >= 0; 1 value(s) are not, the "
    with pytest.raises(DataError, match=f"^{re.escape(msg)}first -2.0 at .*neg.csv line 252"):
        collect(TableSource(tmp_path / "neg.csv", "y", weight="w"), missing="drop")
    with pytest.raises(DataError, match="first -2.0 at .*neg.csv line 252"):
        prepare(read_table(tmp_path / "neg.csv"), "y", weight="w")


# 3. one-hot streamed == in memory


def test_text_features_need_onehot_when_streamed(tmp_path):
    make_frame(n=100).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match="'city', 'kind'.*--categorical onehot"):
        TableSource(tmp_path / "t.parquet", "y")
    with pytest.raises(ValueError, match="categorical must be one of 'error', 'onehot'"):
        TableSource(tmp_path / "t.parquet", "y", categorical="ordinal")


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize("missing", ["error", "drop"])
def test_onehot_streamed_equals_prepare_in_memory(tmp_path, fmt, missing):
    df = make_frame(n=4000)
    if missing == "drop":
        df.loc[[5, 700], "a"] = np.nan
        df.loc[1234, "city"] = None
        df.loc[3000, "city"] = "only-in-a-dropped-row"
        df.loc[3000, "b"] = np.nan
    path = tmp_path / f"t.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, row_group_size=333)
    src = TableSource(path, "y", weight="w", categorical="onehot", batch_rows=256)
    mem = read_table(path)
    X, y, enc, kept = prepare(mem, "y", categorical="onehot", missing=missing, weight="w")
    assert src.features == enc.output_names
    assert src.encoder.to_dict() == enc.to_dict()
    assert "city=only-in-a-dropped-row" not in src.features
    rows, Z, w = collect(src, missing=missing)
    np.testing.assert_array_equal(rows, np.flatnonzero(kept))
    np.testing.assert_array_equal(Z[:, : len(src.features)], X)
    np.testing.assert_array_equal(Z[:, len(src.features) :], y)
    np.testing.assert_array_equal(w, df.w.to_numpy()[kept])


def test_onehot_over_a_parquet_folder_equals_prepare_on_the_whole_table(tmp_path):
    df = make_frame(n=3000)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, start in enumerate((0, 1000, 2000)):
        part = df.iloc[start : start + 1000].copy()
        if i == 2:
            part.loc[part.index[:5], "kind"] = "zz-late"  # seen only in the last file
        part.to_parquet(folder / f"part-{i}.parquet", row_group_size=250, index=False)
    whole = pd.concat([pd.read_parquet(f) for f in sorted(folder.iterdir())], ignore_index=True)
    X, y, enc, _ = prepare(whole, "y", ["city", "a", "kind"], categorical="onehot")
    src = TableSource(folder, "y", ["city", "a", "kind"], categorical="onehot", batch_rows=100)
    assert src.features == enc.output_names
    assert "kind=zz-late" in src.features and src.weight is None
    rows, Z, w = collect(src)
    assert w is None
    np.testing.assert_array_equal(rows, np.arange(len(whole)))
    np.testing.assert_array_equal(Z, np.column_stack([X, y]))


def test_missing_text_in_a_streamed_batch_names_the_column_and_line(tmp_path):
    df = make_frame(n=200)
    df.loc[120, "kind"] = " "
    df.to_csv(tmp_path / "t.csv", index=False)
    src = TableSource(tmp_path / "t.csv", "y", categorical="onehot")
    with pytest.raises(DataError, match=r"column\(s\) 'kind' \(1\).*'kind' at .*t.csv line 122"):
        collect(src)
    with pytest.raises(DataError, match=r"column\(s\) 'kind' \(1\) at .*t.csv line 122"):
        prepare(read_table(tmp_path / "t.csv"), "y", categorical="onehot")


def test_too_many_levels_is_refused_with_the_in_memory_message(tmp_path):
    df = make_frame(n=500)
    df["id"] = [f"u{i}" for i in range(len(df))]
    df.to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError) as mem:
        prepare(read_table(tmp_path / "t.parquet"), "y", categorical="onehot", max_levels=100)
    with pytest.raises(DataError) as streamed:
        TableSource(tmp_path / "t.parquet", "y", categorical="onehot", max_levels=100)
    assert str(streamed.value) == str(mem.value)
    assert "more than --max-levels 100 distinct values: 'id' (500)" in str(mem.value)


# 4. ranks: every row read once, with its weight


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("fmt", ["csv", "parquet", "arrays"])
def test_ranks_read_every_row_once_with_its_weight(tmp_path, monkeypatch, world, fmt):
    df = make_frame(n=6000)
    if fmt == "arrays":
        src = ArraySource(df[["a", "b"]], df.y, sample_weight=df.w, batch_rows=500)
    else:
        path = tmp_path / f"t.{fmt}"
        if fmt == "csv":
            df.to_csv(path, index=False)
            monkeypatch.setattr(streaming, "CSV_BLOCK_BYTES", 1 << 14)  # many blocks
        else:
            df.to_parquet(path, row_group_size=100)
        src = TableSource(path, "y", weight="w", categorical="onehot", batch_rows=300)
    seen = []
    for rank in range(world):
        monkeypatch.setattr(streaming, "rank_world", lambda r=rank: (r, world))
        monkeypatch.setattr(array_source, "rank_world", lambda r=rank: (r, world))
        part = [(b.rows, b.w, b.y[:, 0]) for b in src.batches(epoch_seed=3)]
        assert part, f"rank {rank} read nothing"
        seen += part
    rows = np.concatenate([r for r, _, _ in seen])
    np.testing.assert_array_equal(np.sort(rows), np.arange(len(df)))
    np.testing.assert_array_equal(np.concatenate([w for _, w, _ in seen]), df.w.to_numpy()[rows])
    np.testing.assert_allclose(np.concatenate([y for _, _, y in seen]), df.y.to_numpy()[rows])


# 5. arrays in memory


@pytest.mark.parametrize("kind", ["numpy", "pandas", "torch"])
def test_array_source_serves_the_same_batches_as_a_table(tmp_path, kind):
    df = make_frame(n=1000).drop(columns=["city", "kind"])
    df.to_parquet(tmp_path / "t.parquet")
    X, y, w = df[["a", "b"]], df.y, df.w
    if kind == "numpy":
        X, y, w = X.to_numpy(), y.to_numpy(), w.to_numpy()
    elif kind == "torch":
        X, y, w = (torch.tensor(v.to_numpy()) for v in (X, y, w))
    src = ArraySource(X, y, sample_weight=w, batch_rows=128)
    assert src.features == (["a", "b"] if kind == "pandas" else ["x0", "x1"])
    assert (src.targets, src.weight, src.n_rows, src.path) == (
        ["y"],
        "sample_weight",
        1000,
        "<arrays>",
    )
    assert src.encoder.output_names == src.features
    table = TableSource(tmp_path / "t.parquet", "y", weight="w", batch_rows=128)
    for a, b in zip(src.batches(), table.batches(), strict=True):
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.Z, b.Z)
        np.testing.assert_array_equal(a.w, b.w)
        assert a.Z.dtype == np.float64 and a.p == 2
    shuffled = [b.rows[0] for b in src.batches(epoch_seed=1)]
    assert sorted(shuffled) == list(range(0, 1000, 128)) and shuffled != sorted(shuffled)
    one = list(ArraySource(X, np.column_stack([y, y])).batches())
    assert len(one) == 1 and one[0].y.shape == (1000, 2)
    assert ArraySource(X, np.column_stack([y, y])).targets == ["y0", "y1"]


@pytest.mark.parametrize(
    ("X", "y", "kw", "match"),
    [
        (np.ones(5), np.ones(5), {}, "Expected 2D array for X, got 1D array"),
        (np.ones((5, 2)), np.ones(4), {}, "inconsistent numbers of samples: \\[5, 4\\]"),
        (np.array([[1.0, np.nan]]), np.ones(1), {}, "Input X contains NaN"),
        (np.ones((2, 1)), np.array([1.0, np.inf]), {}, "Input y contains infinity"),
        (np.ones((3, 1)), np.ones(3), {"sample_weight": [1, -1, 1]}, "first -1.0 at row 1"),
        (np.ones((3, 1)), np.ones(3), {"sample_weight": [1, 1]}, "must have shape \\(3,\\)"),
        (np.ones((3, 1)), np.ones(3), {"sample_weight": [1, np.nan, 1]}, "sample_weight contains"),
        (np.ones((3, 1)), np.ones(3), {"batch_rows": 0}, "batch_rows must be a positive"),
        (np.ones((3, 2)), np.ones(3), {"feature_names": ["a"]}, "has 1 names, but X has 2"),
        (np.array([["a"], ["b"]]), np.ones(2), {}, "X contains values that are not numbers"),
    ],
)
def test_array_source_refuses_bad_input(X, y, kw, match):
    with pytest.raises(ValueError, match=match):
        ArraySource(X, y, **kw)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_column_of_numbers_with_typos_is_refused_streamed_as_in_memory(tmp_path, suffix):
    rng = np.random.default_rng(0)
    price = [f"{v:.2f}" for v in rng.uniform(1, 100, 300)]
    price[7], price[150] = "1,234", "12..5"  # typos that make the column text
    df = pd.DataFrame({"price": price, "y": rng.normal(size=300)})
    path = tmp_path / f"t{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path, index=False)
    mem = read_table(path)
    with pytest.raises(DataError, match="'price' holds numbers except for 2 value") as in_memory:
        prepare(mem, "y", categorical="onehot")
    with pytest.raises(DataError, match="'price' holds numbers except for 2 value") as streamed:
        TableSource(path, "y", categorical="onehot")
    for exc in (in_memory, streamed):
        assert "'1,234'" in str(exc.value) and "'12..5'" in str(exc.value)


def test_a_real_text_column_with_some_numbers_still_streams(tmp_path):
    rng = np.random.default_rng(1)
    towns = rng.choice(["north", "south", "east", "west", "10", "12"], 300)
    df = pd.DataFrame({"town": towns, "y": rng.normal(size=300)})
    df.to_parquet(tmp_path / "t.parquet", index=False)
    src = TableSource(tmp_path / "t.parquet", "y", categorical="onehot")
    assert src.features == prepare(df, "y", categorical="onehot")[2].output_names
