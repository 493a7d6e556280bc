"""Shared input handling for the scikit-learn estimators."""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from sklearn.utils import assert_all_finite
from sklearn.utils.validation import validate_data

from regtorch._threads import map_halves
from regtorch._validation import column_peaks, resolve_device

__all__ = [
    "abs_peaks",
    "check_gram_range",
    "check_param",
    "data_fingerprint",
    "fingerprint_of_moments",
    "same_data",
    "to_numpy_input",
    "FitData",
    "validate_fit_data",
    "validate_fit_input",
    "validate_predict_input",
]


def to_numpy_input(X: Any) -> Any:
    """Tensors become numpy arrays (scikit-learn's validation then applies); others pass."""
    if isinstance(X, torch.Tensor):
        return X.detach().cpu().numpy()
    return X


class FitData(NamedTuple):
    """Validated fit input (see :func:`validate_fit_data`)."""

    X: torch.Tensor  # (n_samples, n_features)
    y: torch.Tensor  # (n_samples, n_targets)
    sample_weight: torch.Tensor | None  # (n_samples,)
    y_1d: bool  # whether y was one-dimensional (attributes then drop the target axis)
    peaks: torch.Tensor  # (n_features + n_targets,) float64 CPU: max |value| of [X, y]


def validate_fit_input(
    est: Any,
    X: Any,
    y: Any,
    sample_weight: Any | None = None,
    *,
    dtype: Any = np.float64,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    """Validate (X, y, sample_weight) with scikit-learn's rules and messages.

    Sets ``n_features_in_`` (and ``feature_names_in_`` for DataFrames) on ``est``.

    Returns
    -------
    X : tensor (n_samples, n_features)
    y : tensor (n_samples, n_targets)
    sample_weight : tensor (n_samples,) or None
    y_1d : bool
        Whether y was one-dimensional (attributes then drop the target axis).
    """
    d = validate_fit_data(est, X, y, sample_weight, dtype=dtype, device=device)
    return d.X, d.y, d.sample_weight, d.y_1d


def validate_fit_data(
    est: Any,
    X: Any,
    y: Any,
    sample_weight: Any | None = None,
    *,
    dtype: Any = np.float64,
    device: str | torch.device = "cpu",
) -> FitData:
    """:func:`validate_fit_input` plus the largest magnitude of each column of ``[X, y]``.

    One pass over ``X`` checks it for NaN and infinity (scikit-learn's message), for
    values whose sums overflow, and yields the column peaks the Gram-based fits reuse.
    """
    X, y = validate_data(
        est,
        to_numpy_input(X),
        to_numpy_input(y),
        multi_output=True,
        y_numeric=True,
        dtype=dtype,
        ensure_min_samples=1,
        ensure_all_finite=False,  # checked below, in the same pass as the column peaks
    )
    y_1d = y.ndim == 1
    y2 = y.reshape(-1, 1) if y_1d else y
    top_x = abs_peaks(X)
    if not np.isfinite(top_x).all():
        assert_all_finite(X, input_name="X", estimator_name=type(est).__name__)
    _check_magnitude(top_x, X.shape[0], "X", getattr(est, "feature_names_in_", None))
    top_y = abs_peaks(np.asarray(y2, dtype=np.float64))
    if not np.isfinite(top_y).all():
        assert_all_finite(y2, input_name="y", estimator_name=type(est).__name__)
    _check_magnitude(top_y, X.shape[0], "y", None)
    sw = None
    if sample_weight is not None:
        sw = torch.as_tensor(check_sample_weight(sample_weight, X).astype(X.dtype))
    dev = resolve_device(device)
    # np.require copies only read-only or non-contiguous input (torch wants it writable)
    Xt = torch.as_tensor(np.require(X, requirements=["C", "W"])).to(dev)
    yt = torch.as_tensor(np.require(y2, dtype=X.dtype, requirements=["C", "W"])).to(dev)
    peaks = torch.from_numpy(np.concatenate([top_x, top_y]).astype(np.float64))
    return FitData(Xt, yt, None if sw is None else sw.to(dev), y_1d, peaks)


# rows per block of the column-peak pass: the |block| temporary stays in cache
_PEAK_BLOCK_ROWS = 8192
# values from which the peak pass splits over two threads
_PARALLEL_PEAK_SIZE = 4_000_000


def abs_peaks(A: np.ndarray) -> np.ndarray:
    """``max |A[:, j]|`` per column in one pass (NaN where a column holds NaN); large arrays
    in two halves on two threads (numpy releases the GIL; the maximum is exact, so the
    result does not depend on the split)."""
    if A.size == 0:
        return np.zeros(A.shape[1], dtype=np.float64)
    if not A.flags.c_contiguous:  # column-major: each column's reduction is contiguous
        return np.maximum(A.max(0), -A.min(0))
    halves = map_halves(
        lambda i, j: _abs_peaks_rows(A[i:j]), A.shape[0], 1, A.size, _PARALLEL_PEAK_SIZE
    )
    return np.maximum.reduce(halves)  # NaN propagates


def _abs_peaks_rows(A: np.ndarray) -> np.ndarray:
    rows = max(_PEAK_BLOCK_ROWS, (1 << 16) // max(A.shape[1], 1))  # blocks of >= 512 KB
    top = np.zeros(A.shape[1], dtype=A.dtype)
    buf = np.empty((min(rows, A.shape[0]), A.shape[1]), dtype=A.dtype)
    for i in range(0, A.shape[0], rows):
        blk = np.abs(A[i : i + rows], out=buf[: min(rows, A.shape[0] - i)])
        np.maximum(top, blk.max(0), out=top)  # NaN propagates
    return top


def _check_magnitude(top: np.ndarray, n: int, name: str, names: Any) -> None:
    """Reject finite values so large that sums over the samples overflow float64."""
    limit = np.finfo(np.float64).max / (4.0 * max(n, 1))
    bad = np.flatnonzero(top > limit)
    if bad.size:
        j = int(bad[0])
        col = str(names[j]) if names is not None else f"{'x' if name == 'X' else 'y'}{j}"
        raise ValueError(
            f"Input {name} contains values too large for float64 arithmetic (column {col!r}, "
            f"max {top[j]:.3g}; sums over {n} samples would overflow). Rescale it."
        )


def check_gram_range(
    est: Any, X: torch.Tensor, y: torch.Tensor, peaks_xy: torch.Tensor | None = None
) -> torch.Tensor:
    """Raise ``ValueError`` naming a column whose cross-products overflow float64.

    For the estimators that work on the unscaled Gram (Lasso, ElasticNet). Returns the
    largest magnitude of each column of ``[X, y]`` (callers may reuse it); ``peaks_xy``
    (from :func:`validate_fit_data`) spares computing it again.
    """
    p = X.shape[1]
    peaks = []
    limit = math.sqrt(np.finfo(np.float64).max / (8.0 * max(X.shape[0], 1)))
    names = getattr(est, "feature_names_in_", None)
    for A, kind in ((X, "X"), (y, "y")):
        if A.numel() == 0:
            continue
        if peaks_xy is not None:
            top_t = peaks_xy[:p] if kind == "X" else peaks_xy[p:]
        else:
            top_t = column_peaks(A)
        peaks.append(top_t.cpu().to(torch.float64))
        top = top_t.cpu().numpy()
        bad = np.flatnonzero(top > limit)
        if bad.size:
            j = int(bad[0])
            col = str(names[j]) if kind == "X" and names is not None else f"{kind.lower()}{j}"
            raise ValueError(
                f"{type(est).__name__} cannot fit input {kind} column {col!r} (max |value| "
                f"{top[j]:.3g}): its squares overflow float64 in the Gram matrix. Rescale it "
                "(e.g. StandardScaler) or use LinearRegression or Ridge, which scale columns."
            )
    return torch.cat(peaks) if len(peaks) == 2 else torch.zeros(X.shape[1] + y.shape[1])


def data_fingerprint(
    X: Any, y: Any, sample_weight: Any | None, peaks: Any | None = None
) -> np.ndarray:
    """Small summary of a weighted data set: count, weight, moments of [X, y] and X*y.

    Taken from the engine's moments of ``[X, y]`` (the pass a linear fit makes; see
    :func:`fingerprint_of_moments`), on columns scaled by powers of two (no overflow): two
    fits on the same data give the same fingerprint up to rounding. ``peaks``: the largest
    magnitude of each column of ``[X, y]``, if known.
    """
    from regtorch.linear.solvers import gram_state

    Xn = np.asarray(to_numpy_input(X), dtype=np.float64)
    yn = np.asarray(to_numpy_input(y), dtype=np.float64).reshape(len(Xn), -1)
    top = (
        np.concatenate([abs_peaks(Xn), abs_peaks(yn)])
        if peaks is None
        else np.asarray(to_numpy_input(peaks), dtype=np.float64)
    )
    w = None
    if sample_weight is not None:
        w = torch.from_numpy(np.asarray(to_numpy_input(sample_weight), dtype=np.float64))
    Xt = torch.from_numpy(np.ascontiguousarray(Xn))
    yt = torch.from_numpy(np.ascontiguousarray(yn))
    gs = gram_state(Xt, yt, w, True, top=torch.from_numpy(top))
    return fingerprint_of_moments(gs.moments, top, len(Xn), Xn.shape[1])


def fingerprint_of_moments(state: Any, peaks: Any, n_rows: int, p: int) -> np.ndarray:
    """:func:`data_fingerprint` of data whose moments a fit already took (a
    ``MomentState`` of ``[X, y]`` with ``p`` features): no pass over the rows."""
    top = np.asarray(to_numpy_input(peaks), dtype=np.float64)
    _, e = np.frexp(np.where(top > 0, top, 1.0))
    r = torch.from_numpy(np.ldexp(1.0, -e)) / state.scale.cpu()  # powers of two: exact
    mean = (state.mean.cpu() * r).numpy()  # weighted means of the scaled columns
    C = (state.C.cpu() * torch.outer(r, r)).numpy()
    W = float(state.n)
    second = np.diagonal(C) / W + mean**2
    cross = C[:p, p:] / W + np.outer(mean[:p], mean[p:])
    parts: list[Any] = [[float(n_rows), W], e.astype(np.float64), mean, second, cross.ravel()]
    return np.concatenate([np.ravel(q) for q in parts])


def same_data(a: Any, b: Any, rtol: float = 1e-9) -> bool:
    """Whether two :func:`data_fingerprint` results describe the same data."""
    fa, fb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if fa.shape != fb.shape:
        return False
    return bool(np.allclose(fa, fb, rtol=rtol, atol=rtol))


def check_sample_weight(sample_weight: Any, n_samples: int | Any) -> np.ndarray:
    """Validated sample weights: float64, shape ``(n_samples,)``, finite, non-negative.

    Parameters
    ----------
    sample_weight : None, scalar or array-like of shape (n_samples,)
        None gives ones and a scalar gives a constant (scikit-learn's convention).
    n_samples : int or array-like
        The number of samples, or the data whose rows they are.

    Raises
    ------
    ValueError
        In scikit-learn's words for a wrong shape (``sample_weight.shape == (3,), expected
        (4,)!``), NaN or infinity, negative values, all zeros; also for values outside
        ``WEIGHT_RANGE``.
    """
    n = int(n_samples) if isinstance(n_samples, numbers.Integral) else _n_rows(n_samples)
    if sample_weight is None:
        return np.ones(n, dtype=np.float64)
    if isinstance(sample_weight, numbers.Number) and not isinstance(sample_weight, complex):
        sw = np.full(n, float(sample_weight), dtype=np.float64)  # type: ignore[arg-type]
    else:
        sw = _weights_array(sample_weight)
        if sw.ndim != 1:
            raise ValueError(
                f"Sample weights must be 1D array or scalar, got {sw.ndim}D array. Expected "
                f"either a scalar value or a 1D array of length {n}."
            )
        if sw.shape != (n,):
            raise ValueError(f"sample_weight.shape == {sw.shape}, expected {(n,)}!")
    if np.isnan(sw).any():
        raise ValueError("Input sample_weight contains NaN.")
    if np.isinf(sw).any():
        raise ValueError("Input sample_weight contains infinity.")
    if np.any(sw < 0):
        raise ValueError("Negative values in data passed to `sample_weight`")
    if n and not np.any(sw):
        raise ValueError("Sample weights must contain at least one non-zero number.")
    check_weight_range(sw)
    return sw


def _n_rows(X: Any) -> int:
    """Rows of an array, DataFrame or tensor."""
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) > 0:
        return int(shape[0])
    return len(X)


def _weights_array(sample_weight: Any) -> np.ndarray:
    """Array-like weights as a contiguous float64 array; a clear error for non-numbers."""
    sw = to_numpy_input(sample_weight)
    if hasattr(sw, "to_numpy"):  # pandas: nullable dtypes give NaN for missing values
        try:
            sw = sw.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            sw = sw.to_numpy()
    arr = np.asarray(sw)
    if arr.dtype.kind == "c":
        raise ValueError("Complex data not supported for sample_weight.")
    try:
        return np.ascontiguousarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"sample_weight must hold numbers; got values of dtype {arr.dtype} ({exc})."
        ) from exc


# positive weights beyond these make weighted sums of squares overflow or lose their digits
WEIGHT_RANGE = (1e-150, 1e150)


def check_weight_range(w: Any) -> None:
    """ValueError when a positive sample weight lies outside ``WEIGHT_RANGE``."""
    w = np.asarray(w, dtype=np.float64)
    pos = w[w > 0]
    if pos.size and (pos.min() < WEIGHT_RANGE[0] or pos.max() > WEIGHT_RANGE[1]):
        bad = pos.min() if pos.min() < WEIGHT_RANGE[0] else pos.max()
        raise ValueError(
            f"sample_weight values must be 0 or between {WEIGHT_RANGE[0]:g} and "
            f"{WEIGHT_RANGE[1]:g}; found {bad:g}. Only their ratios matter to the fit's "
            "coefficients: divide them by a constant."
        )


def validate_predict_input(est: Any, X: Any, dtype: Any = np.float64) -> np.ndarray:
    """Validate X for predict against what fit saw (features, names)."""
    return validate_data(est, to_numpy_input(X), reset=False, dtype=dtype)


def check_param(
    name: str,
    value: Any,
    *,
    kind: type | tuple[type, ...],
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    options: tuple[Any, ...] | None = None,
    finite: bool = False,
) -> None:
    """Raise ``ValueError`` in scikit-learn's wording when a parameter is out of range."""
    if options is not None:
        if value not in options:
            raise ValueError(
                f"The '{name}' parameter must be one of {list(options)}. Got {value!r} instead."
            )
        return
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ValueError(f"The '{name}' parameter must be a number. Got {value!r} instead.")
    if not isinstance(value, kind):
        raise ValueError(f"The '{name}' parameter must be of type {kind}. Got {value!r} instead.")
    v = float(cast(float, value))
    if math.isnan(v):
        raise ValueError(
            f"The '{name}' parameter must be a number, not NaN. Got {value!r} instead."
        )
    if finite and math.isinf(v):
        raise ValueError(f"The '{name}' parameter must be finite. Got {value!r} instead.")
    if low is not None and (v < low or (low_open and v == low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"The '{name}' parameter must be {bound}. Got {value!r} instead.")
    if high is not None and v > high:
        raise ValueError(f"The '{name}' parameter must be <= {high}. Got {value!r} instead.")
