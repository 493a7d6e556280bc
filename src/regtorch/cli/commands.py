"""``regtorch demo``, ``predict``, ``evaluate`` and ``summary``: the commands beside ``fit``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from regtorch.cli.present import (
    CV_CLASSES,
    MODEL_FILE,
    UserError,
    _cell,
    _check_finite_predictions,
    _coef_table,
    _json,
    _metrics,
    _write_stdout,
    cv_report,
    demo_tables,
    format_table,
)

OUTPUT_TYPES = (".csv", ".parquet", ".pq")


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
    targets = ", ".join(est.model_extra_.get("target") or ["?"])
    print(f"{name}; {est.n_features_in_} features; target {targets}")
    if name in CV_CLASSES:
        print(cv_report(est))
        print()
        coef = _coef_table(est, names)
        if coef is not None:
            print(format_table(*coef))
        return 0
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
