"""The command line end to end (real subprocesses), and its bad-input matrix."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import regtorch
from regtorch.data import read_table
from regtorch.io import ModelFileError
from tests.test_plotting import _valid_png

REPO = Path(__file__).resolve().parents[1]


def run(*args, cwd=None):
    proc = subprocess.run(
        [sys.executable, "-m", "regtorch", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    return proc


def ok(*args, cwd=None):
    proc = run(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def fails(match, *args, cwd=None):
    proc = run(*args, cwd=cwd)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("regtorch: error:")]
    assert len(lines) == 1, proc.stderr
    assert match in lines[0], lines[0]
    return proc


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    n = 300
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "c": rng.uniform(0, 3, size=n),
            "city": rng.choice(["x", "y", "z"], size=n),
        }
    )
    df["y"] = (
        2 * df.a
        - df.b
        + np.sin(df.c)
        + df.city.map({"x": 0.0, "y": 1.0, "z": -1.0})
        + 0.1 * rng.normal(size=n)
    )
    df.to_csv(d / "t.csv", index=False)
    df.to_parquet(d / "t.parquet", index=False)
    df.to_csv(d / "t_semicolon.csv", index=False, sep=";")
    return d, df


MODELS = [
    ("linear", []),
    ("ridge", ["--alpha", "0.5"]),
    ("lasso", ["--alpha", "0.01"]),
    ("elasticnet", ["--alpha", "0.01"]),
    ("mlp", ["--hidden", "16,16", "--epochs", "60"]),
    ("linear", ["--solver", "lbfgs"]),
]


CASES = [("csv", m, e) for m, e in MODELS] + [("parquet", m, e) for m, e in MODELS[::4]]


@pytest.mark.parametrize("fmt, model, extra", CASES)
def test_fit_predict_evaluate(table, tmp_path, fmt, model, extra):
    d, df = table
    data = d / f"t.{fmt}"
    out = tmp_path / "out"
    fit = ok(
        "fit",
        data,
        "--target",
        "y",
        "--categorical",
        "onehot",
        "--model",
        model,
        *extra,
        "--out",
        out,
    )
    assert "test metrics" in fit.stdout and "baseline (scikit-learn LinearRegression)" in fit.stdout
    files = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "metrics.json",
        "pred_vs_true.png",
        "residuals.png",
        "report.html",
    } <= files
    if model == "mlp" or "lbfgs" in extra:
        assert "loss_curves.png" in files
    for png in out.glob("*.png"):
        _valid_png(png)
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == len(list(out.glob("*.png")))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["model"]["r2"] > 0.8
    # predictions from the CLI equal the saved model's, loaded in Python
    pred_file = tmp_path / f"pred.{fmt}"
    ok("predict", out, data, "--out", pred_file)
    cli_pred = read_table(pred_file)["y_pred"].to_numpy()
    est = regtorch.load(out / "model.safetensors")
    from regtorch.data import Encoder

    enc = Encoder.from_dict(est.model_extra_["encoder"])
    X = pd.DataFrame(enc.transform(df), columns=enc.output_names)
    np.testing.assert_allclose(cli_pred, est.predict(X), rtol=1e-12)
    ev = ok("evaluate", out, data, "--json")
    m = json.loads(ev.stdout)
    assert m["r2"] == pytest.approx(1 - np.mean((df.y - cli_pred) ** 2) / np.var(df.y), rel=1e-9)
    summ = ok("summary", out / "model.safetensors")
    assert ("MLP 5 -> 16 -> 16 -> 1" in summ.stdout) if model == "mlp" else ("a " in summ.stdout)


def test_saved_model_predicts_exactly_what_the_in_memory_model_predicted(tmp_path):
    X = pd.DataFrame(np.random.default_rng(1).normal(size=(200, 4)), columns=list("pqrs"))
    y = X.p * 3 + np.cos(X.q)
    for est in [
        regtorch.LinearRegression(),
        regtorch.Ridge(alpha=2.0),
        regtorch.Lasso(alpha=0.01),
        regtorch.ElasticNet(alpha=0.01),
        regtorch.MLPRegressor(random_state=0, max_epochs=30),
        regtorch.LinearRegression(solver="adam", max_iter=50),
    ]:
        est.fit(X, y)
        path = regtorch.save(est, tmp_path / f"{type(est).__name__}.safetensors")
        again = regtorch.load(path)
        np.testing.assert_array_equal(again.predict(X), est.predict(X))
        assert type(again) is type(est) and again.get_params() == est.get_params()
        assert list(again.feature_names_in_) == list("pqrs")
    ols = regtorch.LinearRegression().fit(X, y)
    again = regtorch.load(regtorch.save(ols, tmp_path / "ols.safetensors"))
    np.testing.assert_array_equal(again.summary().bse, ols.summary().bse)


def test_semicolon_csv_is_sniffed_and_sep_flag(table, tmp_path):
    d, _ = table
    ok("fit", d / "t_semicolon.csv", "--target", "y", "--features", "a,b,c", "--no-baseline")
    ok("fit", d / "t_semicolon.csv", "--target", "y", "--features", "a,b,c", "--sep", ";")


def test_npy_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(50, 3))
    A[:, 2] = A[:, 0] - A[:, 1]
    np.save(tmp_path / "t.npy", A)
    ok("fit", tmp_path / "t.npy", "--target", "x2", "--no-baseline")
    np.savez(tmp_path / "t.npz", u=A[:, 0], v=A[:, 1], w=A[:, 2])
    ok("fit", tmp_path / "t.npz", "--target", "w")


def test_help_is_fast_and_lazy():
    import time

    t0 = time.perf_counter()
    proc = run("--help")
    assert proc.returncode == 0 and "fit" in proc.stdout and "predict" in proc.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, regtorch.cli as c; c.build_parser();"
            "print(sorted(m for m in ('torch', 'sklearn', 'matplotlib', 'pyarrow', 'pandas') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == "[]"
    assert time.perf_counter() - t0 < 5  # generous: the point is no heavy import (asserted above)


def test_missing_drop_and_unknown_category(table, tmp_path):
    d, df = table
    bad = df.copy()
    bad.loc[[3, 7], "a"] = np.nan
    bad.to_csv(tmp_path / "nan.csv", index=False)
    fails(
        "Missing or infinite values in column(s) 'a' (2)",
        "fit",
        tmp_path / "nan.csv",
        "--target",
        "y",
        "--categorical",
        "onehot",
    )
    ok(
        "fit",
        tmp_path / "nan.csv",
        "--target",
        "y",
        "--categorical",
        "onehot",
        "--missing",
        "drop",
        "--out",
        tmp_path / "m",
    )
    new = df.head(5).copy()
    new.loc[0, "city"] = "atlantis"
    new.to_csv(tmp_path / "new.csv", index=False)
    fails(
        "categories not seen in training: atlantis",
        "predict",
        tmp_path / "m",
        tmp_path / "new.csv",
        "--out",
        tmp_path / "p.csv",
    )
    assert not (tmp_path / "p.csv").exists()
    ok(
        "predict",
        tmp_path / "m",
        tmp_path / "new.csv",
        "--out",
        tmp_path / "p.csv",
        "--unknown-category",
        "ignore",
    )
    assert len(pd.read_csv(tmp_path / "p.csv")) == 5


def _write(path, text):
    Path(path).write_text(text)
    return path


def test_bad_input_matrix(table, tmp_path):
    d, df = table
    csv = d / "t.csv"
    fails("no such file", "fit", tmp_path / "nope.csv", "--target", "y")
    fails(
        "unknown file type '.xlsx'",
        "fit",
        _write(tmp_path / "t.xlsx", "a,b\n1,2\n"),
        "--target",
        "b",
    )
    fails("is empty", "fit", _write(tmp_path / "empty.csv", ""), "--target", "y")
    fails(
        "header but no data rows", "fit", _write(tmp_path / "head.csv", "a,b,y\n"), "--target", "y"
    )
    proc = fails(
        "Target column 'price' not found; the columns are: 'a', 'b', 'c', 'city', 'y'",
        "fit",
        csv,
        "--target",
        "price",
    )
    fails("Target column 'city' is not numeric", "fit", csv, "--target", "city")
    fails("Non-numeric feature column(s): 'city'", "fit", csv, "--target", "y")
    t = df.copy()
    t.loc[5, "y"] = np.inf
    t.to_csv(tmp_path / "inf.csv", index=False)
    fails(
        "Missing or infinite values in column(s) 'y' (1)",
        "fit",
        tmp_path / "inf.csv",
        "--target",
        "y",
        "--features",
        "a,b",
    )
    fails("at least 3", "fit", _write(tmp_path / "one.csv", "a,y\n1,2\n"), "--target", "y")
    fails(
        "duplicate column names: a",
        "fit",
        _write(tmp_path / "dup.csv", "a,a,y\n1,2,3\n4,5,6\n"),
        "--target",
        "y",
    )
    fails("write .csv or .parquet", "predict", tmp_path / "none", csv, "--out", tmp_path / "p.txt")
    del proc


def test_fewer_rows_than_features_and_constant_target(tmp_path):
    rng = np.random.default_rng(0)
    wide = pd.DataFrame(rng.normal(size=(12, 20)), columns=[f"f{i}" for i in range(20)])
    wide["y"] = rng.normal(size=12)
    wide.to_csv(tmp_path / "wide.csv", index=False)
    proc = ok("fit", tmp_path / "wide.csv", "--target", "y", "--no-baseline")
    assert "regtorch: warning: The design matrix is rank deficient" in proc.stderr
    const = pd.DataFrame({"a": rng.normal(size=30), "y": np.full(30, 5.0)})
    const.to_csv(tmp_path / "const.csv", index=False)
    proc = ok("fit", tmp_path / "const.csv", "--target", "y", "--out", tmp_path / "c")
    assert "undefined" in proc.stdout
    assert (
        json.loads((tmp_path / "c" / "metrics.json").read_text())["metrics"]["model"]["r2"] is None
    )


def test_model_file_problems(table, tmp_path):
    d, df = table
    out = tmp_path / "m"
    ok("fit", d / "t.csv", "--target", "y", "--features", "a,b,c", "--out", out)
    model = out / "model.safetensors"
    before = model.read_bytes()
    fails(
        "exists; use --force",
        "fit",
        d / "t.csv",
        "--target",
        "y",
        "--features",
        "a,b",
        "--out",
        out,
    )
    assert model.read_bytes() == before
    data = model.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-40])
    fails(
        "not a valid regtorch model file",
        "predict",
        tmp_path / "cut.safetensors",
        d / "t.csv",
        "--out",
        "-",
    )
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    fails("not a valid regtorch model file", "summary", tmp_path / "bad.safetensors")
    est = regtorch.load(model)
    _tamper(tmp_path / "shape.safetensors", est, coef=np.zeros((1, 5)))
    fails(
        "tensor coef has shape [1, 5]",
        "predict",
        tmp_path / "shape.safetensors",
        d / "t.csv",
        "--out",
        "-",
    )
    _tamper(tmp_path / "nan.safetensors", est, coef=np.array([[np.nan, 1.0, 2.0]]))
    fails("NaN or infinite", "predict", tmp_path / "nan.safetensors", d / "t.csv", "--out", "-")
    _tamper(tmp_path / "cls.safetensors", est, cls="subprocess.Popen")
    fails("declares class 'subprocess.Popen'", "summary", tmp_path / "cls.safetensors")
    df[["a", "b"]].to_csv(tmp_path / "lack.csv", index=False)
    fails("lack column(s) the model needs: c", "predict", out, tmp_path / "lack.csv", "--out", "-")


def _tamper(path, est, coef=None, cls=None):
    """Rewrite a model file with altered metadata or tensors, keeping it well-formed."""
    import json as _json

    from safetensors import safe_open
    from safetensors.torch import save_file

    src = regtorch.save(est, str(path) + ".orig")
    with safe_open(src, "pt") as fh:
        meta = _json.loads(fh.metadata()["regtorch"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    import torch

    if coef is not None:
        tensors["coef"] = torch.as_tensor(coef, dtype=torch.float64)
        if not np.isnan(coef).any():
            pass  # shape changes only; the metadata keep the old shape
        else:
            meta["tensors"]["coef"]["shape"] = list(coef.shape)
    if cls is not None:
        meta["class"] = cls
    save_file(tensors, path, metadata={"regtorch": _json.dumps(meta)})


def test_crafted_model_file_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    import pickle
    import struct

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    # 1. a pickle disguised as a model file
    (tmp_path / "pickle.safetensors").write_bytes(pickle.dumps(Evil()))
    # 2. a well-formed safetensors file whose metadata name a dangerous class and carry code
    meta = {
        "format": "regtorch-model",
        "format_version": 1,
        "class": "os.system",
        "params": {"command": f"touch {marker}"},
        "attributes": {},
        "tensors": {},
        "extra": {"__reduce__": "os.system"},
    }
    header = json.dumps({"__metadata__": {"regtorch": json.dumps(meta)}}).encode()
    (tmp_path / "crafted.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ModelFileError):
        regtorch.load(tmp_path / "pickle.safetensors")
    with pytest.raises(ModelFileError, match="declares class 'os.system'"):
        regtorch.load(tmp_path / "crafted.safetensors")
    fails("not a valid regtorch model file", "summary", tmp_path / "pickle.safetensors")
    fails(
        "declares class 'os.system'",
        "predict",
        tmp_path / "crafted.safetensors",
        tmp_path / "pickle.safetensors",
        "--out",
        "-",
    )
    assert not marker.exists()


def test_report_renders_its_images_in_headless_chromium(table, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (CI installs it)")
    d, _ = table
    out = tmp_path / "r"
    ok(
        "fit",
        d / "t.csv",
        "--target",
        "y",
        "--model",
        "mlp",
        "--epochs",
        "30",
        "--categorical",
        "onehot",
        "--out",
        out,
    )
    page = (out / "report.html").read_text()
    # a probe script appended to a copy: the title reports how many images decoded
    probe = page.replace(
        "</body>",
        "<script>window.addEventListener('load', () => {"
        "const imgs = [...document.images];"
        "document.title = 'loaded ' + imgs.filter(i => i.complete && i.naturalWidth > 100).length"
        " + ' of ' + imgs.length;});</script></body>",
    )
    (out / "probe.html").write_text(probe)
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            (out / "probe.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "<title>loaded 3 of 3</title>" in proc.stdout, proc.stdout[:300]


def test_more_bad_inputs(table, tmp_path):
    d, df = table
    csv = d / "t.csv"
    fails(
        "Target column 'y' has no values",
        "fit",
        _write(tmp_path / "ynan.csv", "a,y\n1,\n2,\n3,\n"),
        "--target",
        "y",
    )
    fails(
        "cannot be both a feature and the target", "fit", csv, "--target", "y", "--features", "a,y"
    )
    fails(
        "The feature column(s) 'a' are given twice",
        "fit",
        csv,
        "--target",
        "y",
        "--features",
        "a,a",
    )
    fails("The target column(s) 'y' are given twice", "fit", csv, "--target", "y,y")
    np.save(tmp_path / "ok.npy", np.ones((5, 3)))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "ok.npy").read_bytes()[:-20])
    fails("not a readable NumPy file", "fit", tmp_path / "cut.npy", "--target", "x0")
    fails(
        "Only one column was read: wrong --sep?",
        "fit",
        d / "t_semicolon.csv",
        "--target",
        "y",
        "--sep",
        ",",
    )
    for flag, value, msg in [
        ("--batch-size", "abc", "positive integer or 'full'"),
        ("--seed", "-1", "non-negative integer"),
        ("--test-size", "2", "expected a number in [0, 1)"),
    ]:
        proc = run("fit", csv, "--target", "y", flag, value)
        assert proc.returncode == 2 and msg in proc.stderr and "Traceback" not in proc.stderr


def test_tampered_parameters_are_refused(table, tmp_path):
    d, _ = table
    ok(
        "fit",
        d / "t.csv",
        "--target",
        "y",
        "--features",
        "a,b,c",
        "--model",
        "mlp",
        "--epochs",
        "5",
        "--out",
        tmp_path / "m",
    )
    est = regtorch.load(tmp_path / "m" / "model.safetensors")
    import json as _json

    from safetensors import safe_open
    from safetensors.torch import save_file

    for edit, msg in [
        (lambda m: m["params"].update(activation="tanh"), "do not describe the network"),
        (lambda m: m["params"].update(fit_intercept="no"), "parameter"),
        (lambda m: m["attributes"].update(best_epoch_=10**6), "best_epoch_"),
        (lambda m: m.update(extra=[]), "'extra' metadata"),
        (lambda m: m["extra"]["encoder"].pop("features"), "encoder"),
    ]:
        with safe_open(tmp_path / "m" / "model.safetensors", "pt") as fh:
            meta = _json.loads(fh.metadata()["regtorch"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        edit(meta)
        save_file(tensors, tmp_path / "t.safetensors", metadata={"regtorch": _json.dumps(meta)})
        fails(msg, "summary", tmp_path / "t.safetensors")
    del est


def test_no_test_rows(table, tmp_path):
    d, _ = table
    proc = ok(
        "fit",
        d / "t.csv",
        "--target",
        "y",
        "--features",
        "a,b",
        "--test-size",
        "0",
        "--out",
        tmp_path / "m",
    )
    assert (
        "300 train, 0 validation, 0 test rows" in proc.stdout and "no test metrics" in proc.stdout
    )
    assert (tmp_path / "m" / "model.safetensors").exists()
