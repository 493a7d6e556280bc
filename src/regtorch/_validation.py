"""The one place that turns user input into checked float tensors.

Error messages follow scikit-learn's wording so that users (and scikit-learn's own
estimator checks) see familiar text.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "as_float_tensor",
    "check_consistent_length",
    "check_finite",
    "check_X_y_tensors",
    "column_peaks",
    "resolve_device",
]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return a torch device; ``"auto"`` (or None) picks CUDA, then MPS, then CPU.

    Under ``torchrun`` (``LOCAL_RANK`` set), ``"auto"`` and ``"cuda"`` without an index give
    ``cuda:LOCAL_RANK``, so that each process of a node lands on its own GPU; an explicit
    ``"cuda:N"`` is used as given.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        if torch.cuda.is_available():
            return _local_cuda()
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"The 'device' parameter must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'. "
            f"Got {device!r} instead."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available on this machine.")
    if dev.type == "cuda" and dev.index is None:
        return _local_cuda()
    return dev


def _local_cuda() -> torch.device:
    """``cuda:LOCAL_RANK`` under torchrun, else the current CUDA device (``"cuda"``)."""
    import os

    local = os.environ.get("LOCAL_RANK")
    if local is None or local.strip() == "":
        return torch.device("cuda")
    try:
        index = int(local)
    except ValueError:
        raise ValueError(
            f"LOCAL_RANK={local!r} is not a process index (torchrun sets 0, 1, ...)."
        ) from None
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise ValueError(
            f"LOCAL_RANK={index} but only {count} CUDA device(s) are visible to this process: "
            "start at most that many processes per node (torchrun --nproc-per-node), or, "
            "where each process sees only its own GPU (CUDA_VISIBLE_DEVICES set per rank), "
            "pass device='cuda:0' (--device cuda:0)."
        )
    return torch.device("cuda", index)


def column_peaks(A: torch.Tensor) -> torch.Tensor:
    """The largest magnitude of each column of ``A (n, m)``; zeros when ``n == 0``.

    ``max(A.max(), -A.min())``: two reductions, no ``|A|`` temporary the size of the data.
    """
    if A.shape[0] == 0:
        return torch.zeros(A.shape[1], dtype=A.dtype, device=A.device)
    return torch.maximum(A.amax(0), A.amin(0).neg())


def _is_string_like(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "OUS"


def as_float_tensor(
    data: Any,
    *,
    name: str = "X",
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Convert numpy, pandas, lists or tensors to a float tensor without silent casts.

    Raises
    ------
    ValueError
        For strings or other values that are not numbers.
    """
    if isinstance(data, torch.Tensor):
        t = data
        if t.is_complex():
            raise ValueError(f"Complex data not supported for {name}.")
        if not t.is_floating_point():
            t = t.to(dtype)
        return t.to(device=device, dtype=dtype)
    if hasattr(data, "to_numpy"):  # pandas DataFrame / Series
        data = data.to_numpy()
    arr = np.asarray(data)
    if _is_string_like(arr):
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{name} contains values that are not numbers ({exc}); encode text columns "
                "as numbers first."
            ) from exc
    if np.iscomplexobj(arr):
        raise ValueError(f"Complex data not supported for {name}.")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} has dtype {arr.dtype}, which is not numeric.")
    return torch.as_tensor(arr, device=device).to(dtype)


def check_finite(t: torch.Tensor, name: str = "X") -> None:
    """Raise ``ValueError`` in scikit-learn's words if ``t`` holds NaN or infinity."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        if bool(torch.isnan(t).any()):
            raise ValueError(f"Input {name} contains NaN.")
        raise ValueError(
            f"Input {name} contains infinity or a value too large for dtype({str(t.dtype)!r})."
        )


def check_consistent_length(*tensors: torch.Tensor | None) -> None:
    """Raise ``ValueError`` if the tensors do not share their first dimension."""
    lengths = [int(t.shape[0]) for t in tensors if t is not None]
    if len(set(lengths)) > 1:
        raise ValueError(f"Found input variables with inconsistent numbers of samples: {lengths}")


def check_X_y_tensors(
    X: torch.Tensor, y: torch.Tensor, *, x_name: str = "X", y_name: str = "y"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes, lengths and finiteness of a (X, y) pair of tensors.

    Returns X unchanged and y as a 2-D ``(n_samples, n_targets)`` tensor.
    """
    if X.ndim != 2:
        raise ValueError(
            f"Expected 2D array for {x_name}, got {X.ndim}D array instead. Reshape your data "
            "using array.reshape(-1, 1) if it has a single feature or array.reshape(1, -1) "
            "if it contains a single sample."
        )
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    elif y.ndim != 2:
        raise ValueError(f"{y_name} must be 1D or 2D, got {y.ndim}D array instead.")
    check_consistent_length(X, y)
    if X.shape[0] == 0:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={tuple(X.shape)}) while a minimum of 1 "
            "is required."
        )
    check_finite(X, x_name)
    check_finite(y, y_name)
    return X, y
