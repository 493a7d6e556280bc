"""The published figures of docs/reference-protocol.md, through the real CLI (one demo run)."""

import json
import subprocess
import sys

import pytest

from tests.test_plotting import _valid_png


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "regtorch", "demo", "--json", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), out


def test_json_has_every_method_and_figure(demo):
    res, out = demo
    assert set(res) == {"line", "sine"}
    for exp in res.values():
        assert set(exp) == {"sklearn", "reference", "fast"}
        for m in exp.values():
            assert {"r2", "mse", "seconds", "epochs"} <= set(m)
    for m in res["line"].values():
        assert {"weight", "bias"} <= set(m)
    assert res["line"]["sklearn"]["epochs"] is None and res["line"]["fast"]["epochs"] is None
    assert res["line"]["reference"]["epochs"] == 10_000
    assert json.loads((out / "results.json").read_text()) == res


def test_line_reference_recipe_meets_published_figures(demo):
    ref, sk = demo[0]["line"]["reference"], demo[0]["line"]["sklearn"]
    assert ref["weight"] == pytest.approx(4.3867, abs=5e-4)
    assert ref["bias"] == pytest.approx(3.0133, abs=5e-4)
    assert ref["r2"] == pytest.approx(0.79438, abs=1e-3)
    assert ref["mse"] == pytest.approx(4.2184, abs=1e-3)
    for key in ("weight", "bias", "r2", "mse"):
        assert f"{ref[key]:.4g}" == f"{sk[key]:.4g}"
    assert ref["final_train_loss"] == pytest.approx(3.7720, abs=1e-3)
    assert ref["final_val_loss"] == pytest.approx(4.0963, abs=1e-3)


def test_line_fast_default_equals_sklearn(demo):
    fast, sk = demo[0]["line"]["fast"], demo[0]["line"]["sklearn"]
    for key in ("weight", "bias", "r2", "mse"):
        assert fast[key] == pytest.approx(sk[key], abs=1e-6)


def test_sine_figures(demo):
    sine = demo[0]["sine"]
    assert sine["reference"]["r2"] >= 0.97
    assert sine["fast"]["r2"] >= 0.976
    assert sine["fast"]["seconds"] <= sine["reference"]["seconds"] / 10
    assert sine["sklearn"]["r2"] == pytest.approx(0.08, abs=0.02)


def test_demo_writes_valid_plots(demo):
    out = demo[1]
    names = {p.name for p in out.glob("*.png")}
    assert {
        "line_fit.png",
        "sine_fit.png",
        "line_reference_loss.png",
        "sine_reference_loss.png",
        "sine_fast_loss.png",
        "line_pred_vs_true.png",
    } <= names
    for p in out.glob("*.png"):
        _valid_png(p)


def test_cli_help_and_bad_arguments():
    ok = subprocess.run(
        [sys.executable, "-m", "regtorch", "--help"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "demo" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "regtorch", "nonsense"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
