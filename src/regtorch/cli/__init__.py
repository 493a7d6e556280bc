"""The ``regtorch`` command line. The only module that prints.

Heavy libraries (torch, scikit-learn, matplotlib, pyarrow) are imported inside the commands,
so ``regtorch --help`` and argument errors answer at once. Every problem a user can cause
ends with one line on stderr and exit code 2 (``--debug`` shows the traceback); so does a
failed write to standard output (closed, full). A reader that leaves early
(``regtorch predict ... --out - | head``) ends the command quietly with exit code 141, the
shell's code for SIGPIPE, so that ``set -o pipefail`` can tell the output was cut.
"""

from __future__ import annotations

import argparse
import codecs
import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a writer killed by a closed pipe
MODEL_FILE = "model.safetensors"
MODEL_KINDS = ("linear", "ridge", "lasso", "elasticnet", "mlp")
OUTPUT_TYPES = (".csv", ".parquet", ".pq")
METHOD_LABELS = {
    "sklearn": "scikit-learn LinearRegression",
    "reference": "reference recipe (Adam 1e-3, 10k epochs)",
    "fast": "regtorch fast default",
}


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


def _cmd_demo(args: argparse.Namespace) -> int:
    from regtorch.experiments import run_demo

    results = run_demo(out=args.out, progress=not args.json and sys.stderr.isatty())
    if args.json:
        _write_stdout(_json(results) + "\n")
        return 0
    print(demo_tables(results))
    if args.out:
        print(f"\nPlots and results.json written to {args.out}/")
    return 0


# ---------------------------------------------------------------- fit


def _estimator(args: argparse.Namespace) -> Any:
    """Map the flags to an estimator."""
    import regtorch

    seed = args.seed
    if args.model in ("linear", "ridge"):
        kw: dict[str, Any] = {"device": args.device}
        if args.solver:
            kw["solver"] = args.solver
        if args.epochs is not None:
            kw["max_iter"] = args.epochs
        if args.lr is not None:
            kw["learning_rate"] = args.lr
        kw["random_state"] = seed
        if args.model == "ridge":
            return regtorch.Ridge(alpha=1.0 if args.alpha is None else args.alpha, **kw)
        return regtorch.LinearRegression(**kw)
    if args.model in ("lasso", "elasticnet"):
        alpha = 1.0 if args.alpha is None else args.alpha
        kw = {"device": args.device}
        if args.epochs is not None:
            kw["max_iter"] = args.epochs
        if args.model == "lasso":
            return regtorch.Lasso(alpha=alpha, **kw)
        return regtorch.ElasticNet(alpha=alpha, l1_ratio=args.l1_ratio, **kw)
    kw = {"random_state": seed, "device": args.device, "verbose": sys.stderr.isatty()}
    if args.hidden:
        kw["hidden_layer_sizes"] = args.hidden
    if args.epochs is not None:
        kw["max_epochs"] = args.epochs
    if args.lr is not None:
        kw["learning_rate_init"] = args.lr
    if args.batch_size:
        kw["batch_size"] = None if args.batch_size == "full" else int(args.batch_size)
    if args.solver:
        kw["solver"] = args.solver
    if args.alpha is not None:
        kw["alpha"] = args.alpha
    return regtorch.MLPRegressor(**kw)


def _split(n: int, test_size: float, val_size: float, seed: int) -> tuple[Any, Any, Any]:
    import numpy as np

    if n < 3:
        raise UserError(f"The data have {n} usable row(s); fitting and testing need at least 3.")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = 0 if test_size == 0 else min(max(1, int(round(test_size * n))), n - 2)
    n_val = min(int(round(val_size * n)), n - n_test - 1)
    return perm[n_test + n_val :], perm[n_test : n_test + n_val], perm[:n_test]


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


def _memory_limit(args: argparse.Namespace) -> int:
    from regtorch.data.memory import default_memory_limit, parse_memory

    if args.memory_limit is None:
        return default_memory_limit()
    try:
        return parse_memory(args.memory_limit)
    except ValueError as exc:
        raise UserError(f"--memory-limit: {exc}") from None


def _wants_streaming(args: argparse.Namespace) -> bool:
    p = Path(args.data)
    if args.stream or p.is_dir() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return True
    # a file that would not fit comfortably in the budget once decoded
    return p.is_file() and p.stat().st_size * 4 > _memory_limit(args)


def _cmd_fit(args: argparse.Namespace) -> int:
    from regtorch.outputs import claim_output

    out = Path(args.out) if args.out else None
    # --out is checked and locked before the fit, and stays locked until its swap
    with claim_output(out, force=args.force, inputs=[args.data]):
        if _wants_streaming(args):
            return _fit_streaming(args, out)
        return _fit_in_memory(args, out)


def _fit_in_memory(args: argparse.Namespace, out: Path | None) -> int:
    from regtorch.data.schema import prepare, read_table

    df = read_table(args.data, sep=args.sep, encoding=args.encoding)
    targets = args.target.split(",")
    features = args.features.split(",") if args.features else None
    X, y, encoder, _ = prepare(
        df,
        targets,
        features,
        args.categorical,
        args.missing,
        args.unknown_category,
        max_levels=args.max_levels,
    )
    train_idx, val_idx, test_idx = _split(
        len(X), args.test_size, args.val_size if args.model == "mlp" else 0.0, args.seed
    )
    names = encoder.output_names
    import pandas as pd

    Xdf = pd.DataFrame(X, columns=names)
    y_fit = y[:, 0] if y.shape[1] == 1 else y
    est = _estimator(args)
    fit_kw: dict[str, Any] = {}
    if args.model == "mlp" and len(val_idx):
        fit_kw = {"X_val": Xdf.iloc[val_idx], "y_val": y_fit[val_idx]}
    est.fit(Xdf.iloc[train_idx], y_fit[train_idx], **fit_kw)
    # no test rows (--test-size 0): an empty prediction of the right shape
    pred = est.predict(Xdf.iloc[test_idx]) if len(test_idx) else y_fit[test_idx]
    metrics: dict[str, Any] = {}
    if len(test_idx):
        metrics["model"] = _metrics(y_fit[test_idx], pred)
        if not args.no_baseline:
            from sklearn.linear_model import LinearRegression as SkLinear

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                base = SkLinear().fit(X[train_idx], y_fit[train_idx])
            metrics["baseline (scikit-learn LinearRegression)"] = _metrics(
                y_fit[test_idx], base.predict(X[test_idx])
            )
    _say(
        f"{type(est).__name__} on {args.data}: {len(train_idx)} train, {len(val_idx)} "
        f"validation, {len(test_idx)} test rows; target {args.target}"
    )
    if metrics:
        _say(
            format_table(
                ["test metrics", "R2", "MSE", "RMSE", "MAE"],
                [
                    [k, *(_cell(m, c) for c in ("r2", "mse", "rmse", "mae"))]
                    for k, m in metrics.items()
                ],
            )
        )
    else:
        _say("No held-out rows (--test-size 0): no test metrics.")
    coef = _coef_table(est, names)
    if coef is not None:
        _say()
        _say(format_table(*coef))
    if out is None:
        return 0
    record = {
        "model": type(est).__name__,
        "target": targets,
        "features": encoder.features,
        "rows": {"train": len(train_idx), "validation": len(val_idx), "test": len(test_idx)},
        "seed": args.seed,
        "metrics": metrics,
    }
    _write_outputs(out, est, encoder, targets, record, y_fit[test_idx], pred, coef, args)
    _say(f"\nModel, metrics.json, plots and report.html written to {out}/")
    return 0


def _fit_streaming(args: argparse.Namespace, out: Path | None) -> int:
    """One pass over a table larger than memory (and over ranks, under torchrun)."""
    if args.model not in ("linear", "ridge", "mlp"):
        raise UserError(
            f"--model {args.model}: out-of-core and distributed fits support linear, ridge "
            "(one pass over a mergeable state) and mlp; fit lasso and elasticnet in memory."
        )
    if args.categorical != "error":
        raise UserError(
            "--categorical onehot needs the whole table in memory; drop the text columns."
        )
    if codecs.lookup(args.encoding).name != "utf-8":
        raise UserError(
            f"--encoding {args.encoding}: the streamed reader reads UTF-8 only; convert the "
            "file (e.g. iconv -f latin1 -t utf-8) or fit it in memory."
        )
    from regtorch import distributed

    distributed.init_from_env(args.device, timeout_s=args.timeout)
    try:
        return _fit_streaming_in_group(args, out)
    except RuntimeError as exc:
        if distributed.world_size() > 1 and not isinstance(exc, UserError):
            # a collective broke: usually another rank stopped (its own message says why)
            raise UserError(
                f"rank {distributed.rank()} lost the other processes ({str(exc).splitlines()[0][:120]}); "
                "another rank probably stopped with an error, see its message."
            ) from exc
        raise
    finally:
        distributed.shutdown()


def _fit_streaming_in_group(args: argparse.Namespace, out: Path | None) -> int:
    from regtorch import distributed
    from regtorch.data.table import TableSource
    from regtorch.linear.streamed import stream_fit_linear
    from regtorch.metrics import stream_metrics
    from regtorch.nn.streamed import stream_fit_mlp

    rank, world = distributed.rank(), distributed.world_size()
    source = TableSource(
        args.data,
        args.target.split(","),
        args.features.split(",") if args.features else None,
        memory_limit=_memory_limit(args),
        sep=args.sep,
        encoding=getattr(args, "encoding", "utf-8"),
    )
    est = _estimator(args)
    fit_stream: Any
    if args.model == "mlp":
        est.set_params(verbose=False)
        fit_stream = stream_fit_mlp
        extra_kw: dict[str, Any] = {"val_fraction": args.val_size}
    else:
        fit_stream, extra_kw = stream_fit_linear, {}
    info = fit_stream(
        est,
        source,
        missing=args.missing,
        test_fraction=args.test_size,
        seed=args.seed,
        progress=sys.stderr.isatty(),
        **extra_kw,
    )
    import numpy as np

    metrics: dict[str, float] = {}
    y_s = p_s = np.zeros((0, len(source.targets)))
    if args.test_size > 0:  # a second pass, over the held-out rows
        metrics, y_s, p_s = stream_metrics(
            est, source, test_fraction=args.test_size, seed=args.seed, missing=args.missing
        )
    if rank != 0:
        return 0
    # rows processed per second: every epoch's rows for the MLP
    done = info.get("rows_read", info["rows_fit"] * info.get("epochs", 1))
    rate = done * (world if "rows_read" in info else 1) / max(info["seconds"], 1e-9)
    _say(
        f"{type(est).__name__} (streamed, {world} process{'es' if world > 1 else ''}, "
        f"batches of {info['batch_rows']} rows) on {args.data}: {info['rows_fit']} train "
        f"rows, {rate:,.0f} rows/s; held-out test share {args.test_size:g}"
    )
    m = {"model": strict_metrics(metrics)}
    if metrics:
        _say(
            format_table(
                ["test metrics", "R2", "MSE", "RMSE", "MAE"],
                [[k, *(_cell(v, c) for c in ("r2", "mse", "rmse", "mae"))] for k, v in m.items()],
            )
        )
    else:
        m = {}
        _say("No held-out rows (--test-size 0): no test metrics.")
    names = list(source.features)
    coef = _coef_table(est, names)
    if coef is not None:
        _say()
        _say(format_table(*coef))
    if out is not None:
        from regtorch.data.schema import Encoder

        record = {
            "model": type(est).__name__,
            "target": source.targets,
            "features": names,
            "rows": {"train": info["rows_fit"], "validation": 0, "test": None},
            "seed": args.seed,
            "metrics": m,
            "streaming": {**info, "world_size": world},
        }
        y_t = y_s[:, 0] if y_s.shape[1] == 1 else y_s
        p_t = p_s[:, 0] if p_s.shape[1] == 1 else p_s
        _write_outputs(out, est, Encoder(names, {}), source.targets, record, y_t, p_t, coef, args)
        _say(f"\nModel, metrics.json, plots and report.html written to {out}/")
    return 0


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
    page = render_report(
        f"regtorch fit: {record['model']}",
        info,
        record["metrics"],
        coef[0] if coef else None,
        coef[1] if coef else None,
        images,
    )
    (stage / "report.html").write_text(page, encoding="utf-8")


# ---------------------------------------------------------------- predict / evaluate / summary


def _load(path: str) -> Any:
    from regtorch.io import load

    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    return load(p)


def _encoder(est: Any) -> Any:
    from regtorch.data.schema import Encoder

    enc = est.model_extra_.get("encoder")
    if enc is None:  # saved from Python without the CLI's encoder: columns are the features
        names = [str(f) for f in getattr(est, "feature_names_in_", [])] or [
            f"x{i}" for i in range(est.n_features_in_)
        ]
        return Encoder(names, {})
    return Encoder.from_dict(enc)


def _cmd_predict(args: argparse.Namespace) -> int:
    dest = args.out
    if dest != "-":
        if Path(dest).suffix.lower() not in OUTPUT_TYPES:
            raise UserError(f"--out {dest}: write .csv or .parquet (or - for standard output).")
        if Path(dest).exists() and not args.force:
            raise UserError(f"{dest} exists; use --force to replace it.")
    est = _load(args.model)
    from regtorch.data.schema import read_table

    enc = _encoder(est)
    if args.unknown_category:
        enc.unknown = args.unknown_category
    # a category column is text whatever it looks like now: "1" stays "1", not 1.0
    df = read_table(args.data, sep=args.sep, encoding=args.encoding, text_columns=enc.categories)
    import numpy as np
    import pandas as pd

    X = pd.DataFrame(enc.transform(df), columns=enc.output_names)
    pred = est.predict(X)
    if not args.allow_nonfinite:
        _check_finite_predictions(pred, df, np.arange(len(df)), "write them")
    targets = est.model_extra_.get("target") or ["y"]
    cols = [f"{t}_pred" for t in targets] if pred.ndim == 2 else [f"{targets[0]}_pred"]
    table = pd.DataFrame(pred.reshape(len(X), -1), columns=cols)
    if dest == "-":
        _write_stdout(table.to_csv(index=False))
        return 0
    import io as _io

    from regtorch._files import write_bytes_atomic

    buf = _io.BytesIO()
    if Path(dest).suffix.lower() == ".csv":
        table.to_csv(buf, index=False)
    else:
        table.to_parquet(buf, index=False)
    write_bytes_atomic(dest, buf.getvalue())
    print(f"{len(table)} predictions written to {dest}", file=sys.stderr)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    est = _load(args.model)
    from regtorch.data.schema import prepare, read_table

    enc = _encoder(est)
    targets = args.target.split(",") if args.target else est.model_extra_.get("target")
    if not targets:
        raise UserError("Give the target column with --target.")
    df = read_table(args.data, sep=args.sep, encoding=args.encoding, text_columns=enc.categories)
    X, y, _, kept = prepare(df, targets, missing=args.missing, encoder=enc)
    import numpy as np
    import pandas as pd

    pred = est.predict(pd.DataFrame(X, columns=enc.output_names))
    if not args.allow_nonfinite:
        _check_finite_predictions(pred, df, np.flatnonzero(kept), "compute the metrics")
    m = _metrics(y[:, 0] if y.shape[1] == 1 else y, pred)
    if args.json:
        _write_stdout(_json(m) + "\n")
    else:
        rows = [[k.upper() if k != "r2" else "R2", _cell(m, k)] for k in m if "_note" not in k]
        _write_stdout(format_table(["metric", "value"], rows) + "\n")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    est = _load(args.model)
    name = type(est).__name__
    names = [str(n) for n in getattr(est, "feature_names_in_", [])] or [
        f"x{i}" for i in range(est.n_features_in_)
    ]
    print(
        f"{name}; {est.n_features_in_} features; target {', '.join(est.model_extra_.get('target') or ['?'])}"
    )
    if name != "MLPRegressor":
        table = _coef_table(est, names)
        if table is not None:
            print(format_table(*table))
        if name == "LinearRegression" and getattr(est, "_R", None) is not None:
            s = est.summary()
            print(
                f"R2 {s.rsquared:.6g}, adj. R2 {s.rsquared_adj:.6g}, F {s.fvalue:.6g} "
                f"(p {s.f_pvalue:.3g}), residual std. error {s.resid_std_err:.6g}, "
                f"df {s.df_resid:g}"
            )
        return 0
    n_params = sum(p.numel() for p in est.module_.parameters())
    h = est.history_
    print(
        f"MLP {est.n_features_in_} -> {' -> '.join(map(str, est.module_.hidden_layer_sizes))} "
        f"-> {est._n_outputs}, activation {est.module_.activation}, {n_params} parameters"
    )
    if len(h) == 0:
        print("interrupted before the first epoch completed: the weights are the initial ones")
        return 0
    print(f"trained {len(h)} epochs (solver {est.solver}); weights of epoch {est.best_epoch_}")
    rows = [
        [e + 1, h.train_loss[e], h.val_loss[e] if h.val_loss else None, h.lr[e]]
        for e in sorted({0, len(h) // 4, len(h) // 2, 3 * len(h) // 4, len(h) - 1})
    ]
    print(format_table(["epoch", "train loss", "val loss", "lr"], rows))
    return 0


# ---------------------------------------------------------------- parser and main


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hidden takes widths like 64,64; got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden takes positive widths like 64,64; got {text!r}")
    return sizes


def _batch_size(text: str) -> str:
    if text != "full" and not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full', got {text!r}")
    return text


def _encoding(text: str) -> str:
    try:
        codecs.lookup(text)
    except LookupError:
        raise argparse.ArgumentTypeError(f"unknown text encoding {text!r}") from None
    return text


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _seed(text: str) -> int:
    if not text.isdigit() or int(text) >= 2**63:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer below 2**63, got {text!r}"
        )
    return int(text)


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="regtorch", description="Regression with PyTorch: exact linear models, fast MLPs."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo", help="reproduce the reference experiments (line, sine) side by side"
    )
    demo.add_argument("--out", metavar="DIR", help="write plots and results.json to DIR")
    demo.add_argument("--json", action="store_true", help="print the results as JSON")
    demo.set_defaults(func=_cmd_demo)

    def data_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--sep", help="CSV delimiter (default: sniffed)")
        p.add_argument(
            "--encoding",
            type=_encoding,
            default="utf-8",
            help="text encoding of a CSV file, e.g. latin-1 (default utf-8; UTF-16 with a "
            "byte-order mark is recognised)",
        )
        p.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show tracebacks on errors",
        )

    fit = sub.add_parser(
        "fit", help="fit a model to a CSV/Parquet/NumPy table, evaluate and save it"
    )
    fit.add_argument("data", help="CSV, Parquet, .npy or .npz file")
    fit.add_argument("--target", required=True, help="target column (comma-separated for several)")
    fit.add_argument("--features", help="comma-separated input columns (default: all others)")
    fit.add_argument("--model", choices=MODEL_KINDS, default="linear")
    fit.add_argument(
        "--alpha", type=float, help="penalty (ridge, lasso, elasticnet) or weight decay (mlp)"
    )
    fit.add_argument("--l1-ratio", type=float, default=0.5, help="elasticnet's L1 share")
    fit.add_argument("--hidden", type=_hidden, help="MLP hidden widths, e.g. 64,64")
    fit.add_argument("--epochs", type=int, help="MLP epochs / gradient solvers' iterations")
    fit.add_argument("--lr", type=float, help="learning rate (MLP, gradient solvers)")
    fit.add_argument("--batch-size", type=_batch_size, help="MLP batch size: an int or 'full'")
    fit.add_argument(
        "--solver",
        help="linear: auto, qr, svd, cholesky, lbfgs, adam; mlp: adam, adamw, sgd, lbfgs",
    )
    fit.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    fit.add_argument("--seed", type=_seed, default=0, help="seed of the split and the model")
    fit.add_argument("--test-size", type=_fraction, default=0.2, help="test share (default 0.2)")
    fit.add_argument(
        "--val-size", type=_fraction, default=0.1, help="MLP validation share (default 0.1)"
    )
    fit.add_argument(
        "--categorical",
        choices=("error", "onehot"),
        default="error",
        help="string feature columns: an error (default) or one-hot encoding",
    )
    fit.add_argument(
        "--unknown-category",
        choices=("error", "ignore"),
        default="error",
        help="at predict time, an unseen category: an error or all zeros",
    )
    fit.add_argument(
        "--max-levels",
        type=_positive_int,
        default=1000,
        help="most distinct values a one-hot column may have (default 1000); the encoded "
        "table must also fit in a quarter of the available memory "
        "(the environment variable REGTORCH_MAX_DESIGN_BYTES sets that limit in bytes)",
    )
    fit.add_argument(
        "--missing",
        choices=("error", "drop"),
        default="error",
        help="rows with missing values: an error (default) or dropped",
    )
    fit.add_argument("--no-baseline", action="store_true", help="skip the scikit-learn baseline")
    fit.add_argument(
        "--stream",
        action="store_true",
        help="read the data in batches (automatic for folders, files larger than "
        "the memory limit, and under torchrun); linear and ridge",
    )
    fit.add_argument(
        "--memory-limit",
        metavar="SIZE",
        help="memory budget of the whole streaming process (Python, torch and the batches), "
        "e.g. 2GB (default: RAM / 4); a budget below what the process needs is refused, "
        "naming the minimum",
    )
    fit.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds a rank waits for the others under torchrun (default 300)",
    )
    fit.add_argument("--out", metavar="DIR", help="write the model, metrics, plots and report.html")
    fit.add_argument("--force", action="store_true", help="replace an existing model in DIR")
    fit.add_argument(
        "--save-interrupted",
        action="store_true",
        help="if Ctrl-C stops an MLP fit, still replace DIR's model with the interrupted one",
    )
    data_opts(fit)
    fit.set_defaults(func=_cmd_fit)

    pred = sub.add_parser("predict", help="predict with a saved model")
    pred.add_argument("model", help="model file (or the folder `fit --out` wrote)")
    pred.add_argument("data", help="CSV, Parquet, .npy or .npz file")
    pred.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help=".csv, .parquet, or - for stdout (a reader that leaves early, as `| head` does, "
        "ends the command quietly with exit code 141; a closed stdout is an error)",
    )
    pred.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="write inf/NaN predictions instead of stopping with an error naming their rows",
    )
    pred.add_argument("--force", action="store_true", help="replace an existing FILE")
    pred.add_argument(
        "--unknown-category",
        choices=("error", "ignore"),
        help="override the model's rule for unseen categories",
    )
    data_opts(pred)
    pred.set_defaults(func=_cmd_predict)

    ev = sub.add_parser("evaluate", help="metrics of a saved model on a labelled table")
    ev.add_argument("model")
    ev.add_argument("data")
    ev.add_argument("--target", help="target column (default: the model's)")
    ev.add_argument("--missing", choices=("error", "drop"), default="error")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="compute metrics (null, with a note) even if some predictions are inf/NaN",
    )
    data_opts(ev)
    ev.set_defaults(func=_cmd_evaluate)

    sm = sub.add_parser("summary", help="coefficients (linear) or architecture and history (MLP)")
    sm.add_argument("model")
    sm.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    sm.set_defaults(func=_cmd_summary)
    return parser


def _one_line_warning(
    message: Any,
    category: Any,
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    print(f"regtorch: warning: {message}", file=sys.stderr)


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


def _check_stdout_open(args: argparse.Namespace) -> None:
    """Refuse to run a command whose results go to a closed standard output."""
    if sys.stdout is not None:
        return
    if args.func in (_cmd_summary, _cmd_evaluate):
        raise UserError("standard output is closed; nothing was written (keep stdout open).")
    if args.func in (_cmd_fit, _cmd_demo) and getattr(args, "out", None) is None:
        raise UserError("standard output is closed; nothing was written (give --out DIR).")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``regtorch`` command."""
    from regtorch.outputs import InterruptedFit

    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _one_line_warning
    try:
        _check_stdout_open(args)
        _Stdout.broken = False
        code = int(args.func(args))
        if sys.stdout is not None:
            sys.stdout.flush()  # a write error still pending is an error, not exit 0
        return EXIT_BROKEN_PIPE if _Stdout.broken and code == 0 else code
    except KeyboardInterrupt:
        print("regtorch: interrupted", file=sys.stderr)
        return 130
    except InterruptedFit as exc:  # Ctrl-C stopped the training loop, which kept its weights
        print(f"regtorch: interrupted: {exc}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `regtorch predict ... --out - | head`: the reader left
        # quietly, with the shell's code for SIGPIPE, so `set -o pipefail` sees the cut;
        # stdout now points at /dev/null so that the flush at exit cannot fail again
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if args.debug:
            raise
        user = isinstance(exc, (UserError, ValueError, TypeError, OSError))
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not user:
            msg = f"internal error ({type(exc).__name__}): {msg}; rerun with --debug for details"
        print(f"regtorch: error: {msg}", file=sys.stderr)
        return EXIT_USAGE if user else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
