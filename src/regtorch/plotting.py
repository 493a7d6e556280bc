"""PNG plots with matplotlib (imported lazily; figures built with its object API, never
pyplot: no global figure state, the user's backend untouched, and a faster start)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from regtorch.nn.loop import History

__all__ = [
    "plot_coef_path",
    "plot_cv_error",
    "plot_fit",
    "plot_loss_curves",
    "plot_predicted_vs_true",
    "plot_residuals",
]


def _subplots(figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A figure (not registered with pyplot) and its one axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    os.replace(tmp, out)  # atomic: never a half-written PNG under the real name
    return out


def plot_loss_curves(
    history: History, path: str | os.PathLike[str], title: str = "Loss curves", log_y: bool = True
) -> Path:
    """Train (and validation) loss per epoch, written as a PNG.

    Examples
    --------
    >>> h = History(train_loss=[1.0, 0.5], val_loss=[1.1, 0.6], time=[0.1, 0.2], lr=[1e-3] * 2)
    >>> plot_loss_curves(h, "/tmp/regtorch-doctest-loss.png").name
    'regtorch-doctest-loss.png'
    """
    fig, ax = _subplots((6.4, 4.0))
    history.plot(ax=ax, log=log_y)  # one drawing of a loss curve, the best epoch marked
    ax.set_title(title)
    return _save(fig, path)


def plot_fit(
    X: np.ndarray,
    y: np.ndarray,
    x_grid: np.ndarray,
    y_grid: np.ndarray | dict[str, np.ndarray],
    path: str | os.PathLike[str],
    title: str = "Data and fitted curve",
    equation: str | None = None,
) -> Path:
    """Scatter of one-feature data with one or more fitted curves over ``x_grid``.

    ``y_grid`` may be a dict of label -> curve to overlay several fits; ``equation`` (e.g.
    ``"y = 4.3867 x + 3.0133"``) is written on the plot.
    """
    fig, ax = _subplots((6.4, 4.0))
    ax.scatter(np.ravel(X), np.ravel(y), s=6, alpha=0.4, color="grey", label="data")
    curves = y_grid if isinstance(y_grid, dict) else {"fit": y_grid}
    for label, curve in curves.items():
        ax.plot(np.ravel(x_grid), np.ravel(curve), lw=2, label=label)
    if equation:
        ax.text(
            0.02,
            0.96,
            equation,
            transform=ax.transAxes,
            va="top",
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
        )
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_predicted_vs_true(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    path: str | os.PathLike[str],
    title: str = "Predicted vs true",
) -> Path:
    """Predicted against true values with the identity line."""
    yt, yp = np.ravel(y_true), np.ravel(y_pred)
    fig, ax = _subplots((4.8, 4.8))
    ax.scatter(yt, yp, s=8, alpha=0.5)
    lo, hi = float(min(yt.min(), yp.min())), float(max(yt.max(), yp.max()))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="y = x")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_residuals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    path: str | os.PathLike[str],
    title: str = "Residuals",
) -> Path:
    """Residuals (true - predicted) against predicted values."""
    yt, yp = np.ravel(y_true), np.ravel(y_pred)
    fig, ax = _subplots((6.4, 4.0))
    ax.scatter(yp, yt - yp, s=8, alpha=0.5)
    ax.axhline(0.0, color="black", lw=1, ls="--")
    ax.set_xlabel("predicted")
    ax.set_ylabel("residual")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_cv_error(
    alphas: np.ndarray,
    mean: np.ndarray,
    se: np.ndarray | None,
    alpha: float,
    path: str | os.PathLike[str],
    labels: list[str] | None = None,
    title: str = "Cross-validation error",
    ylabel: str = "mean CV MSE",
    chosen: int | None = 0,
) -> Path:
    """Mean CV error against alpha (log x axis), a band of one standard error, alpha marked.

    ``alphas``, ``mean`` and ``se`` are ``(n_alphas,)`` or ``(n_curves, n_alphas)`` (one
    curve per l1_ratio, named by ``labels``); ``se`` None draws no band. ``chosen`` (the
    index of the chosen curve; None: none) gets a dot at ``alpha``.

    Examples
    --------
    >>> a = np.logspace(1, -2, 20); m = (np.log10(a) + 1) ** 2 + 1
    >>> plot_cv_error(a, m, 0.1 * m, 0.1, "/tmp/regtorch-doctest-cv.png").name
    'regtorch-doctest-cv.png'
    """
    A, M = np.atleast_2d(alphas), np.atleast_2d(mean)
    A = np.broadcast_to(A, M.shape)
    S = None if se is None else np.broadcast_to(np.atleast_2d(se), M.shape)
    fig, ax = _subplots((6.4, 4.0))
    for i in range(M.shape[0]):
        order = np.argsort(A[i])
        a, m = A[i][order], M[i][order]
        label = labels[i] if labels else None
        (line,) = ax.plot(a, m, lw=1.8, label=label)
        if S is not None:
            s = S[i][order]
            ax.fill_between(a, m - s, m + s, color=line.get_color(), alpha=0.2, lw=0)
    ax.axvline(alpha, color="black", lw=1, ls="--", label=f"chosen alpha = {alpha:.4g}")
    if chosen is not None:  # the chosen point on its curve
        j = int(np.argmin(np.abs(np.log(A[chosen]) - np.log(alpha))))
        ax.plot([A[chosen, j]], [M[chosen, j]], "o", color="black", ms=5)
    ax.set_xscale("log")
    ax.set_xlabel("alpha")
    ax.set_ylabel(ylabel + (" (band: +- 1 standard error)" if S is not None else ""))
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plot_coef_path(
    alphas: np.ndarray,
    coefs: np.ndarray,
    alpha: float,
    path: str | os.PathLike[str],
    names: list[str] | None = None,
    title: str = "Coefficient paths",
    max_labels: int = 10,
) -> Path:
    """Each coefficient against alpha (log x axis, ``coefs`` of shape ``(n_alphas, p)``),
    the chosen alpha marked; the ``max_labels`` largest at the chosen alpha are named."""
    a = np.asarray(alphas, dtype=np.float64)
    C = np.asarray(coefs, dtype=np.float64).reshape(len(a), -1)
    order = np.argsort(a)
    fig, ax = _subplots((6.4, 4.0))
    at = np.abs(C[int(np.argmin(np.abs(np.log(a) - np.log(alpha))))])
    named = set(np.argsort(-at)[:max_labels].tolist()) if names else set()
    for j in range(C.shape[1]):
        label = names[j] if names and j in named and j < len(names) else None
        ax.plot(a[order], C[order, j], lw=1.2, label=label)
    ax.axvline(alpha, color="black", lw=1, ls="--", label=f"chosen alpha = {alpha:.4g}")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("alpha")
    ax.set_ylabel("coefficient")
    ax.set_title(title)
    ax.legend(fontsize="x-small", ncol=2)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
