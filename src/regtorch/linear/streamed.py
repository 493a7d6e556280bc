"""Linear models fitted from any batch source (weighted or not), in one pass (two when needed).

The batches are reduced to a mergeable :class:`~regtorch.linear.moments.MomentState`; in a
process group every rank reads its share and the states are merged in rank order
(:func:`regtorch.distributed.all_gather`). The estimator then fits from that state through
its own method, as it does in memory.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from regtorch import distributed
from regtorch._threads import reading_threads
from regtorch.data.prefetch import prefetch
from regtorch.data.readers import DataError
from regtorch.data.split import hash01
from regtorch.exceptions import IllConditionedWarning, RankWarning
from regtorch.linear.moments import BatchSource, MomentState, _accumulate, kept_rows

__all__ = ["stream_fit_linear"]

# a one-pass fit takes a second, QR pass above this condition number of the scaled Gram
STREAM_QR_COND = 1e6


# and warns above this one if the QR pass was not possible
STREAM_COND_WARN = 1e8


def _solve_gram_quietly(gs: Any, alpha: float) -> Any:
    """solve_from_state without its warnings: the caller decides (it may take the QR path)."""
    from regtorch.linear.solvers import solve_from_state

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return solve_from_state(gs, alpha)


def _tsqr(
    source: BatchSource,
    keep: Callable[[np.ndarray], np.ndarray] | None,
    missing: str,
    mean: torch.Tensor,
    m: int,
    scale: torch.Tensor | None = None,
    dd_scale: np.ndarray | None = None,
    dd_shift: np.ndarray | None = None,
) -> tuple[torch.Tensor, Any]:
    """R factor (m, m) of the centred, weighted ``[X, y] * scale``: per-batch QR, merged over ranks.

    Rows are multiplied by ``sqrt(w)``, so ``R'R`` is the centred weighted Gram.

    ``mean`` is in the units of ``Z * scale``. With ``dd_scale``, the same pass also
    accumulates the double-double moments of ``Z`` about ``dd_shift`` (returned second,
    else None), for :func:`regtorch.linear.solvers.solve_from_moments`.
    """
    from regtorch.linear import doubledouble as ddm

    s = torch.ones(m, dtype=torch.float64) if scale is None else scale
    R = torch.zeros(0, m, dtype=torch.float64)
    mom = None
    with reading_threads():
        for b in prefetch(source.batches(missing)):
            Z, w = kept_rows(b, keep)
            if len(Z):
                Zt = torch.from_numpy(np.ascontiguousarray(Z)) * s - mean
                if w is not None:
                    Zt = Zt * torch.from_numpy(np.sqrt(np.asarray(w, dtype=np.float64)))[:, None]
                R = torch.linalg.qr(torch.cat([R, Zt]), mode="r")[1]
                if dd_scale is not None and dd_shift is not None:
                    Zn, wn = np.asarray(Z, dtype=np.float64), w
                    part = ddm.dd_moments(Zn, wn, dd_shift, dd_scale)
                    mom = part if mom is None else mom.merge(part)
    if len(R) < m:  # fewer rows than columns on this rank: pad to a square factor
        R = torch.cat([R, torch.zeros(m - len(R), m, dtype=torch.float64)])
    if distributed.is_distributed():
        R = torch.linalg.qr(torch.cat(distributed.all_gather(R)), mode="r")[1]
        if dd_scale is not None and dd_shift is not None:
            mom = _all_gather_dd(mom, m, dd_shift, dd_scale)
    return R, mom


def _all_gather_dd(mom: Any, m: int, shift: np.ndarray, scale: np.ndarray) -> Any:
    """Merge every rank's double-double moments in rank order."""
    from regtorch.linear import doubledouble as ddm

    size = 2 + 2 * m + 2 * m * m
    if mom is None:
        mine = torch.zeros(size, dtype=torch.float64)
    else:
        flat = [np.atleast_1d(mom.w[0]), np.atleast_1d(mom.w[1]), *mom.s1, mom.s2[0].ravel()]
        mine = torch.from_numpy(np.concatenate([*flat, mom.s2[1].ravel()]))
    total = None
    for t in distributed.all_gather(mine):
        a = t.numpy()
        mm = m * m
        part = ddm.DDMoments(
            shift,
            scale,
            (a[0:1].reshape(()), a[1:2].reshape(())),
            (a[2 : 2 + m], a[2 + m : 2 + 2 * m]),
            (a[2 + 2 * m : 2 + 2 * m + mm].reshape(m, m), a[2 + 2 * m + mm :].reshape(m, m)),
        )
        total = part if total is None else total.merge(part)
    return total


def _solve_from_r(
    R: torch.Tensor, p: int, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Coefficients, sse and the X factor from the R of ``[Xc, yc]``; None if singular."""
    Rxx, rxy, Ryy = R[:p, :p], R[:p, p:], R[p:, p:]
    # each pivot relative to its column's norm (the centred column norm): scale-free
    norms = torch.linalg.vector_norm(Rxx, dim=0)
    if p and not bool((Rxx.diagonal().abs() > norms * p * 1e-14).all()):
        return None
    if alpha > 0:
        aug = torch.cat([Rxx, math.sqrt(alpha) * torch.eye(p, dtype=R.dtype)])
        rhs = torch.cat([rxy, torch.zeros(p, rxy.shape[1], dtype=R.dtype)])
        Q, Ra = torch.linalg.qr(aug)
        coef = torch.linalg.solve_triangular(Ra, Q.mT @ rhs, upper=True)
        resid = torch.cat([rxy - Rxx @ coef, Ryy])
        return coef, resid.square().sum(0), Rxx
    coef = torch.linalg.solve_triangular(Rxx, rxy, upper=True)
    return coef, Ryy.square().sum(0), Rxx


def stream_fit_linear(
    estimator: Any,
    source: BatchSource,
    *,
    missing: str = "error",
    test_fraction: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit a ``LinearRegression``, ``Ridge``, ``Lasso`` or ``ElasticNet`` from ``source``.

    ``source`` yields batches (``TableSource``, ``ArraySource``), with sample weights when
    it has them. Rows whose seeded hash falls below ``test_fraction`` are held out
    (:func:`regtorch.data.split.hash01`, no global shuffle needed). In a process group every
    rank reads its share and the moments are merged in rank order. The estimator is fitted
    in place through its own ``_set_fitted`` (``_fit_gram`` for the penalised ones) and
    supports ``summary()`` like an in-memory fit. Returns timing and row counts.

    Least squares take a second pass when one pass cannot be trusted: an ill-conditioned
    or rank-deficient Gram, or a fit so good that its sse from the Gram would cancel. It
    computes a tall-skinny QR and, where affordable (``n * m^2 <= EXTENDED_FLOPS``),
    double-double moments: the statistics then come from those (as in memory), and where the
    QR's coefficients cannot be trusted either, so do the coefficients, with ``solver_`` and
    a warning saying so. Lasso and ElasticNet run coordinate descent on the merged Gram.
    """
    from regtorch.linear.estimators import ElasticNet

    _check_streamable(estimator)
    p, k = len(source.features), len(source.targets)
    keep = None if test_fraction <= 0 else (lambda rows: hash01(rows, seed) >= test_fraction)
    t0 = time.perf_counter()
    local, seen = _accumulate(source, keep, missing, progress, "streaming fit")
    state = local.all_reduce(p + k)
    if state.rows < 2 or state.mean is None or state.C is None or state.scale is None:
        raise DataError(f"{source.path}: fewer than 2 training rows.")
    fit_intercept = bool(estimator.fit_intercept)
    cond = None
    if isinstance(estimator, ElasticNet):
        gs, _ = _stream_gram(state, fit_intercept, True, source.features, type(estimator).__name__)
        estimator._fit_gram(gs, k == 1, source.features)
    else:
        fit, cond = _least_squares(estimator, source, keep, missing, state)
        estimator._set_fitted(fit, k == 1, source.features)
    return {
        "rows_read": seen,
        "rows_fit": state.rows,
        "weight_sum": state.n,
        "seconds": time.perf_counter() - t0,
        "cond": cond,
        "batch_rows": source.batch_rows,
    }


def _check_streamable(estimator: Any) -> None:
    """ValueError unless ``estimator`` is one of the four linear models, with valid params."""
    from regtorch.linear.estimators import ElasticNet, LinearRegression

    if not isinstance(estimator, (LinearRegression, ElasticNet)):
        raise ValueError(
            "Streaming fits LinearRegression, Ridge, Lasso and ElasticNet (one pass over a "
            f"mergeable state); got {type(estimator).__name__}."
        )
    estimator._check_params()
    if isinstance(estimator, LinearRegression) and estimator.solver not in ("auto", "cholesky"):
        raise ValueError("Streaming solves from the accumulated Gram: use solver='auto'.")


def _least_squares(
    estimator: Any,
    source: BatchSource,
    keep: Callable[[np.ndarray], np.ndarray] | None,
    missing: str,
    state: MomentState,
) -> tuple[Any, float | None]:
    """LinearRegression / Ridge from the merged moments (and a second pass when needed)."""
    from regtorch.linear.solvers import EXTENDED_FLOPS, EXTENDED_MAX_FEATURES, STREAM_REFINE_COND

    p, m = len(source.features), len(source.features) + len(source.targets)
    fit_intercept = bool(estimator.fit_intercept)
    alpha = float(getattr(estimator, "alpha", 0.0))
    gs, scale = _stream_gram(state, fit_intercept, alpha > 0, source.features, "Ridge")
    sol = _solve_gram_quietly(gs, alpha)
    sse = gs.yty - 2 * (sol.coef * gs.Xty).sum(0) + (sol.coef * (gs.G @ sol.coef)).sum(0)
    cond = math.inf if sol.cond is None else sol.cond
    affordable = m <= EXTENDED_MAX_FEATURES and state.rows * m * m <= EXTENDED_FLOPS
    second = (
        sol.rank < p
        or cond > STREAM_QR_COND
        or (affordable and cond > STREAM_REFINE_COND)
        or bool((sse <= 1e-4 * gs.yty).any())
    )
    if second:
        out = _second_pass(
            source, keep, missing, state, gs, scale, sol, alpha, fit_intercept, affordable
        )
    else:
        out = ("streaming-cholesky", sol.coef, sse, None, None)
    _warn_stream(out[0], sol, p)
    return _assemble(state, gs, scale, sol, alpha, *out), sol.cond


def _warn_stream(method: str, sol: Any, p: int) -> None:
    """The one-pass fit's conditioning and rank warnings."""
    if method == "streaming-cholesky" and sol.cond is not None and sol.cond > STREAM_COND_WARN:
        warnings.warn(
            f"The scaled Gram matrix is ill-conditioned (condition number {sol.cond:.2g}).",
            IllConditionedWarning,
            stacklevel=4,
        )
    if sol.rank < p:
        warnings.warn(
            f"The design matrix is rank deficient (rank {sol.rank} < {p} features); returning "
            "the minimum-norm least-squares solution.",
            RankWarning,
            stacklevel=4,
        )


def _assemble(
    state: MomentState,
    gs: Any,
    scale: torch.Tensor,
    sol: Any,
    alpha: float,
    method: str,
    coef: torch.Tensor,
    sse: torch.Tensor,
    ext: Any,
    refined: tuple[np.ndarray, np.ndarray] | None,
) -> Any:
    """The LinearFit in data units from the solution in the scaled units of ``gs``."""
    from regtorch.linear.estimators import LinearFit
    from regtorch.linear.inference import fit_info

    p = gs.G.shape[0]
    sx, sy = scale[:p], scale[p:]
    xo, yo = gs.X_offset / sx, gs.y_offset / sy
    sst = gs.yty / sy**2
    R = None if sol.R is None else sol.R / sx.unsqueeze(0)
    bse_unit = None
    if ext is not None and method.startswith("streaming-extended"):
        coef, b0, sse = ext.coef, ext.intercept, torch.as_tensor(ext.sse)
    elif ext is not None and refined is not None:
        coef, b0 = torch.as_tensor(refined[0]), torch.as_tensor(refined[1])
        sse = torch.as_tensor(ext.sse)
    else:
        coef = coef * sx.unsqueeze(1) / sy.unsqueeze(0)
        b0, sse = yo - xo @ coef, sse / sy**2
    if ext is not None and alpha == 0:
        R, bse_unit = ext.R, ext.bse_unit  # statistics from the dd moments
    info = fit_info(state.rows, state.rows, state.n, state.log_w, sse.clamp_min(0), sst, xo)
    return LinearFit(coef, b0, sol.rank, method, info, R, bse_unit)


def check_gram_overflow(diag: torch.Tensor, names: list[str], who: str) -> None:
    """Name the first column of a data-unit Gram (its ``diag``) whose sum of squares
    overflows float64; columns past ``names`` are the target's."""
    bad = torch.nonzero(~torch.isfinite(diag) | (diag > 1e300)).flatten()
    if bad.numel():
        j = int(bad[0])
        col = names[j] if j < len(names) else "the target"
        raise ValueError(
            f"{who} cannot fit column {col!r}: its sum of squares overflows float64 in "
            "the Gram matrix (the penalty is not scale-free, so columns are not rescaled). "
            "Rescale it (e.g. StandardScaler)."
        )


def _stream_gram(
    state: MomentState, fit_intercept: bool, data_units: bool, names: list[str], who: str
) -> tuple[Any, torch.Tensor]:
    """The GramState to solve (columns scaled by ``scale``, returned second).

    ``data_units`` (penalised fits: the penalty is not scale-free) undoes the power-of-two
    scaling, with ones returned as ``scale``; ``who`` names the estimator in the overflow error.
    """
    from regtorch.linear.solvers import GramState

    assert state.C is not None and state.mean is not None and state.scale is not None
    C, mean, scale = state.C, state.mean, state.scale
    if not fit_intercept:  # uncentred moments: add the mean back
        C = C + state.n * torch.outer(mean, mean)
        mean = torch.zeros_like(mean)
    if data_units:
        C, mean = C / scale[:, None] / scale[None, :], mean / scale  # no 0 / 0 (as solvers)
        check_gram_overflow(C.diagonal(), names, who)
        scale = torch.ones_like(scale)
    p = len(names)
    gs = GramState(C[:p, :p], C[:p, p:], C[p:, p:].diagonal().clone(), mean[:p], mean[p:], state.n)
    return gs, scale


def _second_pass(
    source: BatchSource,
    keep: Callable[[np.ndarray], np.ndarray] | None,
    missing: str,
    state: MomentState,
    gs: Any,
    scale: torch.Tensor,
    sol: Any,
    alpha: float,
    fit_intercept: bool,
    affordable: bool,
) -> tuple[str, torch.Tensor, torch.Tensor, Any, tuple[np.ndarray, np.ndarray] | None]:
    """TSQR (and dd moments when affordable).

    Returns ``(method, coef, sse, extended solution, refined)``: ``coef`` and ``sse`` in the
    scaled units of ``gs``; ``refined`` the TSQR's coefficients and intercepts refined with
    the dd residual (data units), when the dd moments were taken. ``sol`` is updated in
    place (rank, R of the TSQR).
    """
    from regtorch.linear.extended import centre_moments, refine_from_moments, solve_from_moments
    from regtorch.linear.solvers import TSQR_TRUST_COND

    assert state.mean is not None and state.scale is not None
    p = gs.G.shape[0]
    m = p + gs.Xty.shape[1]
    mean = torch.cat([gs.X_offset, gs.y_offset])
    dd_scale = state.scale.numpy() if affordable else None
    shift = (state.mean / state.scale).numpy() if fit_intercept else np.zeros(m)
    R, mom = _tsqr(source, keep, missing, mean, m, scale, dd_scale, shift)
    coef, sse = sol.coef, gs.yty - 2 * (sol.coef * gs.Xty).sum(0)
    sse = sse + (sol.coef * (gs.G @ sol.coef)).sum(0)
    method = "streaming-cholesky"
    qr_sol = _solve_from_r(R, p, alpha)
    if qr_sol is not None:
        coef, sse, R_xx = qr_sol
        sol.R = R_xx if alpha == 0 else None
        sol.rank = p
        method = "streaming-tsqr"
    ext = refined = None
    if mom is not None:
        em = centre_moments(mom, fit_intercept, state.rows, alpha, p)
        ext = solve_from_moments(em, p, fit_intercept, alpha)
        ext = ext if ext.rank == p else None
        if ext is not None and qr_sol is not None and alpha == 0:
            sx, sy = scale[:p], scale[p:]
            c = (coef * sx.unsqueeze(1) / sy.unsqueeze(0)).numpy()
            b, b0, _ = refine_from_moments(em, p, fit_intercept, c, (qr_sol[2] / sx).numpy())
            refined = (b, b0)
    cond = math.inf if sol.cond is None else sol.cond
    if ext is not None and (qr_sol is None or cond > TSQR_TRUST_COND):
        why = (
            f"float64 found rank {sol.rank} < {p}"
            if qr_sol is None
            else f"scaled Gram condition number {cond:.2g} > {TSQR_TRUST_COND:.0e}"
        )
        method = f"streaming-extended (fallback from {method}: {why})"
        warnings.warn(f"Streamed fit: {method}.", IllConditionedWarning, stacklevel=3)
        sol.rank = p
    return method, coef, sse, ext, refined
