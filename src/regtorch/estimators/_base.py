"""Shared input handling for the scikit-learn estimators."""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch
from sklearn.utils.validation import _check_sample_weight, validate_data

from regtorch._validation import resolve_device

__all__ = ["to_numpy_input", "validate_fit_input", "validate_predict_input", "check_param"]


def to_numpy_input(X: Any) -> Any:
    """Tensors become numpy arrays (scikit-learn's validation then applies); others pass."""
    if isinstance(X, torch.Tensor):
        return X.detach().cpu().numpy()
    return X


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
    X, y = validate_data(
        est,
        to_numpy_input(X),
        to_numpy_input(y),
        multi_output=True,
        y_numeric=True,
        dtype=dtype,
        ensure_min_samples=1,
    )
    y_1d = y.ndim == 1
    y2 = y.reshape(-1, 1) if y_1d else y
    sw = None
    if sample_weight is not None:
        sw = torch.as_tensor(check_sample_weight(sample_weight, X).astype(X.dtype))
    dev = resolve_device(device)
    # np.require copies only read-only or non-contiguous input (torch wants it writable)
    Xt = torch.as_tensor(np.require(X, requirements=["C", "W"])).to(dev)
    yt = torch.as_tensor(np.require(y2, dtype=X.dtype, requirements=["C", "W"])).to(dev)
    return Xt, yt, None if sw is None else sw.to(dev), y_1d


def check_sample_weight(sample_weight: Any, X: np.ndarray) -> np.ndarray:
    """scikit-learn's sample_weight checks plus a clear error for negative weights."""
    sw = _check_sample_weight(to_numpy_input(sample_weight), X, dtype=np.float64)
    if np.any(sw < 0):
        raise ValueError("Negative values in data passed to `sample_weight`")
    return sw


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
    if low is not None and (v < low or (low_open and v == low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"The '{name}' parameter must be {bound}. Got {value!r} instead.")
    if high is not None and v > high:
        raise ValueError(f"The '{name}' parameter must be <= {high}. Got {value!r} instead.")
