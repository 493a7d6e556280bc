"""The command line on the shared engine: one split rule, sample weights, the baseline row."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import regtorch
from regtorch.cli import main
from regtorch.cli.baseline import fit_least_squares
from regtorch.data.split import hash01

REPO = Path(__file__).resolve().parents[1]
METRICS = ("r2", "mse", "rmse", "mae")


def cli(monkeypatch, capsys, *args):
    """Run ``regtorch`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main replaces it
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def fit_record(monkeypatch, capsys, out, *args):
    code, _, err = cli(monkeypatch, capsys, "fit", *args, "--out", out)
    assert code == 0, err
    return json.loads((out / "metrics.json").read_text())


def fails(monkeypatch, capsys, match, *args):
    code, _, err = cli(monkeypatch, capsys, *args)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert match in err, err


@pytest.fixture(scope="module")
def housing(tmp_path_factory):
    """examples/housing.csv without its text column, as Parquet."""
    df = pd.read_csv(REPO / "examples" / "housing.csv").drop(columns="neighborhood")
    path = tmp_path_factory.mktemp("housing") / "housing.parquet"
    df.to_parquet(path, index=False)
    return path, df


def weighted_table(n=400, seed=1):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    df["y"] = 2 * df.a - df.b + 0.5 * df.c + 1 + rng.normal(size=n) * (1 + np.abs(df.a))
    df["w"] = rng.uniform(0.1, 3.0, size=n)
    return df


# the one split rule: in memory and streamed hold out the same rows


def test_in_memory_and_streamed_fits_hold_out_the_same_rows(housing, tmp_path, monkeypatch, capsys):
    path, df = housing
    args = (path, "--target", "price", "--model", "linear")
    mem = fit_record(monkeypatch, capsys, tmp_path / "mem", *args)
    streamed = fit_record(monkeypatch, capsys, tmp_path / "str", *args, "--stream")
    n_test = int((hash01(np.arange(len(df)), 0) < 0.2).sum())
    assert mem["rows"] == {"train": len(df) - n_test, "validation": 0, "test": n_test}
    assert streamed["rows"] == mem["rows"]
    for k in METRICS:
        assert streamed["metrics"]["model"][k] == pytest.approx(
            mem["metrics"]["model"][k], rel=1e-10
        )


def test_a_dropped_row_moves_no_other_row_between_parts(housing, tmp_path, monkeypatch, capsys):
    path, df = housing
    holed = df.copy()
    holed.loc[[3, 10, 500, 1499], "sqft"] = np.nan
    holed.to_parquet(tmp_path / "holed.parquet", index=False)
    args = (tmp_path / "holed.parquet", "--target", "price", "--missing", "drop")
    mem = fit_record(monkeypatch, capsys, tmp_path / "mem", *args)
    streamed = fit_record(monkeypatch, capsys, tmp_path / "str", *args, "--stream")
    kept = np.setdiff1d(np.arange(len(df)), [3, 10, 500, 1499])
    n_test = int((hash01(kept, 0) < 0.2).sum())
    assert mem["rows"]["test"] == n_test and mem["rows"]["train"] == len(kept) - n_test
    assert streamed["rows"] == mem["rows"]
    assert streamed["metrics"]["model"]["mse"] == pytest.approx(
        mem["metrics"]["model"]["mse"], rel=1e-10
    )


def test_mlp_validation_rows_follow_the_same_rule(housing, tmp_path, monkeypatch, capsys):
    path, df = housing
    rec = fit_record(
        monkeypatch, capsys, tmp_path / "m", path, "--target", "price", "--model", "mlp",
        "--epochs", "2", "--seed", "7", "--val-size", "0.15", "--no-baseline",
    )  # fmt: skip
    h = hash01(np.arange(len(df)), 7)
    assert rec["rows"]["test"] == int((h < 0.2).sum())
    assert rec["rows"]["validation"] == int(((h >= 0.2) & (h < 0.35)).sum())


# the baseline row: scikit-learn's LinearRegression without importing it


@pytest.mark.parametrize("case", ["plain", "rank_deficient", "multi_target", "weighted"])
def test_baseline_predicts_as_sklearn_linear_regression(case):
    from sklearn.linear_model import LinearRegression as SkLinear

    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 4)) * [1.0, 1e3, 1e-2, 5.0]
    y = X @ [1.0, -2e-3, 30.0, 0.5] + rng.normal(size=60)
    w = None
    if case == "rank_deficient":  # a duplicated column and a linear combination
        X = np.column_stack([X, X[:, 0], X[:, 1] - 2 * X[:, 3]])
    elif case == "multi_target":
        y = np.column_stack([y, -y + X[:, 2]])
    elif case == "weighted":
        w = rng.uniform(0.0, 4.0, size=60)
    ours = fit_least_squares(X, y, w)
    ref = SkLinear().fit(X, y, sample_weight=w)
    X_new = rng.normal(size=(20, X.shape[1])) * X.std(axis=0)
    np.testing.assert_allclose(ours.predict(X_new), ref.predict(X_new), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ours.coef, ref.coef_, rtol=1e-10, atol=1e-12)


def test_fit_imports_neither_sklearn_linear_model_nor_matplotlib():
    code = (
        "import sys; from regtorch.cli import main; "
        f"main(['fit', {str(REPO / 'examples' / 'housing.csv')!r}, '--target', 'price', "
        "'--features', 'sqft,age_years']); "
        "print(sorted(m for m in sys.modules if m.startswith(('matplotlib', "
        "'sklearn.linear_model'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "baseline (scikit-learn LinearRegression)" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# --weight


def test_weighted_fit_matches_sklearn_on_the_training_rows(tmp_path, monkeypatch, capsys):
    from sklearn.linear_model import LinearRegression as SkLinear

    df = weighted_table()
    df.to_csv(tmp_path / "w.csv", index=False)
    rec = fit_record(
        monkeypatch, capsys, tmp_path / "m", tmp_path / "w.csv", "--target", "y",
        "--weight", "w",
    )  # fmt: skip
    assert rec["features"] == ["a", "b", "c"] and rec["weight"] == "w"
    est = regtorch.load(tmp_path / "m" / "model.safetensors")
    train = hash01(np.arange(len(df)), 0) >= 0.2
    X, y, w = df[["a", "b", "c"]].to_numpy(), df.y.to_numpy(), df.w.to_numpy()
    ref = SkLinear().fit(X[train], y[train], sample_weight=w[train])
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-9)
    unweighted = SkLinear().fit(X[train], y[train])
    assert not np.allclose(est.coef_, unweighted.coef_, rtol=1e-3)
    # test metrics stay unweighted: the plain MSE of the weighted model on the test rows
    mse = float(np.mean((ref.predict(X[~train]) - y[~train]) ** 2))
    assert rec["metrics"]["model"]["mse"] == pytest.approx(mse, rel=1e-9)
    base = rec["metrics"]["baseline (scikit-learn LinearRegression)"]
    assert base["mse"] == pytest.approx(mse, rel=1e-9)


def test_weight_errors_are_named(tmp_path, monkeypatch, capsys):
    df = weighted_table(50)
    df.to_csv(tmp_path / "w.csv", index=False)
    data = (tmp_path / "w.csv", "--target", "y")
    fails(monkeypatch, capsys, "--weight nope: no such column", "fit", *data, "--weight", "nope")
    fails(monkeypatch, capsys, "cannot also be a target", "fit", *data, "--weight", "y")
    fails(monkeypatch, capsys, "cannot also be a feature",
          "fit", *data, "--weight", "w", "--features", "a,w")  # fmt: skip
    df.loc[4, "w"] = -1.0
    df.to_csv(tmp_path / "neg.csv", index=False)
    fails(monkeypatch, capsys, "weights must be non-negative; 1 are negative",
          "fit", tmp_path / "neg.csv", "--target", "y", "--weight", "w")  # fmt: skip
    df["w"] = df["w"].astype(object)
    df.loc[4, "w"] = "heavy"
    df.to_csv(tmp_path / "text.csv", index=False)
    fails(monkeypatch, capsys, "Weight column 'w' is not numeric",
          "fit", tmp_path / "text.csv", "--target", "y", "--weight", "w")  # fmt: skip


def test_streamed_weights_agree_with_the_in_memory_fit(tmp_path, monkeypatch, capsys):
    import inspect

    from regtorch.data.table import TableSource

    df = weighted_table()
    df.to_parquet(tmp_path / "w.parquet", index=False)
    args = (tmp_path / "w.parquet", "--target", "y", "--weight", "w")
    if "weight" not in inspect.signature(TableSource).parameters:
        fails(monkeypatch, capsys, "reads sample weights in memory only", "fit", *args, "--stream")
        return
    fit_record(monkeypatch, capsys, tmp_path / "mem", *args)
    fit_record(monkeypatch, capsys, tmp_path / "str", *args, "--stream")
    mem = regtorch.load(tmp_path / "mem" / "model.safetensors")
    streamed = regtorch.load(tmp_path / "str" / "model.safetensors")
    np.testing.assert_allclose(streamed.coef_, mem.coef_, rtol=1e-9)
    assert streamed.intercept_ == pytest.approx(mem.intercept_, rel=1e-9)


@pytest.mark.parametrize("stream", [False, True])
def test_checkpoint_resume_ends_as_the_uninterrupted_fit(tmp_path, monkeypatch, capsys, stream):
    """Ctrl-C after epoch 3, then the same command with --checkpoint: the uninterrupted model."""
    from regtorch.nn.loop import Callback
    from regtorch.nn.mlp import MLPRegressor

    s = regtorch.make_sine()
    data = tmp_path / "sine.parquet"
    pd.DataFrame({"x": s.X_train[:, 0], "y": np.ravel(s.y_train)}).to_parquet(data, index=False)
    common = [
        "--target",
        "y",
        "--model",
        "mlp",
        "--epochs",
        "6",
        "--hidden",
        "16,16",
        "--batch-size",
        "64",
    ]
    common += ["--seed", "3", *(["--stream"] if stream else [])]
    ck = tmp_path / "run.ckpt"

    class CtrlC(Callback):
        def on_epoch_end(self, state):
            if state.epoch == 2:
                raise KeyboardInterrupt

    original = MLPRegressor._callbacks

    def with_ctrl_c(self, *a, **kw):
        callbacks, stopper = original(self, *a, **kw)
        return [*callbacks, CtrlC()], stopper

    monkeypatch.setattr(MLPRegressor, "_callbacks", with_ctrl_c)
    code, _, err = cli(monkeypatch, capsys, "fit", data, *common, "--checkpoint", ck)
    assert code == 0, err
    assert ck.exists()
    monkeypatch.setattr(MLPRegressor, "_callbacks", original)
    resumed = fit_record(
        monkeypatch, capsys, tmp_path / "resumed", data, *common, "--checkpoint", ck
    )
    whole = fit_record(monkeypatch, capsys, tmp_path / "whole", data, *common)
    assert resumed["metrics"] == whole["metrics"]
    a = regtorch.load(tmp_path / "resumed" / "model.safetensors")
    b = regtorch.load(tmp_path / "whole" / "model.safetensors")
    assert a.n_iter_ == b.n_iter_ == 6
    assert a.history_.train_loss == b.history_.train_loss
    grid = np.linspace(-3, 3, 50).reshape(-1, 1)
    assert np.array_equal(a.predict(grid), b.predict(grid))


def test_checkpoint_path_problems_are_named_before_training(tmp_path, monkeypatch, capsys, housing):
    path, _ = housing
    mlp = ["fit", path, "--target", "price", "--model", "mlp", "--epochs", "2"]
    fails(monkeypatch, capsys, "is a folder", *mlp, "--checkpoint", tmp_path)
    fails(monkeypatch, capsys, "does not exist", *mlp, "--checkpoint", tmp_path / "no" / "c")
    victim = tmp_path / "notes.csv"
    victim.write_text("my,data\n1,2\n")
    fails(monkeypatch, capsys, "not loaded", *mlp, "--checkpoint", victim)
    assert victim.read_text() == "my,data\n1,2\n"  # never overwritten


def test_checkpoint_is_refused_for_one_pass_models(tmp_path, monkeypatch, capsys, housing):
    path, _ = housing
    fails(
        monkeypatch,
        capsys,
        "fits in one pass",
        "fit",
        path,
        "--target",
        "price",
        "--checkpoint",
        tmp_path / "c.ckpt",
    )


def test_deferred_module_loads_unchanged_on_first_use():
    code = (
        "import sys; from regtorch.cli import _defer_imports; _defer_imports(['colorsys']); "
        "import colorsys; assert type(sys.modules['colorsys']).__name__ == '_Deferred'; "
        "assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0); "
        "from colorsys import hls_to_rgb; assert hls_to_rgb(0, 0, 0) == (0, 0, 0); "
        "assert type(sys.modules['colorsys']).__name__ == 'module'; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_linear_fit_never_loads_scipy_stats(tmp_path):
    s = regtorch.make_sine()
    data = tmp_path / "small.csv"
    pd.DataFrame({"x": s.X_train[:, 0], "y": np.ravel(s.y_train)}).to_csv(data, index=False)
    code = (
        "import sys; from regtorch.cli import main; "
        f"code = main(['fit', {str(data)!r}, '--target', 'y', '--model', 'linear']); "
        "print(code, type(sys.modules['scipy.stats']).__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip().splitlines()[-1] == "0 _Deferred", done.stderr
