"""Least squares in double-double arithmetic from the exactly centred Gram ("extended").

Moments of ``[X, y]`` are scaled by powers of two, centred and summed in double-double
(:mod:`regtorch.linear.doubledouble`), so fits and standard errors are correct to float64
whatever the BLAS or CPU. Used in memory for small problems and by the streamed second pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from regtorch.linear import doubledouble as ddm
from regtorch.linear.solvers import LinearSolution

__all__ = [
    "centre_moments",
    "extended_moments",
    "extended_sse",
    "refine_from_moments",
    "solve_extended",
    "solve_from_moments",
]


@dataclass
class _ExtendedMoments:
    """Exactly centred, column-scaled Gram of ``[X, y]`` in double-double, with its scales."""

    mean: ddm.DD  # (m,) weighted means of Z * scale
    C: ddm.DD  # (m, m) centred Gram of Z * scale * d
    scale: np.ndarray  # (m,) powers of two from the data's magnitude
    d: np.ndarray  # (m,) powers of two bringing the centred Gram's diagonal near 1
    weight: ddm.DD
    n: int


def extended_moments(
    Z: np.ndarray,
    w: np.ndarray | None,
    fit_intercept: bool,
    alpha: float = 0.0,
    n_features: int = 0,
) -> _ExtendedMoments:
    """Double-double moments of ``Z = [X, y]`` (n, m): scaled by powers of two, then centred.

    With a ridge ``alpha``, the first ``n_features`` columns are scaled so that the
    penalised diagonal (not the bare Gram's) is near 1.
    """
    scale = ddm.pow2_scale(np.abs(Z).max(0) if len(Z) else np.zeros(Z.shape[1]))
    shift = np.zeros(Z.shape[1])
    if fit_intercept and len(Z):
        shift = np.average(Z * scale, axis=0, weights=w) / scale
    mom = ddm.dd_moments(Z, w, shift, scale)
    return centre_moments(mom, fit_intercept, len(Z), alpha, n_features)


def centre_moments(
    mom: ddm.DDMoments, fit_intercept: bool, n: int, alpha: float = 0.0, n_features: int = 0
) -> _ExtendedMoments:
    """Centre dd moments and scale the Gram (powers of two) to a diagonal near 1."""
    mean, (Ch, Cl) = mom.centred(fit_intercept)
    diag = np.diag(Ch)
    with np.errstate(divide="ignore"):
        e = 0.5 * np.log2(np.where(diag > 0, diag, 0.0))  # -inf for a zero column
        if alpha > 0:
            # alpha * scale^2 may overflow: compare exponents instead
            e_pen = 0.5 * np.log2(alpha) + np.log2(mom.scale[:n_features])
            e[:n_features] = np.maximum(e[:n_features], e_pen)
    d = np.where(
        np.isfinite(e), np.ldexp(1.0, -np.round(np.where(np.isfinite(e), e, 0.0)).astype(int)), 1.0
    )
    D = np.outer(d, d)  # exact: powers of two (tiny entries may underflow: negligible there)
    return _ExtendedMoments(mean, (Ch * D, Cl * D), mom.scale, d, mom.w, n)


def _extended_rank_tol(n: int, p: int) -> float:
    # a scaled design's singular value below max(n, p) * eps counts as zero (as in lstsq);
    # the Gram's pivots are squares of those
    return float((max(n, p, 1) * np.finfo(np.float64).eps) ** 2)


def solve_extended(
    X: np.ndarray,
    Y: np.ndarray,
    sample_weight: np.ndarray | None,
    fit_intercept: bool,
    alpha: float = 0.0,
    moments: _ExtendedMoments | None = None,
) -> LinearSolution:
    """Least squares (ridge) from the exactly centred Gram, solved in double-double.

    Columns are scaled by powers of two (exact) before anything is summed, so magnitudes
    from 1e-300 to 1e300 fit; centring, the Gram, its Cholesky factor, the solve and the
    inverse behind the standard errors carry about 32 digits, so the returned float64 values
    are accurate to about ``cond(scaled design)**2 * 1e-32``: the last digits of the data
    decide them, not the BLAS or the CPU. Rank deficiency (a pivot of the scaled design
    below ``max(n, p) * eps``) gives ``rank < p`` and no coefficients (``coef`` is empty).
    """
    n, p = X.shape
    em = moments
    if em is None:
        em = extended_moments(np.hstack([X, Y]), sample_weight, fit_intercept, alpha, p)
    return solve_from_moments(em, p, fit_intercept, alpha)


def solve_from_moments(
    em: _ExtendedMoments, p: int, fit_intercept: bool, alpha: float = 0.0
) -> LinearSolution:
    """:func:`solve_extended` from accumulated double-double moments (streaming, merging).

    ``sse`` comes from the Gram (``C_yy - b'C_xy`` in double-double).
    """
    n = em.n
    k = em.C[0].shape[0] - p
    Ch, Cl = em.C
    Ah, Al = Ch[:p, :p].copy(), Cl[:p, :p].copy()
    f = em.scale[:p] * em.d[:p]
    if alpha > 0:
        # the penalty in scaled units, alpha * f^2, near 1 or below by the choice of d
        pen = np.ldexp(alpha, 2 * np.round(np.log2(f)).astype(int))
        idx = np.arange(p)
        Ah[idx, idx], Al[idx, idx] = ddm.dd_add(Ah[idx, idx], Al[idx, idx], pen, np.zeros(p))
    L, rank = ddm.dd_cholesky(Ah, Al, _extended_rank_tol(n, p) if alpha == 0 else 0.0)
    if rank < p:
        return LinearSolution(torch.zeros(0, k, dtype=torch.float64), rank, "extended")
    bs = ddm.dd_backward(L, ddm.dd_forward(L, (Ch[:p, p:], Cl[:p, p:])))  # (p, k)
    coef, intercept = _coef_and_intercept(em, bs, p, fit_intercept)
    sy = em.scale[p:]
    fy = sy * em.d[p:]
    sst = np.diag(Ch)[p:] / np.square(em.d[p:]) / np.square(sy)
    qh, ql = ddm.dd_sum(*ddm.dd_mul(bs[0], bs[1], Ch[:p, p:], Cl[:p, p:]))
    idy = np.arange(p, p + k)
    rh, _ = ddm.dd_add(Ch[idy, idy], Cl[idy, idy], -qh, -ql)
    with np.errstate(over="ignore"):
        sse = np.maximum(rh, 0.0) / np.square(fy)
    bse_unit = None
    R = None
    if alpha == 0:
        bse_unit = _extended_bse_unit(L, em, p, fit_intercept)
        R = torch.as_tensor((L[0] + L[1]).T / f[None, :])  # R'R = Xc' W Xc
    return LinearSolution(
        torch.as_tensor(coef),
        p,
        "extended",
        R=R,
        intercept=torch.as_tensor(intercept),
        bse_unit=bse_unit,
        sse=sse,
        sst=sst,
    )


def _coef_and_intercept(
    em: _ExtendedMoments, bs: ddm.DD, p: int, fit_intercept: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients ``(p, k)`` and intercepts ``(k,)`` in data units from scaled ones (dd)."""
    k = bs[0].shape[1]
    f = em.scale[:p] * em.d[:p]
    sy = em.scale[p:]
    fy = sy * em.d[p:]
    coef = (bs[0] + bs[1]) * (f[:, None] / fy[None, :])  # one exact rescaling: no underflow
    if not fit_intercept:
        return coef, np.zeros(k)
    ratio = em.d[:p, None] / em.d[None, p:]  # exact
    ch, cl = bs[0] * ratio, bs[1] * ratio  # coefficients in units of Z * scale
    mh, ml = em.mean
    ph, pl = ddm.dd_mul(mh[:p, None], ml[:p, None], ch, cl)
    th, tl = ddm.dd_sum(ph, pl)
    bh, bl = ddm.dd_add(mh[p:], ml[p:], -th, -tl)
    return coef, (bh + bl) / sy


def refine_from_moments(
    em: _ExtendedMoments,
    p: int,
    fit_intercept: bool,
    coef: np.ndarray,
    R: np.ndarray,
    max_steps: int = 4,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Iterative refinement of a float64 solution with the solver's own factor ``R``.

    The normal-equations residual ``Xc'(yc - Xc b)`` is formed from the exact
    (double-double) Gram, the correction solved with ``R`` (``R'R = Xc'Xc``, any float64
    factor): each step gains about ``-log10(cond(scaled Xc)**2 * eps)`` digits. A step that
    does not shrink the residual is rejected (the factor is then too inaccurate to help).

    Returns
    -------
    coef : (p, k), intercept : (k,), steps : int
        Refined coefficients in data units, intercepts from the dd means, steps taken.
    """
    Ch, Cl = em.C
    f = em.scale[:p] * em.d[:p]
    fy = em.scale[p:] * em.d[p:]
    Rs = torch.as_tensor(R * f[None, :])  # factor of the scaled design
    triangular = bool(np.all(np.tril(R, -1) == 0))
    b = coef * (fy[None, :] / f[:, None])  # scaled coefficients, exact

    def residual(bd: ddm.DD) -> np.ndarray:
        ph, pl = ddm.dd_mul(Ch[:p, :p, None], Cl[:p, :p, None], bd[0][None], bd[1][None])
        gh, gl = ddm.dd_sum(ph, pl, axis=1)
        rh, rl = ddm.dd_add(Ch[:p, p:], Cl[:p, p:], -gh, -gl)
        return rh + rl

    bd: ddm.DD = (b, np.zeros_like(b))  # carried in dd: the intercept needs its low digits
    g = residual(bd)
    steps = 0
    for _ in range(max_steps):
        if not np.isfinite(g).all() or float(np.abs(g).max(initial=0.0)) == 0.0:
            break
        if triangular:
            z = torch.linalg.solve_triangular(Rs.mT, torch.as_tensor(g), upper=False)
            d = torch.linalg.solve_triangular(Rs, z, upper=True).numpy()
        else:  # an SVD's S Vh
            d = torch.linalg.solve(Rs, torch.linalg.solve(Rs.mT, torch.as_tensor(g))).numpy()
        b_new = ddm.dd_add(bd[0], bd[1], d, np.zeros_like(d))
        g_new = residual(b_new)
        if not float(np.abs(g_new).max()) < float(np.abs(g).max()):
            break
        bd, g, steps = b_new, g_new, steps + 1
    return (*_coef_and_intercept(em, bd, p, fit_intercept), steps)


def _extended_bse_unit(L: ddm.DD, em: _ExtendedMoments, p: int, fit_intercept: bool) -> np.ndarray:
    """Square roots of the diagonal of ``(Z' W Z)^-1`` (intercept first), in double-double."""
    f = em.scale[:p] * em.d[:p]
    eye = np.eye(p)
    Vh, Vl = ddm.dd_forward(L, (eye, np.zeros_like(eye)))  # L^-1
    qh, ql = ddm.dd_sum(*ddm.dd_mul(Vh, Vl, Vh, Vl))  # column sums of squares: diag(A^-1)
    rh, _ = ddm.dd_sqrt(qh, ql)
    se = rh * f
    if not fit_intercept:
        return se
    mh, ml = em.mean
    xd = (mh[:p] * em.d[:p], ml[:p] * em.d[:p])  # F xbar, exact
    vh, vl = ddm.dd_forward(L, (xd[0][:, None], xd[1][:, None]))
    th, tl = ddm.dd_sum(*ddm.dd_mul(vh, vl, vh, vl))
    wh, wl = em.weight
    ih, il = ddm.dd_div(np.ones(1), np.zeros(1), np.full(1, float(wh)), np.full(1, float(wl)))
    vh0, vl0 = ddm.dd_add(th, tl, ih, il)
    s0, _ = ddm.dd_sqrt(vh0, vl0)
    return np.concatenate([s0, se])


def extended_sse(
    X: np.ndarray,
    Y: np.ndarray,
    sample_weight: np.ndarray | None,
    coef: np.ndarray,
    intercept: np.ndarray,
) -> np.ndarray:
    """Weighted residual sums of squares ``(k,)`` of given coefficients, residuals in dd."""
    sx = ddm.pow2_scale(np.abs(X).max(0) if len(X) else np.zeros(X.shape[1]))
    sy = ddm.pow2_scale(np.abs(Y).max(0) if len(Y) else np.zeros(Y.shape[1]))
    out = np.empty(Y.shape[1])
    zeros = np.zeros(len(X))
    for t in range(Y.shape[1]):
        rh, rl = ddm.two_sum(Y[:, t] * sy[t], np.full(len(X), -intercept[t] * sy[t]))
        for j in range(X.shape[1]):
            ph, pl = ddm.two_prod(X[:, j] * sx[j], np.full(len(X), coef[j, t] * sy[t] / sx[j]))
            rh, rl = ddm.dd_add(rh, rl, -ph, -pl)
        r = rh + rl + zeros
        r2 = np.square(r) if sample_weight is None else sample_weight * np.square(r)
        with np.errstate(over="ignore"):
            out[t] = float(np.sum(r2)) / sy[t] ** 2
    return out
