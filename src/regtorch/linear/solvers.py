"""Pure solver functions: (X, y, weights, ...) -> coefficients. No estimator state, no I/O.

Conventions: ``X`` is ``(n_samples, n_features)``, ``y`` is ``(n_samples, n_targets)``, both
float tensors already centred and weighted by :func:`center_and_weight` where an intercept
is fitted. Closed forms run in the dtype they are given (the estimators pass float64).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from regtorch._threads import map_halves
from regtorch.exceptions import IllConditionedWarning, RankWarning

__all__ = [
    "Centered",
    "LinearSolution",
    "RankWarning",
    "center_and_weight",
    "elastic_net",
    "enet_duality_gap",
    "gram_state",
    "solve_cholesky",
    "solve_from_state",
    "solve_qr",
    "solve_svd",
]

# Cholesky on the scaled Gram is trusted up to this condition number of the Gram
# (the design's is its square root); above it the solvers fall back to QR.
GRAM_COND_LIMIT = 1e10
# values of X from which gram_state reads its two halves on two threads
PARALLEL_GRAM_SIZE = 4_000_000
# Above this condition number of the scaled Gram, the factor kept for standard errors gets a
# second CholeskyQR pass (its error grows with cond(Gram) * eps otherwise).
REORTH_COND = 1e3
# Below this condition number of the scaled Gram, Cholesky's answer is already accurate to
# about cond * eps (1e-13): iterative refinement passes over X are skipped.
REFINE_COND = 100.0
# A one-pass (Gram only) fit warns above this condition number of the scaled Gram.
STREAM_COND_LIMIT = 1e8
# Below this many flops (n * p^2) Householder QR costs nothing worth saving.
SMALL_PROBLEM_FLOPS = 2e7
# Up to this size (n * p^2, and p) the fit and its statistics are computed from the
# exactly centred Gram in double-double arithmetic (about 30 times the flops of X'X, so
# kept to sizes where that costs well under 0.1 s; larger fits use the float64 paths).
EXTENDED_FLOPS = 2e6
EXTENDED_MAX_FEATURES = 64
# A streamed fit takes its second pass (TSQR and, where affordable, double-double moments)
# above this condition number of the scaled Gram when that pass is affordable: one-pass
# Cholesky is accurate to about cond * eps only.
STREAM_REFINE_COND = 1e3
# Above this condition number of the scaled Gram (1e7 for the design), a TSQR's float64
# coefficients are not trusted where double-double moments are at hand.
TSQR_TRUST_COND = 1e14


@dataclass
class Centered:
    """A design centred (weighted means) and scaled by sqrt(sample_weight)."""

    X: torch.Tensor  # (n, p)
    y: torch.Tensor  # (n, k)
    X_offset: torch.Tensor  # (p,)
    y_offset: torch.Tensor  # (k,)
    sqrt_sw: torch.Tensor | None  # (n, 1)


@dataclass
class GramState:
    """Centred, weighted second moments of (X, y): enough for Cholesky, R2 and sse."""

    G: torch.Tensor  # (p, p) Xc' W Xc
    Xty: torch.Tensor  # (p, k) Xc' W yc
    yty: torch.Tensor  # (k,) yc' W yc
    X_offset: torch.Tensor  # (p,) weighted means (zeros without intercept)
    y_offset: torch.Tensor  # (k,)
    weight_sum: float
    moments: Any = None  # the MomentState it came from, when there is one


@dataclass
class LinearSolution:
    """Coefficients ``(p, k)`` of a least-squares fit, with how they were found."""

    coef: torch.Tensor
    rank: int
    solver: str
    singular_values: torch.Tensor | None = None
    R: torch.Tensor | None = None  # (p, p) upper factor of the centred design, when full rank
    cond: float | None = None  # condition number of the scaled Gram (Cholesky path)
    state: GramState | None = None  # the Gram it was solved from (Cholesky path)
    intercept: torch.Tensor | None = None  # (k,) when computed exactly (extended path)
    bse_unit: np.ndarray | None = None  # (p_full,) sqrt diag of the unscaled covariance
    sse: np.ndarray | None = None  # (k,) residual sum of squares of these coefficients
    sst: np.ndarray | None = None  # (k,) total sum of squares (centred with an intercept)
    factor: torch.Tensor | None = None  # (p, p) F with F'F = Xc'Xc (SVD path: S Vh)
    refined: int = 0  # iterative-refinement steps taken with the extended residual


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
    factor = s.unsqueeze(1) * Vh if alpha == 0 and rank == X.shape[1] else None
    return LinearSolution(coef, rank if alpha == 0 else X.shape[1], "svd", s, factor=factor)


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


def gram_state(
    X: torch.Tensor,
    y: torch.Tensor,
    sample_weight: torch.Tensor | None,
    fit_intercept: bool,
    block_rows: int | None = None,
    top: torch.Tensor | None = None,
) -> GramState:
    """One blockwise pass: the engine's mergeable moments of ``[X, y]``, as a GramState.

    The same :class:`~regtorch.linear.moments.MomentState` streamed and distributed fits
    accumulate (power-of-two column scaling, Chan et al.'s merge, blocks centred where a
    mean dwarfs its spread), read from the arrays in memory; blocks of a few thousand rows
    stay in cache, so the pass costs about as much as X'X. ``top`` (optional, ``(p + k,)``):
    the largest magnitude of each column of ``[X, y]``, which spares finding it per block.
    """
    from regtorch.linear.moments import MomentState

    n, p = X.shape
    # about 4 MB of rows per block (at least 16,384 rows): narrow data in fewer, longer blocks
    block_rows = block_rows or max(16_384, (1 << 19) // max(p, 1))
    on_cpu = X.device.type == "cpu" and X.dtype == torch.float64
    w = None if sample_weight is None else sample_weight.reshape(-1).to(X.dtype)

    def rows(start: int, stop: int) -> MomentState:
        state = MomentState()
        for i in range(start, stop, block_rows):
            j = min(i + block_rows, stop)
            Xb, yb, wb = X[i:j], y[i:j], None if w is None else w[i:j]
            if on_cpu:  # column blocks as numpy views: no joined copy of the rows
                wn = None if wb is None else wb.numpy()
                state.update_columns(Xb.numpy(), yb.numpy(), wn, top)
            else:
                state.update(torch.cat([Xb, yb], 1), wb, None if top is None else top.to(X.device))
        return state

    # on the CPU, large arrays in two halves on two threads, merged in row order
    size = X.numel() if on_cpu else 0
    state, *rest = map_halves(rows, n, block_rows, size, PARALLEL_GRAM_SIZE)
    for other in rest:
        state.merge(other)
    gs = gram_of_moments(state, fit_intercept, p, X.new_zeros(p), y.new_zeros(y.shape[1]))
    gs.moments = state
    return gs


def gram_of_moments(
    state: Any, fit_intercept: bool, p: int, x_zero: torch.Tensor, y_zero: torch.Tensor
) -> GramState:
    """A :class:`MomentState` of ``[X, y]`` (``p`` features) in data units, centred iff
    ``fit_intercept`` (else raw). ``x_zero``/``y_zero``: zero offsets (their device and
    dtype) for a state without rows. A column that is constant up to rounding gets an
    exactly zero row and column, so the solvers see it as rank deficient."""
    if state.mean is None or state.n <= 0:
        k = y_zero.shape[0]
        return GramState(
            x_zero.new_zeros(p, p), x_zero.new_zeros(p, k), y_zero.clone(), x_zero, y_zero, 0.0
        )
    scale, W = state.scale, float(state.n)
    # data units (inf where they overflow), one scale at a time: the product of two scales
    # of columns beyond 1e154 underflows to 0, and a constant column's 0 / 0 was NaN
    C, mean = state.C / scale[:, None] / scale[None, :], state.mean / scale
    if not fit_intercept:
        C = C + W * torch.outer(mean, mean)
        mean = torch.zeros_like(mean)
    G, Xty, yty = C[:p, :p].clone(), C[:p, p:].clone(), C[p:, p:].diagonal().clone()
    if fit_intercept:
        # scikit-learn's _is_constant_feature bound (its n * eps * var term matters only past
        # 4.5e15 rows): the spread is at most what rounding leaves of the mean. The moments
        # are centred blocks merged by Chan's formula, so a genuine spread of 1e-6 x the
        # mean keeps its digits (sqrt(n eps) x the mean, the bound of a raw-sum Gram, would
        # drop such a column at 20,000 rows)
        spread = (G.diagonal() / W).sqrt()
        const = spread <= mean[:p].abs() * (max(state.rows, 1) * torch.finfo(G.dtype).eps)
        if bool(const.any()):
            G[const, :] = 0.0
            G[:, const] = 0.0
            Xty[const, :] = 0.0
    dev = x_zero.device
    return GramState(G.to(dev), Xty.to(dev), yty.to(dev), mean[:p].to(dev), mean[p:].to(dev), W)


def solve_cholesky(
    X: torch.Tensor,
    y: torch.Tensor,
    alpha: float = 0.0,
    *,
    state: GramState | None = None,
    sample_weight: torch.Tensor | None = None,
    fit_intercept: bool = False,
    refine_steps: int = 3,
    cond_limit: float = GRAM_COND_LIMIT,
) -> LinearSolution:
    """Cholesky on the column-scaled, centred Gram with iterative refinement.

    The Gram (see :func:`gram_state`) is formed once, the floor of any exact method. When
    the scaled Gram's condition number exceeds ``REFINE_COND``, refinement steps on the
    residual (each one pass over X) restore QR-level accuracy. Above ``cond_limit``, or
    when not positive definite, falls back to :func:`solve_qr` on the centred design.
    The upper factor ``R`` (with ``R'R = Xc'Xc``) is returned for inference.
    """
    if state is None:
        state = gram_state(X, y, sample_weight, fit_intercept)
    p, k = X.shape[1], y.shape[1]
    xo, yo = state.X_offset, state.y_offset
    sqrt_sw = None if sample_weight is None else sample_weight.reshape(-1, 1).to(X.dtype).sqrt()
    G, Xty = state.G, state.Xty
    scale = G.diagonal().sqrt()  # (p,) column norms of the centred design
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    Gs = G / scale.unsqueeze(0) / scale.unsqueeze(1)
    if alpha > 0:
        Gs = Gs + torch.diag(alpha / scale**2)
    L, info = torch.linalg.cholesky_ex(Gs)
    cond_est = math.inf
    if int(info) == 0 and p > 0:
        ev = torch.linalg.eigvalsh(Gs)  # O(p^3): small beside the O(n p^2) Gram
        cond_est = float(ev[-1] / ev[0]) if float(ev[0]) > 0 else math.inf
    if cond_est > cond_limit:
        Xc, yc = X - xo, y - yo
        if sqrt_sw is not None:
            Xc, yc = Xc * sqrt_sw, yc * sqrt_sw
        fallback = solve_qr(Xc, yc, alpha)
        reason = (
            "not positive definite"
            if math.isinf(cond_est)
            else f"condition number {cond_est:.2g} > {cond_limit:.2g}"
        )
        fallback.solver = f"{fallback.solver} (fallback from cholesky: scaled Gram {reason})"
        fallback.cond = cond_est
        return fallback

    def gram_solve(rhs: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(rhs / scale.unsqueeze(1), L) / scale.unsqueeze(1)

    def residual_rhs(coef: torch.Tensor, block_rows: int = 8192) -> torch.Tensor:
        # Xc'W(yc - Xc coef) from X itself, centred block by block: the refinement's
        # accuracy comes from here, so no large terms are allowed to cancel
        r = X.new_zeros(p, k)
        for i in range(0, X.shape[0], block_rows):
            xb = X[i : i + block_rows] - xo
            e = (y[i : i + block_rows] - yo) - xb @ coef
            if sqrt_sw is not None:
                e = e * sqrt_sw[i : i + block_rows] ** 2
            r.addmm_(xb.mT, e)
        return r - alpha * coef if alpha > 0 else r

    coef = gram_solve(Xty)
    for _ in range(refine_steps if cond_est > REFINE_COND else 0):
        delta = gram_solve(residual_rhs(coef))
        coef = coef + delta
        if float(delta.abs().max()) <= 4 * torch.finfo(X.dtype).eps * float(coef.abs().max()):
            break
    if alpha == 0 and cond_est > REORTH_COND:
        L = _cholesky_qr2_factor(X, xo, sqrt_sw, scale, L)
    R = L.mT * scale.unsqueeze(0)  # R'R = Gram (+ alpha I)
    return LinearSolution(
        coef, p, "cholesky", R=R if alpha == 0 else None, cond=cond_est, state=state
    )


def _cholesky_qr2_factor(
    X: torch.Tensor,
    xo: torch.Tensor,
    sqrt_sw: torch.Tensor | None,
    scale: torch.Tensor,
    L: torch.Tensor,
    block_rows: int = 8192,
) -> torch.Tensor:
    """Second CholeskyQR pass: a factor as accurate as Householder QR's, from X's rows.

    With ``Q1 = Xs L^-T``, ``Q1'Q1 = L2 L2'`` and the refined factor is ``L L2``. Costs two
    more passes over X, so it runs only when the Gram is not well conditioned.
    """
    p = X.shape[1]
    G2 = X.new_zeros(p, p)
    for i in range(0, X.shape[0], block_rows):
        xb = (X[i : i + block_rows] - xo) / scale
        if sqrt_sw is not None:
            xb = xb * sqrt_sw[i : i + block_rows]
        qb = torch.linalg.solve_triangular(L, xb.mT, upper=False).mT  # (rows, p)
        G2.addmm_(qb.mT, qb)
    L2, info = torch.linalg.cholesky_ex(G2)
    return L if int(info) != 0 else L @ L2


def solve_from_state(state: GramState, alpha: float = 0.0) -> LinearSolution:
    """Least squares (ridge) from an accumulated Gram alone: streaming and distributed fits.

    Cholesky on the column-scaled centred Gram; there is no data pass for refinement, so the
    accuracy is about cond(scaled Gram) * eps. Above ``STREAM_COND_LIMIT`` a warning says
    so; a rank-deficient Gram gives the minimum-norm solution (eigendecomposition) with a
    :class:`RankWarning`.
    """
    G, Xty = state.G, state.Xty
    p = G.shape[0]
    scale = G.diagonal().clamp_min(0).sqrt()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    Gs = G / scale.unsqueeze(0) / scale.unsqueeze(1)
    if alpha > 0:
        Gs = Gs + torch.diag(alpha / scale**2)
    ev, V = torch.linalg.eigh(Gs)
    top = float(ev[-1]) if p else 1.0
    tol = top * p * torch.finfo(G.dtype).eps * 10
    rank = int((ev > tol).sum())
    cond = float(top / ev[0]) if p and float(ev[0]) > 0 else math.inf
    rhs = Xty / scale.unsqueeze(1)
    if rank < p:
        inv = torch.where(ev > tol, 1.0 / torch.where(ev > tol, ev, torch.ones_like(ev)), 0.0)
        coef = (V @ (inv.unsqueeze(1) * (V.mT @ rhs))) / scale.unsqueeze(1)
        warnings.warn(
            f"The design matrix is rank deficient (rank {rank} < {p} features); returning the "
            "minimum-norm least-squares solution.",
            RankWarning,
            stacklevel=3,
        )
        return LinearSolution(coef, rank, "eigh", cond=cond)
    if cond > STREAM_COND_LIMIT:
        warnings.warn(
            f"The scaled Gram matrix is ill-conditioned (condition number {cond:.2g}); a "
            "one-pass fit is accurate to about that times 1e-16 relative. Standardise or drop "
            "near-collinear columns, or fit in memory, where QR is used.",
            IllConditionedWarning,
            stacklevel=3,
        )
    L = torch.linalg.cholesky(Gs)
    coef = torch.cholesky_solve(rhs, L) / scale.unsqueeze(1)
    R = L.mT * scale.unsqueeze(0) if alpha == 0 else None
    return LinearSolution(coef, p, "cholesky", R=R, cond=cond, state=state)


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
    # relative to the data's scale only: an absolute floor would exceed a small l1
    scale = max(float(c.abs().max()), float((G @ out).abs().max()), torch.finfo(G.dtype).tiny)
    if _kkt_violation(G, c, l1, l2, out, positive) > 1e-9 * scale:
        return None
    return out


def enet_duality_gap(
    G: torch.Tensor,
    c: torch.Tensor,
    yty: float,
    l1: float,
    l2: float,
    w: torch.Tensor,
    positive: bool = False,
) -> float:
    """Duality gap of the elastic net at ``w`` (scikit-learn's, divided by n_samples).

    ``G = X'X / n``, ``c = X'y / n``, ``yty = y'y / n``; scikit-learn declares convergence
    when this is at most ``tol * yty``, a test with no absolute floor. Without an L1 part
    (``l1 = 0``) the exact Fenchel gap (see :func:`~regtorch.linear.pathsolve.path_duality_gaps`).
    """
    from regtorch.linear.pathsolve import path_duality_gaps  # one formula for both

    alpha = l1 + l2
    ratio = l1 / alpha if alpha > 0 else 1.0
    return float(
        path_duality_gaps(
            G.cpu().double().numpy(),
            c.cpu().double().numpy(),
            float(yty),
            np.array([alpha]),
            ratio,
            w.cpu().double().numpy()[None],
            positive,
        )[0]
    )


# moved to regtorch.linear.extended and regtorch.linear.lstsq; still importable from here
_MOVED = {
    "centre_moments": "regtorch.linear.extended",
    "extended_moments": "regtorch.linear.extended",
    "extended_sse": "regtorch.linear.extended",
    "refine_from_moments": "regtorch.linear.extended",
    "solve_extended": "regtorch.linear.extended",
    "solve_from_moments": "regtorch.linear.extended",
    "solve_least_squares": "regtorch.linear.lstsq",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
