"""The ``regtorch`` command line. The only module that prints.

Heavy libraries (torch, scikit-learn, matplotlib, pyarrow) are imported inside the commands,
so ``regtorch --help`` and argument errors answer at once. Every problem a user can cause
ends with one line on stderr and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

EXIT_USAGE = 2
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
        print(json.dumps(results, indent=2))
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
        if args.epochs:
            kw["max_iter"] = args.epochs
        if args.lr:
            kw["learning_rate"] = args.lr
        kw["random_state"] = seed
        if args.model == "ridge":
            return regtorch.Ridge(alpha=1.0 if args.alpha is None else args.alpha, **kw)
        return regtorch.LinearRegression(**kw)
    if args.model in ("lasso", "elasticnet"):
        alpha = 1.0 if args.alpha is None else args.alpha
        kw = {"device": args.device}
        if args.epochs:
            kw["max_iter"] = args.epochs
        if args.model == "lasso":
            return regtorch.Lasso(alpha=alpha, **kw)
        return regtorch.ElasticNet(alpha=alpha, l1_ratio=args.l1_ratio, **kw)
    kw = {"random_state": seed, "device": args.device, "verbose": sys.stderr.isatty()}
    if args.hidden:
        kw["hidden_layer_sizes"] = args.hidden
    if args.epochs:
        kw["max_epochs"] = args.epochs
    if args.lr:
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


def _metrics(y_true: Any, y_pred: Any) -> dict[str, float | None]:
    from regtorch.metrics import regression_report

    res = regression_report(y_true, y_pred, force_finite=False)
    # R2 of a constant target is undefined: null, not a crash and not a made-up number
    return {k: (None if not math.isfinite(v) else v) for k, v in res.items()}


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
    from regtorch.streaming import default_memory_limit, parse_memory

    return parse_memory(args.memory_limit) if args.memory_limit else default_memory_limit()


def _wants_streaming(args: argparse.Namespace) -> bool:
    p = Path(args.data)
    if args.stream or p.is_dir() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return True
    # a file that would not fit comfortably in the budget once decoded
    return p.is_file() and p.stat().st_size * 4 > _memory_limit(args)


def _cmd_fit(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and (out / MODEL_FILE).exists() and not args.force:
        raise UserError(f"{out / MODEL_FILE} exists; use --force to replace it.")
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder.")
    if _wants_streaming(args):
        return _fit_streaming(args, out)
    from regtorch.data import prepare, read_table

    df = read_table(args.data, sep=args.sep)
    targets = args.target.split(",")
    features = args.features.split(",") if args.features else None
    X, y, encoder, _ = prepare(
        df, targets, features, args.categorical, args.missing, args.unknown_category
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
    print(
        f"{type(est).__name__} on {args.data}: {len(train_idx)} train, {len(val_idx)} "
        f"validation, {len(test_idx)} test rows; target {args.target}"
    )
    if metrics:
        print(
            format_table(
                ["test metrics", "R2", "MSE", "RMSE", "MAE"],
                [[k, m["r2"], m["mse"], m["rmse"], m["mae"]] for k, m in metrics.items()],
            )
        )
    else:
        print("No held-out rows (--test-size 0): no test metrics.")
    coef = _coef_table(est, names)
    if coef is not None:
        print()
        print(format_table(*coef))
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
    print(f"\nModel, metrics.json, plots and report.html written to {out}/")
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
    from regtorch.streaming import TableSource, stream_fit_linear, stream_fit_mlp, stream_metrics

    rank, world = distributed.rank(), distributed.world_size()
    source = TableSource(
        args.data,
        args.target.split(","),
        args.features.split(",") if args.features else None,
        memory_limit=_memory_limit(args),
        sep=args.sep,
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
    print(
        f"{type(est).__name__} (streamed, {world} process{'es' if world > 1 else ''}, "
        f"batches of {info['batch_rows']} rows) on {args.data}: {info['rows_fit']} train "
        f"rows, {rate:,.0f} rows/s; held-out test share {args.test_size:g}"
    )
    m = {"model": {k: (None if not math.isfinite(v) else v) for k, v in metrics.items()}}
    if metrics:
        print(
            format_table(
                ["test metrics", "R2", "MSE", "RMSE", "MAE"],
                [[k, v["r2"], v["mse"], v["rmse"], v["mae"]] for k, v in m.items()],
            )
        )
    else:
        m = {}
        print("No held-out rows (--test-size 0): no test metrics.")
    names = list(source.features)
    coef = _coef_table(est, names)
    if coef is not None:
        print()
        print(format_table(*coef))
    if out is not None:
        from regtorch.data import Encoder

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
        print(f"\nModel, metrics.json, plots and report.html written to {out}/")
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
    """Render everything into a staging folder, then move the files into ``out``."""
    import regtorch
    from regtorch import plotting
    from regtorch.report import render_report

    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".regtorch-", dir=out))
    try:
        regtorch.save(
            est,
            stage / MODEL_FILE,
            extra={
                "encoder": encoder.to_dict(),
                "target": targets,
                "metrics": record["metrics"],
            },
        )
        (stage / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
        images = []
        if hasattr(est, "history_"):
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
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------- predict / evaluate / summary


def _load(path: str) -> Any:
    from regtorch.io import load

    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    return load(p)


def _encoder(est: Any) -> Any:
    from regtorch.data import Encoder

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
    from regtorch.data import read_table

    enc = _encoder(est)
    if args.unknown_category:
        enc.unknown = args.unknown_category
    df = read_table(args.data, sep=args.sep)
    import pandas as pd

    X = pd.DataFrame(enc.transform(df), columns=enc.output_names)
    pred = est.predict(X)
    targets = est.model_extra_.get("target") or ["y"]
    cols = [f"{t}_pred" for t in targets] if pred.ndim == 2 else [f"{targets[0]}_pred"]
    table = pd.DataFrame(pred.reshape(len(X), -1), columns=cols)
    if dest == "-":
        table.to_csv(sys.stdout, index=False)
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
    from regtorch.data import prepare, read_table

    enc = _encoder(est)
    targets = args.target.split(",") if args.target else est.model_extra_.get("target")
    if not targets:
        raise UserError("Give the target column with --target.")
    df = read_table(args.data, sep=args.sep)
    X, y, _, _ = prepare(df, targets, missing=args.missing, encoder=enc)
    import pandas as pd

    pred = est.predict(pd.DataFrame(X, columns=enc.output_names))
    m = _metrics(y[:, 0] if y.shape[1] == 1 else y, pred)
    if args.json:
        print(json.dumps(m, indent=2))
    else:
        print(
            format_table(
                ["metric", "value"], [[k.upper() if k != "r2" else "R2", v] for k, v in m.items()]
            )
        )
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


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
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
        help="memory budget that sizes the batches, e.g. 2GB (default: RAM / 4)",
    )
    fit.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds a rank waits for the others under torchrun (default 300)",
    )
    fit.add_argument("--out", metavar="DIR", help="write the model, metrics, plots and report.html")
    fit.add_argument("--force", action="store_true", help="replace an existing model in DIR")
    data_opts(fit)
    fit.set_defaults(func=_cmd_fit)

    pred = sub.add_parser("predict", help="predict with a saved model")
    pred.add_argument("model", help="model file (or the folder `fit --out` wrote)")
    pred.add_argument("data", help="CSV, Parquet, .npy or .npz file")
    pred.add_argument(
        "--out", required=True, metavar="FILE", help=".csv, .parquet, or - for stdout"
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``regtorch`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _one_line_warning
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("regtorch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `regtorch predict ... --out - | head`: the reader left
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
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
