"""MLPRegressor's data preparation: checked sample weights, (weighted) column statistics free
of overflow, the scaled float32 training arrays, the network's memory check and the float64
forward pass in original units."""

from __future__ import annotations

import numpy as np
import torch

__all__: list[str] = []


def _positive_weights(sw: torch.Tensor | None, name: str = "sample_weight") -> np.ndarray | None:
    """Checked sample weights as float64 numpy (None: unweighted); all zero is an error."""
    if sw is None:
        return None
    w = sw.detach().cpu().numpy().astype(np.float64, copy=False)
    if not w.sum() > 0:
        raise ValueError(f"{name} must contain at least one non-zero weight; every weight is zero.")
    return w


def _weighted_rows(
    X: np.ndarray, y: np.ndarray, sw: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``X, y`` and checked weights (float64, or None) less the rows of weight 0, which
    count for nothing (the validation split then draws from the weighted rows only)."""
    w = _positive_weights(sw)
    if w is None or (w > 0).all():
        return X, y, w
    keep = w > 0
    return X[keep], y[keep], w[keep]


# Bytes per parameter while training: float32 weights, gradients and Adam's two moments,
# plus the float64 copy used for prediction, with slack for activations.
BYTES_PER_PARAMETER = 40


def _check_network_size(n_in: int, sizes: tuple[int, ...], n_out: int) -> None:
    """Refuse, before building it, a network that cannot fit in the memory available."""
    from regtorch.data.readers import available_memory

    widths = (n_in, *sizes, n_out)
    n_params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    need = n_params * BYTES_PER_PARAMETER
    limit = available_memory() // 2
    if need > limit:
        raise ValueError(
            f"hidden_layer_sizes={sizes} gives {n_params:,} parameters, about "
            f"{need / 2**30:.1f} GiB to train, more than the {limit / 2**30:.1f} GiB "
            "available: choose smaller hidden layers."
        )


def _center_scale(A: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Column means and population standard deviations (1 where constant), weighted by
    ``w`` when given, free of overflow: the columns are divided by their largest magnitude
    first, so values near 1e300 (whose squares overflow) or 1e-300 (whose squares
    underflow) give their true statistics. Integer weights give the statistics of the rows
    repeated that many times."""
    peak = np.abs(A).max(0)
    peak = np.where(peak > 0, peak, 1.0)
    Z = A / peak
    if w is None:
        mean, sd = Z.mean(0), Z.std(0)
    else:
        total = w.sum()
        mean = w @ Z / total
        sd = np.sqrt(w @ np.square(Z - mean) / total)
    mean, sd = mean * peak, sd * peak
    return mean, np.where(sd > 0, sd, 1.0)


def _scaling(
    X: np.ndarray, y: np.ndarray, standardize: bool, w: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Means and scales of inputs and targets, weighted by ``w`` when given (zeros and ones
    without standardisation)."""
    if not standardize:
        return np.zeros(X.shape[1]), np.ones(X.shape[1]), np.zeros(y.shape[1]), np.ones(y.shape[1])
    return (*_center_scale(X, w), *_center_scale(y, w))


def _standardized(A: np.ndarray, mean: np.ndarray, scale: np.ndarray, name: str) -> np.ndarray:
    """``(A - mean) / scale`` as float32, computed as ``A / scale - mean / scale`` so that it
    cannot overflow for values near the float64 limit; a clear error if it still does."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = (A / scale - mean / scale).astype(np.float32)
    if not np.isfinite(out).all():
        raise ValueError(
            f"Input {name} has values too large for training in float32 after scaling "
            f"(largest magnitude {float(np.abs(A).max()):.3g}); use standardize=True or "
            f"rescale {name}."
        )
    return out


def _forward64(
    module64: torch.nn.Module,
    X: np.ndarray,
    scaling: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    what: str,
) -> np.ndarray:
    """Predictions in original units, (n_samples, n_targets); ValueError if not finite."""
    x_mean, x_scale, y_mean, y_scale = scaling
    with np.errstate(over="ignore", invalid="ignore"):
        Xs = X / x_scale - x_mean / x_scale  # no overflow for |X| near the float64 limit
    with torch.inference_mode():
        # always a float64 copy on the CPU: float32 kernels round differently with the
        # batch size and the device, so a row's prediction would depend on which rows are
        # predicted with it, and a saved model would not reproduce a GPU-fitted one
        out = module64(torch.as_tensor(Xs)).numpy()
    with np.errstate(over="ignore", invalid="ignore"):
        out = out * y_scale + y_mean
    if not np.isfinite(out).all():
        raise ValueError(
            f"MLPRegressor's predictions for {what} are not finite (NaN or overflow): the "
            f"targets' scale ({float(np.max(y_scale)):.3g}) and mean leave no room in float64, "
            "or the inputs are far outside the training range. Rescale y (e.g. divide it by "
            "a power of ten) or X."
        )
    return out
