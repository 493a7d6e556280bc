"""Streamed readers under hostile input: every case an issue named, each with its message."""

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from regtorch import LinearRegression
from regtorch.cli import main
from regtorch.data import DataError, TableSource, parse_memory
from regtorch.data import table as streaming
from regtorch.linear import stream_fit_linear


def make_table(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    df["y"] = 1.5 * df.a - 2 * df.b + 0.5 * df.c + 3 + rng.normal(size=n)
    return df


def cli(monkeypatch, capsys, *args):
    """Run ``regtorch`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main replaces it
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def fails(monkeypatch, capsys, match, *args):
    code, _, err = cli(monkeypatch, capsys, *args)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert match in err, err
    return err


def fit_both(path, df, **kw):
    est = LinearRegression()
    info = stream_fit_linear(est, TableSource(path, "y", **kw))
    ref = LinearRegression().fit(df[["a", "b", "c"]], df.y)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-10)
    assert est.intercept_ == pytest.approx(ref.intercept_, rel=1e-10)
    return info


# 1. a feature list that includes the target


def test_target_among_the_features_is_refused(tmp_path, monkeypatch, capsys):
    df = make_table()
    df.to_parquet(tmp_path / "t.parquet", index=False)
    with pytest.raises(
        DataError, match="Column\\(s\\) 'y' cannot be both a feature and the target"
    ):
        TableSource(tmp_path / "t.parquet", "y", ["a", "y"])
    with pytest.raises(DataError, match="No feature columns"):
        TableSource(tmp_path / "t.parquet", "y", [])
    # the same words as the in-memory path
    msg = "Column(s) 'y' cannot be both a feature and the target."
    fails(
        monkeypatch,
        capsys,
        msg,
        "fit",
        tmp_path / "t.parquet",
        "--target",
        "y",
        "--features",
        "a,y",
        "--stream",
    )
    fails(
        monkeypatch,
        capsys,
        msg,
        "fit",
        tmp_path / "t.parquet",
        "--target",
        "y",
        "--features",
        "a,y",
    )


# 2. pandas index columns


@pytest.mark.parametrize("name", [None, "id"])
def test_pandas_index_columns_are_not_features(tmp_path, name):
    df = make_table()
    kept = df[df.a > -0.5].copy()  # a non-default index, as after filtering
    kept.index.name = name
    kept.to_parquet(tmp_path / "idx.parquet")
    stored = pq.read_schema(tmp_path / "idx.parquet").names
    assert (name or "__index_level_0__") in stored
    src = TableSource(tmp_path / "idx.parquet", "y")
    assert src.features == ["a", "b", "c"]
    fit_both(tmp_path / "idx.parquet", kept.reset_index(drop=True), batch_rows=300)
    with pytest.raises(DataError, match="not found"):  # as read in memory: the index is no column
        TableSource(tmp_path / "idx.parquet", "y", [name or "__index_level_0__"])


# 3. folders are read non-recursively


def test_a_folder_is_read_without_its_subfolders(tmp_path, monkeypatch, capsys):
    df = make_table()
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    df.iloc[:1000].to_parquet(d / "p0.parquet", index=False)
    df.iloc[1000:].to_parquet(d / "p1.parquet", index=False)
    df.to_parquet(d / "sub" / "copy.parquet", index=False)  # a copy left behind
    (d / "_SUCCESS").write_text("")
    with pytest.warns(
        UserWarning, match="subfolder\\(s\\) sub hold Parquet files that are not read"
    ):
        info = fit_both(d, df, batch_rows=300)
    assert info["rows_fit"] == len(df)
    code, out, err = cli(monkeypatch, capsys, "fit", d, "--target", "y", "--test-size", "0")
    assert code == 0 and f"{len(df)} train rows" in out
    assert err.count("warning") == 1 and "sub" in err
    (tmp_path / "only_sub" / "inner").mkdir(parents=True)
    df.to_parquet(tmp_path / "only_sub" / "inner" / "x.parquet", index=False)
    with pytest.warns(UserWarning), pytest.raises(DataError, match="subfolders are not read"):
        TableSource(tmp_path / "only_sub", "y")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .parquet files of its own"):
        TableSource(tmp_path / "empty", "y")


# 4. files of a folder that disagree; duplicate column names


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda f: f.drop(columns="c"), "p1.parquet lacks column 'c', which p0.parquet has"),
        (lambda f: f.assign(z=1.0), "p1.parquet has column 'z', which p0.parquet lacks"),
        (lambda f: f.assign(c="x"), "p1.parquet: column 'c' is large_string there but double"),
    ],
    ids=["missing", "extra", "string"],
)
def test_files_that_disagree_name_the_file_and_column(tmp_path, monkeypatch, capsys, change, match):
    df = make_table()
    df.iloc[:1000].to_parquet(tmp_path / "p0.parquet", index=False)
    change(df.iloc[1000:]).to_parquet(tmp_path / "p1.parquet", index=False)
    with pytest.raises(DataError, match=match):
        TableSource(tmp_path, "y")
    fails(monkeypatch, capsys, match, "fit", tmp_path, "--target", "y")


def test_numeric_types_may_differ_between_files(tmp_path):
    df = make_table()
    df.iloc[:1000].to_parquet(tmp_path / "p0.parquet", index=False)
    df.iloc[1000:].astype({"c": "float32"}).to_parquet(tmp_path / "p1.parquet", index=False)
    assert TableSource(tmp_path, "y").n_rows == len(df)


def test_duplicate_column_names_name_the_file_and_column(tmp_path, monkeypatch, capsys):
    t = pa.table(
        [pa.array([1.0, 2, 3]), pa.array([1.0, 2, 4]), pa.array([1.0, 5, 3])], names=["a", "a", "y"]
    )
    pq.write_table(t, tmp_path / "dup.parquet")
    msg = "dup.parquet has duplicate column names: a"
    with pytest.raises(DataError, match=msg):
        TableSource(tmp_path / "dup.parquet", "y")
    fails(monkeypatch, capsys, msg, "fit", tmp_path / "dup.parquet", "--target", "y", "--stream")
    (tmp_path / "dup.csv").write_text("a,a,y\n1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="dup.csv has duplicate column names: a"):
        TableSource(tmp_path / "dup.csv", "y")


# 5. memory sizes and the memory budget


@pytest.mark.parametrize(
    "text, match",
    [
        ("0.5B", "less than one byte"),
        ("0", "must be positive"),
        ("-1GB", "must be positive"),
        ("nan", "must be a finite size"),
        ("inf", "must be a finite size"),
        ("", "write e.g. 2GB"),
        ("lots", "write e.g. 2GB"),
    ],
)
def test_bad_memory_sizes_are_refused(tmp_path, monkeypatch, capsys, text, match):
    with pytest.raises(ValueError, match=match):
        parse_memory(text)
    make_table().to_parquet(tmp_path / "t.parquet", index=False)
    fit = ["fit", tmp_path / "t.parquet", "--target", "y", "--stream"]
    fails(
        monkeypatch,
        capsys,
        f"--memory-limit: Cannot read the memory size {text!r}",
        *fit,
        f"--memory-limit={text}",
    )
    with pytest.raises(ValueError, match="memory_limit must be a positive number of bytes"):
        TableSource(tmp_path / "t.parquet", "y", memory_limit=0)


PEAK_CHILD = """
import sys
from regtorch.cli import main
code = main(sys.argv[1:])
for line in open("/proc/self/status"):
    if line.startswith("VmHWM"):
        print("PEAK", int(line.split()[1]) * 1024, file=sys.stderr)
sys.exit(code)
"""


def run_peak(*args):
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_CHILD, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    peak = [int(x.split()[1]) for x in proc.stderr.splitlines() if x.startswith("PEAK")]
    return proc, peak[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_memory_budget_holds_for_the_whole_process(tmp_path):
    rng = np.random.default_rng(0)
    n = 200_000  # 9.6 MB of float64 in row groups of 20k rows
    df = pd.DataFrame(rng.normal(size=(n, 5)), columns=[f"f{i}" for i in range(5)])
    df["y"] = df.sum(axis=1) + rng.normal(size=n)
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False),
        tmp_path / "t.parquet",
        row_group_size=20_000,
    )
    fit = ["fit", tmp_path / "t.parquet", "--target", "y", "--stream"]
    proc, _ = run_peak(*fit, "--memory-limit", "64MB")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "too small: this process already holds" in proc.stderr
    least = int(proc.stderr.split("the minimum is ")[1].split()[0])  # MiB
    assert f"use --memory-limit {least}MB or more" in proc.stderr
    budget = least + 16  # MiB: a small budget, close to the minimum
    proc, peak = run_peak(*fit, "--memory-limit", f"{budget}MB")
    assert proc.returncode == 0, proc.stderr
    assert "LinearRegression (streamed" in proc.stdout
    assert peak <= budget * 2**20, (peak / 2**20, budget)
    # a network loads its optimizer's code after the source is sized: checked again then
    mlp = [*fit, "--model", "mlp", "--epochs", "1", "--memory-limit"]
    # a few MiB above the start-up minimum: a process that starts a little larger on a busy
    # machine still gets past the first check, to the network's
    proc, _ = run_peak(*mlp, f"{least + 4}MB")
    assert proc.returncode == 2 and "too small to train a network" in proc.stderr, proc.stderr
    least = int(proc.stderr.split("the minimum is ")[1].split()[0])
    proc, peak = run_peak(*mlp, f"{least + 16}MB")
    assert proc.returncode == 0, proc.stderr
    assert peak <= (least + 16) * 2**20, (peak / 2**20, least + 16)


# 6. many small row groups


@pytest.fixture(scope="module")
def tiny_groups(tmp_path_factory):
    d = tmp_path_factory.mktemp("groups")
    rng = np.random.default_rng(1)
    n = 20_000
    t = pa.table({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    t = t.append_column("y", pa.array(t["a"].to_numpy() - 2 * t["b"].to_numpy() + 1))
    pq.write_table(t, d / "tiny.parquet", row_group_size=1)
    pq.write_table(t, d / "one.parquet")
    return d, n


def test_small_row_groups_are_read_together(tiny_groups):
    d, n = tiny_groups
    src = TableSource(d / "tiny.parquet", "y", batch_rows=4096)
    assert len(src.units) == n  # 20,000 row groups ...
    batches = list(src.batches())
    assert len(batches) <= 8  # ... read in a few batches, not one per group
    assert np.array_equal(np.concatenate([b.rows for b in batches]), np.arange(n))
    est, ref = LinearRegression(), LinearRegression()
    stream_fit_linear(est, src)
    stream_fit_linear(ref, TableSource(d / "one.parquet", "y", batch_rows=4096))
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-12)


@pytest.mark.parametrize("world", [2, 3, 7])
@pytest.mark.parametrize("epoch_seed", [None, 5])
def test_ranks_read_every_row_exactly_once(tiny_groups, monkeypatch, world, epoch_seed):
    d, n = tiny_groups
    src = TableSource(d / "tiny.parquet", "y", batch_rows=1000)
    seen, per_rank = [], []
    for rank in range(world):
        monkeypatch.setattr(streaming, "rank_world", lambda r=rank: (r, world))
        rows = np.concatenate([b.rows for b in src.batches(epoch_seed=epoch_seed)])
        seen.append(rows)
        per_rank.append(len(rows))
        again = np.concatenate([b.rows for b in src.batches(epoch_seed=epoch_seed)])
        assert np.array_equal(rows, again)  # deterministic
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(n))
    assert min(per_rank) > 0  # no idle rank


# 7. errors name the file, column, line and value


def test_a_bad_value_deep_in_a_csv_names_file_line_column_and_value(tmp_path, monkeypatch, capsys):
    df = make_table(n=20_000)
    lines = df.to_csv(index=False).splitlines()
    fields = lines[15_000].split(",")
    fields[1] = "oops"
    lines[15_000] = ",".join(fields)  # data row 14,999: line 15,001 of the file
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    msg = "bad.csv line 15001, column 'b': 'oops' is not a number"
    with pytest.raises(DataError, match=msg):
        stream_fit_linear(LinearRegression(), TableSource(tmp_path / "bad.csv", "y"))
    fails(monkeypatch, capsys, msg, "fit", tmp_path / "bad.csv", "--target", "y", "--stream")


def test_undecodable_bytes_name_file_line_and_column(tmp_path, monkeypatch, capsys):
    df = make_table(n=20_000)
    raw = df.to_csv(index=False).encode().splitlines()
    raw[12_000] = b"0.1,\xff\xfe,0.3,1"
    (tmp_path / "bytes.csv").write_bytes(b"\n".join(raw) + b"\n")
    msg = "bytes.csv line 12001, column 'b': the value holds bytes that are not utf-8 text"
    with pytest.raises(DataError, match=msg):
        stream_fit_linear(LinearRegression(), TableSource(tmp_path / "bytes.csv", "y"))
    fails(monkeypatch, capsys, msg, "fit", tmp_path / "bytes.csv", "--target", "y", "--stream")
    (tmp_path / "head.csv").write_bytes(b"a,\xff,c,y\n1,2,3,4\n5,6,7,8\n")
    fails(
        monkeypatch,
        capsys,
        "head.csv: the header is not utf-8 text",
        "fit",
        tmp_path / "head.csv",
        "--target",
        "y",
        "--stream",
    )
    src = TableSource(tmp_path / "head.csv", "y", encoding="latin-1")  # as told
    assert src.features == ["a", "ÿ", "c"]


def test_missing_values_name_file_column_and_first_line(tmp_path):
    df = make_table()
    df.loc[777, "b"] = np.nan
    df.loc[1500, "a"] = np.nan
    df.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(DataError, match="column 'b' at .*nan.csv line 779;"):
        stream_fit_linear(LinearRegression(), TableSource(tmp_path / "nan.csv", "y"))
    d = tmp_path / "parts"
    d.mkdir()
    df.iloc[:500].to_parquet(d / "p0.parquet", index=False)
    df.iloc[500:].to_parquet(d / "p1.parquet", index=False)
    with pytest.raises(DataError, match="column 'b' at .*p1.parquet row 278;"):
        stream_fit_linear(LinearRegression(), TableSource(d, "y", batch_rows=100))


# 8. hostile files


def test_crlf_and_bom_csv_equals_in_memory(tmp_path):
    df = make_table()
    text = df.to_csv(index=False, lineterminator="\r\n", float_format="%.17g")
    (tmp_path / "win.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    src = TableSource(tmp_path / "win.csv", "y")
    assert src.features == ["a", "b", "c"]
    fit_both(tmp_path / "win.csv", df)
    bad = text.splitlines()
    bad[101] = "1,2,x,4"
    (tmp_path / "win_bad.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(bad).encode() + b"\r\n")
    with pytest.raises(
        DataError, match="column\\(s\\) 'c' \\(e.g. 'x' at .*win_bad.csv line 102\\)"
    ):
        TableSource(tmp_path / "win_bad.csv", "y")


def test_hostile_files_give_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    df = make_table()
    df.to_parquet(tmp_path / "t.parquet", index=False)
    whole = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "trunc.parquet").write_bytes(whole[: len(whole) // 2])
    df.iloc[:0].to_parquet(tmp_path / "zero.parquet", index=False)
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "folder").mkdir()
    df.to_parquet(tmp_path / "folder" / "a.parquet", index=False)
    (tmp_path / "folder" / "b.parquet").write_text("not parquet")
    (tmp_path / "notes").mkdir()
    df.to_parquet(tmp_path / "notes" / "a.parquet", index=False)
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    cases = [
        ("trunc.parquet", "trunc.parquet: not readable as Parquet"),
        ("zero.parquet", "zero.parquet has a header but no data rows."),
        ("empty.csv", "empty.csv is empty"),
        ("folder", "b.parquet: not readable as Parquet"),
    ]
    for name, match in cases:
        fails(monkeypatch, capsys, match, "fit", tmp_path / name, "--target", "y", "--stream")
    with pytest.warns(
        UserWarning, match="skipping 1 file\\(s\\) that are not .parquet: readme.txt"
    ):
        fit_both(tmp_path / "notes", df)


def test_a_file_that_changes_while_read_is_one_line(tmp_path):
    df = make_table()
    pq.write_table(
        pa.Table.from_pandas(df, preserve_index=False), tmp_path / "t.parquet", row_group_size=500
    )
    src = TableSource(tmp_path / "t.parquet", "y", batch_rows=100)
    it = src.batches()
    next(it)
    whole = (tmp_path / "t.parquet").read_bytes()
    (tmp_path / "t.parquet").write_bytes(whole[: len(whole) // 3])  # replaced mid-read
    with pytest.raises(DataError, match="t.parquet: not readable as Parquet"):
        list(it)
