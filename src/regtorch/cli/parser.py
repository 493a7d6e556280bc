"""The argument parser of every subcommand, and the checks of single argument values."""

from __future__ import annotations

import argparse
import codecs
from typing import Any

from regtorch._version import __version__

MODEL_KINDS = (
    "linear",
    "ridge",
    "lasso",
    "elasticnet",
    "ridgecv",
    "lassocv",
    "elasticnetcv",
    "mlp",
)
CV_KINDS = ("ridgecv", "lassocv", "elasticnetcv")


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


def _float_list(flag: str, low: float, high: float | None = None) -> Any:
    """A parser of comma-separated numbers in ``[low, high]`` (``(low, ...`` for ``low=0``)."""
    span = f"in [{low:g}, {high:g}]" if high is not None else "> 0"

    def parse(text: str) -> tuple[float, ...]:
        items = text.split(",")
        if len(items) > 1 and not all(v.strip() for v in items):
            raise argparse.ArgumentTypeError(
                f"{flag} takes numbers {span} separated by commas; got {text!r} (an empty item)"
            )
        try:
            vals = tuple(float(v) for v in items if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} takes numbers {span} separated by commas, like 0.1,0.5; got {text!r}"
            ) from None
        bad = [
            v
            for v in vals
            if not (v == v and (low <= v <= high if high is not None else 0 < v < float("inf")))
        ]
        if not vals or bad:
            raise argparse.ArgumentTypeError(
                f"{flag} takes numbers {span}; got {text!r}"
                + (f" ({bad[0]!r} is not)" if bad else "")
            )
        return vals

    return parse


# the default of options whose explicit default value must still count as given
NOT_GIVEN: Any = type("NotGiven", (), {"__repr__": lambda self: "NOT_GIVEN"})()


def _cv(text: str) -> int | None:
    """``--cv``: a number of folds >= 2, or ``loo`` (leave-one-out, ridgecv only): None."""
    if text.strip().lower() == "loo":
        return None
    if not text.isdigit() or int(text) < 2:
        raise argparse.ArgumentTypeError(
            f"expected a number of folds >= 2, or loo (ridgecv's leave-one-out), got {text!r}"
        )
    return int(text)


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


def _data_opts(p: argparse.ArgumentParser) -> None:
    """Options of every command that reads a table."""
    p.add_argument("--sep", help="CSV delimiter (default: sniffed)")
    p.add_argument(
        "--encoding",
        type=_encoding,
        default="utf-8",
        help="text encoding of a CSV file, e.g. latin-1 (default utf-8; UTF-16 with a "
        "byte-order mark is recognised)",
    )
    _debug_opt(p)


def _debug_opt(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: the subcommand's --debug must not reset one given before the subcommand
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )


def _add_demo(sub: Any) -> None:
    from regtorch.cli.commands import _cmd_demo

    demo = sub.add_parser(
        "demo", help="reproduce the reference experiments (line, sine) side by side"
    )
    demo.add_argument("--out", metavar="DIR", help="write plots and results.json to DIR")
    demo.add_argument("--json", action="store_true", help="print the results as JSON")
    demo.set_defaults(func=_cmd_demo)


def _add_fit_model(fit: argparse.ArgumentParser) -> None:
    """``fit``'s data, model and split options."""
    fit.add_argument("data", help="CSV, Parquet, .npy or .npz file")
    fit.add_argument("--target", required=True, help="target column (comma-separated for several)")
    fit.add_argument("--features", help="comma-separated input columns (default: all others)")
    fit.add_argument(
        "--weight",
        metavar="COL",
        help="column of non-negative sample weights (not a feature): the fit minimises the "
        "weighted squared error, a row of weight 2 counting as two copies; test metrics and the "
        "baseline's stay unweighted means over the test rows (the baseline is fitted with the "
        "same weights); linear models only",
    )
    fit.add_argument("--model", choices=MODEL_KINDS, default="linear")
    fit.add_argument(
        "--alpha", type=float, help="penalty (ridge, lasso, elasticnet) or weight decay (mlp)"
    )
    fit.add_argument(
        "--l1-ratio",
        type=_float_list("--l1-ratio", 0.0, 1.0),
        help="elasticnet's L1 share (default 0.5); elasticnetcv: a comma list to choose "
        "from by cross-validation, e.g. 0.1,0.5,0.9",
    )
    _add_fit_cv(fit)
    fit.add_argument("--hidden", type=_hidden, help="MLP hidden widths, e.g. 64,64")
    fit.add_argument("--epochs", type=int, help="MLP epochs / gradient solvers' iterations")
    fit.add_argument("--lr", type=float, help="learning rate (MLP, gradient solvers)")
    fit.add_argument("--batch-size", type=_batch_size, help="MLP batch size: an int or 'full'")
    fit.add_argument(
        "--solver",
        help="linear: auto, qr, svd, cholesky, lbfgs, adam; mlp: adam, adamw, sgd, lbfgs",
    )
    fit.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    fit.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the split and the model; a row's part (train, validation, test) depends "
        "only on the seed and its position in the file, streamed or not",
    )
    fit.add_argument("--test-size", type=_fraction, default=0.2, help="test share (default 0.2)")
    fit.add_argument(
        "--val-size", type=_fraction, default=0.1, help="MLP validation share (default 0.1)"
    )


def _add_fit_cv(fit: argparse.ArgumentParser) -> None:
    """``fit``'s options of the cross-validated models (ridgecv, lassocv, elasticnetcv)."""
    fit.add_argument(
        "--alphas",
        type=_float_list("--alphas", 0.0),
        metavar="A,B,...",
        help="CV models: the penalties to try, e.g. 0.1,1,10 (ridgecv's default 0.1,1,10; "
        "lassocv/elasticnetcv default: --n-alphas values from the data's largest useful alpha)",
    )
    fit.add_argument(
        "--n-alphas",
        type=_positive_int,
        help="lassocv/elasticnetcv: how many alphas on the automatic grid (default 100)",
    )
    fit.add_argument(
        "--cv",
        type=_cv,
        default=NOT_GIVEN,  # 5, set by the fit command once it knows the flag was not given
        metavar="K|loo",
        help="CV models: number of folds (default 5), drawn among the training rows by the "
        "seeded hash of --seed (the same folds in memory and streamed); ridgecv also takes loo "
        "(efficient leave-one-out, in memory). Every CV model chooses by mean held-out MSE",
    )
    fit.add_argument(
        "--selection-rule",
        choices=("min", "1se"),
        default=NOT_GIVEN,  # "min" (as --cv)
        help="CV models: the alpha of least mean CV error (min, default) or the largest alpha "
        "whose CV error is within one standard error of it (1se)",
    )


def _add_fit_table(fit: argparse.ArgumentParser) -> None:
    """``fit``'s options on text and missing values."""
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
    fit.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the baseline row (ordinary least squares, as scikit-learn's LinearRegression)",
    )


def _add_fit_run(fit: argparse.ArgumentParser) -> None:
    """``fit``'s streaming, distributed and output options."""
    fit.add_argument(
        "--stream",
        action="store_true",
        help="read the data in batches (automatic for folders, files larger than "
        "the memory limit, and under torchrun); every model",
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
    fit.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="MLP: write a resumable checkpoint to FILE (safetensors + JSON, atomic; rank 0 "
        "under torchrun) and, if FILE exists, resume from it: the run ends as the "
        "uninterrupted one would (a checkpoint of other data or settings is refused)",
    )
    fit.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=1,
        metavar="N",
        help="epochs between checkpoints (default 1)",
    )
    fit.add_argument(
        "--verbose",
        action="store_true",
        help="MLP: progress on stderr even when it is not a terminal (a line every "
        "ceil(epochs/20) epochs, for log files); in a terminal a progress bar is always shown",
    )
    fit.add_argument(
        "--log-csv",
        metavar="FILE",
        help="MLP: write one CSV row per epoch to FILE (epoch, train_loss, val_loss, lr, "
        "seconds), flushed as it goes; an existing FILE needs --force, except when resuming "
        "from --checkpoint (the rows then continue)",
    )
    fit.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="MLP: write TensorBoard scalars (loss/train, loss/val, lr per epoch) to DIR; "
        'needs pip install "regtorch[tensorboard]"',
    )
    fit.add_argument("--out", metavar="DIR", help="write the model, metrics, plots and report.html")
    fit.add_argument("--force", action="store_true", help="replace an existing model in DIR")
    fit.add_argument(
        "--save-interrupted",
        action="store_true",
        help="if Ctrl-C stops an MLP fit, still replace DIR's model with the interrupted one",
    )


def _add_fit(sub: Any) -> None:
    from regtorch.cli.fit import _cmd_fit

    fit = sub.add_parser(
        "fit", help="fit a model to a CSV/Parquet/NumPy table, evaluate and save it"
    )
    _add_fit_model(fit)
    _add_fit_table(fit)
    _add_fit_run(fit)
    _data_opts(fit)
    fit.set_defaults(func=_cmd_fit)


def _add_predict(sub: Any) -> None:
    from regtorch.cli.commands import _cmd_predict

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
    _data_opts(pred)
    pred.set_defaults(func=_cmd_predict)


def _add_evaluate(sub: Any) -> None:
    from regtorch.cli.commands import _cmd_evaluate

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
    _data_opts(ev)
    ev.set_defaults(func=_cmd_evaluate)


def _add_summary(sub: Any) -> None:
    from regtorch.cli.commands import _cmd_summary

    sm = sub.add_parser("summary", help="coefficients (linear) or architecture and history (MLP)")
    sm.add_argument("model")
    _debug_opt(sm)
    sm.set_defaults(func=_cmd_summary)


def _add_export(sub: Any) -> None:
    from regtorch.cli.export import FORMATS, _cmd_export

    ex = sub.add_parser(
        "export",
        help="write a saved model as ONNX or a torch.export program (pt2)",
        description='Write a saved model as ONNX (needs pip install "regtorch[export]") or '
        "as a torch.export program. The graph maps the model's feature columns (one-hot "
        "encoded columns for --categorical onehot models) to predictions; the batch "
        "dimension is dynamic and the feature names are in the file's metadata.",
    )
    ex.add_argument("model", help="model file (or the folder `fit --out` wrote)")
    ex.add_argument("--format", required=True, choices=FORMATS, help="onnx or pt2")
    ex.add_argument("--out", required=True, metavar="FILE", help="file to write (atomically)")
    ex.add_argument("--force", action="store_true", help="replace an existing FILE")
    _debug_opt(ex)
    ex.set_defaults(func=_cmd_export)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="regtorch", description="Regression with PyTorch: exact linear models, fast MLPs."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"regtorch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_demo, _add_fit, _add_predict, _add_evaluate, _add_summary, _add_export):
        add(sub)
    return parser
