"""Linear models trained by gradient descent (solver="lbfgs" or "adam")."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from regtorch.exceptions import RankWarning
from regtorch.linear.solvers import center_and_weight
from regtorch.nn.loop import History, TrainingDivergedError

__all__ = ["DIVERGENCE_RATIO"]


def _gradient_fit(
    est: Any, X: torch.Tensor, y: torch.Tensor, sw: torch.Tensor | None, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, History]:
    """Train a linear module (the tutorial's way) on the standardised, centred design.

    Returns ``(coef (p, k), X_offset, y_offset, history)``; the estimator is not modified.
    """
    from regtorch.nn.loop import train
    from regtorch.nn.modules import LinearModule

    c = center_and_weight(X, y, sw, est.fit_intercept)
    n, p = c.X.shape

    def rms(A: torch.Tensor) -> torch.Tensor:
        # divided by the largest magnitude first: no overflow for 1e200, no underflow at 1e-300
        peak = A.abs().amax(0)
        peak = torch.where(peak > 0, peak, torch.ones_like(peak))
        return (A / peak).square().mean(0).sqrt() * peak

    sx = rms(c.X)
    # a spread below float64 resolution at the column's magnitude (1e20 + small noise) is
    # rounding noise after centring: such a column is constant and gets coefficient 0
    const = sx <= 64 * torch.finfo(torch.float64).eps * c.X_offset.abs()
    Xc = torch.where(const, torch.zeros_like(c.X), c.X)
    if bool(const.any()):
        warnings.warn(
            f"Column(s) {torch.nonzero(const).flatten().tolist()} (0-based) are constant to "
            "float64 resolution (their spread is below the rounding of their magnitude): "
            "their coefficients are 0.",
            RankWarning,
            stacklevel=3,
        )
    sx = torch.where((sx > 0) & ~const, sx, torch.ones_like(sx))
    sy = rms(c.y)
    sy = torch.where(sy > 0, sy, torch.ones_like(sy))
    Xs, ys = Xc / sx, c.y / sy
    module = LinearModule(p, y.shape[1], bias=False).to(torch.float64)

    penalty = None
    if alpha > 0:
        # ||y - Xw||^2 + alpha ||w||^2, divided like the mean loss by n * k * sy^2, with
        # w = w_s * sy / sx in the original units
        inv_sx2 = (1.0 / sx**2).unsqueeze(0)  # (1, p)

        def penalty(m: Any) -> torch.Tensor:
            return alpha / (n * y.shape[1]) * (m.linear.weight.square() * inv_sx2).sum()

    solver = est.solver
    max_iter = est.max_iter if est.max_iter is not None else (100 if solver == "lbfgs" else 3000)
    lr = (
        est.learning_rate if est.learning_rate is not None else (1.0 if solver == "lbfgs" else 0.05)
    )
    try:
        hist = train(
            module,
            Xs,
            ys,
            optimizer=solver,
            lr=lr,
            epochs=max_iter,
            seed=est.random_state or 0,
            device=X.device,
            lr_schedule="cosine" if solver == "adam" else None,
            penalty=penalty,
            dtype=torch.float64,
            tol=est.tol if solver == "lbfgs" else None,
        )
    except TrainingDivergedError as exc:
        raise TrainingDivergedError(
            f"solver={solver!r} diverged with learning_rate={lr:g}: {exc} Lower learning_rate.",
            exc.history,
        ) from exc
    _check_not_diverged(module, Xs, ys, hist, solver, lr)
    coef = (module.linear.weight.detach().mT * sy.unsqueeze(0)) / sx.unsqueeze(1)
    coef[const] = 0.0  # their weights saw no gradient and keep their random start
    return coef, c.X_offset, c.y_offset, hist


# A gradient fit whose final training loss exceeds its first by this factor diverged.
DIVERGENCE_RATIO = 1.5


def _check_not_diverged(
    module: Any, Xs: torch.Tensor, ys: torch.Tensor, hist: Any, solver: str, lr: float
) -> None:
    """Raise TrainingDivergedError when the weights or the final loss blew up."""
    with torch.no_grad():
        w = module.linear.weight
        final = (
            float((Xs @ w.mT - ys).square().mean()) if bool(torch.isfinite(w).all()) else math.nan
        )
    first = float(hist.train_loss[0]) if len(hist) else math.nan
    if not math.isfinite(final) or (math.isfinite(first) and final > DIVERGENCE_RATIO * first):
        raise TrainingDivergedError(
            f"solver={solver!r} diverged with learning_rate={lr:g}: the training loss went "
            f"from {first:.3g} at the first epoch to {final:.3g} at the end (standardised "
            "units). Lower learning_rate, or use a closed-form solver.",
            hist,
        )
