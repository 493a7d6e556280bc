"""The command line does not lie: bad values, odd files and failed writes end in one clear
line naming the place, never in a silent wrong answer, a traceback or invalid JSON."""

import json
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from regtorch.cli import _metrics, main
from regtorch.data import DataError, prepare, read_table


def run(capsys, *args):
    """``regtorch ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def error(capsys, *args):
    """The one error line of a command that must fail with exit code 2."""
    code, out, err = run(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.startswith("regtorch: error:")]
    assert code == 2 and len(lines) == 1, (code, err)
    return lines[0]


def strict_json(text):
    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture()
def table(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n).round(6),
            "b": rng.normal(size=n).round(6),
            "city": rng.choice(["x", "y", "z"], size=n),
        }
    )
    df["y"] = 2 * df.a - df.b + df.city.map({"x": 0.0, "y": 1.0, "z": -1.0})
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    return path, df


def fit(capsys, path, out, *extra):
    code, _, err = run(
        capsys, "fit", path, "--target", "y", "--categorical", "onehot", "--out", out, *extra
    )
    assert code == 0, err
    return out


# ---------------------------------------------------------------- 1. non-finite predictions


def test_nonfinite_predictions_are_an_error_naming_the_rows(capsys, table, tmp_path):
    path, df = table
    model = fit(capsys, path, tmp_path / "m")
    huge = df.head(6).copy()
    huge.loc[[1, 4], "a"] = 1e308  # 2 * 1e308 overflows
    huge.to_csv(tmp_path / "huge.csv", index=False)
    line = error(capsys, "predict", model, tmp_path / "huge.csv", "--out", tmp_path / "p.csv")
    assert "2 of 6 predictions are not finite" in line
    assert "huge.csv lines 3, 6" in line and "--allow-nonfinite" in line
    assert not (tmp_path / "p.csv").exists()
    code, _, _ = run(
        capsys,
        "predict",
        model,
        tmp_path / "huge.csv",
        "--out",
        tmp_path / "p.csv",
        "--allow-nonfinite",
    )
    assert code == 0
    pred = pd.read_csv(tmp_path / "p.csv")["y_pred"]
    assert np.isinf(pred[[1, 4]]).all() and np.isfinite(pred.drop([1, 4])).all()
    line = error(capsys, "evaluate", model, tmp_path / "huge.csv", "--json")
    assert "2 of 6 predictions are not finite" in line and "huge.csv lines 3, 6" in line
    code, out, _ = run(
        capsys, "evaluate", model, tmp_path / "huge.csv", "--json", "--allow-nonfinite"
    )
    m = strict_json(out)
    assert code == 0 and m["mse"] is None and "non-finite" in m["mse_note"]


def test_allow_nonfinite_is_documented(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "--allow-nonfinite" in capsys.readouterr().out


# ---------------------------------------------------------------- 2. missing text is missing


def test_missing_text_value_is_missing_not_a_category(capsys, table, tmp_path):
    path, df = table
    t = df.copy()
    t.loc[[5, 9], "city"] = None
    t.to_csv(tmp_path / "blank.csv", index=False)
    line = error(capsys, "fit", tmp_path / "blank.csv", "--target", "y", "--categorical", "onehot")
    assert "Missing or infinite values in column(s) 'city' (2)" in line
    assert "blank.csv lines 7, 11" in line and "--missing drop" in line
    model = fit(capsys, tmp_path / "blank.csv", tmp_path / "m", "--missing", "drop")
    code, out, _ = run(capsys, "summary", model)
    assert code == 0 and "city=" not in out.replace("city=y", "").replace("city=z", "")
    # at predict time too: a blank category is an error naming the line, not the reference level
    line = error(capsys, "predict", model, tmp_path / "blank.csv", "--out", tmp_path / "p.csv")
    assert "'city' (2)" in line and "blank.csv lines 7, 11" in line


def test_prepare_drops_rows_missing_in_any_column_type():
    df = pd.DataFrame(
        {"a": [1.0, np.nan, 3.0, 4.0, 5.0], "c": ["u", "v", " ", None, "u"], "y": [1.0] * 5}
    )
    with pytest.raises(DataError, match=r"'a' \(1\), 'c' \(2\) at rows 2, 3, 4"):
        prepare(df, "y", categorical="onehot")
    X, y, enc, kept = prepare(df, "y", categorical="onehot", missing="drop")
    assert kept.tolist() == [True, False, False, False, True]
    assert enc.categories == {"c": ["u"]} and X.shape == (2, 1)


# ---------------------------------------------------------------- 3. almost-numeric columns


def test_typo_in_numeric_column_is_an_error_not_thousands_of_indicators(capsys, table, tmp_path):
    path, df = table
    t = df.astype({"a": str})
    t.loc[57, "a"] = "3.2x"
    t.to_csv(tmp_path / "typo.csv", index=False)
    for mode in ("onehot", "error"):
        line = error(capsys, "fit", tmp_path / "typo.csv", "--target", "y", "--categorical", mode)
        assert "Column 'a' holds numbers except for 1 value(s): '3.2x'" in line
        assert "typo.csv line 59" in line


def test_codes_with_few_values_stay_categories():
    df = pd.DataFrame({"code": ["1", "2", "A"] * 10, "y": np.arange(30.0)})
    _, _, enc, _ = prepare(df, "y", categorical="onehot")
    assert enc.categories == {"code": ["1", "2", "A"]}


# ---------------------------------------------------------------- 4. strict JSON metrics


def test_metrics_are_strict_json_with_the_reason():
    m = _metrics(np.full(5, 3.0), np.array([3.0, 3.1, 2.9, 3.0, 3.0]))
    assert m["r2"] is None and m["r2_note"] == "undefined: constant target"
    assert m["mse"] == pytest.approx(0.004)
    m = _metrics(np.array([0.0, 1.0, 2.0]), np.array([1e200, 0.0, 2.0]))
    assert m["mse"] is None and m["mse_note"] == "overflow"
    assert m["mae"] == pytest.approx(1e200 / 3)
    strict_json(json.dumps(m, allow_nan=False))


def test_constant_target_fit_and_evaluate_write_strict_json(capsys, tmp_path):
    rng = np.random.default_rng(0)
    pd.DataFrame({"a": rng.normal(size=30), "y": np.full(30, 5.0)}).to_csv(
        tmp_path / "c.csv", index=False
    )
    code, out, _ = run(capsys, "fit", tmp_path / "c.csv", "--target", "y", "--out", tmp_path / "m")
    assert code == 0 and "undefined: constant target" in out
    record = strict_json((tmp_path / "m" / "metrics.json").read_text())
    assert record["metrics"]["model"]["r2"] is None
    assert record["metrics"]["model"]["r2_note"] == "undefined: constant target"
    code, out, _ = run(capsys, "evaluate", tmp_path / "m", tmp_path / "c.csv", "--json")
    assert code == 0 and strict_json(out)["r2_note"] == "undefined: constant target"


# ---------------------------------------------------------------- 5. stdout closed or cut


@pytest.fixture()
def many(capsys, table, tmp_path):
    """A model and a table whose predictions fill several pipe buffers."""
    path, df = table
    model = fit(capsys, path, tmp_path / "m")
    big = pd.concat([df] * 200, ignore_index=True)  # 24,000 rows, ~0.5 MB of predictions
    big.to_csv(tmp_path / "big.csv", index=False)
    return model, tmp_path / "big.csv"


def test_closed_stdout_is_an_error(many):
    model, data = many
    proc = subprocess.run(
        [sys.executable, "-m", "regtorch", "predict", str(model), str(data), "--out", "-"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        preexec_fn=lambda: __import__("os").close(1),  # stdout closed, as `>&-` does
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "regtorch: error: standard output is closed; nothing was written (give --out FILE)."
    )


def test_reader_leaving_early_ends_quietly_with_141(many):
    model, data = many
    proc = subprocess.Popen(
        [sys.executable, "-m", "regtorch", "predict", str(model), str(data), "--out", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline() == b"y_pred\n"  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141
    assert err == ""


def test_full_device_is_an_error(many):
    model, data = many
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "regtorch", "predict", str(model), str(data), "--out", "-"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 2
    assert "could not write to standard output" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- 6. category codes at predict


def test_category_codes_are_read_as_text_at_predict_time(capsys, tmp_path):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"a": rng.normal(size=60), "code": rng.choice(["1", "2", "A"], size=60)})
    df["y"] = 2 * df.a + df.code.map({"1": 0.0, "2": 1.0, "A": -1.0})
    df.to_csv(tmp_path / "codes.csv", index=False)
    model = fit(capsys, tmp_path / "codes.csv", tmp_path / "m")
    new = df[df.code != "A"].head(6)
    new.drop(columns="y").to_csv(tmp_path / "new.csv", index=False)  # reads as numbers
    code, out, err = run(capsys, "predict", model, tmp_path / "new.csv", "--out", "-")
    assert code == 0, err
    pred = pd.read_csv(pd.io.common.StringIO(out))["y_pred"].to_numpy()
    np.testing.assert_allclose(pred, new.y.to_numpy(), atol=1e-8)
    # the same codes from a Parquet file of floats (a null made them float64)
    par = new.drop(columns="y").assign(code=new.code.astype(float))
    par.to_parquet(tmp_path / "new.parquet")
    code, out, _ = run(capsys, "predict", model, tmp_path / "new.parquet", "--out", "-")
    assert code == 0
    np.testing.assert_allclose(pd.read_csv(pd.io.common.StringIO(out))["y_pred"], pred)
    blank = new.drop(columns="y").copy()
    blank.iloc[2, 1] = None
    blank.to_csv(tmp_path / "blank.csv", index=False)
    line = error(capsys, "predict", model, tmp_path / "blank.csv", "--out", "-")
    assert "'code' (1) at" in line and "blank.csv line 4" in line and "1.0" not in line


# ---------------------------------------------------------------- 7. messages name the place


def test_bad_text_value_names_file_line_and_value(capsys, table, tmp_path):
    path, df = table
    t = df.astype({"b": object})
    t.loc[100, "b"] = "oops"
    t.loc[101, "b"] = "oops again"
    t.to_csv(tmp_path / "deep.csv", index=False)
    line = error(capsys, "fit", tmp_path / "deep.csv", "--target", "y", "--features", "a,b")
    assert "Column 'b' holds numbers except for 2 value(s): 'oops', 'oops again' at" in line
    assert "deep.csv lines 102, 103" in line
    line = error(capsys, "fit", tmp_path / "deep.csv", "--target", "y", "--features", "a,city")
    first = df.city[0]
    assert f"Non-numeric feature column(s): 'city' (e.g. '{first}' at" in line
    assert "deep.csv line 2)" in line
    # a target with a text value
    line = error(capsys, "fit", tmp_path / "deep.csv", "--target", "b", "--features", "a")
    assert "Target column 'b' is not numeric ('oops' at" in line and "line 102" in line


def test_bad_value_in_parquet_and_npz_names_the_row(capsys, table, tmp_path):
    path, df = table
    t = df.astype({"b": str})
    t.loc[30, "b"] = "oops"
    t.to_parquet(tmp_path / "t.parquet")
    line = error(capsys, "fit", tmp_path / "t.parquet", "--target", "y", "--features", "a,b")
    assert "'oops' at" in line and "t.parquet row 31" in line
    np.savez(tmp_path / "t.npz", a=df.a.to_numpy(), b=np.array(t.b.tolist(), dtype=str), y=df.y)
    line = error(capsys, "fit", tmp_path / "t.npz", "--target", "y")
    assert "'oops' at" in line and "t.npz row 31" in line


def test_undecodable_bytes_name_file_line_and_column(capsys, tmp_path):
    rows = "".join(f"{i},{i % 3},{2 * i}\n" for i in range(40))
    raw = ("a,b,y\n" + rows).encode().replace(b"7,1,14", b"7,caf\xe9,14")
    (tmp_path / "latin.csv").write_bytes(raw)
    line = error(capsys, "fit", tmp_path / "latin.csv", "--target", "y", "--categorical", "onehot")
    assert "latin.csv line 9, column 'b'" in line and "not valid utf-8" in line
    assert "--encoding" in line
    code, out, _ = run(
        capsys,
        "fit",
        tmp_path / "latin.csv",
        "--target",
        "y",
        "--features",
        "a",
        "--encoding",
        "latin-1",
    )
    assert code == 0


def test_unknown_encoding_is_a_one_line_error(capsys, table, tmp_path):
    path, _ = table
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(path), "--target", "y", "--encoding", "klingon"])
    assert exc.value.code == 2
    assert "unknown text encoding 'klingon'" in capsys.readouterr().err
    with pytest.raises(DataError, match="--encoding klingon: unknown text encoding"):
        read_table(path, encoding="klingon")
    # the streamed reader reads UTF-8 only: refused, not misread
    line = error(capsys, "fit", path, "--target", "y", "--stream", "--encoding", "latin-1")
    assert "the streamed reader reads UTF-8 only" in line


# ---------------------------------------------------------------- 8. lying NumPy and Parquet files


def _npy(path, header_dict, body=b"\0" * 64):
    header = repr(header_dict).encode()
    header += b" " * (118 - len(header)) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body)
    return path


def test_npy_header_claiming_80_tb_is_refused_before_allocating(capsys, tmp_path):
    bad = _npy(tmp_path / "huge.npy", {"descr": "<f8", "fortran_order": False, "shape": (10**13,)})
    line = error(capsys, "fit", bad, "--target", "x0")
    assert "huge.npy is not a readable NumPy file: its header declares a float64 array" in line
    assert "shape (10000000000000,) (72.8 TiB) but it holds only 64 bytes" in line
    # the same header inside an .npz
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as zf:
        zf.writestr("a.npy", bad.read_bytes())
    line = error(capsys, "fit", tmp_path / "huge.npz", "--target", "a")
    assert "huge.npz:a.npy is not a readable NumPy file: its header declares" in line


def test_not_a_numpy_file(capsys, tmp_path):
    (tmp_path / "x.npy").write_bytes(b"hello, world\n1,2\n")
    line = error(capsys, "fit", tmp_path / "x.npy", "--target", "x0")
    assert "x.npy is not a NumPy .npy file" in line


def test_parquet_with_duplicate_column_names(capsys, tmp_path):
    a = pa.array([1.0, 2.0, 3.0])
    pq.write_table(pa.table([a, a, a], names=["x", "x", "y"]), tmp_path / "dup.parquet")
    line = error(capsys, "fit", tmp_path / "dup.parquet", "--target", "y")
    assert "dup.parquet has duplicate column names: x" in line


# ---------------------------------------------------------------- 9. one-hot size


def test_onehot_design_over_the_limit_is_refused_with_its_size(capsys, table, monkeypatch):
    path, _ = table
    monkeypatch.setenv("REGTORCH_MAX_DESIGN_BYTES", "1000")
    line = error(capsys, "fit", path, "--target", "y", "--categorical", "onehot")
    assert "would take 3.8 KiB (120 rows x 4 columns x 8 bytes)" in line
    assert "limit of 1000 bytes" in line and "REGTORCH_MAX_DESIGN_BYTES" in line


def test_50000_levels_fail_fast_with_the_message(capsys, tmp_path, monkeypatch):
    n = 50_000
    rng = np.random.default_rng(0)
    ids = [f"id{i:05d}" for i in range(n)]
    pd.DataFrame({"id": ids, "a": rng.normal(size=n), "y": rng.normal(size=n)}).to_csv(
        tmp_path / "ids.csv", index=False
    )
    t0 = time.perf_counter()
    line = error(capsys, "fit", tmp_path / "ids.csv", "--target", "y", "--categorical", "onehot")
    assert "more than --max-levels 1000 distinct values: 'id' (50000)" in line
    # with the cap raised, the size check refuses 18.6 GiB before allocating anything
    monkeypatch.setenv("REGTORCH_MAX_DESIGN_BYTES", str(2**30))
    line = error(
        capsys,
        "fit",
        tmp_path / "ids.csv",
        "--target",
        "y",
        "--categorical",
        "onehot",
        "--max-levels",
        "100000",
    )
    assert "would take 18.6 GiB (50000 rows x 50000 columns x 8 bytes)" in line
    assert "column 'id' alone has 50000 levels" in line
    del t0  # fast by construction: no allocation happens (no timed assertion)


# ---------------------------------------------------------------- odd files


def test_bom_crlf_quoted_numbers_and_utf16_read_right(tmp_path):
    text = 'a,b,y\r\n"1",2,5\r\n"3",4,11\r\n"5",1,11\r\n"2",2,6\r\n'
    (tmp_path / "bom.csv").write_bytes(text.encode("utf-8-sig"))
    (tmp_path / "u16.csv").write_bytes(text.encode("utf-16"))
    for name in ("bom.csv", "u16.csv"):
        df = read_table(tmp_path / name)
        assert list(df.columns) == ["a", "b", "y"], name
        X, y, _, _ = prepare(df, "y")
        np.testing.assert_array_equal(X, [[1, 2], [3, 4], [5, 1], [2, 2]])


def test_extreme_magnitudes(capsys, tmp_path):
    (tmp_path / "big.csv").write_text("a,y\n1e308,1\n-1e308,2\n1e-320,3\n1e309,4\n")
    df = read_table(tmp_path / "big.csv")
    line = error(capsys, "fit", tmp_path / "big.csv", "--target", "y")
    assert "'a' (1) at" in line and "big.csv line 5" in line  # 1e309 is inf: not a number
    X, _, _, _ = prepare(df, "y", missing="drop")
    assert X[:, 0].tolist() == [1e308, -1e308, 1e-320]


def test_header_only_and_all_blank_column(capsys, tmp_path):
    (tmp_path / "h.csv").write_text("a,b,y\r\n")
    assert "header but no data rows" in error(capsys, "fit", tmp_path / "h.csv", "--target", "y")
    (tmp_path / "blank.csv").write_text("a,b,y\n1,,2\n2,,3\n3,,5\n4,,4\n")
    line = error(capsys, "fit", tmp_path / "blank.csv", "--target", "y")
    assert "Feature column(s) 'b' have no values (all missing)" in line


def test_complex_numbers_are_not_silently_made_real(capsys, tmp_path):
    np.savez(tmp_path / "c.npz", a=np.array([1 + 2j, 2, 3, 4]), y=np.array([1.0, 2, 3, 5]))
    line = error(capsys, "fit", tmp_path / "c.npz", "--target", "y")
    assert "Non-numeric feature column(s): 'a'" in line


def test_ragged_row_and_bad_separator_are_named(capsys, tmp_path):
    (tmp_path / "r.csv").write_text("a,b,y\n1,2,3\n4,5,6,7\n7,8,9\n1,1,1\n")
    line = error(capsys, "fit", tmp_path / "r.csv", "--target", "y")
    assert "r.csv could not be parsed as CSV with delimiter ',' (line 3)" in line
    (tmp_path / "s.csv").write_text("a;b;y\n1;2;3\n4;5;6\n7;8;10\n1;1;1\n")
    line = error(capsys, "fit", tmp_path / "s.csv", "--target", "y", "--sep", ";;")
    assert "--sep ';;': give one character" in line
    (tmp_path / "t.txt").write_text("a\tb\ty\n1\t2\t3\n4\t5\t6\n7\t8\t10\n1\t1\t1\n")
    assert list(read_table(tmp_path / "t.txt", sep="\\t").columns) == ["a", "b", "y"]


def test_json_output_is_strict():
    from regtorch.cli import _json

    text = _json({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    assert strict_json(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


def test_models_fitted_with_a_blank_level_still_predict():
    from regtorch.data import Encoder

    enc = Encoder(["c"], {"c": ["", "u", "v"]})  # blank was a level before missing was missing
    X = enc.transform(pd.DataFrame({"c": ["u", None, "v", ""]}))
    np.testing.assert_array_equal(X, [[1, 0], [0, 0], [0, 1], [0, 0]])


def test_onehot_after_many_columns_lands_in_the_right_column():
    from regtorch.data import Encoder

    feats = [f"n{i}" for i in range(200)] + ["c"]
    df = pd.DataFrame({f: [0.0, 0.0, 0.0] for f in feats[:-1]} | {"c": ["u", "v", "w"]})
    enc = Encoder(feats, {"c": ["u", "v", "w"]})
    X = enc.transform(df)
    assert X.shape == (3, 202)
    np.testing.assert_array_equal(X[:, 200:], [[0, 0], [1, 0], [0, 1]])
    assert X[:, :200].sum() == 0


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--solver", "adam", "--lr", "0"], "learning_rate"),
        (["--model", "mlp", "--lr", "0"], "learning_rate_init"),
        (["--model", "mlp", "--epochs", "0"], "max_epochs"),
    ],
)
def test_zero_learning_rate_or_epochs_is_refused_not_replaced_by_the_default(
    capsys, table, flags, needle
):
    path, _ = table
    line = error(capsys, "fit", path, "--target", "y", "--features", "a,b", *flags)
    assert needle in line


def test_a_seed_beyond_64_bits_is_refused_at_parse_time(capsys, table):
    path, _ = table
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(path), "--target", "y", "--seed", str(2**64)])
    assert exc.value.code == 2
    assert "non-negative integer below 2**63" in capsys.readouterr().err


def test_a_network_too_large_for_memory_is_refused_before_it_is_built(capsys, table):
    path, _ = table
    line = error(
        capsys,
        "fit",
        path,
        "--target",
        "y",
        "--features",
        "a,b",
        "--model",
        "mlp",
        "--hidden",
        "100000,100000",
        "--epochs",
        "1",
    )
    assert "10,000,500,001 parameters" in line and "choose smaller hidden layers" in line


@pytest.mark.parametrize("command", ["summary", "fit"])
def test_closed_stdout_is_an_error_for_summary_and_fit_without_out(many, command):
    model, data = many
    args = ["summary", str(model)] if command == "summary" else ["fit", str(data), "--target", "y"]
    proc = subprocess.run(
        [sys.executable, "-m", "regtorch", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        preexec_fn=lambda: __import__("os").close(1),  # stdout closed, as `>&-` does
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("regtorch: error: standard output is closed")


def test_fit_piped_into_head_still_writes_its_model(table, tmp_path):
    path, _ = table
    dest = tmp_path / "m"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "regtorch",
            "fit",
            str(path),
            "--target",
            "y",
            "--features",
            "a,b",
            "--out",
            str(dest),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**__import__("os").environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout.readline().startswith(b"LinearRegression on")  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) in (0, 141), err  # 141 once a line meets the closed pipe
    assert "Traceback" not in err
    assert (dest / "model.safetensors").exists() and (dest / "metrics.json").exists()
