"""Public API hygiene: warning classes, coef_frame, summary HTML, devices under torchrun,
cli.main's warning display, sample_weight checks without sklearn's private helpers."""

import ast
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression as SkLinearRegression

import regtorch
import regtorch.io
from regtorch import cli, distributed
from regtorch._base import check_sample_weight
from regtorch._validation import resolve_device
from regtorch.exceptions import (
    DataWarning,
    IllConditionedWarning,
    RankWarning,
    RegtorchWarning,
)
from regtorch.linear.estimators import ElasticNet, Lasso, LinearRegression, Ridge

SRC = Path(__file__).resolve().parents[1] / "src" / "regtorch"
LINEAR = [LinearRegression, Ridge, Lasso, ElasticNet]


def _rank_deficient():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    X = np.column_stack([X, X[:, 0] + X[:, 1]])  # column 3 = column 0 + column 1
    return X, X[:, 0] - 2 * X[:, 2] + 0.1 * rng.normal(size=50)


# warning classes


def test_warning_hierarchy():
    for cls in (RankWarning, IllConditionedWarning, DataWarning):
        assert issubclass(cls, RegtorchWarning) and issubclass(cls, UserWarning)
    assert not issubclass(RankWarning, IllConditionedWarning)
    from regtorch.linear import RankWarning as from_linear
    from regtorch.linear.solvers import RankWarning as from_solvers

    assert from_solvers is RankWarning and from_linear is RankWarning  # old imports work


def test_rank_warning_can_be_made_an_error_or_ignored_by_class():
    X, y = _rank_deficient()
    with warnings.catch_warnings():
        warnings.simplefilter("error", IllConditionedWarning)  # the wrong class: no error
        warnings.simplefilter("ignore", RankWarning)
        est = LinearRegression().fit(X, y)
    assert est.rank_ == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankWarning)
        with pytest.raises(RankWarning, match=r"rank deficient \(rank 3 < 4 features\)"):
            LinearRegression().fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegtorchWarning)  # the base class catches it too
        with pytest.raises(RankWarning):
            LinearRegression(solver="svd").fit(X, y)


def test_cholesky_fallback_is_ill_conditioned_warning():
    rng = np.random.default_rng(1)
    a = rng.normal(size=400)
    X = np.column_stack([a, a + 1e-9 * rng.normal(size=400), rng.normal(size=400)])
    y = X @ [1.0, 2.0, 3.0] + rng.normal(size=400)
    with pytest.warns(IllConditionedWarning, match="solver='cholesky' was not used"):
        est = LinearRegression(solver="cholesky").fit(X, y)
    assert est.solver_ != "cholesky"


def test_streamed_fallback_is_ill_conditioned_warning():
    from regtorch.data.source import ArraySource
    from regtorch.linear.streamed import stream_fit_linear

    rng = np.random.default_rng(1)
    a = rng.normal(size=200)
    X = np.column_stack([a, a + 1e-9 * rng.normal(size=200)])
    y = X @ [1.0, 2.0] + rng.normal(size=200)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream_fit_linear(LinearRegression(), ArraySource(X, y, batch_rows=50))
    kinds = {w.category for w in caught}
    assert kinds and kinds <= {IllConditionedWarning}, [str(w.message) for w in caught]


def test_data_warning_for_skipped_files(tmp_path):
    from regtorch.data.table import TableSource

    folder = tmp_path / "t"
    folder.mkdir()
    pd.DataFrame({"a": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 4.0]}).to_parquet(folder / "p.parquet")
    (folder / "notes.txt").write_text("not data")
    with pytest.warns(DataWarning, match="skipping 1 file"):
        TableSource(folder, ["y"])


def test_convergence_warning_keeps_sklearn_class():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(60, 5))
    y = X @ rng.normal(size=5)
    est = Lasso(alpha=1e-10, warm_start=True, max_iter=1)
    est.coef_ = np.full(5, 1e4)  # far from the solution: one iteration cannot converge
    with pytest.warns(ConvergenceWarning, match="duality gap") as caught:
        est.fit(X, y)
    assert not any(issubclass(w.category, RegtorchWarning) for w in caught)


def test_every_library_warning_names_a_class():
    """Each ``warnings.warn`` in src passes a category (a bare call would be UserWarning)."""
    bare = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "warn"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "warnings"
            ):
                named = len(node.args) >= 2 or any(k.arg == "category" for k in node.keywords)
                if not named:
                    bare.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not bare, bare


# cli.main restores warnings.showwarning


def test_cli_main_restores_showwarning(tmp_path, capsys):
    original = warnings.showwarning
    a = np.arange(20.0)
    pd.DataFrame({"a": a, "b": 2 * a, "y": 3 * a + 1}).to_csv(tmp_path / "d.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code = cli.main(["fit", str(tmp_path / "d.csv"), "--target", "y", "--no-baseline"])
    assert code == 0
    err = capsys.readouterr().err
    assert "regtorch: warning: The design matrix is rank deficient" in err  # one-line display
    assert warnings.showwarning is original
    assert cli.main(["summary", str(tmp_path / "missing.safetensors")]) == 2
    assert "regtorch: error:" in capsys.readouterr().err
    assert warnings.showwarning is original
    with pytest.raises(ValueError, match="does not exist"):  # --debug re-raises
        cli.main(["--debug", "summary", str(tmp_path / "missing.safetensors")])
    assert warnings.showwarning is original


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, MemoryError])
def test_cli_main_restores_showwarning_when_the_command_raises(monkeypatch, exc):
    import argparse

    original = warnings.showwarning
    seen = []

    def command(args):
        seen.append(warnings.showwarning)
        raise exc

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(func=command, debug=False)

    monkeypatch.setattr(cli, "build_parser", Parser)
    if exc is KeyboardInterrupt:
        assert cli.main([]) == 130
    elif exc is MemoryError:
        assert cli.main([]) == 1  # an internal error, one line
    else:
        with pytest.raises(SystemExit):
            cli.main([])
    assert seen == [cli._one_line_warning]
    assert warnings.showwarning is original


# --device under torchrun


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    return monkeypatch


def test_device_auto_under_torchrun_uses_local_rank(four_gpus):
    four_gpus.setenv("LOCAL_RANK", "2")
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device(None) == torch.device("cuda", 2)
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # explicit index kept
    assert resolve_device("cpu") == torch.device("cpu")


def test_device_auto_without_torchrun(four_gpus):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")


def test_device_local_rank_beyond_visible_gpus(four_gpus):
    four_gpus.setenv("LOCAL_RANK", "5")
    with pytest.raises(ValueError, match=r"LOCAL_RANK=5 but only 4 CUDA device"):
        resolve_device("auto")
    four_gpus.setenv("LOCAL_RANK", "two")
    with pytest.raises(ValueError, match="LOCAL_RANK='two'"):
        resolve_device("cuda")


@pytest.mark.parametrize("device, nccl", [("auto", True), ("cuda", True), ("cpu", False)])
def test_init_from_env_binds_rank_to_local_gpu(four_gpus, device, nccl):
    import torch.distributed as dist

    calls = {}
    four_gpus.setenv("LOCAL_RANK", "3")
    four_gpus.setenv("WORLD_SIZE", "8")
    four_gpus.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    four_gpus.setattr(dist, "is_initialized", lambda: False)
    four_gpus.setattr(dist, "get_world_size", lambda: 8)
    four_gpus.setattr(torch.cuda, "set_device", lambda i: calls.setdefault("device", i))
    four_gpus.setattr(
        dist, "init_process_group", lambda **kw: calls.setdefault("backend", kw["backend"])
    )
    assert distributed.init_from_env(device) is True
    assert calls["backend"] == ("cpu:gloo,cuda:nccl" if nccl else "gloo")
    assert calls.get("device") == (3 if nccl else None)


def test_init_from_env_auto_without_cuda_is_gloo(monkeypatch):
    import torch.distributed as dist

    calls = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.update(kw))
    distributed.init_from_env("auto")
    assert calls["backend"] == "gloo"


# coef_frame


@pytest.mark.parametrize("Est", LINEAR)
def test_coef_frame_dataframe_input(Est):
    rng = np.random.default_rng(3)
    X = pd.DataFrame(rng.normal(size=(40, 3)), columns=["age", "income", "<b>"])
    y = X.to_numpy() @ [1.0, -2.0, 0.5] + 3.0
    est = Est().fit(X, y) if Est is LinearRegression else Est(alpha=0.01).fit(X, y)
    frame = est.coef_frame()
    assert list(frame.index) == ["intercept", "age", "income", "<b>"]
    assert list(frame.columns) == ["coef"]
    assert frame.loc["intercept", "coef"] == est.intercept_
    np.testing.assert_array_equal(frame["coef"].to_numpy()[1:], est.coef_)


def test_coef_frame_arrays_and_no_intercept():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(30, 2))
    y = X @ [2.0, 1.0]
    frame = Ridge(alpha=0.1, fit_intercept=False).fit(X, y).coef_frame()
    assert list(frame.index) == ["x0", "x1"]
    sk = SkLinearRegression().fit(X, y)
    frame = LinearRegression().fit(X, y).coef_frame()
    np.testing.assert_allclose(frame["coef"], [sk.intercept_, *sk.coef_], atol=1e-12)


def test_coef_frame_two_targets():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(30, 2))
    Y = np.column_stack([X @ [1.0, 2.0] + 1, X @ [-1.0, 0.5] - 2])
    for est in (LinearRegression().fit(X, Y), ElasticNet(alpha=0.01).fit(X, Y)):
        frame = est.coef_frame()
        assert list(frame.columns) == ["y0", "y1"] and list(frame.index) == [
            "intercept",
            "x0",
            "x1",
        ]
        np.testing.assert_array_equal(frame.loc["intercept"].to_numpy(), est.intercept_)
        np.testing.assert_array_equal(frame.iloc[1:].to_numpy().T, est.coef_)


def test_coef_frame_feature_named_intercept_and_unfitted():
    from sklearn.exceptions import NotFittedError

    X = pd.DataFrame({"intercept": [0.0, 1, 2, 3], "b": [1.0, 0, 2, 5]})
    frame = LinearRegression().fit(X, [1.0, 2, 4, 3]).coef_frame()
    assert list(frame.index) == ["(intercept)", "intercept", "b"]
    with pytest.raises(NotFittedError):
        Lasso().coef_frame()


def test_coef_frame_after_save_load(tmp_path):
    rng = np.random.default_rng(6)
    X = pd.DataFrame(rng.normal(size=(40, 2)), columns=["u", "v"])
    y = X.u - X.v
    for est in (LinearRegression().fit(X, y), Lasso(alpha=0.01).fit(X, y)):
        again = regtorch.io.load(regtorch.io.save(est, tmp_path / f"{type(est).__name__}.st"))
        pd.testing.assert_frame_equal(again.coef_frame(), est.coef_frame())


def test_coef_frame_of_cli_model_has_csv_names(tmp_path):
    rng = np.random.default_rng(7)
    df = pd.DataFrame(rng.normal(size=(60, 2)), columns=["height", "weight"])
    df["target"] = 2 * df.height - df.weight + 1
    df.to_csv(tmp_path / "d.csv", index=False)
    out = tmp_path / "out"
    code = cli.main(
        ["fit", str(tmp_path / "d.csv"), "--target", "target", "--out", str(out), "--no-baseline"]
    )
    assert code == 0
    frame = regtorch.io.load(out / "model.safetensors").coef_frame()
    assert list(frame.index) == ["intercept", "height", "weight"]
    np.testing.assert_allclose(frame["coef"], [1.0, 2.0, -1.0], atol=1e-9)


# summary HTML


def test_summary_repr_html_escapes_names():
    rng = np.random.default_rng(8)
    X = pd.DataFrame(rng.normal(size=(40, 2)), columns=["<script>alert(1)</script>", "a&b"])
    y = X.to_numpy() @ [1.0, 2.0] + rng.normal(size=40)
    s = LinearRegression().fit(X, y).summary()
    html = s._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "a&amp;b" in html and "<table" in html
    assert f"{s.rsquared:.6g}" in html and f"{s.params[1]:.6g}" in html
    assert html.count("<table") == 2 and "No. observations" in html


# sample_weight without sklearn's private helper


def test_check_sample_weight_values_and_messages():
    np.testing.assert_array_equal(check_sample_weight(None, 3), np.ones(3))
    np.testing.assert_array_equal(check_sample_weight(2, np.zeros((3, 2))), [2.0, 2.0, 2.0])
    out = check_sample_weight([1, 2, 3], 3)
    assert out.dtype == np.float64 and out.flags.c_contiguous
    np.testing.assert_array_equal(check_sample_weight(torch.tensor([1.0, 0.5]), 2), [1, 0.5])
    np.testing.assert_array_equal(check_sample_weight(pd.Series([1, 2], dtype="Int64"), 2), [1, 2])
    cases = [
        ([1.0, 2.0], r"sample_weight.shape == \(2,\), expected \(3,\)!"),
        (np.ones((3, 1)), "Sample weights must be 1D array or scalar"),
        ([1.0, np.nan, 1.0], "Input sample_weight contains NaN"),
        ([1.0, np.inf, 1.0], "Input sample_weight contains infinity"),
        ([1.0, -1.0, 1.0], "Negative values in data passed to `sample_weight`"),
        ([0.0, 0.0, 0.0], "at least one non-zero"),
        (["a", "b", "c"], "sample_weight must hold numbers"),
        (pd.Series([1, None, 2], dtype="Int64"), "contains NaN"),
        (np.array([1j, 1, 1]), "Complex data"),
        ([1.0, 1e200, 1.0], "sample_weight values must be 0 or between"),
    ]
    for sw, match in cases:
        with pytest.raises(ValueError, match=match):
            check_sample_weight(sw, 3)


def test_fit_rejects_bad_weights_with_sklearn_words():
    X, y = np.arange(8.0).reshape(4, 2), np.arange(4.0)
    with pytest.raises(ValueError, match=r"sample_weight.shape == \(3,\), expected \(4,\)!"):
        Ridge().fit(X, y, sample_weight=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="Negative values"):
        Lasso().fit(X, y, sample_weight=[1.0, -1.0, 1.0, 1.0])


def test_no_private_sklearn_imports_in_src():
    private = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sklearn"):
                parts = (node.module or "").split(".")
                names = [a.name for a in node.names]
                if any(p.startswith("_") for p in parts) or any(n.startswith("_") for n in names):
                    private.append(f"{path.relative_to(SRC)}:{node.lineno}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("sklearn") and "._" in a.name:
                        private.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not private, private


def test_warning_classes_are_top_level_names():
    """``regtorch.RankWarning`` etc., as the README's filter example uses them."""
    import regtorch.exceptions as exc

    for name in ("RegtorchWarning", "RankWarning", "IllConditionedWarning", "DataWarning"):
        assert getattr(regtorch, name) is getattr(exc, name)
        assert name in regtorch.__all__
