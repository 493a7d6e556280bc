"""Export: to_torch, ONNX (run by onnxruntime) and torch.export programs predict as the
estimators do, with their metadata; the ``regtorch export`` command and its refusals.

Agreement is measured against ``predict`` (float64) on held-out rows, scale-aware:
``|got - want| <= RTOL * max|predict(X_test)|`` element-wise, the scale being the largest
prediction over the 1,000 held-out rows (for batch size 1 as well), since a prediction near
zero has no meaningful relative error of its own.
"""

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import NotFittedError

import regtorch
from regtorch import export
from regtorch.cli import main
from regtorch.nn.modules import ACTIVATIONS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

RTOL = 1e-5
SMALL = ([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 2.0, 0.0], [3.0, 1.0, 1.0]], [1.0, 2.0, 3.0, 5.0])
NAMES = ["alpha", "beta", "gamma", "delta"]
CLASSES = {
    "LinearRegression": (regtorch.LinearRegression, {}),
    "Ridge": (regtorch.Ridge, {"alpha": 1.0}),
    "Lasso": (regtorch.Lasso, {"alpha": 0.05}),
    "ElasticNet": (regtorch.ElasticNet, {"alpha": 0.05, "l1_ratio": 0.5}),
    "MLPRegressor": (
        regtorch.MLPRegressor,
        {"hidden_layer_sizes": (16, 16), "max_epochs": 40, "random_state": 0},
    ),
}
# every class, 1-D and 2-D targets, on a named DataFrame and on an array
CASES = [(c, nd, named) for c in CLASSES for nd in (1, 2) for named in (True, False)]
# the files: every class and both target shapes, names on the 1-D ones (exports take seconds)
FILE_CASES = [(c, nd, nd == 1) for c in CLASSES for nd in (1, 2)]


def _ids(case):
    c, nd, named = case
    return f"{c}-{nd}d-{'names' if named else 'array'}"


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1300, 4)) * [1.0, 10.0, 100.0, 0.1] + [5.0, -3.0, 1000.0, 0.0]
    y = X @ [1.0, -0.2, 0.01, 3.0] + np.sin(X[:, 0]) + 0.1 * rng.normal(size=1300)
    Y = np.c_[y, 2.0 * X[:, 0] - y]
    return X[:300], X[300:], y[:300], Y[:300]  # 1,000 held-out rows


def _fit(data, case):
    cls, kw = CLASSES[case[0]]
    X, X_test, y, Y = data
    frame = pd.DataFrame(X, columns=NAMES) if case[2] else X
    est = cls(**kw).fit(frame, y if case[1] == 1 else Y)
    test = pd.DataFrame(X_test, columns=NAMES) if case[2] else X_test
    return est, X_test, est.predict(test)


def _assert_close(got, want, scale=None):
    scale = np.abs(want).max() if scale is None else scale
    assert got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want).max() / scale
    assert err <= RTOL, f"max relative error {err:.3g}"
    return err


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_to_torch_predicts_as_the_estimator(data, case):
    est, X_test, want = _fit(data, case)
    module = export.to_torch(est)
    assert module is not None and not module.training
    # a plain module: torch layers and tensors only, no regtorch class inside
    assert all(type(m).__module__.startswith("torch.") for m in module.modules() if m is not module)
    assert all(t.dtype == torch.float32 for t in (*module.parameters(), *module.buffers()))
    got = module(torch.as_tensor(X_test, dtype=torch.float32)).numpy()
    _assert_close(got, want)
    assert module.feature_names == (NAMES if case[2] else ["x0", "x1", "x2", "x3"])
    assert module.n_features == 4 and module.output_1d == (case[1] == 1)
    # the estimator's own method is the same module, and float64 matches to rounding
    assert torch.equal(est.to_torch()(torch.ones(3, 4)), module(torch.ones(3, 4)))
    exact = export.to_torch(est, dtype=torch.float64)(torch.as_tensor(X_test)).numpy()
    assert np.abs(exact - want).max() <= 1e-12 * np.abs(want).max()


def test_linear_inputs_are_centred_so_float32_keeps_small_predictions():
    # years as a feature: exact in float32, but year * coef cancels against the intercept
    rng = np.random.default_rng(1)
    years = rng.integers(1990, 2030, size=(400, 1)).astype(float)
    y = 0.37 * (years[:, 0] - 2010) + 0.01 * rng.normal(size=400)
    est = regtorch.LinearRegression().fit(years[:200], y[:200])
    want = est.predict(years[200:])
    got = est.to_torch()(torch.as_tensor(years[200:], dtype=torch.float32)).numpy()
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


@pytest.fixture(scope="module", params=FILE_CASES, ids=_ids)
def exported(request, data, tmp_path_factory):
    est, X_test, want = _fit(data, request.param)
    d = tmp_path_factory.mktemp("export")
    onnx_path = export.export_onnx(est, d / "model.onnx")
    pt2_path = export.export_pt2(est, d / "model.pt2")
    return request.param, X_test, want, onnx_path, pt2_path


@pytest.mark.parametrize("batch", [1, 1000])
def test_onnx_predicts_as_the_estimator(exported, batch):
    case, X_test, want, path, _ = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, out.name) == ("features", "tensor(float)", "prediction")
    assert isinstance(inp.shape[0], str) and inp.shape[1] == 4  # dynamic batch dimension
    got = session.run(None, {"features": X_test[:batch].astype(np.float32)})[0]
    _assert_close(got, want[:batch], scale=np.abs(want).max())


@pytest.mark.parametrize("batch", [1, 1000])
def test_pt2_predicts_as_the_estimator(exported, batch):
    case, X_test, want, _, path = exported
    program = torch.export.load(str(path)).module()
    got = program(torch.as_tensor(X_test[:batch], dtype=torch.float32)).numpy()
    _assert_close(got, want[:batch], scale=np.abs(want).max())


def test_files_carry_the_feature_names_and_the_model(exported):
    (cls, nd, named), _, _, onnx_path, pt2_path = exported
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    extra = {export.METADATA_FILE: ""}
    torch.export.load(str(pt2_path), extra_files=extra)
    for meta in (props, json.loads(extra[export.METADATA_FILE])):
        names = NAMES if named else ["x0", "x1", "x2", "x3"]
        assert json.loads(meta["feature_names"]) == names and meta["n_features"] == "4"
        assert meta["model_class"] == cls and meta["regtorch_version"] == regtorch.__version__
        assert meta["output_shape"] == ("(n,)" if nd == 1 else "(n, 2)")
        assert meta["dtype"] == "float32" and "raw feature values" in meta["input_note"]
    assert [(o.domain, o.version) for o in onnx.load(str(onnx_path)).opset_import] == [("", 20)]


@pytest.mark.slow
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_exports(data, tmp_path, activation):
    X, X_test, y, _ = data
    est = regtorch.MLPRegressor(
        hidden_layer_sizes=(8,), activation=activation, max_epochs=10, random_state=0
    ).fit(X, y)
    want = est.predict(X_test)
    session = ort.InferenceSession(str(export.export_onnx(est, tmp_path / "m.onnx")))
    _assert_close(session.run(None, {"features": X_test.astype(np.float32)})[0], want)
    program = torch.export.load(str(export.export_pt2(est, tmp_path / "m.pt2"))).module()
    _assert_close(program(torch.as_tensor(X_test, dtype=torch.float32)).numpy(), want)


def test_unfitted_and_unsupported_are_refused(tmp_path):
    for cls, kw in CLASSES.values():
        with pytest.raises(NotFittedError):
            export.to_torch(cls(**kw))
        with pytest.raises(NotFittedError):
            export.export_pt2(cls(**kw), tmp_path / "m.pt2")
    with pytest.raises(TypeError, match="Cannot export dict"):
        export.to_torch({})
    est = regtorch.LinearRegression().fit(*SMALL)
    with pytest.raises(ValueError, match="dtype must be"):
        export.to_torch(est, dtype=torch.float16)
    est.coef_ = est.coef_ * 1e300  # beyond float32: float64 is the way out, and says so
    with pytest.raises(ValueError, match="dtype=torch.float64"):
        export.to_torch(est)
    assert torch.isfinite(
        export.to_torch(est, dtype=torch.float64)(torch.ones(2, 3).double())
    ).all()
    assert not (tmp_path / "m.pt2").exists()


def test_missing_extra_names_the_extra(tmp_path, monkeypatch, capsys):
    est = regtorch.LinearRegression().fit(*SMALL)
    for name in ("onnx", "onnxscript", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
        with pytest.raises(ImportError, match=r'pip install "regtorch\[export\]"') as info:
            export.export_onnx(est, tmp_path / "m.onnx")
        assert name in str(info.value)
        monkeypatch.delitem(sys.modules, name)
    path = regtorch.save(est, tmp_path / "m.safetensors")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert main(["export", str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("regtorch: error:") and 'pip install "regtorch[export]"' in err
    assert not (tmp_path / "m.onnx").exists()
    # pt2 needs no extra
    assert main(["export", str(path), "--format", "pt2", "--out", str(tmp_path / "m.pt2")]) == 0


def test_destinations_are_checked_and_writes_are_atomic(tmp_path, monkeypatch):
    est = regtorch.Ridge().fit(*SMALL)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        export.export_pt2(est, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.export_pt2(est, tmp_path / "nope" / "m.pt2")
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="exists"):
        export.export_onnx(est, target, overwrite=False)

    def broken(*args, **kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export.export_onnx(est, target)
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(2)
    n = 400
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.normal(size=n) * 5 + 20,
            "city": rng.choice(["paris", "rome", "oslo"], size=n),
        }
    )
    df["y"] = df.a - 0.3 * df.b + df.city.map({"paris": 0.0, "rome": 1.0, "oslo": 3.0})
    df["y"] += 0.1 * rng.normal(size=n)
    df.to_csv(d / "t.csv", index=False)
    return d, df


@pytest.mark.slow
def test_cli_round_trip_onnx_equals_regtorch_predict(table, tmp_path, capsys):
    d, df = table
    code, _, err = _cli(
        capsys, "fit", d / "t.csv", "--target", "y", "--features", "a,b", "--model", "mlp",
        "--epochs", "30", "--out", tmp_path / "m",
    )  # fmt: skip
    assert code == 0, err
    out_file = tmp_path / "m.onnx"
    code, out, err = _cli(capsys, "export", tmp_path / "m", "--format", "onnx", "--out", out_file)
    assert code == 0 and err == "", err  # the exporter's notices about torch stay hidden
    assert f"wrote {out_file}" in out and "MLPRegressor" in out
    assert 'input "features": float32 (n, 2), columns in order: a, b' in out
    assert 'output "prediction": float32 (n,), target y' in out
    assert _cli(capsys, "predict", tmp_path / "m", d / "t.csv", "--out", tmp_path / "p.csv")[0] == 0
    want = pd.read_csv(tmp_path / "p.csv")["y_pred"].to_numpy()
    session = ort.InferenceSession(str(out_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {"features": df[["a", "b"]].to_numpy(np.float32)})[0]
    _assert_close(got, want)
    # an existing file is kept without --force
    before = out_file.read_bytes()
    code, _, err = _cli(capsys, "export", tmp_path / "m", "--format", "pt2", "--out", out_file)
    assert code == 2 and "exists; use --force" in err and out_file.read_bytes() == before


def test_cli_onehot_model_says_it_expects_the_encoded_columns(table, tmp_path, capsys):
    d, df = table
    code, _, err = _cli(
        capsys, "fit", d / "t.csv", "--target", "y", "--categorical", "onehot",
        "--out", tmp_path / "m",
    )  # fmt: skip
    assert code == 0, err
    out_file = tmp_path / "m.pt2"
    code, out, err = _cli(capsys, "export", tmp_path / "m", "--format", "pt2", "--out", out_file)
    assert code == 0, err
    assert "columns in order: a, b, city=paris, city=rome" in out
    assert "one-hot ENCODED" in out and "city=oslo" in out  # the reference level, named
    extra = {export.METADATA_FILE: ""}
    program = torch.export.load(str(out_file), extra_files=extra).module()
    meta = json.loads(extra[export.METADATA_FILE])
    enc = json.loads(meta["input_encoding"])
    assert enc["categories"] == {"city": ["oslo", "paris", "rome"]}
    # encoding the table as the metadata says gives regtorch predict's predictions
    from regtorch.data.schema import Encoder

    X = Encoder.from_dict(enc).transform(df)
    assert _cli(capsys, "predict", tmp_path / "m", d / "t.csv", "--out", tmp_path / "p.csv")[0] == 0
    want = pd.read_csv(tmp_path / "p.csv")["y_pred"].to_numpy()
    _assert_close(program(torch.as_tensor(X, dtype=torch.float32)).numpy(), want)


def test_cli_refusals(table, tmp_path, capsys):
    d, df = table
    est = regtorch.LinearRegression().fit(df[["a", "b"]], df["y"])
    model = regtorch.save(est, tmp_path / "m.safetensors")
    code, _, err = _cli(capsys, "export", model, "--format", "onnx", "--out", tmp_path)
    assert code == 2 and "is a folder" in err
    code, _, err = _cli(capsys, "export", model, "--format", "pt2", "--out", tmp_path / "x/m.pt2")
    assert code == 2 and "does not exist" in err
    before = model.read_bytes()
    code, _, err = _cli(capsys, "export", model, "--format", "pt2", "--out", model, "--force")
    assert code == 2 and "is the model file itself" in err and model.read_bytes() == before
    with pytest.raises(SystemExit) as info:
        main(["export", str(model), "--format", "tflite", "--out", str(tmp_path / "m.tfl")])
    assert info.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    # a model file altered after saving is refused by regtorch.io.load, and nothing is written
    data = bytearray(model.read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    out_file = tmp_path / "bad.pt2"
    code, _, err = _cli(
        capsys, "export", tmp_path / "bad.safetensors", "--format", "pt2", "--out", out_file
    )
    assert code == 2 and err.startswith("regtorch: error:") and "refused" in err
    assert not out_file.exists()
