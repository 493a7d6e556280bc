"""Regression metrics: typed functions and a mergeable float64 accumulator.

All sums run in float64 whatever the input dtype, and R2 uses centred second moments
(Welford/Chan), never a one-pass ``sum(y**2) - n * mean**2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    from regtorch.data.table import TableSource

__all__ = [
    "RegressionMetrics",
    "mean_absolute_error",
    "mean_squared_error",
    "r2_score",
    "regression_report",
    "root_mean_squared_error",
]

Multioutput = Literal["uniform_average", "raw_values", "variance_weighted"]


def _as_2d_f64(a: Any, name: str) -> torch.Tensor:
    t = a.detach() if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    t = t.to(torch.float64)
    if t.ndim == 1:
        t = t.reshape(-1, 1)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 1D or 2D, got {t.ndim}D.")
    return t


def _pair(
    y_true: Any, y_pred: Any, sample_weight: Any | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    yt = _as_2d_f64(y_true, "y_true")
    yp = _as_2d_f64(y_pred, "y_pred").to(yt.device)
    if yt.shape != yp.shape:
        raise ValueError(
            f"y_true and y_pred have different shapes: {tuple(yt.shape)} and {tuple(yp.shape)}"
        )
    if yt.shape[0] == 0:
        raise ValueError("y_true is empty: metrics need at least one sample.")
    w = None
    if sample_weight is not None:
        w = _as_2d_f64(sample_weight, "sample_weight").reshape(-1, 1).to(yt.device)
        if w.shape[0] != yt.shape[0]:
            raise ValueError(f"sample_weight has {w.shape[0]} samples, y_true has {yt.shape[0]}.")
    return yt, yp, w


def _reduce(per_output: torch.Tensor, multioutput: str, weights: torch.Tensor | None = None) -> Any:
    if multioutput == "raw_values":
        return per_output.cpu().numpy()
    if multioutput == "variance_weighted" and weights is not None:
        total = weights.sum()
        if total > 0:
            return float((per_output * weights).sum() / total)
    if multioutput not in ("uniform_average", "variance_weighted"):
        raise ValueError(
            "multioutput must be 'uniform_average', 'raw_values' or 'variance_weighted', "
            f"got {multioutput!r}"
        )
    return float(per_output.mean())


def _pow2_scale(*ts: torch.Tensor) -> torch.Tensor:
    """Per-output powers of two bringing the largest ``|value|`` into [0.5, 1): exact."""
    top = torch.stack([t.abs().amax(0) for t in ts]).amax(0)
    top = torch.where(torch.isfinite(top) & (top > 0), top, torch.ones_like(top))
    _, e = torch.frexp(top)
    return torch.ldexp(torch.ones_like(top), -e)


def _scaled_squares(
    yt: torch.Tensor, yp: torch.Tensor, w: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean squared error and centred target variance of ``y * s``, and ``s`` (k,).

    Scaling by a power of two first keeps squares of values near 1e300 finite.
    """
    s = _pow2_scale(yt, yp)
    ts, ps = yt * s, yp * s
    mse_s = _weighted_mean((ts - ps) ** 2, w)
    var_s = _weighted_mean((ts - _weighted_mean(ts, w)) ** 2, w)
    return mse_s, var_s, s


def _weighted_mean(v: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    if w is None:
        return v.mean(dim=0)
    return (v * w).sum(dim=0) / w.sum()


def mean_squared_error(
    y_true: Any,
    y_pred: Any,
    *,
    sample_weight: Any | None = None,
    multioutput: Multioutput = "uniform_average",
) -> Any:
    """Mean squared error, as ``sklearn.metrics.mean_squared_error``.

    Examples
    --------
    >>> mean_squared_error([1.0, 2.0], [1.0, 4.0])
    2.0
    """
    yt, yp, w = _pair(y_true, y_pred, sample_weight)
    mse_s, _, s = _scaled_squares(yt, yp, w)
    return _reduce(mse_s / s**2, multioutput)  # may overflow to inf: an honest answer


def root_mean_squared_error(
    y_true: Any,
    y_pred: Any,
    *,
    sample_weight: Any | None = None,
    multioutput: Multioutput = "uniform_average",
) -> Any:
    """Root mean squared error (per output, then averaged), as scikit-learn's.

    Examples
    --------
    >>> root_mean_squared_error([0.0, 0.0], [3.0, 4.0])
    3.5355339059327378
    """
    yt, yp, w = _pair(y_true, y_pred, sample_weight)
    mse_s, _, s = _scaled_squares(yt, yp, w)
    return _reduce(mse_s.sqrt() / s, multioutput)


def mean_absolute_error(
    y_true: Any,
    y_pred: Any,
    *,
    sample_weight: Any | None = None,
    multioutput: Multioutput = "uniform_average",
) -> Any:
    """Mean absolute error, as ``sklearn.metrics.mean_absolute_error``.

    Examples
    --------
    >>> mean_absolute_error([1.0, 2.0], [2.0, 4.0])
    1.5
    """
    yt, yp, w = _pair(y_true, y_pred, sample_weight)
    s = _pow2_scale(yt, yp)
    return _reduce(_weighted_mean((yt * s - yp * s).abs(), w) / s, multioutput)


def _r2_from(sse: torch.Tensor, sst: torch.Tensor, force_finite: bool) -> torch.Tensor:
    r2 = 1.0 - sse / sst  # torch gives nan/-inf for sst == 0, handled below
    if force_finite:
        # scikit-learn's convention for a constant target: 1 if predicted exactly, else 0.
        const = sst == 0
        r2 = torch.where(const & (sse == 0), torch.ones_like(r2), r2)
        r2 = torch.where(const & (sse != 0), torch.zeros_like(r2), r2)
    return r2


def r2_score(
    y_true: Any,
    y_pred: Any,
    *,
    sample_weight: Any | None = None,
    multioutput: Multioutput = "uniform_average",
    force_finite: bool = True,
) -> Any:
    """Coefficient of determination R2, as ``sklearn.metrics.r2_score``.

    With ``force_finite=False`` a constant target gives NaN (undefined) or -inf instead of
    scikit-learn's 1.0/0.0 stand-ins.

    Examples
    --------
    >>> r2_score([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    1.0
    """
    yt, yp, w = _pair(y_true, y_pred, sample_weight)
    # in units of y * s (s a power of two per output): targets near 1e300 do not overflow
    sse, sst, s = _scaled_squares(yt, yp, w)
    r2 = _r2_from(sse, sst, force_finite)
    return _reduce(r2, multioutput, weights=sst / s**2)


@dataclass
class RegressionMetrics:
    """Mergeable running totals for R2, MSE, RMSE and MAE, in float64.

    ``update`` with batches, ``merge`` states from other workers (Chan's parallel formula
    for the target's centred second moment), then ``compute``.

    Examples
    --------
    >>> acc = RegressionMetrics()
    >>> acc.update([1.0, 2.0], [1.0, 2.5]); acc.update([3.0], [2.0])
    >>> round(acc.compute()["mse"], 4)
    0.4167
    """

    n: float = 0.0
    mean: torch.Tensor | None = None  # (n_targets,) running mean of y_true
    m2: torch.Tensor | None = None  # (n_targets,) sum of squared deviations of y_true
    sse: torch.Tensor | None = None
    sae: torch.Tensor | None = None

    def update(self, y_true: Any, y_pred: Any) -> None:
        """Add a batch of targets and predictions."""
        yt, yp, _ = _pair(y_true, y_pred, None)
        nb = float(yt.shape[0])
        bmean = yt.mean(0)
        bm2 = ((yt - bmean) ** 2).sum(0)
        other = RegressionMetrics(nb, bmean, bm2, ((yt - yp) ** 2).sum(0), (yt - yp).abs().sum(0))
        self.merge(other)

    def merge(self, other: RegressionMetrics) -> None:
        """Fold another accumulator's state into this one."""
        if other.n == 0:
            return
        if self.n == 0 or self.mean is None:
            self.n, self.mean, self.m2, self.sse, self.sae = (
                other.n,
                other.mean,
                other.m2,
                other.sse,
                other.sae,
            )
            return
        assert other.mean is not None and other.m2 is not None
        assert self.m2 is not None and self.sse is not None and self.sae is not None
        assert other.sse is not None and other.sae is not None
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / n)
        self.sse = self.sse + other.sse
        self.sae = self.sae + other.sae
        self.n = n

    def compute(self, force_finite: bool = True) -> dict[str, float]:
        """R2, MSE, RMSE and MAE averaged uniformly over targets."""
        if self.n == 0 or self.sse is None or self.m2 is None or self.sae is None:
            raise ValueError("No samples seen: call update() first.")
        mse = self.sse / self.n
        return {
            "r2": float(_r2_from(self.sse, self.m2, force_finite).mean()),
            "mse": float(mse.mean()),
            "rmse": float(mse.sqrt().mean()),
            "mae": float((self.sae / self.n).mean()),
        }


def regression_report(y_true: Any, y_pred: Any, force_finite: bool = True) -> dict[str, float]:
    """R2, MSE, RMSE and MAE of one prediction, as a dict of floats.

    Computed on targets scaled by powers of two, so values near 1e300 give a correct R2
    (the MSE itself may then be ``inf``).
    """
    return {
        "r2": float(r2_score(y_true, y_pred, force_finite=force_finite)),
        "mse": float(mean_squared_error(y_true, y_pred)),
        "rmse": float(root_mean_squared_error(y_true, y_pred)),
        "mae": float(mean_absolute_error(y_true, y_pred)),
    }


def _all_reduce_metrics(acc: RegressionMetrics, k: int) -> RegressionMetrics:
    """Merge every rank's accumulator, in rank order."""
    from regtorch import distributed

    if not distributed.is_distributed():
        return acc
    z = torch.zeros(k, dtype=torch.float64)
    mine = torch.cat(
        [
            torch.tensor([acc.n], dtype=torch.float64),
            *(z if v is None else v.cpu() for v in (acc.mean, acc.m2, acc.sse, acc.sae)),
        ]
    )
    total = RegressionMetrics()
    for t in distributed.all_gather(mine):
        if float(t[0]) > 0:
            total.merge(
                RegressionMetrics(float(t[0]), *(t[1 + i * k : 1 + (i + 1) * k] for i in range(4)))
            )
    return total


def stream_metrics(
    estimator: Any,
    source: TableSource,
    *,
    test_fraction: float,
    seed: int = 0,
    missing: str = "error",
    sample: int = 5000,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """R2, MSE, RMSE and MAE on the held-out rows, reduced across ranks.

    Also returns up to ``sample`` (true, predicted) rows of this rank, for plots.
    """
    from regtorch.data.split import hash01

    acc = RegressionMetrics()
    linear = hasattr(estimator, "coef_")
    ys, ps, kept = [], [], 0
    for b in source.batches(missing):
        sel = hash01(b.rows, seed) < test_fraction
        if sel.any():
            if linear:  # the linear prediction, without per-batch input checks
                coef, icpt = np.atleast_2d(estimator.coef_), np.atleast_1d(estimator.intercept_)
                pred = b.X[sel] @ coef.T + icpt
            else:
                import pandas as pd

                frame = pd.DataFrame(b.X[sel], columns=source.features)
                pred = estimator.predict(frame).reshape(int(sel.sum()), -1)
            acc.update(b.y[sel], pred)
            if kept < sample:
                ys.append(b.y[sel][: sample - kept])
                ps.append(pred[: sample - kept])
                kept += len(ys[-1])
    acc = _all_reduce_metrics(acc, len(source.targets))
    k = len(source.targets)
    y_s = np.vstack(ys) if ys else np.zeros((0, k))
    p_s = np.vstack(ps) if ps else np.zeros((0, k))
    return acc.compute(force_finite=False), y_s, p_s
