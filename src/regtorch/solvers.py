"""Pure solver functions: (X, y, weights, ...) -> coefficients. No estimator state, no I/O.

Conventions: ``X`` is ``(n_samples, n_features)``, ``y`` is ``(n_samples, n_targets)``, both
float tensors already centred and weighted by :func:`center_and_weight` where an intercept
is fitted. Closed forms run in the dtype they are given (the estimators pass float64).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

__all__ = [
    "Centered",
    "LinearSolution",
    "RankWarning",
    "center_and_weight",
    "elastic_net",
    "solve_cholesky",
    "solve_least_squares",
    "solve_qr",
    "solve_svd",
]

# Cholesky on the scaled Gram is trusted up to this condition number of the Gram
# (the design's is its square root); above it the solvers fall back to QR.
GRAM_COND_LIMIT = 1e10
# Below this many flops (n * p^2) Householder QR costs nothing worth saving.
SMALL_PROBLEM_FLOPS = 2e7


class RankWarning(UserWarning):
    """The design matrix is rank deficient; the minimum-norm solution was returned."""


@dataclass
class Centered:
    """A design centred (weighted means) and scaled by sqrt(sample_weight)."""

    X: torch.Tensor  # (n, p)
    y: torch.Tensor  # (n, k)
    X_offset: torch.Tensor  # (p,)
    y_offset: torch.Tensor  # (k,)
    sqrt_sw: torch.Tensor | None  # (n, 1)


@dataclass
class LinearSolution:
    """Coefficients ``(p, k)`` of a least-squares fit, with how they were found."""

    coef: torch.Tensor
    rank: int
    solver: str
    singular_values: torch.Tensor | None = None
    R: torch.Tensor | None = None  # (p, p) upper factor of the centred design, when full rank
    cond: float | None = None  # estimated condition number of the scaled Gram (Cholesky path)


def center_and_weight(
    X: torch.Tensor,
    y: torch.Tensor,
    sample_weight: torch.Tensor | None,
    fit_intercept: bool,
) -> Centered:
    """Centre X and y on their (weighted) means and multiply rows by sqrt(weight)."""
    p, k = X.shape[1], y.shape[1]
    if sample_weight is None:
        if fit_intercept:
            xo, yo = X.mean(0), y.mean(0)
            return Centered(X - xo, y - yo, xo, yo, None)
        return Centered(X, y, X.new_zeros(p), y.new_zeros(k), None)
    w = sample_weight.reshape(-1, 1).to(X.dtype)
    if fit_intercept:
        xo = (X * w).sum(0) / w.sum()
        yo = (y * w).sum(0) / w.sum()
    else:
        xo, yo = X.new_zeros(p), y.new_zeros(k)
    sw = w.sqrt()
    return Centered((X - xo) * sw, (y - yo) * sw, xo, yo, sw)


def _rank_from_singular(s: torch.Tensor, shape: tuple[int, int]) -> tuple[int, float]:
    tol = float(s.max()) * max(shape) * torch.finfo(s.dtype).eps if s.numel() else 0.0
    return int((s > tol).sum()), tol


def solve_svd(X: torch.Tensor, y: torch.Tensor, alpha: float = 0.0) -> LinearSolution:
    """Minimum-norm least squares (ridge when ``alpha > 0``) through the thin SVD."""
    U, s, Vh = torch.linalg.svd(X, full_matrices=False)
    rank, tol = _rank_from_singular(s, (X.shape[0], X.shape[1]))
    if alpha > 0:
        d = s / (s**2 + alpha)
    else:
        d = torch.where(s > tol, 1.0 / torch.where(s > tol, s, torch.ones_like(s)), 0.0)
    coef = Vh.mT @ (d.unsqueeze(1) * (U.mT @ y))
    return LinearSolution(coef, rank if alpha == 0 else X.shape[1], "svd", s)


def solve_qr(X: torch.Tensor, y: torch.Tensor, alpha: float = 0.0) -> LinearSolution:
    """Householder QR; ridge by augmenting with ``sqrt(alpha) * I``; SVD if rank deficient."""
    n, p = X.shape
    if alpha > 0:
        X = torch.cat([X, math.sqrt(alpha) * torch.eye(p, dtype=X.dtype, device=X.device)])
        y = torch.cat([y, y.new_zeros(p, y.shape[1])])
    if X.shape[0] < p:
        return solve_svd(X, y)
    Q, R = torch.linalg.qr(X, mode="reduced")
    d = R.diagonal().abs()
    if d.numel() == 0 or float(d.min()) <= float(d.max()) * max(X.shape) * torch.finfo(X.dtype).eps:
        return solve_svd(X, y)
    coef = torch.linalg.solve_triangular(R, Q.mT @ y, upper=True)
    return LinearSolution(coef, p, "qr", R=R if alpha == 0 else None)


def _gram_blocks(
    X: torch.Tensor,
    y: torch.Tensor,
    xo: torch.Tensor,
    yo: torch.Tensor,
    sw: torch.Tensor | None,
    block_rows: int = 32_768,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Xc'Xc`` and ``Xc'yc`` of the centred, weighted design, a block of rows at a time.

    Centring block by block avoids both a full centred copy of X and the cancellation of
    ``X'X - n * mean mean'``.
    """
    p, k = X.shape[1], y.shape[1]
    G = X.new_zeros(p, p)
    b = X.new_zeros(p, k)
    for i in range(0, X.shape[0], block_rows):
        xb = X[i : i + block_rows] - xo
        yb = y[i : i + block_rows] - yo
        if sw is not None:
            w = sw[i : i + block_rows]
            xb, yb = xb * w, yb * w
        G.addmm_(xb.mT, xb)
        b.addmm_(xb.mT, yb)
    return G, b


def solve_cholesky(
    X: torch.Tensor,
    y: torch.Tensor,
    alpha: float = 0.0,
    *,
    X_offset: torch.Tensor | None = None,
    y_offset: torch.Tensor | None = None,
    sqrt_sw: torch.Tensor | None = None,
    refine_steps: int = 3,
    cond_limit: float = GRAM_COND_LIMIT,
) -> LinearSolution:
    """Cholesky on the column-scaled Gram with iterative refinement on the residual.

    ``X`` and ``y`` may be raw: with ``X_offset``/``y_offset``/``sqrt_sw`` the centred,
    weighted design ``sqrt_sw * (X - X_offset)`` is used without being materialised. The
    Gram is formed once (the floor of any exact method); each refinement step costs two
    passes over X. If the scaled Gram is too ill-conditioned (estimated from the factor),
    or not positive definite, falls back to :func:`solve_qr` on the centred design.
    The upper factor ``R`` (with ``R'R = Xc'Xc + alpha I``) is returned for inference.
    """
    p, k = X.shape[1], y.shape[1]
    xo = X.new_zeros(p) if X_offset is None else X_offset
    yo = y.new_zeros(k) if y_offset is None else y_offset
    G, Xty = _gram_blocks(X, y, xo, yo, sqrt_sw)
    scale = G.diagonal().sqrt()  # (p,) column norms of the centred design
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    Gs = G / scale.unsqueeze(0) / scale.unsqueeze(1)
    if alpha > 0:
        Gs = Gs + torch.diag(alpha / scale**2)
    L, info = torch.linalg.cholesky_ex(Gs)
    ld = L.diagonal()
    ok = int(info) == 0 and p > 0 and float(ld.min()) > 0
    cond_est = float((ld.max() / ld.min()) ** 2) if ok else math.inf
    if cond_est > cond_limit:
        Xc, yc = X - xo, y - yo
        if sqrt_sw is not None:
            Xc, yc = Xc * sqrt_sw, yc * sqrt_sw
        return solve_qr(Xc, yc, alpha)

    def gram_solve(rhs: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(rhs / scale.unsqueeze(1), L) / scale.unsqueeze(1)

    def residual_rhs(coef: torch.Tensor) -> torch.Tensor:
        # Xc'(yc - Xc coef) computed from X itself: the refinement's accuracy comes from here
        e = (y - yo) - (X @ coef - xo @ coef)
        if sqrt_sw is not None:
            e = e * sqrt_sw**2
        r = X.mT @ e - torch.outer(xo, e.sum(0))
        return r - alpha * coef if alpha > 0 else r

    coef = gram_solve(Xty)
    for _ in range(refine_steps):
        delta = gram_solve(residual_rhs(coef))
        coef = coef + delta
        if float(delta.abs().max()) <= 4 * torch.finfo(X.dtype).eps * float(coef.abs().max()):
            break
    R = L.mT * scale.unsqueeze(0)  # R'R = Gram (+ alpha I)
    return LinearSolution(coef, p, "cholesky", R=R, cond=cond_est)


def solve_least_squares(
    X: torch.Tensor,
    y: torch.Tensor,
    alpha: float = 0.0,
    solver: str = "auto",
    *,
    sample_weight: torch.Tensor | None = None,
    fit_intercept: bool = True,
) -> tuple[LinearSolution, torch.Tensor, torch.Tensor]:
    """Least squares (ridge if ``alpha > 0``) of raw ``X, y`` with intercept and weights.

    ``"auto"``: Householder QR for small problems, else Cholesky on the blockwise-centred
    Gram with refinement, falling back to QR, and to SVD when rank deficient. Warns with
    :class:`RankWarning` when the design is rank deficient.

    Returns
    -------
    solution : LinearSolution
        Coefficients ``(p, k)`` of the centred problem.
    X_offset, y_offset : tensor
        Weighted means (zeros without intercept); intercept = y_offset - X_offset @ coef.
    """
    n, p = X.shape
    if solver == "auto":
        if n < p and alpha == 0:
            solver = "svd"
        elif n * p * p <= SMALL_PROBLEM_FLOPS:
            solver = "qr"
        else:
            solver = "cholesky"
    if solver == "cholesky":
        if sample_weight is None and not fit_intercept:
            xo, yo, sw = X.new_zeros(p), y.new_zeros(y.shape[1]), None
        else:
            w = None if sample_weight is None else sample_weight.reshape(-1, 1).to(X.dtype)
            if fit_intercept:
                ws = X.new_tensor(float(n)) if w is None else w.sum()
                xo = (X.sum(0) if w is None else (X * w).sum(0)) / ws
                yo = (y.sum(0) if w is None else (y * w).sum(0)) / ws
            else:
                xo, yo = X.new_zeros(p), y.new_zeros(y.shape[1])
            sw = None if w is None else w.sqrt()
        sol = solve_cholesky(X, y, alpha, X_offset=xo, y_offset=yo, sqrt_sw=sw)
    elif solver in ("svd", "qr"):
        c = center_and_weight(X, y, sample_weight, fit_intercept)
        xo, yo = c.X_offset, c.y_offset
        sol = solve_svd(c.X, c.y, alpha) if solver == "svd" else solve_qr(c.X, c.y, alpha)
    else:
        raise ValueError(f"Unknown closed-form solver {solver!r}.")
    if sol.rank < p and alpha == 0:
        warnings.warn(
            f"The design matrix is rank deficient (rank {sol.rank} < {p} features); "
            "returning the minimum-norm least-squares solution.",
            RankWarning,
            stacklevel=3,
        )
    return sol, xo, yo


def _soft(z: torch.Tensor, t: float, positive: bool) -> torch.Tensor:
    if positive:
        return (z - t).clamp_min(0.0)
    return z.sign() * (z.abs() - t).clamp_min(0.0)


def elastic_net(
    G: torch.Tensor,
    c: torch.Tensor,
    l1: float,
    l2: float,
    *,
    max_iter: int = 10_000,
    tol: float = 1e-4,
    positive: bool = False,
    coef_init: torch.Tensor | None = None,
    check_every: int = 10,
) -> tuple[torch.Tensor, int, float]:
    """Elastic net on the Gram form by FISTA with restarts, then an exact active-set polish.

    Minimises ``0.5 w'Gw - c'w + l1 |w|_1 + 0.5 l2 |w|^2`` for one target, where for data
    ``G = X'X / n`` and ``c = X'y / n`` (scikit-learn's scaling). Stops when the largest
    coefficient change, relative to the largest coefficient, is below ``tol`` (checked every
    ``check_every`` iterations), then solves the KKT system on the active set exactly and
    keeps that solution if it satisfies the optimality conditions.

    Returns
    -------
    coef : tensor of shape (p,)
    n_iter : int
    gap : float
        Largest violation of the optimality conditions at the returned point.
    """
    p = G.shape[0]
    w = torch.zeros(p, dtype=G.dtype, device=G.device) if coef_init is None else coef_init.clone()
    lip = float(torch.linalg.eigvalsh(G)[-1]) + l2 if p else 1.0
    step = 1.0 / max(lip, torch.finfo(G.dtype).tiny)
    z, t = w.clone(), 1.0
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        grad = G @ z - c + l2 * z
        w_new = _soft(z - step * grad, step * l1, positive)
        t_new = 0.5 * (1 + math.sqrt(1 + 4 * t * t))
        diff = w_new - w
        # adaptive restart (O'Donoghue & Candes): drop momentum when it points uphill
        if float((z - w_new) @ diff) > 0:
            t_new, z = 1.0, w_new
        else:
            z = w_new + ((t - 1) / t_new) * diff
        w, t = w_new, t_new
        if n_iter % check_every == 0:
            scale = max(float(w.abs().max()), 1e-300)
            if float(diff.abs().max()) <= tol * scale:
                break
    polished = _polish(G, c, l1, l2, w, positive)
    if polished is not None:
        w = polished
    return w, n_iter, _kkt_violation(G, c, l1, l2, w, positive)


def _kkt_violation(
    G: torch.Tensor, c: torch.Tensor, l1: float, l2: float, w: torch.Tensor, positive: bool
) -> float:
    g = c - G @ w - l2 * w  # minus the smooth gradient
    active = w != 0
    viol = torch.where(
        active, (g - l1 * w.sign()).abs(), (g.clamp_min(0) if positive else g.abs()) - l1
    )
    return float(viol.clamp_min(0).max()) if viol.numel() else 0.0


def _polish(
    G: torch.Tensor, c: torch.Tensor, l1: float, l2: float, w: torch.Tensor, positive: bool
) -> torch.Tensor | None:
    """Solve the KKT equations on w's support with w's signs; None if they do not hold."""
    active = torch.nonzero(w).flatten()
    if active.numel() == 0:
        return (
            w
            if _kkt_violation(G, c, l1, l2, w, positive) <= 1e-12 * (1 + float(c.abs().max()))
            else None
        )
    s = w[active].sign()
    A = G[active][:, active] + l2 * torch.eye(active.numel(), dtype=G.dtype, device=G.device)
    try:
        wa = torch.linalg.solve(A, c[active] - l1 * s)
    except RuntimeError:
        return None
    if not bool((wa.sign() == s).all()):
        return None
    out = torch.zeros_like(w)
    out[active] = wa
    scale = 1 + float(c.abs().max())
    if _kkt_violation(G, c, l1, l2, out, positive) > 1e-9 * scale:
        return None
    return out
