"""``regtorch fit`` over a table read in batches: out of core, and across ranks under torchrun."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from regtorch.cli.fit import (
    TEST,
    TRAIN,
    VALIDATION,
    _check_streamable,
    _estimator,
    _memory_limit,
    _parts,
    _resume_from,
    _say_metrics,
)
from regtorch.cli.parser import CV_KINDS
from regtorch.cli.present import (
    CV_CLASSES,
    UserError,
    _coef_table,
    _say,
    _write_outputs,
    cv_report,
    format_table,
    strict_metrics,
)


class _CountingSource:
    """A source that counts, per part, the rows of one full pass (the held-out metrics pass)."""

    def __init__(self, source: Any, seed: int, test_size: float, val_size: float) -> None:
        self._source, self._seed = source, seed
        self._fractions = (test_size, val_size)
        self.counts = [0, 0, 0]  # train, validation, test rows of this rank

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def batches(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """The wrapped source's batches, counted."""
        import numpy as np

        counts = [0, 0, 0]
        for b in self._source.batches(*args, **kwargs):
            part = _parts(b.rows, self._seed, *self._fractions)
            for k in (TRAIN, VALIDATION, TEST):
                counts[k] += int(np.count_nonzero(part == k))
            yield b
        self.counts = counts


def _fit_streaming(args: argparse.Namespace, out: Path | None) -> int:
    """One pass over a table larger than memory (and over ranks, under torchrun)."""
    _check_streamable(args)
    if args.model == "ridgecv" and args.cv is None:
        raise UserError(
            "--cv loo: leave-one-out needs each row's leverage, a second pass over the data; "
            "a streamed ridgecv takes --cv K (K-fold from one pass)."
        )
    from regtorch import distributed

    distributed.init_from_env(args.device, timeout_s=args.timeout)
    try:
        return _fit_streaming_in_group(args, out)
    except RuntimeError as exc:
        if distributed.world_size() > 1 and not isinstance(exc, UserError):
            # a collective broke: usually another rank stopped (its own message says why)
            raise UserError(
                f"rank {distributed.rank()} lost the other processes "
                f"({str(exc).splitlines()[0][:120]}); "
                "another rank probably stopped with an error, see its message."
            ) from exc
        raise
    finally:
        distributed.shutdown()


def _table_source(args: argparse.Namespace) -> Any:
    """The streamed table, with the sample-weight column when ``--weight`` names one."""
    from regtorch.data.table import TableSource

    return TableSource(
        args.data,
        args.target.split(","),
        args.features.split(",") if args.features else None,
        memory_limit=_memory_limit(args),
        sep=args.sep,
        encoding=getattr(args, "encoding", "utf-8"),
        weight=getattr(args, "weight", None) or None,
        categorical=args.categorical,
        max_levels=args.max_levels,
        unknown_category=args.unknown_category,
    )


def _stream_fit(args: argparse.Namespace, est: Any, source: Any) -> dict[str, Any]:
    """The fit pass(es): one over a mergeable state (linear) or epochs of training (mlp)."""
    from regtorch.linear.streamed import stream_fit_linear
    from regtorch.nn.streamed import stream_fit_mlp

    fit_stream: Any
    extra_kw: dict[str, Any]
    if args.model in CV_KINDS:
        from regtorch.linear.cv import stream_fit_cv

        fit_stream, extra_kw = stream_fit_cv, {}
    elif args.model == "mlp":
        est.set_params(verbose=bool(getattr(args, "verbose", False)))  # the bar: `progress`
        fit_stream = stream_fit_mlp
        extra_kw = {
            "val_fraction": args.val_size,
            "resume_from": _resume_from(args),
        }
    else:
        fit_stream, extra_kw = stream_fit_linear, {}
    info: dict[str, Any] = fit_stream(
        est,
        source,
        missing=args.missing,
        test_fraction=args.test_size,
        seed=args.seed,
        progress=sys.stderr.isatty(),
        **extra_kw,
    )
    return info


def _held_out(args: argparse.Namespace, est: Any, source: Any) -> tuple[Any, Any, Any, Any]:
    """Test metrics (reduced over ranks), a sample of (true, predicted) rows and row counts.

    The counts (train, validation, test, over all ranks) come from the metrics pass; without
    held-out rows there is none, and they are None.
    """
    import numpy as np

    from regtorch import distributed
    from regtorch.metrics import stream_metrics

    k = len(source.targets)
    if args.test_size == 0:
        return {}, np.zeros((0, k)), np.zeros((0, k)), None
    val_size = args.val_size if args.model == "mlp" else 0.0
    counting: Any = _CountingSource(source, args.seed, args.test_size, val_size)  # a TableSource
    metrics, y_s, p_s = stream_metrics(
        est, counting, test_fraction=args.test_size, seed=args.seed, missing=args.missing
    )
    counts = [int(v) for v in distributed.reduce_sum([float(c) for c in counting.counts])]
    return metrics, y_s, p_s, counts


def _finite(v: Any) -> bool:
    return v is not None and math.isfinite(v)


def _fit_streaming_in_group(args: argparse.Namespace, out: Path | None) -> int:
    from regtorch import distributed

    rank, world = distributed.rank(), distributed.world_size()
    source = _table_source(args)
    est = _estimator(args)
    info = _stream_fit(args, est, source)
    metrics, y_s, p_s, counts = _held_out(args, est, source)
    if rank != 0:
        return 0
    # rows processed per second: every epoch's rows for the MLP
    done = info.get("rows_read", info["rows_fit"] * info.get("epochs", 1))
    rate = done * (world if "rows_read" in info else 1) / max(info["seconds"], 1e-9)
    rows = {"train": info["rows_fit"], "validation": None, "test": None}
    if counts is not None:
        rows = dict(zip(rows, counts))
    else:  # --test-size 0: no counting pass; the fit's own count of its rows
        rows["test"] = 0
        if args.model != "mlp" or args.val_size == 0:
            rows["validation"] = 0
    split = ", ".join(f"{v} {k} rows" for k, v in rows.items() if v is not None)
    _say(
        f"{type(est).__name__} (streamed, {world} process{'es' if world > 1 else ''}, "
        f"batches of {info['batch_rows']} rows) on {args.data}: {split}, "
        f"{rate:,.0f} rows/s; held-out test share {args.test_size:g}"
    )
    # R2 comes from sums here: not finite beside a finite MSE only when the test rows'
    # target is constant (one row, say), where it is undefined, not an overflow
    constant = bool(metrics) and not _finite(metrics.get("r2")) and _finite(metrics.get("mse"))
    m = {"model": strict_metrics(metrics, constant_target=constant)} if metrics else {}
    _say_metrics(m, args.test_size)
    names = list(source.features)
    coef = _coef_table(est, names)
    if coef is not None:
        _say()
        _say(format_table(*coef))
    if type(est).__name__ in CV_CLASSES:
        _say()
        _say(cv_report(est, max_rows=12))
    if out is not None:
        record = {
            "model": type(est).__name__,
            "target": source.targets,
            "features": list(source.encoder.features),
            "rows": rows,
            "seed": args.seed,
            "metrics": m,
            "streaming": {**info, "world_size": world},
        }
        if getattr(args, "weight", None):
            record["weight"] = args.weight
        y_t = y_s[:, 0] if y_s.shape[1] == 1 else y_s
        p_t = p_s[:, 0] if p_s.shape[1] == 1 else p_s
        _write_outputs(out, est, source.encoder, source.targets, record, y_t, p_t, coef, args)
        _say(f"\nModel, metrics.json, plots and report.html written to {out}/")
    return 0
