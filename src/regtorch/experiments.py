"""The reference experiments of docs/reference-protocol.md, side by side (``regtorch demo``).

Each experiment runs three methods on the same split: scikit-learn's ``LinearRegression``,
the tutorial's recipe (Adam, lr 0.001, 10,000 full-batch epochs) in regtorch's loop, and
regtorch's fast default.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regtorch.datasets import ReferenceData, make_line, make_sine
from regtorch.metrics import mean_squared_error, r2_score
from regtorch.nn.callbacks import ProgressBar
from regtorch.nn.loop import Callback, History, train
from regtorch.nn.modules import MLP, LinearModule

__all__ = ["REFERENCE_EPOCHS", "run_demo", "run_fast_sine", "run_reference"]

REFERENCE_EPOCHS = 10_000
REFERENCE_LR = 1e-3
REFERENCE_SEED = 42
FAST_SINE_SEED = 0


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    return {"r2": float(r2_score(y_true, y_pred)), "mse": float(mean_squared_error(y_true, y_pred))}


def _predict(module: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.as_tensor(X)).double().numpy()


def run_sklearn(data: ReferenceData) -> tuple[dict[str, Any], Any]:
    """scikit-learn ``LinearRegression`` on the training rows."""
    from sklearn.linear_model import LinearRegression as SkLinearRegression

    t0 = time.perf_counter()
    model = SkLinearRegression().fit(data.X_train, data.y_train)
    seconds = time.perf_counter() - t0
    res = _scores(data.y_test, model.predict(data.X_test))
    res.update(
        seconds=seconds,
        epochs=None,
        weight=float(model.coef_.ravel()[0]),
        bias=float(np.ravel(model.intercept_)[0]),
    )
    return res, model


def run_reference(
    data: ReferenceData, callbacks: tuple[Callback, ...] = (), epochs: int = REFERENCE_EPOCHS
) -> tuple[dict[str, Any], torch.nn.Module, History]:
    """The tutorial's recipe: ``nn.Linear(1, 1)`` for the line, MLP 8-8-8 for the sine."""
    module: torch.nn.Module = LinearModule(1) if data.name == "line" else MLP(1, (8, 8, 8))
    t0 = time.perf_counter()
    hist = train(
        module,
        data.X_train,
        data.y_train,
        X_val=data.X_val,
        y_val=data.y_val,
        optimizer="adam",
        lr=REFERENCE_LR,
        epochs=epochs,
        seed=REFERENCE_SEED,
        device="cpu",
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - t0
    res = _scores(data.y_test, _predict(module, data.X_test))
    res.update(seconds=seconds, epochs=len(hist))
    if isinstance(module, LinearModule):
        res.update(weight=float(module.linear.weight.item()), bias=float(module.linear.bias.item()))
    res["final_train_loss"] = hist.train_loss[-1]
    res["final_val_loss"] = hist.val_loss[-1]
    return res, module, hist


def run_fast_line(data: ReferenceData) -> tuple[dict[str, Any], Any]:
    """Exact least squares (regtorch's ``LinearRegression``, float64)."""
    from regtorch.linear.estimators import LinearRegression

    t0 = time.perf_counter()
    model = LinearRegression().fit(data.X_train, data.y_train)
    seconds = time.perf_counter() - t0
    res = _scores(data.y_test, model.predict(data.X_test))
    res.update(
        seconds=seconds,
        epochs=None,
        weight=float(np.ravel(model.coef_)[0]),
        bias=float(np.ravel(model.intercept_)[0]),
    )
    return res, model


def run_fast_sine(
    data: ReferenceData,
) -> tuple[dict[str, Any], Callable[[np.ndarray], np.ndarray], History]:
    """regtorch's default ``MLPRegressor`` (standardised, MLP 32-32-32, full-batch Adam with
    cosine decay, early stopping on 10% of the training rows)."""
    from regtorch.nn.mlp import MLPRegressor

    t0 = time.perf_counter()
    model = MLPRegressor(random_state=FAST_SINE_SEED).fit(data.X_train, data.y_train.ravel())
    seconds = time.perf_counter() - t0

    def predict(X: np.ndarray) -> np.ndarray:
        return model.predict(X).reshape(-1, 1)

    res = _scores(data.y_test, predict(data.X_test))
    res.update(seconds=seconds, epochs=model.n_iter_)
    return res, predict, model.history_


def run_demo(out: str | Path | None = None, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Run both experiments; with ``out``, write plots and ``results.json`` there.

    Returns
    -------
    dict
        ``{"line": {"sklearn": M, "reference": M, "fast": M}, "sine": {...}}``; each M has
        ``r2``, ``mse``, ``seconds``, ``epochs`` (None for closed forms) and, for linear
        models, ``weight`` and ``bias``.
    """
    results: dict[str, dict[str, Any]] = {}
    outdir = Path(out) if out is not None else None
    for data in (make_line(), make_sine()):
        cbs: tuple[Callback, ...] = (
            (ProgressBar(desc=f"{data.name}: reference"),) if progress else ()
        )
        sk_res, sk_model = run_sklearn(data)
        ref_res, ref_module, ref_hist = run_reference(data, callbacks=cbs)
        if data.name == "line":
            fast_res, fast_model = run_fast_line(data)
            fast_hist = None
            fast_predict = fast_model.predict
        else:
            fast_res, fast_predict, fast_hist = run_fast_sine(data)
        results[data.name] = {"sklearn": sk_res, "reference": ref_res, "fast": fast_res}
        if outdir is not None:
            _plots(outdir, data, sk_model, ref_module, ref_hist, fast_predict, fast_hist, results)
    if outdir is not None:
        from regtorch._files import write_json_atomic

        write_json_atomic(outdir / "results.json", results)
    return results


def _plots(
    outdir: Path,
    data: ReferenceData,
    sk_model: Any,
    ref_module: torch.nn.Module,
    ref_hist: History,
    fast_predict: Callable[[np.ndarray], np.ndarray],
    fast_hist: History | None,
    results: dict[str, dict[str, Any]],
) -> None:
    from regtorch import plotting

    name = data.name
    plotting.plot_loss_curves(
        ref_hist,
        outdir / f"{name}_reference_loss.png",
        title=f"{name}: reference recipe (Adam, lr 0.001)",
    )
    if fast_hist is not None:
        plotting.plot_loss_curves(
            fast_hist, outdir / f"{name}_fast_loss.png", title=f"{name}: fast default"
        )
    grid = np.linspace(
        data.X_test.min() - 0.2, data.X_test.max() + 0.2, 300, dtype=np.float32
    ).reshape(-1, 1)
    curves = {
        "scikit-learn": sk_model.predict(grid),
        "reference": _predict(ref_module, grid),
        "fast": fast_predict(grid),
    }
    eq = None
    if name == "line":
        r = results["line"]["fast"]
        eq = f"y = {r['weight']:.4f} x + {r['bias']:.4f}"
    plotting.plot_fit(
        data.X_test,
        data.y_test,
        grid,
        curves,
        outdir / f"{name}_fit.png",
        title=f"{name}: test data and fitted curves",
        equation=eq,
    )
    plotting.plot_predicted_vs_true(
        data.y_test,
        fast_predict(data.X_test),
        outdir / f"{name}_pred_vs_true.png",
        title=f"{name}: fast default, test set",
    )
