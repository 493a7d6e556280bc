"""Training an MLP on a table streamed from disk, under ``torchrun`` too.

A thin layer: the standardisation statistics from one pass (``regtorch.linear.moments``),
then the one training loop (:func:`regtorch.nn.loop.train`) over a
:class:`regtorch.nn.batches.StreamBatches`, with the estimator's own settings and callbacks.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch

from regtorch import distributed
from regtorch.data.readers import DataError
from regtorch.data.split import hash01
from regtorch.linear.moments import _accumulate

__all__ = ["stream_fit_mlp"]


def stream_fit_mlp(
    estimator: Any,
    source: Any,
    *,
    missing: str = "error",
    test_fraction: float = 0.0,
    val_fraction: float = 0.1,
    seed: int = 0,
    shuffle_rows: int | None = None,
    max_val_rows: int = 200_000,
    progress: bool = False,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1,
    resume_from: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train an ``MLPRegressor`` on a table streamed from disk, under ``torchrun`` too.

    Rows are split by a seeded hash of their index: test (``test_fraction``), validation
    (next ``val_fraction``, at most ``max_val_rows`` per rank kept in memory), training. A
    first pass computes the training rows' standardisation; then :func:`~regtorch.nn.loop.train`
    runs over a :class:`~regtorch.nn.batches.StreamBatches` (seeded row-group order, bounded
    shuffle buffer of ``shuffle_rows``, the same number of steps on every rank, each
    averaging exactly the global batch under DistributedDataParallel). The estimator's
    parameters (early stopping, solver, schedule, alpha, callbacks: on every rank) and the
    source's sample weights (``TableSource(weight=...)``) act as in memory. Rank 0 writes a
    checkpoint for all ranks every ``checkpoint_every`` epochs to ``checkpoint_path`` (default:
    the estimator's); ``resume_from`` continues it (as many processes) to the same weights.

    Returns
    -------
    dict
        ``rows_fit``, ``seconds``, ``epochs``, ``global_batch``, ``batch_rows``.
    """
    from regtorch.nn.loop import train

    _check(estimator)
    p, k = len(source.features), len(source.targets)
    lo, hi = test_fraction, test_fraction + val_fraction
    _load_optimizer_code(estimator.solver)  # held before the budget is split
    spare = source.spare_bytes("to train a network")
    t0 = time.perf_counter()
    mean, std, n_train, local, w_scale = _statistics(estimator, source, missing, seed, hi, progress)
    dev = _device(estimator.device)
    module, reuse = estimator._network(p, k)
    if reuse and estimator.standardize:
        mean = np.concatenate([estimator.x_mean_, estimator.y_mean_])
        std = np.concatenate([estimator.x_scale_, estimator.y_scale_])
    settings = estimator._train_settings(n_train)
    sizes = {
        "batch_size": int(settings.pop("batch_size") or 1024),
        "shuffle_rows": shuffle_rows,
        "max_val_rows": max_val_rows,
        "spare": spare,
        "weight_scale": w_scale,
    }
    batches = _batches(source, mean, std, local, sizes, seed, lo, hi, missing, dev)
    own_path = checkpoint_path is None
    callbacks, stopper = estimator._callbacks(
        batches.has_validation,
        estimator.checkpoint_path if own_path else checkpoint_path,
        int(estimator.checkpoint_every if own_path else checkpoint_every),
        (progress or estimator.verbose) and distributed.rank() == 0,
    )
    history = train(
        module,
        batches=batches,
        **settings,
        seed=seed,
        callbacks=callbacks,
        resume_from=resume_from,
        init=not reuse,
    )
    _finish(estimator, module, mean, std, history, stopper, source.features, settings["epochs"])
    return {
        "rows_fit": n_train,
        "seconds": time.perf_counter() - t0,
        "epochs": len(history),
        "global_batch": batches.batch_size * batches.world,
        "batch_rows": source.batch_rows,
    }


def _check(estimator: Any) -> None:
    from regtorch.nn.mlp import MLPRegressor

    if type(estimator) is not MLPRegressor:
        raise ValueError(f"stream_fit_mlp trains an MLPRegressor, got {type(estimator).__name__}.")
    estimator._check_params()
    if estimator.solver == "lbfgs":
        raise ValueError(
            "solver='lbfgs' needs full batches; streamed training uses adam, adamw or sgd."
        )


def _device(name: str) -> torch.device:
    from regtorch._validation import resolve_device

    dev = resolve_device(name)
    if dev.type == "cuda" and distributed.world_size() > 1:
        dev = torch.device("cuda", torch.cuda.current_device())  # set by init_from_env
    return dev


def _finish(
    estimator: Any,
    module: torch.nn.Module,
    mean: np.ndarray,
    std: np.ndarray,
    history: Any,
    stopper: Any,
    features: list[str],
    epochs: int,
) -> None:
    """Hand the fitted network to the estimator; the ranks part together."""
    p = len(features)
    best = stopper.best_epoch if stopper is not None and stopper.best_epoch else len(history)
    estimator._set_fitted(
        module,
        mean[:p],
        std[:p],
        mean[p:],
        std[p:],
        history,
        best_epoch=best,
        y_1d=len(mean) - p == 1,
        feature_names=features,
    )
    estimator._warn_stopped(history, stopper, epochs)
    if not history.interrupted:  # after SIGTERM another rank may be gone
        distributed.barrier()


def _load_optimizer_code(solver: str) -> None:
    from regtorch.nn.optim import make_optimizer

    warm = torch.nn.Parameter(torch.zeros(1))
    warm.grad = torch.zeros(1)
    make_optimizer(solver, [warm], 1e-3).step()


def _batches(
    source: Any,
    mean: np.ndarray,
    std: np.ndarray,
    local_rows: int,
    sizes: dict[str, Any],
    seed: int,
    lo: float,
    hi: float,
    missing: str,
    dev: torch.device,
) -> Any:
    """The training batches of the rows hashed to ``[hi, 1)`` (validation: ``[lo, hi)``),
    with a shuffle buffer and validation rows sized from the memory budget by default."""
    from regtorch.nn.batches import StreamBatches

    bs, spare = sizes["batch_size"], sizes["spare"]
    # a row on the device (its weight too), with its copies while batching
    row_bytes = 4 * (len(mean) + (getattr(source, "weight", None) is not None)) * 3
    room = spare // 4 // row_bytes
    shuffle_rows = sizes["shuffle_rows"] or max(bs * 8, min(source.batch_rows * 4, room))

    def is_val(rows: np.ndarray) -> np.ndarray:
        h = hash01(rows, seed)
        return (h >= lo) & (h < hi)

    return StreamBatches(
        source,
        keep=lambda rows: hash01(rows, seed) >= hi,
        is_val=is_val,
        mean=mean,
        scale=std,
        train_rows=local_rows,
        batch_size=bs,
        seed=seed,
        shuffle_rows=int(shuffle_rows),
        max_val_rows=int(min(sizes["max_val_rows"], room)),
        missing=missing,
        device=dev,
        weight_scale=sizes["weight_scale"],
    )


def _statistics(
    estimator: Any, source: Any, missing: str, seed: int, hi: float, progress: bool
) -> tuple[np.ndarray, np.ndarray, int, int, float]:
    """Means and scales of the training rows' ``[X, y]`` columns (zeros and ones without
    standardisation; weighted by the source's weights), their count over every rank, this
    rank's count, and a power of two bringing the mean weight near 1."""
    moments, _ = _accumulate(
        source, lambda r: hash01(r, seed) >= hi, missing, progress, "statistics"
    )
    local_rows = _row_count(moments)
    moments = moments.all_reduce(len(source.features) + len(source.targets))
    if moments.rows < 2 or moments.mean is None or moments.C is None:
        raise DataError(f"{source.path}: fewer than 2 training rows.")
    # the state holds Z times a per-column power of two (exact): back to the data's units
    scale = getattr(moments, "scale", None)
    sc = torch.ones_like(moments.mean) if scale is None else scale
    mean = (moments.mean / sc).numpy()
    std = np.sqrt(np.maximum((moments.C.diagonal() / sc**2).numpy() / moments.n, 0.0))
    if not estimator.standardize:
        mean, std = np.zeros_like(mean), np.ones_like(std)
    n_rows = _row_count(moments)
    weight_scale = math.ldexp(1.0, -math.frexp(float(moments.n) / max(n_rows, 1))[1])
    return mean, np.where(std > 0, std, 1.0), n_rows, local_rows, weight_scale


def _row_count(moments: Any) -> int:
    """Rows in the statistics (not their weight sum, where the state has both)."""
    return int(getattr(moments, "rows", 0) or moments.n)
