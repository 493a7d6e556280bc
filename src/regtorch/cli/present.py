"""What the command line shows and writes: tables, strict JSON, standard output, report folders."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
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


CV_CLASSES = ("RidgeCV", "LassoCV", "ElasticNetCV")
NO_INFERENCE = (
    "No standard errors or p-values: the penalty was chosen by cross-validation on the same "
    "data and shrinks the coefficients, so classical standard errors would mislead."
)


@dataclass
class CVView:
    """A fitted CV model's error curve(s) against alpha, as the tables and plots show them.

    ``alphas``, ``mean`` and ``se`` are ``(n_curves, n_alphas)``: one curve per l1_ratio.
    """

    alphas: Any
    mean: Any
    se: Any | None
    alpha: float
    labels: list[str] | None
    l1_ratios: list[float] | None
    l1_ratio: float | None
    n_folds: int | None


def cv_view(est: Any) -> CVView:
    """The CV error of ``est`` (RidgeCV, LassoCV, ElasticNetCV) at every alpha tried."""
    import numpy as np

    path = getattr(est, "mse_path_", None)
    alphas = np.asarray(getattr(est, "alphas_", getattr(est, "alphas", None)), dtype=np.float64)
    se = getattr(est, "mse_se_", None)
    n_folds = getattr(est, "cv_folds_", None)  # n_samples for RidgeCV's leave-one-out
    path = np.asarray(path, dtype=np.float64)
    if alphas.ndim and alphas.shape[-1] == 1 and path.ndim == alphas.ndim:
        path = path[..., None, :]  # one alpha: scikit-learn squeezes its axis out of mse_path_
        se = None if se is None else np.asarray(se, dtype=np.float64)[..., None]
    mean = path.mean(axis=-1)
    if se is None:  # the estimators' own: std over folds (ddof=1) / sqrt(K)
        k = path.shape[-1]
        se = path.std(axis=-1, ddof=1) / np.sqrt(k) if k > 1 else None
    mean = np.atleast_2d(mean)
    se = None if se is None else np.atleast_2d(np.asarray(se, dtype=np.float64))
    alphas = np.broadcast_to(np.atleast_2d(alphas), mean.shape)
    ratios = getattr(est, "l1_ratio", None)
    l1_ratio = getattr(est, "l1_ratio_", None)
    l1_list = None
    labels = None
    if l1_ratio is not None:
        l1_list = [float(r) for r in np.atleast_1d(np.asarray(ratios, dtype=np.float64))]
        labels = [f"l1_ratio = {r:g}" for r in l1_list] if len(l1_list) > 1 else None
    return CVView(
        alphas,
        mean,
        se,
        # one alpha per target (RidgeCV(alpha_per_target=True)): no single row is chosen
        float(est.alpha_) if np.ndim(est.alpha_) == 0 else float("nan"),
        labels,
        l1_list,
        None if l1_ratio is None else float(l1_ratio),
        None if n_folds is None else int(n_folds),
    )


def cv_table(est: Any, max_rows: int | None = None) -> tuple[list[str], list[list[Any]]]:
    """The CV table: (l1_ratio,) alpha, mean CV MSE, its standard error, the chosen one marked.

    With ``max_rows``, each curve shows that many alphas, evenly spaced, and the chosen one.
    """
    import numpy as np

    v = cv_view(est)
    multi = v.l1_ratios is not None and len(v.l1_ratios) > 1
    rows: list[list[Any]] = []
    n = v.mean.shape[1]
    shown = list(range(n))
    # the first alpha equal to alpha_ on each curve (repeated alphas: one row marked)
    match = np.isclose(v.alphas, v.alpha, rtol=1e-12)
    first = [int(np.argmax(m)) if m.any() else -1 for m in match]
    if max_rows is not None and n > max_rows:
        picks = set(np.linspace(0, n - 1, max_rows).round().astype(int).tolist())
        picks |= {j for j in first if j >= 0}
        shown = sorted(int(j) for j in picks)
    for i in range(v.mean.shape[0]):
        ratio = v.l1_ratios[i] if multi and v.l1_ratios else v.l1_ratio
        for j in shown:
            a = float(v.alphas[i, j])
            chosen = j == first[i] and (ratio == v.l1_ratio or not multi)
            se = None if v.se is None else float(v.se[i, j])
            row: list[Any] = [a, float(v.mean[i, j]), se, "<- chosen" if chosen else ""]
            rows.append(([ratio] if multi else []) + row)
    score = getattr(est, "score_path_", None)  # RidgeCV: what alpha_ maximises
    if score is not None and np.ndim(score) == 1 and _ridge_scoring(est) != "MSE":
        for row in rows:
            a = row[-4]
            row.insert(-1, float(score[int(np.argmin(np.abs(v.alphas[0] - a)))]))
        headers = ["alpha", "mean CV MSE", "std err", f"mean CV {_ridge_scoring(est)}", ""]
    else:
        headers = ["alpha", "mean CV MSE", "std err", ""]
    return (["l1_ratio", *headers] if multi else headers), rows


def _ridge_scoring(est: Any) -> str:
    """What a RidgeCV's ``alpha_`` optimises: "MSE" or "R2"."""
    scoring = getattr(est, "scoring", None)
    if scoring == "r2" or (scoring is None and getattr(est, "cv", None) is not None):
        return "R2"  # scikit-learn's default score of K-fold RidgeCV
    return "MSE"


def cv_choice(est: Any) -> str:
    """One line: the chosen alpha (and l1_ratio), the folds and the selection rule."""
    import numpy as np

    v = cv_view(est)
    folds = "leave-one-out" if _loo(est) else f"{v.n_folds}-fold"
    rule = getattr(est, "selection_rule", "min")
    if type(est).__name__ == "RidgeCV" and _ridge_scoring(est) == "R2":
        what = "best mean CV R2" if rule == "min" else "largest alpha within 1 s.e. of the best R2"
    else:
        what = (
            "least mean CV error" if rule == "min" else "largest alpha within 1 s.e. of the least"
        )
    l1 = f", l1_ratio {v.l1_ratio:g}" if v.l1_ratio is not None else ""
    if np.ndim(est.alpha_):
        each = ", ".join(f"{float(a):.6g}" for a in np.ravel(est.alpha_))
        return f"chosen by {folds} cross-validation ({what}), per target: alpha {each}"
    return f"chosen by {folds} cross-validation ({what}): alpha {v.alpha:.6g}{l1}"


def cv_record(est: Any) -> dict[str, Any]:
    """The choice for metrics.json: alpha (l1_ratio), folds, rule, and its mean CV MSE."""
    import numpy as np

    v = cv_view(est)
    hit = np.isclose(v.alphas, v.alpha, rtol=1e-12)
    if v.l1_ratios and len(v.l1_ratios) > 1:
        hit &= (np.asarray(v.l1_ratios) == v.l1_ratio)[:, None]
    i, j = (int(k[0]) for k in np.nonzero(hit))
    out: dict[str, Any] = {
        "alpha": v.alpha,
        "folds": "leave-one-out" if _loo(est) else v.n_folds,
        "selection_rule": getattr(est, "selection_rule", "min"),
        "mean_cv_mse": float(v.mean[i, j]),
        "mean_cv_mse_se": None if v.se is None else float(v.se[i, j]),
    }
    if v.l1_ratio is not None:
        out["l1_ratio"] = v.l1_ratio
    return out


def _loo(est: Any) -> bool:
    return type(est).__name__ == "RidgeCV" and getattr(est, "cv", 0) is None


def cv_report(est: Any, max_rows: int | None = None) -> str:
    """The chosen penalty, the CV table and why there are no p-values, as printed text."""
    return "\n".join([cv_choice(est), format_table(*cv_table(est, max_rows)), NO_INFERENCE])


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
    if type(est).__name__ in CV_CLASSES:
        record = {**record, "cv": cv_record(est)}
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
    sections = []
    if type(est).__name__ in CV_CLASSES:
        images += _cv_plots(stage, est, encoder.output_names)
        sections.append(("Cross-validation", f"{cv_choice(est)}. {NO_INFERENCE}", *cv_table(est)))
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
        sections,
    )
    (stage / "report.html").write_text(page, encoding="utf-8")


def _cv_plots(stage: Path, est: Any, names: list[str]) -> list[tuple[Path, str]]:
    """The CV error against alpha and, where the model kept it, the coefficient paths."""
    import numpy as np

    from regtorch import plotting

    v = cv_view(est)
    ratios = v.l1_ratios or []
    i = ratios.index(v.l1_ratio) if v.l1_ratio in ratios and v.alphas.shape[0] > 1 else 0
    folds = "leave-one-out" if _loo(est) else f"{v.n_folds} folds"
    l1 = f"; chosen l1_ratio {v.l1_ratio:g}" if v.l1_ratio is not None and v.labels else ""
    out = [
        (
            plotting.plot_cv_error(
                v.alphas,
                v.mean,
                v.se,
                v.alpha,
                stage / "cv_error.png",
                labels=v.labels,
                title=f"Cross-validation error ({folds}{l1})",
                chosen=i,
            ),
            "cross-validation error against alpha",
        )
    ]
    path = getattr(est, "coef_path_", None)
    if path is not None:
        C = np.asarray(path, dtype=np.float64)
        title = "Coefficient paths" + (f" (l1_ratio {v.l1_ratio:g})" if v.l1_ratio else "")
        if C.ndim == 3:  # several targets: the first one's paths
            C, title = C[:, :, 0], title + " (first target)"
        out.append(
            (
                plotting.plot_coef_path(
                    v.alphas[i], C, v.alpha, stage / "coef_path.png", names=names, title=title
                ),
                "coefficient paths against alpha",
            )
        )
    return out
