"""``regtorch fit --model ridgecv|lassocv|elasticnetcv``: in memory and streamed, model files,
summary, predict, plots, and the bad-flag matrix."""

import json

import numpy as np
import pandas as pd
import pytest

import regtorch
from regtorch._files import dump_safetensors, read_safetensors
from regtorch.cli import main
from regtorch.data.split import fold_of
from regtorch.io import ModelFileError
from tests.test_plotting import _valid_png

CV_MODELS = {
    "ridgecv": ["--alphas", "0.01,0.1,1,10,100"],
    "lassocv": ["--n-alphas", "30"],
    "elasticnetcv": ["--l1-ratio", "0.2,0.8", "--n-alphas", "20"],
}


def cli(capsys, *args):
    """Run the CLI in process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, *args):
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    return out


def fails(capsys, match, *args):
    code, out, err = cli(capsys, *args)
    assert code == 2, (code, out, err)
    assert "Traceback" not in err
    assert match in err, err
    return err


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cvdata")
    rng = np.random.default_rng(3)
    n = 400
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "c": rng.normal(size=n),
            "d": rng.normal(size=n),
            "city": rng.choice(["x", "y", "z"], size=n),
            "w": rng.uniform(0.2, 3.0, size=n),
        }
    )
    df["y"] = (
        2 * df.a
        - df.b
        + 0.3 * df.c
        + df.city.map({"x": 0.0, "y": 1.0, "z": -1.0})
        + rng.normal(size=n)
    )
    df.to_csv(d / "t.csv", index=False)
    df.to_parquet(d / "t.parquet", index=False)
    return d, df


def _fit(capsys, data_path, out, model, *extra):
    return ok(
        capsys,
        "fit",
        data_path,
        "--target",
        "y",
        "--features",
        "a,b,c,d,city",
        "--categorical",
        "onehot",
        "--model",
        model,
        *CV_MODELS[model],
        *extra,
        "--out",
        out,
    )


@pytest.mark.parametrize("model", list(CV_MODELS))
def test_in_memory_and_streamed_fits_agree(data, tmp_path, capsys, model):
    d, _ = data
    text = _fit(capsys, d / "t.parquet", tmp_path / "mem", model)
    _fit(capsys, d / "t.parquet", tmp_path / "str", model, "--stream")
    assert "chosen by 5-fold cross-validation" in text and "<- chosen" in text
    assert "baseline" in text  # the least-squares row, as for the other linear models
    mem = regtorch.load(tmp_path / "mem")
    st = regtorch.load(tmp_path / "str")
    assert mem.alpha_ == pytest.approx(st.alpha_, rel=1e-10)
    if model == "elasticnetcv":
        assert mem.l1_ratio_ == st.l1_ratio_
    np.testing.assert_allclose(mem.coef_, st.coef_, rtol=1e-8, atol=1e-10)
    m1 = json.loads((tmp_path / "mem" / "metrics.json").read_text())["metrics"]["model"]
    m2 = json.loads((tmp_path / "str" / "metrics.json").read_text())["metrics"]["model"]
    for k in ("r2", "mse", "rmse", "mae"):
        assert m1[k] == pytest.approx(m2[k], rel=1e-10)
    assert m1["r2"] > 0.6
    rec = json.loads((tmp_path / "str" / "metrics.json").read_text())["cv"]
    assert rec["alpha"] == st.alpha_ and rec["folds"] == 5 and rec["selection_rule"] == "min"
    assert rec["mean_cv_mse"] == pytest.approx(float(np.min(np.mean(st.mse_path_, axis=-1))))
    for out in (tmp_path / "mem", tmp_path / "str"):
        names = {p.name for p in out.iterdir()}
        assert "cv_error.png" in names
        if getattr(mem, "coef_path_", None) is not None:
            assert "coef_path.png" in names
        for png in out.glob("*.png"):
            _valid_png(png)
        report = (out / "report.html").read_text()
        assert report.count("data:image/png;base64,") == len(list(out.glob("*.png")))
        assert "Cross-validation" in report and "classical standard errors" in report


def test_cli_folds_are_the_hash_folds_of_the_training_rows(data, tmp_path, capsys):
    """The CLI's LassoCV equals scikit-learn's on the training rows with fold_of's folds."""
    from sklearn.linear_model import LassoCV
    from sklearn.utils._testing import ignore_warnings

    from regtorch.data.split import assign

    d, df = data
    ok(
        capsys,
        *("fit", d / "t.csv", "--target", "y", "--features", "a,b,c,d", "--model", "lassocv"),
        *("--n-alphas", "25", "--seed", "7", "--out", tmp_path / "m"),
    )
    est = regtorch.load(tmp_path / "m")
    rows = np.arange(len(df))
    train = rows[assign(rows, 7, 0.2) == 0]
    folds = fold_of(train, 7, 5, 0.2)
    cv = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(5)]
    X, y = df[list("abcd")].to_numpy()[train], df.y.to_numpy()[train]
    ref = ignore_warnings(LassoCV(alphas=25, cv=cv, tol=1e-10, max_iter=100_000).fit)(X, y)
    assert est.alpha_ == pytest.approx(ref.alpha_, rel=1e-9)
    np.testing.assert_allclose(est.alphas_, ref.alphas_, rtol=1e-10)
    np.testing.assert_allclose(est.mse_path_, ref.mse_path_, rtol=1e-6)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-6, atol=1e-8)


def test_weights_in_memory_equal_streamed_and_the_python_fit(data, tmp_path, capsys):
    d, df = data
    args = ("--target", "y", "--features", "a,b,c,d", "--model", "elasticnetcv")
    args += ("--l1-ratio", "0.5,0.9", "--n-alphas", "15", "--weight", "w")
    ok(capsys, "fit", d / "t.csv", *args, "--out", tmp_path / "mem")
    ok(capsys, "fit", d / "t.csv", *args, "--stream", "--out", tmp_path / "str")
    ok(capsys, "fit", d / "t.csv", *args[:-2], "--out", tmp_path / "unweighted")
    mem, st, unw = (regtorch.load(tmp_path / k) for k in ("mem", "str", "unweighted"))
    assert (mem.alpha_, mem.l1_ratio_) == pytest.approx((st.alpha_, st.l1_ratio_), rel=1e-10)
    np.testing.assert_allclose(mem.mse_path_, st.mse_path_, rtol=1e-9)
    assert not np.allclose(mem.mse_path_, unw.mse_path_)  # the weights were used
    # the same fit from Python with the CLI's folds and weights
    from regtorch.data.split import assign

    rows = np.arange(len(df))
    train = rows[assign(rows, 0, 0.2) == 0]
    folds = fold_of(train, 0, 5, 0.2)
    cv = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(5)]
    py = regtorch.ElasticNetCV(l1_ratio=[0.5, 0.9], cv=cv, **_n_alphas(15)).fit(
        df.loc[train, list("abcd")], df.y[train], sample_weight=df.w[train]
    )
    assert py.alpha_ == pytest.approx(mem.alpha_, rel=1e-12)
    np.testing.assert_allclose(py.coef_, mem.coef_, rtol=1e-10, atol=1e-12)


def _n_alphas(n):
    """The grid-size parameter as the class spells it (scikit-learn 1.9: ``alphas=int``)."""
    params = regtorch.ElasticNetCV().get_params()
    return {"n_alphas": n} if "n_alphas" in params else {"alphas": n}


def test_ridgecv_leave_one_out(data, tmp_path, capsys):
    from sklearn.linear_model import RidgeCV

    from regtorch.data.split import assign

    d, df = data
    text = ok(
        capsys,
        *("fit", d / "t.csv", "--target", "y", "--features", "a,b,c,d", "--model", "ridgecv"),
        *("--alphas", "0.1,1,10,100,1000", "--cv", "loo", "--out", tmp_path / "loo"),
    )
    assert "leave-one-out" in text
    est = regtorch.load(tmp_path / "loo")
    rows = np.arange(len(df))
    train = rows[assign(rows, 0, 0.2) == 0]
    ref = RidgeCV(alphas=[0.1, 1, 10, 100, 1000]).fit(
        df.loc[train, list("abcd")].to_numpy(), df.y[train].to_numpy()
    )
    assert est.alpha_ == ref.alpha_ and est.cv is None
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-8)
    assert (tmp_path / "loo" / "cv_error.png").is_file()
    fails(
        capsys,
        "a streamed ridgecv takes --cv K",
        *("fit", d / "t.csv", "--target", "y", "--model", "ridgecv", "--cv", "loo", "--stream"),
    )


def test_summary_shows_the_cv_table_and_no_p_values(data, tmp_path, capsys):
    d, _ = data
    _fit(capsys, d / "t.csv", tmp_path / "m", "elasticnetcv")
    out = ok(capsys, "summary", tmp_path / "m")
    est = regtorch.load(tmp_path / "m")
    assert f"alpha {est.alpha_:.6g}, l1_ratio {est.l1_ratio_:g}" in out
    assert out.count("<- chosen") == 1
    assert "std err" in out and "mean CV MSE" in out
    assert "P>|t|" not in out and "classical standard errors would mislead" in out
    n_alphas = np.asarray(est.alphas_).shape[-1]
    assert sum(line.startswith(("0.2 ", "0.8 ")) for line in out.splitlines()) == 2 * n_alphas
    for name in ("a", "b", "city=y"):
        assert any(line.startswith(name + " ") for line in out.splitlines())
    # given alphas (one grid for both l1_ratios) load and show too
    ok(
        capsys,
        *("fit", d / "t.csv", "--target", "y", "--features", "a,b", "--model", "elasticnetcv"),
        *("--l1-ratio", "0.2,0.8", "--alphas", "0.01,0.1,1", "--out", tmp_path / "given"),
    )
    out = ok(capsys, "summary", tmp_path / "given")
    assert out.count("<- chosen") == 1 and len(regtorch.load(tmp_path / "given").alphas_) == 3
    out = ok(capsys, "summary", _fit_ridge(capsys, d, tmp_path))
    assert "alpha" in out and "<- chosen" in out and "P>|t|" not in out


def _fit_ridge(capsys, d, tmp_path):
    _fit(capsys, d / "t.csv", tmp_path / "r", "ridgecv")
    return tmp_path / "r"


@pytest.mark.parametrize("model", list(CV_MODELS))
def test_predict_and_evaluate_round_trip(data, tmp_path, capsys, model):
    d, df = data
    _fit(capsys, d / "t.csv", tmp_path / "m", model)
    ok(capsys, "predict", tmp_path / "m", d / "t.csv", "--out", tmp_path / "p.csv")
    est = regtorch.load(tmp_path / "m")
    enc = regtorch.data.Encoder.from_dict(est.model_extra_["encoder"])
    X = pd.DataFrame(enc.transform(df), columns=enc.output_names)
    cli_pred = pd.read_csv(tmp_path / "p.csv")["y_pred"].to_numpy()
    np.testing.assert_allclose(cli_pred, est.predict(X), rtol=1e-12)
    m = json.loads(ok(capsys, "evaluate", tmp_path / "m", d / "t.csv", "--json"))
    assert m["mse"] == pytest.approx(np.mean((df.y - cli_pred) ** 2), rel=1e-9)


@pytest.mark.parametrize("cls", ["RidgeCV", "LassoCV", "ElasticNetCV"])
def test_model_file_keeps_the_cv_results(tmp_path, cls):
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(120, 4)), columns=list("pqrs"))
    y = X.p * 2 - X.q + rng.normal(size=120)
    kw = {"l1_ratio": [0.3, 0.7]} if cls == "ElasticNetCV" else {}
    folds = fold_of(np.arange(120), 1, 4)
    cv = [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(4)]
    est = getattr(regtorch, cls)(cv=cv, **kw).fit(X, y)
    again = regtorch.load(regtorch.save(est, tmp_path / "m.safetensors"))
    assert type(again) is type(est) and again.get_params()["cv"] == 4
    np.testing.assert_array_equal(again.predict(X), est.predict(X))
    for a in ("alpha_", "l1_ratio_", "best_score_", "alphas_", "mse_path_", "coef_path_"):
        if getattr(est, a, None) is not None:
            np.testing.assert_array_equal(getattr(again, a), getattr(est, a), err_msg=a)
    assert list(again.feature_names_in_) == list("pqrs")


def _rewrite(path, edit):
    """Rewrite a model file with ``edit(meta)`` applied, hashes recomputed (a forgery)."""
    meta, tensors, _ = read_safetensors(path.read_bytes())
    edit(meta)
    path.write_bytes(dump_safetensors(tensors, meta))


def test_tampered_and_forged_cv_models_are_refused(data, tmp_path, capsys):
    d, _ = data
    _fit(capsys, d / "t.csv", tmp_path / "m", "lassocv")
    model = tmp_path / "m" / "model.safetensors"
    good = model.read_bytes()
    est = regtorch.load(model)
    # one changed byte of a stored tensor (the CV results are tensors): the hash no longer
    # matches
    model.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ModelFileError, match="refused"):
        regtorch.load(model)
    fails(capsys, "refused", "summary", model)
    # a forged file (hashes recomputed) whose chosen alpha is not one it tried
    model.write_bytes(good)

    def other_alpha(meta):
        meta["attributes"]["alpha_"] = float(est.alpha_) * 1.2345

    _rewrite(model, other_alpha)
    with pytest.raises(ModelFileError, match=r"chosen alpha [\d.e-]+ is not one of the alphas"):
        regtorch.load(model)
    fails(capsys, "refused", "predict", model, d / "t.csv", "--out", tmp_path / "p.csv")
    # forged CV results that contradict each other
    for name, value, match in [
        ("cv_folds_", 4, "cv_folds_ 4 is not a number of folds matching mse_path"),
        ("cv_folds_", "x", "cv_folds_ 'x' is not"),
        ("l1_ratio_", 2.0, r"l1_ratio_ 2.0 is not a number in \[0, 1\]"),
    ]:
        model.write_bytes(good)
        _rewrite(
            model, lambda meta, name=name, value=value: meta["attributes"].update({name: value})
        )
        with pytest.raises(ModelFileError, match=match):
            regtorch.load(model)


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--model", "elasticnet", "--l1-ratio", "0.1,0.5"], "a list is for --model elasticnetcv"),
        (["--model", "lassocv", "--alphas", "0,1"], "--alphas takes numbers > 0"),
        (["--model", "ridgecv", "--alphas", "-1"], "--alphas takes numbers > 0"),
        # argparse read "-1,2" as an option ("expected one argument")
        (["--model", "ridgecv", "--alphas", "-1,2"], "got '-1,2' (-1.0 is not)"),
        (["--model", "ridgecv", "--alphas", "1,,2"], "(an empty item)"),
        (["--model", "ridgecv", "--alphas", "1,nan"], "--alphas takes numbers > 0"),
        (["--model", "lassocv", "--alphas", "a,b"], "--alphas takes numbers > 0"),
        (["--model", "lassocv", "--cv", "1"], "a number of folds >= 2"),
        (["--model", "lassocv", "--cv", "loo"], "only ridgecv has an efficient leave-one-out"),
        (["--model", "lassocv", "--alpha", "0.1"], "chooses alpha by cross-validation"),
        (["--model", "ridgecv", "--n-alphas", "10"], "ridgecv has no automatic grid"),
        (["--model", "lassocv", "--alphas", "1,2", "--n-alphas", "9"], "give one"),
        (["--model", "ridge", "--alphas", "1,2"], "only the cross-validated models"),
        (["--model", "lasso", "--cv", "3"], "only the cross-validated models"),
        (["--model", "lassocv", "--l1-ratio", "0.5"], "lassocv has no L1 share"),
        (["--model", "elasticnetcv", "--l1-ratio", "0.5,1.5"], "--l1-ratio takes numbers in"),
        (["--model", "elasticnetcv", "--l1-ratio", "0,0.5"], "needs an L1 share > 0"),
        (["--model", "lassocv", "--selection-rule", "max"], "invalid choice"),
        # flags the model would ignore, an explicit default value included
        (["--model", "linear", "--cv", "5"], "only the cross-validated models"),
        (["--model", "mlp", "--selection-rule", "min"], "only the cross-validated models"),
        (["--model", "lassocv", "--hidden", "64"], "--hidden: --model lassocv does not take"),
        (["--model", "ridgecv", "--solver", "lbfgs"], "--solver: --model ridgecv does not take"),
        (["--model", "ridgecv", "--epochs", "3"], "--epochs: --model ridgecv does not take"),
        (["--model", "lasso", "--lr", "0.1"], "--lr: --model lasso does not take"),
        (["--model", "ridge", "--batch-size", "8"], "--batch-size: --model ridge does not"),
        (["--model", "lassocv", "--cv", "200"], "rows to train on are too few for 200 folds"),
        # counted before K folds are (it once tried to allocate 7 TiB)
        (["--model", "lassocv", "--cv", "1000000000000"], "too few for 1000000000000 folds"),
        (["--model", "lassocv", "--cv", "2000", "--stream"], "more than 1000 folds"),
        (["--model", "lassocv", "--cv", "200", "--stream"], "too few for 200 folds"),
        (["--model", "lassocv", "--target", "y,a"], "fits one target"),
    ],
)
def test_bad_flags_are_clear_errors(data, tmp_path, capsys, extra, match):
    d, _ = data
    args = ["--target", "y", *extra] if "--target" not in extra else extra
    fails(capsys, match, "fit", d / "t.csv", "--features", "b,c", *args, "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_one_standard_error_rule_chooses_a_larger_alpha(data, tmp_path, capsys):
    d, _ = data
    args = ("fit", d / "t.csv", "--target", "y", "--features", "a,b,c,d", "--model", "lassocv")
    ok(capsys, *args, "--out", tmp_path / "min")
    text = ok(capsys, *args, "--selection-rule", "1se", "--out", tmp_path / "1se")
    assert "within 1 s.e." in text
    lo, hi = regtorch.load(tmp_path / "min"), regtorch.load(tmp_path / "1se")
    assert hi.alpha_ >= lo.alpha_ and hi.selection_rule == "1se"
    mean = np.asarray(hi.mse_path_).mean(axis=-1)
    best = int(np.argmin(mean))
    within = mean <= mean[best] + hi.mse_se_[best]
    assert hi.alpha_ == np.max(hi.alphas_[within]) and lo.alpha_ == hi.alphas_[best]
    assert hi.alpha_ > lo.alpha_  # on these data the rule moves the choice


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_too_few_rows_for_the_folds_refused_in_memory_and_streamed_alike(tmp_path, capsys, stream):
    # 3 rows, 2 of them for training: streamed once fitted a meaningless model (exit 0)
    rng = np.random.default_rng(0)
    pd.DataFrame(rng.normal(size=(3, 3)), columns=["a", "b", "y"]).to_csv(tmp_path / "d.csv")
    err = fails(
        capsys,
        "too few for 2 folds",
        "fit",
        tmp_path / "d.csv",
        "--target",
        "y",
        "--model",
        "lassocv",
        "--cv",
        "2",
        *stream,
    )
    assert "at least 4 are needed" in err


def test_streamed_r2_of_one_test_row_is_undefined_not_an_overflow(tmp_path, capsys):
    rng = np.random.default_rng(0)
    pd.DataFrame(rng.normal(size=(3, 3)), columns=["a", "b", "y"]).to_csv(tmp_path / "d.csv")
    ok(
        capsys,
        "fit",
        tmp_path / "d.csv",
        "--target",
        "y",
        "--model",
        "ridge",
        "--stream",
        "--out",
        tmp_path / "o",
    )
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["metrics"]["model"]["r2_note"] == "undefined: constant target", metrics


def test_cv_table_marks_one_row_and_keeps_its_row_limit():
    from regtorch.cli.present import cv_table

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    same = regtorch.LassoCV(alphas=[5.0, 5.0, 5.0], cv=3).fit(X, X[:, 0] + rng.normal(size=60))
    _, rows = cv_table(same)
    assert [r[-1] for r in rows].count("<- chosen") == 1
    # a constant target: every alpha of the grid equals alpha_ (all 100 rows were printed)
    flat = regtorch.LassoCV(cv=3).fit(X, np.full(60, 2.0))
    _, rows = cv_table(flat, max_rows=12)
    assert len(rows) <= 13 and [r[-1] for r in rows].count("<- chosen") == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: regtorch.RidgeCV(alpha_per_target=True),  # coef_path_ (n_alphas, k, p)
        lambda: regtorch.RidgeCV(cv=4),
        lambda: regtorch.LassoCV(cv=3, alphas=1),  # coef_ a view of coef_path_
        lambda: regtorch.ElasticNetCV(cv=3, alphas=1, l1_ratio=[0.2, 0.8]),  # squeezed path
        lambda: regtorch.ElasticNetCV(cv=3, l1_ratio=[0.1, 0.5, 1.0]),
    ],
)
def test_every_cv_model_saves_loads_and_tabulates(tmp_path, make):
    from regtorch.cli.present import cv_report, cv_table

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    y = X @ [1.0, 2.0, 3.0] + rng.normal(size=80)
    est = make()
    target = np.c_[y, -y + rng.normal(size=80)] if est.get_params().get("alpha_per_target") else y
    est.fit(X, target)
    back = regtorch.load(regtorch.save(est, tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    _, rows = cv_table(back)
    per_target = est.get_params().get("alpha_per_target")
    assert [r[-1] for r in rows].count("<- chosen") == (0 if per_target else 1)
    assert len(rows) == np.size(est.alphas_)
    text = cv_report(back)
    assert ("per target: alpha" in text) == bool(per_target)


def test_a_model_file_missing_an_attribute_says_which(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    m = regtorch.LassoCV(cv=3).fit(X, X[:, 0] + rng.normal(size=60))
    path = regtorch.save(m, tmp_path / "m.safetensors")
    _rewrite(path, lambda meta: meta["attributes"].pop("alpha_"))
    with pytest.raises(ModelFileError, match=r"could not be rebuilt \(alpha_ is missing\)"):
        regtorch.load(path)
