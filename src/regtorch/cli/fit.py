"""``regtorch fit``: map the flags to an estimator, split the rows, fit, report and save.

Every fit, in memory or streamed, on one process or many, puts a row in train, validation
or test by the one rule of :mod:`regtorch.data.split`: a seeded hash of the row's index in
the file (counted before rows with missing values are dropped), so the same command gives
the same rows and the same metrics whichever path reads the data.
"""

from __future__ import annotations

import argparse
import codecs
import os
import sys
from pathlib import Path
from typing import Any

from regtorch.cli.parser import CV_KINDS
from regtorch.cli.present import (
    CV_CLASSES,
    UserError,
    _coef_table,
    _metrics,
    _say,
    _write_outputs,
    cv_report,
    format_table,
    metrics_table,
)

TRAIN, VALIDATION, TEST = 0, 1, 2  # the parts of regtorch.data.split.assign


def _estimator(args: argparse.Namespace) -> Any:
    """Map the flags to an estimator."""
    import regtorch

    seed = args.seed
    if args.model in CV_KINDS:
        return _cv_estimator(args)
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
        l1 = args.l1_ratio[0] if args.l1_ratio else 0.5  # one value: _check_cv_flags
        return regtorch.ElasticNet(alpha=alpha, l1_ratio=l1, **kw)
    kw = {
        "random_state": seed,
        "device": args.device,
        "verbose": sys.stderr.isatty() or bool(getattr(args, "verbose", False)),
    }
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
    if args.checkpoint:
        kw["checkpoint_path"] = args.checkpoint
        kw["checkpoint_every"] = args.checkpoint_every
    watch = _watch_callbacks(args)
    if watch:
        kw["callbacks"] = watch
    return regtorch.MLPRegressor(**kw)


def _cv_estimator(args: argparse.Namespace) -> Any:
    """``RidgeCV``, ``LassoCV`` or ``ElasticNetCV`` from the flags (checked by
    :func:`_check_cv_flags`); int ``--cv`` folds are replaced by explicit ones in memory."""
    import regtorch

    kw: dict[str, Any] = {"cv": args.cv, "selection_rule": args.selection_rule}
    if args.alphas:
        kw["alphas"] = list(args.alphas)
    kw["random_state"] = args.seed  # the hash folds of a streamed fit (in memory: explicit)
    if args.model == "ridgecv":
        # chosen by the mean held-out MSE, as lassocv (scikit-learn's K-fold default is R2)
        scoring = None if args.cv is None else "neg_mean_squared_error"
        return regtorch.RidgeCV(
            scoring=scoring, device=args.device, **kw
        )  # the hash folds of a streamed fit (in memory: explicit)
    if args.n_alphas is not None:
        kw["alphas"] = args.n_alphas  # scikit-learn 1.9: an int sizes the automatic grid
    if args.epochs is not None:
        kw["max_iter"] = args.epochs
    if args.model == "lassocv":
        return regtorch.LassoCV(**kw)
    ratios = list(args.l1_ratio) if args.l1_ratio else [0.5]
    return regtorch.ElasticNetCV(l1_ratio=ratios[0] if len(ratios) == 1 else ratios, **kw)


def _check_model_flags(args: argparse.Namespace) -> None:
    """Refuse flags the chosen model would ignore (the network's on the linear models, the
    solver's on the CV models), then the CV flags (:func:`_check_cv_flags`)."""
    from regtorch.cli.parser import NOT_GIVEN

    cv_given = args.cv is not NOT_GIVEN
    rule_given = args.selection_rule is not NOT_GIVEN
    args.cv = 5 if not cv_given else args.cv
    args.selection_rule = "min" if not rule_given else args.selection_rule
    solvers = {"mlp", "linear", "ridge"}  # the models with a choice of solver
    takes = {
        "--hidden": {"mlp"},
        "--batch-size": {"mlp"},
        "--solver": solvers,
        "--lr": solvers,
        "--epochs": solvers | {"lasso", "elasticnet", "lassocv", "elasticnetcv"},
    }
    given = {
        "--hidden": args.hidden,
        "--batch-size": args.batch_size,
        "--solver": args.solver,
        "--lr": args.lr is not None,
        "--epochs": args.epochs is not None,
    }
    for flag, models in takes.items():
        if given[flag] and args.model not in models:
            raise UserError(
                f"{flag}: --model {args.model} does not take it (it is for --model "
                f"{', '.join(sorted(models))})."
            )
    _check_cv_flags(args, cv_given, rule_given)


def _check_cv_flags(args: argparse.Namespace, cv_given: bool, rule_given: bool) -> None:
    """Refuse CV flags on other models and flags the CV models do not take."""
    model = args.model
    if model not in CV_KINDS:
        for flag, given in (
            ("--alphas", args.alphas),
            ("--n-alphas", args.n_alphas),
            ("--cv", cv_given),
            ("--selection-rule", rule_given),
        ):
            if given:
                raise UserError(
                    f"{flag}: only the cross-validated models (--model ridgecv, lassocv, "
                    f"elasticnetcv) take it, not --model {model}."
                )
        if args.l1_ratio is not None and len(args.l1_ratio) > 1:
            raise UserError(
                f"--l1-ratio {','.join(map(str, args.l1_ratio))}: --model {model} takes one "
                "value; a list is for --model elasticnetcv, which chooses among them."
            )
        if args.l1_ratio is not None and model != "elasticnet":
            raise UserError(f"--l1-ratio: --model {model} has no L1 share (elasticnet does).")
        return
    if args.alpha is not None:
        raise UserError(
            f"--alpha: --model {model} chooses alpha by cross-validation; give the "
            "candidates with --alphas (or --n-alphas)."
        )
    if args.cv is None and model != "ridgecv":
        raise UserError("--cv loo: only ridgecv has an efficient leave-one-out; give --cv K.")
    if model == "ridgecv" and args.n_alphas is not None:
        raise UserError("--n-alphas: ridgecv has no automatic grid; give --alphas 0.1,1,10.")
    if args.alphas and args.n_alphas is not None:
        raise UserError("--alphas and --n-alphas: give one (--n-alphas sizes the automatic grid).")
    if args.l1_ratio is not None and model != "elasticnetcv":
        raise UserError(f"--l1-ratio: --model {model} has no L1 share (elasticnetcv does).")
    if model != "ridgecv" and "," in args.target:
        raise UserError(
            f"--target {args.target}: --model {model} fits one target; fit one model per "
            "target, or use --model ridgecv (several targets, one alpha)."
        )
    if model == "elasticnetcv" and args.l1_ratio and 0.0 in args.l1_ratio and not args.alphas:
        raise UserError(
            "--l1-ratio 0: the automatic alpha grid needs an L1 share > 0 (its largest alpha "
            "is infinite for a pure ridge penalty); give --alphas, or use --model ridgecv."
        )


def _cv_folds(args: argparse.Namespace, rows: Any) -> Any:
    """The folds of an in-memory CV fit as (train, test) positions among the training rows.

    Drawn by :func:`regtorch.data.split.fold_of` on the rows' indices in the file, as a
    streamed fit draws them, so both make the same folds and choose the same alpha.
    """
    import numpy as np

    from regtorch.data.split import fold_of
    from regtorch.linear.folds import check_fold_sizes

    what = f"--cv {args.cv}"
    try:
        check_fold_sizes(args.cv, len(rows), None, what)  # before counting (K may be huge)
        folds = fold_of(np.asarray(rows, dtype=np.int64), args.seed, args.cv, args.test_size)
        sizes = np.bincount(folds, minlength=args.cv)
        check_fold_sizes(args.cv, len(rows), int(sizes.min()), what)
    except ValueError as e:
        raise UserError(str(e)) from None
    return [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(args.cv)]


def _watch_callbacks(args: argparse.Namespace) -> list[Any]:
    """``--log-csv`` and ``--tensorboard`` as callbacks (checked by :func:`_check_watch`)."""
    from regtorch.nn.callbacks import CSVLogger, TensorBoardLogger

    watch: list[Any] = []
    if getattr(args, "log_csv", None):
        watch.append(CSVLogger(args.log_csv))
    if getattr(args, "tensorboard", None):
        watch.append(TensorBoardLogger(args.tensorboard))
    return watch


def _check_watch(args: argparse.Namespace) -> None:
    """Refuse ``--log-csv`` / ``--tensorboard`` for one-pass models, bad paths, a log file
    that exists (without --force or a resume) and a missing tensorboard package."""
    from regtorch.nn.callbacks import TENSORBOARD_HINT, check_log_file, summary_writer

    csv, tb = getattr(args, "log_csv", None), getattr(args, "tensorboard", None)
    if (csv or tb) and args.model != "mlp":
        flag = "--log-csv" if csv else "--tensorboard"
        raise UserError(f"{flag}: --model {args.model} fits in one pass; it has no epochs to log.")
    out = os.path.abspath(args.out) if args.out else None
    for flag, where in (("--log-csv", csv), ("--tensorboard", tb)):
        # --out DIR is replaced as a whole when the fit ends
        if where and out and Path(os.path.abspath(where)).is_relative_to(out):
            raise UserError(f"{flag} {where}: is inside --out {args.out}; write it elsewhere.")
    if csv:
        try:
            path = check_log_file(csv, "--log-csv")
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if path.is_file() and not args.force and _resume_from(args) is None:
            raise UserError(f"--log-csv {path}: the file exists; pass --force to replace it.")
    if tb:
        if Path(tb).exists() and not Path(tb).is_dir():
            raise UserError(f"--tensorboard {tb}: is a file; give a folder.")
        try:
            summary_writer()
        except ImportError:
            raise UserError(
                f"--tensorboard needs the tensorboard package: {TENSORBOARD_HINT}"
            ) from None


def _resume_from(args: argparse.Namespace) -> str | None:
    """``--checkpoint FILE`` resumes from FILE when it exists (e.g. after a torchrun restart)."""
    if not args.checkpoint:
        return None
    if args.model != "mlp":
        raise UserError(f"--checkpoint: --model {args.model} fits in one pass; it has no epochs.")
    path = Path(args.checkpoint)
    if path.is_dir():
        raise UserError(f"--checkpoint {path}: is a folder; give a file name, e.g. {path}/run.ckpt")
    if not path.parent.is_dir():
        raise UserError(f"--checkpoint {path}: the folder {path.parent} does not exist.")
    return str(path) if path.is_file() else None


def _parts(rows: Any, seed: int, test_size: float, val_size: float) -> Any:
    """Each row's part (``TRAIN``, ``VALIDATION``, ``TEST``) from its index and the seed only."""
    import numpy as np

    from regtorch.data.split import assign

    return assign(np.asarray(rows, dtype=np.int64), seed, test_size, val_size)


def _split(rows: Any, test_size: float, val_size: float, seed: int) -> tuple[Any, Any, Any]:
    """Positions (in ``rows``) of the train, validation and test rows.

    ``rows`` are the kept rows' indices in the file, so that a dropped row moves no other.
    """
    import numpy as np

    n = len(rows)
    if n < 3:
        raise UserError(f"The data have {n} usable row(s); fitting and testing need at least 3.")
    part = _parts(rows, seed, test_size, val_size)
    train, val, test = (np.flatnonzero(part == k) for k in (TRAIN, VALIDATION, TEST))
    if len(train) == 0:
        raise UserError(
            f"None of the {n} rows fell in the training part (--test-size {test_size:g}, "
            f"--val-size {val_size:g}; a row's part comes from --seed and its index): lower "
            "them or give more rows."
        )
    return train, val, test


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

    _resume_from(args)  # --checkpoint is checked before any data is read
    _check_model_flags(args)  # and the CV flags
    _check_watch(args)  # and --log-csv, --tensorboard
    out = Path(args.out) if args.out else None
    # --out is checked and locked before the fit, and stays locked until its swap
    with claim_output(out, force=args.force, inputs=[args.data]):
        if _wants_streaming(args):
            from regtorch.cli.streamed import _fit_streaming

            return _fit_streaming(args, out)
        return _fit_in_memory(args, out)


def _weight_columns(df: Any, args: argparse.Namespace) -> tuple[list[str], list[str] | None]:
    """The columns ``prepare`` checks as numbers (targets, then the weight) and the features."""
    targets = args.target.split(",")
    features = args.features.split(",") if args.features else None
    weight = getattr(args, "weight", None)
    if not weight:
        return targets, features
    cols = [str(c) for c in df.columns]
    if weight not in cols:
        raise UserError(f"--weight {weight}: no such column; the columns are {', '.join(cols)}.")
    if weight in targets or (features is not None and weight in features):
        what = "target" if weight in targets else "feature"
        raise UserError(f"--weight {weight}: the weight column cannot also be a {what}.")
    if features is None:
        features = [c for c in cols if c not in targets and c != weight]
    return [*targets, weight], features


def _check_weights(w: Any, name: str, train: Any) -> None:
    """Sample weights must be non-negative, with some weight on the training rows."""
    import numpy as np

    if (w < 0).any():
        raise UserError(
            f"--weight {name}: weights must be non-negative; {int((w < 0).sum())} are negative "
            f"(the first is {float(w[np.argmax(w < 0)])!r})."
        )
    if not w[train].sum() > 0:
        raise UserError(f"--weight {name}: every training row has weight 0.")


def _read_in_memory(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, Any]:
    """Read and check the table: ``X, y, weights or None, encoder, kept row indices``."""
    import numpy as np

    from regtorch.data.schema import DataError, prepare, read_table

    df = read_table(args.data, sep=args.sep, encoding=args.encoding)
    cols, features = _weight_columns(df, args)
    weight = getattr(args, "weight", None)
    try:
        X, y, encoder, kept = prepare(
            df,
            cols,
            features,
            args.categorical,
            args.missing,
            args.unknown_category,
            max_levels=args.max_levels,
        )
    except DataError as exc:
        if weight and f"column {weight!r}" in str(exc):
            raise DataError(str(exc).replace("Target column", "Weight column")) from None
        raise
    w = None
    if weight:
        y, w = y[:, :-1], y[:, -1]
    return X, y, w, encoder, np.flatnonzero(kept)


def _fit_in_memory(args: argparse.Namespace, out: Path | None) -> int:
    X, y, w, encoder, rows = _read_in_memory(args)
    val_size = args.val_size if args.model == "mlp" else 0.0
    train_idx, val_idx, test_idx = _split(rows, args.test_size, val_size, args.seed)
    if w is not None:
        _check_weights(w, args.weight, train_idx)
    names = encoder.output_names
    import pandas as pd

    Xdf = pd.DataFrame(X, columns=names)
    y_fit = y[:, 0] if y.shape[1] == 1 else y
    est = _estimator(args)
    fit_kw: dict[str, Any] = {}
    if args.model == "mlp" and len(val_idx):
        fit_kw = {"X_val": Xdf.iloc[val_idx], "y_val": y_fit[val_idx]}
    if w is not None:
        fit_kw["sample_weight"] = w[train_idx]
        if args.model == "mlp" and len(val_idx):
            fit_kw["sample_weight_val"] = w[val_idx]  # weighted like the streamed validation
    resume = _resume_from(args)
    if resume is not None:
        fit_kw["resume_from"] = resume
    if args.model in CV_KINDS and args.cv is not None:
        est.set_params(cv=_cv_folds(args, rows[train_idx]))
    est.fit(Xdf.iloc[train_idx], y_fit[train_idx], **fit_kw)
    if args.model in CV_KINDS:
        est.set_params(cv=args.cv)  # the model file records --cv K, not the index arrays
    # no test rows (--test-size 0): an empty prediction of the right shape
    pred = est.predict(Xdf.iloc[test_idx]) if len(test_idx) else y_fit[test_idx]
    metrics = _test_metrics(args, X, y_fit, w, train_idx, test_idx, pred)
    _say(
        f"{type(est).__name__} on {args.data}: {len(train_idx)} train, {len(val_idx)} "
        f"validation, {len(test_idx)} test rows; target {args.target}"
        + (f"; sample weights {args.weight}" if w is not None else "")
    )
    _say_metrics(metrics, args.test_size)
    coef = _coef_table(est, names)
    if coef is not None:
        _say()
        _say(format_table(*coef))
    if type(est).__name__ in CV_CLASSES:
        _say()
        _say(cv_report(est, max_rows=12))
    if out is None:
        return 0
    record = {
        "model": type(est).__name__,
        "target": args.target.split(","),
        "features": encoder.features,
        "rows": {"train": len(train_idx), "validation": len(val_idx), "test": len(test_idx)},
        "seed": args.seed,
        "metrics": metrics,
    }
    if w is not None:
        record["weight"] = args.weight
    targets = record["target"]
    _write_outputs(out, est, encoder, targets, record, y_fit[test_idx], pred, coef, args)
    _say(f"\nModel, metrics.json, plots and report.html written to {out}/")
    return 0


def _test_metrics(
    args: argparse.Namespace, X: Any, y: Any, w: Any, train: Any, test: Any, pred: Any
) -> dict[str, Any]:
    """The model's (unweighted) test metrics and the least-squares baseline's."""
    from regtorch.cli.baseline import BASELINE_LABEL, fit_least_squares

    if not len(test):
        return {}
    metrics = {"model": _metrics(y[test], pred)}
    if not args.no_baseline:
        base = fit_least_squares(X[train], y[train], None if w is None else w[train])
        metrics[BASELINE_LABEL] = _metrics(y[test], base.predict(X[test]))
    return metrics


def _say_metrics(metrics: dict[str, Any], test_size: float) -> None:
    """The test-metrics table, or why there is none."""
    if metrics:
        _say(metrics_table(metrics))
    elif test_size == 0:
        _say("No held-out rows (--test-size 0): no test metrics.")
    else:
        _say(f"No row fell in the held-out share (--test-size {test_size:g}): no test metrics.")


def _check_streamable(args: argparse.Namespace) -> None:
    """Refuse the options a streamed fit cannot honour, before any data is read."""
    if codecs.lookup(args.encoding).name != "utf-8":
        raise UserError(
            f"--encoding {args.encoding}: the streamed reader reads UTF-8 only; convert the "
            "file (e.g. iconv -f latin1 -t utf-8) or fit it in memory."
        )
