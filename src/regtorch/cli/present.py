"""What the command line shows and writes: tables, strict JSON, standard output, report folders."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODEL_FILE = "model.safetensors"
METHOD_LABELS = {
    "sklearn": "scikit-learn LinearRegression",
    "reference": "reference recipe (Adam 1e-3, 10k epochs)",
    "fast": "regtorch fast default",
}
METRIC_KEYS = ("r2", "mse", "rmse", "mae")


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def _fmt(v: Any, digits: int = 6) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "undefined" if math.isnan(v) else f"{v:.{digits}g}"
    return str(v)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(items: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(items, widths))
        )

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, cells)])


def demo_tables(results: dict[str, dict[str, Any]]) -> str:
    """The demo's tables, one per experiment."""
    parts = []
    for exp, methods in results.items():
        rows = [
            [
                METHOD_LABELS.get(key, key),
                m.get("weight"),
                m.get("bias"),
                m["r2"],
                m["mse"],
                m["epochs"],
                round(m["seconds"], 3),
            ]
            for key, m in methods.items()
        ]
        parts.append(
            f"Experiment: {exp}\n"
            + format_table(
                ["method", "weight", "bias", "test R2", "test MSE", "epochs", "seconds"], rows
            )
        )
    return "\n\n".join(parts)


def _metrics(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """R2, MSE, RMSE and MAE, each finite or None beside a ``"<name>_note"`` saying why."""
    import numpy as np

    from regtorch.metrics import regression_report

    yt = np.asarray(y_true, dtype=np.float64)
    with np.errstate(all="ignore"):
        res = regression_report(y_true, y_pred, force_finite=False)
        constant = len(yt) > 0 and bool((np.ptp(yt, axis=0) == 0).any())
    finite = bool(np.isfinite(np.asarray(y_pred, dtype=np.float64)).all())
    return strict_metrics(res, constant_target=constant, finite_predictions=finite)


def strict_metrics(
    res: dict[str, float], constant_target: bool = False, finite_predictions: bool = True
) -> dict[str, Any]:
    """Metrics as strict-JSON values: a NaN or infinity becomes None and a note says why.

    R2 of a constant target is undefined: null, not a crash and not a made-up number.
    """
    out: dict[str, Any] = {}
    for k, v in res.items():
        if v is not None and math.isfinite(v):
            out[k] = v
            continue
        out[k] = None
        if not finite_predictions:
            note = "undefined: non-finite predictions"
        elif k == "r2" and constant_target:
            note = "undefined: constant target"
        elif v is not None and math.isinf(v):
            note = "overflow"
        else:
            note = (
                "undefined: overflow" if any(math.isinf(x) for x in res.values()) else "undefined"
            )
        out[f"{k}_note"] = note
    return out


def _cell(m: dict[str, Any], k: str) -> Any:
    """A metric for a table: its value, or the note saying why it has none."""
    return m[k] if m.get(k) is not None else m.get(f"{k}_note")


def metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    """The test-metrics table of ``fit``: one row per model (the model, the baseline)."""
    return format_table(
        ["test metrics", "R2", "MSE", "RMSE", "MAE"],
        [[k, *(_cell(m, c) for c in METRIC_KEYS)] for k, m in metrics.items()],
    )


def _json(obj: Any) -> str:
    """Strict JSON (no NaN or Infinity): non-finite floats become null."""

    def clean(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(obj), indent=2, allow_nan=False)


def _write_stdout(text: str) -> None:
    """Write data to standard output; a closed or failing stdout is an error, not a silence."""
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        raise UserError("standard output is closed; nothing was written (give --out FILE).")
    try:
        try:
            fd = sys.stdout.fileno()
        except (OSError, ValueError, AttributeError):  # not a file (captured in tests)
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        # os.write on the descriptor: a buffered writer can drop the tail of a large write
        # cut short by a closing pipe, and a short write must never pass as a full one
        sys.stdout.flush()
        view = memoryview(text.encode(sys.stdout.encoding or "utf-8"))
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        raise  # the reader left (`| head`): main() ends quietly
    except (OSError, ValueError) as exc:  # ValueError: a closed file object
        raise UserError(f"could not write to standard output ({exc}).") from exc


class _Stdout:
    """Whether a report line met a closed pipe (``regtorch fit ... | head -1``)."""

    broken = False


def _say(*parts: Any) -> None:
    """Print a line of fit's report; a reader that left early must not stop the fit before
    its model is written, so the pipe's closing is remembered and reported at the end."""
    if _Stdout.broken:
        return
    try:
        print(*parts)
    except BrokenPipeError:
        _Stdout.broken = True
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass


def _check_finite_predictions(pred: Any, df: Any, rows: Any, what: str) -> None:
    """Refuse NaN or infinite predictions, naming where (``rows``: positions in ``df``)."""
    import numpy as np

    from regtorch.data.schema import where

    bad = ~np.isfinite(np.asarray(pred, dtype=np.float64).reshape(len(rows), -1)).all(axis=1)
    if not bad.any():
        return
    mask = np.zeros(len(df), dtype=bool)
    mask[np.asarray(rows)[bad]] = True
    raise UserError(
        f"{int(bad.sum())} of {len(rows)} predictions are not finite (inf or NaN), at "
        f"{where(df, mask)}: inputs far outside the training data, or too large for float64? "
        f"Use --allow-nonfinite to {what} anyway."
    )


def _coef_table(est: Any, names: list[str]) -> tuple[list[str], list[list[Any]]] | None:
    """The coefficient table of a linear model (with inference when it has it); None for MLPs."""
    import numpy as np

    if type(est).__name__ == "MLPRegressor":
        return None
    if type(est).__name__ == "LinearRegression" and getattr(est, "_R", None) is not None:
        try:
            s = est.summary()
        except ValueError:
            s = None
        if s is not None:
            ci = s.conf_int()
            rows = [
                [n, c, se, t, p, lo, hi]
                for n, c, se, t, p, lo, hi in zip(
                    s.names, s.params, s.bse, s.tvalues, s.pvalues, ci[:, 0], ci[:, 1]
                )
            ]
            return ["term", "coef", "std err", "t", "P>|t|", "[0.025", "0.975]"], rows
    coef = np.atleast_2d(est.coef_)
    icpt = np.atleast_1d(est.intercept_)
    rows = [["const", *[float(v) for v in icpt]]] if est.fit_intercept else []
    rows += [[n, *[float(v) for v in coef[:, j]]] for j, n in enumerate(names)]
    return [
        "term",
        *(["coef"] if coef.shape[0] == 1 else [f"coef[{k}]" for k in range(coef.shape[0])]),
    ], rows


def _write_outputs(
    out: Path,
    est: Any,
    encoder: Any,
    targets: list[str],
    record: dict[str, Any],
    y_test: Any,
    pred: Any,
    coef: tuple[list[str], list[list[Any]]] | None,
    args: argparse.Namespace,
) -> None:
    """Render everything into a staging folder beside ``out``, then swap it in at once.

    An interrupted fit (Ctrl-C) never replaces an earlier model without --save-interrupted;
    either way it ends in ``InterruptedFit`` (exit code 130), saying what was written.
    """
    from regtorch.outputs import InterruptedFit, write_folder

    history: Any = getattr(est, "history_", None)
    interrupted = bool(getattr(history, "interrupted", False))
    if interrupted:
        record = {**record, "interrupted": True}
        epochs = f"{len(history)} complete epoch{'s' if len(history) != 1 else ''}"
        if (out / MODEL_FILE).exists() and not getattr(args, "save_interrupted", False):
            raise InterruptedFit(
                f"the fit stopped after {epochs}; {out}/ keeps its earlier model (rerun with "
                "--save-interrupted to replace it with the interrupted one)"
            )

    def build(stage: Path) -> None:
        _render_outputs(stage, est, encoder, targets, record, y_test, pred, coef, args)

    write_folder(out, build, force=args.force, inputs=[args.data])
    if interrupted:
        raise InterruptedFit(
            f"the fit stopped after {epochs}; its model (the weights of epoch "
            f"{est.best_epoch_}) was written to {out}/, marked interrupted in metrics.json"
        )


def _render_outputs(
    stage: Path,
    est: Any,
    encoder: Any,
    targets: list[str],
    record: dict[str, Any],
    y_test: Any,
    pred: Any,
    coef: tuple[list[str], list[list[Any]]] | None,
    args: argparse.Namespace,
) -> None:
    """Write the model, metrics.json, the plots and report.html into the empty ``stage``."""
    import regtorch
    from regtorch import plotting
    from regtorch.report import render_report

    regtorch.save(
        est,
        stage / MODEL_FILE,
        extra={"encoder": encoder.to_dict(), "target": targets, "metrics": record["metrics"]},
    )
    (stage / "metrics.json").write_text(_json(record) + "\n")
    images = []
    if len(getattr(est, "history_", ())):  # none without training, or Ctrl-C in epoch 1
        images.append(
            (plotting.plot_loss_curves(est.history_, stage / "loss_curves.png"), "loss curves")
        )
    if len(y_test):  # no held-out rows (a streamed fit with --test-size 0): no plots
        images.append(
            (
                plotting.plot_predicted_vs_true(
                    y_test, pred, stage / "pred_vs_true.png", title="Predicted vs true (test)"
                ),
                "predicted versus true",
            )
        )
        images.append(
            (
                plotting.plot_residuals(
                    y_test, pred, stage / "residuals.png", title="Residuals (test)"
                ),
                "residuals",
            )
        )
    info = [
        ("model", record["model"]),
        ("data", args.data),
        ("target", ", ".join(targets)),
        ("features", ", ".join(encoder.output_names)),
        ("rows train / validation / test", " / ".join(map(str, record["rows"].values()))),
        ("seed", args.seed),
    ]
    if getattr(args, "weight", None):
        info.append(("sample weights", args.weight))
    page = render_report(
        f"regtorch fit: {record['model']}",
        info,
        record["metrics"],
        coef[0] if coef else None,
        coef[1] if coef else None,
        images,
    )
    (stage / "report.html").write_text(page, encoding="utf-8")
