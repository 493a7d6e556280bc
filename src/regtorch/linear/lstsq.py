"""The closed-form dispatcher: least squares (ridge) of raw ``X, y`` with intercept and weights.

Chooses between the double-double path (:mod:`regtorch.linear.extended`), Householder QR,
SVD and Cholesky (:mod:`regtorch.linear.solvers`) and checks explicit solvers against the
extended path where that is affordable.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from regtorch.exceptions import IllConditionedWarning, RankWarning
from regtorch.linear.extended import (
    _ExtendedMoments,
    extended_moments,
    refine_from_moments,
    solve_extended,
)
from regtorch.linear.solvers import (
    EXTENDED_FLOPS,
    EXTENDED_MAX_FEATURES,
    SMALL_PROBLEM_FLOPS,
    LinearSolution,
    center_and_weight,
    gram_state,
    solve_cholesky,
    solve_qr,
    solve_svd,
)

__all__ = ["solve_least_squares"]


def solve_least_squares(
    X: torch.Tensor,
    y: torch.Tensor,
    alpha: float = 0.0,
    solver: str = "auto",
    *,
    sample_weight: torch.Tensor | None = None,
    fit_intercept: bool = True,
    peaks: torch.Tensor | None = None,
) -> tuple[LinearSolution, torch.Tensor, torch.Tensor]:
    """Least squares (ridge if ``alpha > 0``) of raw ``X, y`` with intercept and weights.

    ``"auto"``: up to ``EXTENDED_FLOPS`` (n * p^2) :func:`solve_extended` (double-double
    Cholesky of the exactly centred Gram: correct to float64 on any CPU), then Householder
    QR up to ``SMALL_PROBLEM_FLOPS``, else Cholesky on
    the blockwise-centred Gram with refinement, falling back to QR, and to SVD when rank
    deficient. Warns with :class:`RankWarning` when the design is rank deficient. For
    problems of that size the explicit solvers ("qr", "svd", "cholesky") keep their own
    coefficients but get their statistics (``R``, ``bse_unit``, ``sst``) from the extended
    path; where their float64 answer cannot be trusted (an SVD rank below the true rank,
    a Cholesky too ill-conditioned) they fall back with a warning, and ``solver`` says so.

    Returns
    -------
    solution : LinearSolution
        Coefficients ``(p, k)`` of the centred problem.
    X_offset, y_offset : tensor
        Weighted means (zeros without intercept); intercept = y_offset - X_offset @ coef.
    """
    n, p = X.shape
    small = p <= EXTENDED_MAX_FEATURES and n * p * p <= EXTENDED_FLOPS and n > 0
    if solver == "auto":
        if n < p and alpha == 0:
            solver = "svd"
        elif small:
            solver = "extended"
        elif n * p * p <= SMALL_PROBLEM_FLOPS:
            solver = "qr"
        else:
            solver = "cholesky"
    ext: LinearSolution | None = None
    if small and (solver == "extended" or alpha == 0):
        ext, exo, eyo, em = _extended(X, y, sample_weight, fit_intercept, alpha)
    if solver == "extended":
        assert ext is not None
        sol, xo, yo = ext, exo, eyo
        if ext.rank < p:
            sol, xo, yo = _min_norm_exactly_centred(X, y, sample_weight, fit_intercept)
    elif solver == "cholesky":
        state = gram_state(X, y, sample_weight, fit_intercept, top=peaks)
        xo, yo = state.X_offset, state.y_offset
        sol = solve_cholesky(X, y, alpha, state=state, sample_weight=sample_weight)
        if sol.solver != "cholesky":
            warnings.warn(
                f"solver='cholesky' was not used: {sol.solver}.",
                IllConditionedWarning,
                stacklevel=3,
            )
    elif solver in ("svd", "qr"):
        c = center_and_weight(X, y, sample_weight, fit_intercept)
        xo, yo = c.X_offset, c.y_offset
        sol = solve_svd(c.X, c.y, alpha) if solver == "svd" else solve_qr(c.X, c.y, alpha)
    else:
        raise ValueError(f"Unknown closed-form solver {solver!r}.")
    if ext is not None and solver != "extended":
        sol, xo, yo = _against_extended(
            sol, (xo, yo), ext, (exo, eyo), em, X, y, sample_weight, fit_intercept, solver, alpha
        )
    if sol.rank < p and alpha == 0:
        warnings.warn(
            f"The design matrix is rank deficient (rank {sol.rank} < {p} features); "
            "returning the minimum-norm least-squares solution.",
            RankWarning,
            stacklevel=3,
        )
    return sol, xo.to(X.device), yo.to(X.device)


def _against_extended(
    sol: LinearSolution,
    offsets: tuple[torch.Tensor, torch.Tensor],
    ext: LinearSolution,
    ext_offsets: tuple[torch.Tensor, torch.Tensor],
    em: _ExtendedMoments,
    X: torch.Tensor,
    y: torch.Tensor,
    sample_weight: torch.Tensor | None,
    fit_intercept: bool,
    solver: str,
    alpha: float,
) -> tuple[LinearSolution, torch.Tensor, torch.Tensor]:
    """An explicit solver's answer checked against the extended path: a visible fallback
    where its float64 rank is wrong, else refined coefficients and extended statistics."""
    p = X.shape[1]
    xo, yo = offsets
    exo, eyo = ext_offsets
    if ext.rank < p and alpha == 0:
        # rank deficient in extended precision too: the exactly centred minimum-norm fit
        # (constant columns zeroed, the rest solved scale-free) whatever solver was asked for
        mn, mxo, myo = _min_norm_exactly_centred(X, y, sample_weight, fit_intercept)
        if mn.rank >= sol.rank:
            if mn.rank > sol.rank:
                mn.solver = (
                    f"{mn.solver} (fallback from {sol.solver}: float64 found rank {sol.rank}, "
                    f"rank {mn.rank} of {p} in extended precision)"
                )
                warnings.warn(
                    f"solver={solver!r} was not used: {mn.solver}.",
                    IllConditionedWarning,
                    stacklevel=4,
                )
            sol, xo, yo = mn, mxo, myo
    elif ext.rank == p:
        if sol.rank < p:
            note = (
                f"extended (fallback from {sol.solver}: float64 found rank {sol.rank} < {p}, "
                f"the design has full rank {p} in extended precision)"
            )
            warnings.warn(
                f"solver={solver!r} was not used: {note}.", IllConditionedWarning, stacklevel=4
            )
            ext.solver = note
            sol, xo, yo = ext, exo, eyo
        else:
            own = sol.factor if sol.factor is not None else sol.R
            if own is not None:
                # mixed-precision refinement: extended residual, the solver's own factor
                coef_r, b0, sol.refined = refine_from_moments(
                    em, p, fit_intercept, sol.coef.cpu().numpy(), own.cpu().numpy()
                )
                sol.coef = torch.as_tensor(coef_r, device=X.device)
                sol.intercept = torch.as_tensor(b0, device=X.device) if fit_intercept else None
            # the statistics come from the extended path whatever solved for coefficients
            sol.R, sol.bse_unit, sol.sst = ext.R, ext.bse_unit, ext.sst
    return sol, xo, yo


def _numpy_inputs(
    X: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    def cpu(t: torch.Tensor) -> np.ndarray:
        return np.asarray(t.detach().cpu().to(torch.float64).numpy())

    return cpu(X), cpu(y), None if sample_weight is None else cpu(sample_weight).reshape(-1)


def _extended(
    X: torch.Tensor,
    y: torch.Tensor,
    sample_weight: torch.Tensor | None,
    fit_intercept: bool,
    alpha: float,
) -> tuple[LinearSolution, torch.Tensor, torch.Tensor, _ExtendedMoments]:
    """:func:`solve_extended` on tensors; also the offsets (means) and the moments."""
    Xn, yn, wn = _numpy_inputs(X, y, sample_weight)
    p = Xn.shape[1]
    em = extended_moments(np.hstack([Xn, yn]), wn, fit_intercept, alpha, Xn.shape[1])
    sol = solve_extended(Xn, yn, wn, fit_intercept, alpha, moments=em)
    mean = (em.mean[0] + em.mean[1]) / em.scale
    if not fit_intercept:
        mean = np.zeros_like(mean)
    sol.coef = sol.coef.to(X.device)
    if sol.R is not None:
        sol.R = sol.R.to(X.device)
    if sol.intercept is not None:
        sol.intercept = sol.intercept.to(X.device)
    return sol, torch.as_tensor(mean[:p]), torch.as_tensor(mean[p:]), em


def _min_norm_exactly_centred(
    X: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor | None, fit_intercept: bool
) -> tuple[LinearSolution, torch.Tensor, torch.Tensor]:
    """Minimum-norm solution by SVD of the design centred on double-double means.

    A column constant to float64 resolution (``1e20 + noise``) centres to exact zeros here,
    so it is seen as rank deficient instead of polluting the other coefficients.
    """
    Xn, yn, wn = _numpy_inputs(X, y, sample_weight)
    p = Xn.shape[1]
    Z = np.hstack([Xn, yn])
    em = extended_moments(Z, wn, fit_intercept)
    mean = (em.mean[0] + em.mean[1]) if fit_intercept else np.zeros(Z.shape[1])
    Zc = (Z * em.scale - mean) / em.scale  # exact centring to float64, then exact rescaling
    if wn is not None:
        Zc = Zc * np.sqrt(wn)[:, None]
    offs = torch.as_tensor(mean / em.scale, device=X.device)
    keep = np.any(Zc[:, :p] != 0, axis=0)
    if 0 < int(keep.sum()) < p:
        # Columns constant to float64 resolution get coefficient 0; the others are solved
        # on their own by the scale-free extended path, so one 1e200 column beside them
        # cannot swamp an SVD's rank tolerance and zero every other coefficient.
        sub = solve_extended(Xn[:, keep], yn, wn, fit_intercept)
        if sub.rank == int(keep.sum()):
            warnings.warn(
                f"Column(s) {np.flatnonzero(~keep).tolist()} (0-based) are constant to float64 "
                "resolution (their spread is below the rounding of their magnitude, e.g. "
                "1e20 + small noise): their coefficients are 0 and the other columns are "
                "fitted without them.",
                RankWarning,
                stacklevel=4,
            )
            coef = torch.zeros(p, yn.shape[1], dtype=torch.float64)
            coef[torch.as_tensor(keep)] = sub.coef
            intercept = None if sub.intercept is None else sub.intercept.to(X.device)
            return (
                LinearSolution(coef.to(X.device), sub.rank, sub.solver, intercept=intercept),
                offs[:p],
                offs[p:],
            )
    Zt = torch.as_tensor(Zc, device=X.device)
    sol = solve_svd(Zt[:, :p], Zt[:, p:])
    return sol, offs[:p], offs[p:]
