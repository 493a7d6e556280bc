"""Exact elastic-net points on the Gram form: one problem, or a batch of problems at once.

The primal active-set method of :func:`regtorch.linear.path.gram_path` (one problem, small
dense numpy work) and :func:`gram_paths`, the same method run on B problems together (the
folds x l1_ratios of a cross-validation): every face system is a full-size masked system
(inactive coordinates pinned to zero), so one batched ``np.linalg.solve`` serves every
problem, and each problem walks its own alpha grid at its own pace.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from regtorch.linear.solvers import elastic_net

__all__ = ["gram_paths", "path_duality_gaps"]

# KKT conditions are enforced to this fraction of the largest |c_j| (the data's scale).
KKT_RTOL = 1e-12
# Active-set steps allowed per alpha, as a multiple of p (plus a constant), before the
# point falls back to the iterative solver.
STEPS_PER_FEATURE = 3


def _as_numpy(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().to(torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def _active_set_point(
    G: np.ndarray,
    c: np.ndarray,
    l1: float,
    l2: float,
    b: np.ndarray,
    positive: bool,
    max_steps: int,
    kkt_tol: float,
) -> tuple[np.ndarray, int] | None:
    """Primal active-set method for one alpha, from a feasible warm start ``b``.

    Each step minimises the quadratic on the current orthant face exactly, moving only as far
    as the signs allow (a coefficient reaching zero leaves), then adds the worst KKT violator:
    the objective decreases at every step. None if unsettled or a face system is singular.
    """
    b = b.copy()
    active = np.flatnonzero(b)
    signs = np.sign(b[active])
    for step in range(1, max_steps + 1):
        if active.size:
            A = G.take(active, 0).take(active, 1)
            A.flat[:: active.size + 1] += l2
            try:
                target = np.linalg.solve(A, c[active] - l1 * signs)
            except np.linalg.LinAlgError:
                return None
            if not math.isfinite(float(target.sum())):
                return None
            cur = b[active]
            wrong = target * signs <= 0
            if wrong.any():
                # largest step t in [0, 1) keeping cur + t (target - cur) in the orthant
                d = target - cur
                t_all = np.where(wrong, cur / np.where(wrong, cur - target, 1.0), 1.0)
                t = float(t_all.min())
                new = cur + t * d
                keep = ~wrong | (t_all > t)
                b[active] = np.where(keep, new, 0.0)
                active, signs = active[keep], signs[keep]
                continue
            b[active] = target
        g = c - G @ b - l2 * b
        viol = g - l1 if positive else np.abs(g) - l1
        viol[active] = -np.inf
        j = int(np.argmax(viol)) if viol.size else 0
        if not viol.size or viol[j] <= kkt_tol:
            return b, step
        active = np.append(active, j)
        signs = np.append(signs, 1.0 if positive else np.sign(g[j]))
    return None


def _solve_point(
    G: np.ndarray,
    c: np.ndarray,
    l1: float,
    l2: float,
    b: np.ndarray,
    positive: bool,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, int]:
    """One alpha: ridge in closed form when there is no l1 term, else the active-set method."""
    p = c.shape[0]
    kkt_tol = KKT_RTOL * max(float(np.abs(c).max(initial=0.0)), float(np.finfo(float).tiny))
    if l1 == 0 and not positive and l2 > 0:
        A = G.copy()
        A.flat[:: p + 1] += l2
        return np.linalg.solve(A, c), 1
    found = _active_set_point(G, c, l1, l2, b, positive, STEPS_PER_FEATURE * p + 10, kkt_tol)
    if found is not None:
        return found
    return _fallback_point(G, c, l1, l2, b, positive, tol, max_iter)


def _fallback_point(
    G: np.ndarray,
    c: np.ndarray,
    l1: float,
    l2: float,
    b: np.ndarray,
    positive: bool,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, int]:
    """A point the active-set method did not settle (ties, a singular face): the iterative
    solver from the warm start ``b``, with its own exact polish."""
    w, it, _ = elastic_net(
        torch.from_numpy(G),
        torch.from_numpy(c),
        l1,
        l2,
        max_iter=max_iter,
        tol=tol,
        positive=positive,
        coef_init=torch.from_numpy(b),
    )
    return w.numpy(), it


def _path_kkt(
    G: np.ndarray, C: np.ndarray, alphas: np.ndarray, l1_ratio: float, W: np.ndarray, positive: bool
) -> np.ndarray:
    """Largest violation of the optimality conditions per alpha; W is (n_alphas, p, k)."""
    l1 = (alphas * l1_ratio)[:, None, None]
    g = C[None] - np.einsum("pq,aqk->apk", G, W) - (alphas * (1 - l1_ratio))[:, None, None] * W
    free = (np.maximum(g, 0.0) if positive else np.abs(g)) - l1
    viol = np.where(W != 0, np.abs(g - l1 * np.sign(W)), free)
    return np.maximum(viol, 0.0).max(axis=(1, 2), initial=0.0)


def path_duality_gaps(
    G: np.ndarray,
    c: np.ndarray,
    yty: float,
    alphas: np.ndarray,
    l1_ratio: float,
    W: np.ndarray,
    positive: bool = False,
) -> np.ndarray:
    """Duality gaps of a path (scikit-learn's, divided by n_samples), vectorised over alphas.

    ``W`` is ``(n_alphas, p)`` for one target ``c`` (p,), or ``(n_alphas, p, k)`` with ``c``
    (p, k) and ``yty`` the total over targets for the multi-task (L2,1) penalty.
    """
    W3 = W.reshape(W.shape[0], W.shape[1], -1)
    C = c.reshape(c.shape[0], -1)
    l1, l2 = alphas * l1_ratio, alphas * (1 - l1_ratio)
    GW = np.einsum("pq,aqk->apk", G, W3)
    wc = np.einsum("apk,pk->a", W3, C)
    r2 = np.maximum(np.einsum("apk,apk->a", W3, GW) - 2 * wc + yty, 0.0)
    xta = C[None] - GW - l2[:, None, None] * W3
    if positive:
        dual_norm = xta.max(axis=(1, 2), initial=-np.inf)
    else:
        dual_norm = np.sqrt(np.sum(xta**2, axis=2)).max(axis=1, initial=0.0)
    over = dual_norm > l1
    const = np.where(over, l1 / np.where(over, dual_norm, 1.0), 1.0)
    l1_norm = np.sqrt(np.sum(W3**2, axis=2)).sum(axis=1)
    l2_sq = np.einsum("apk,apk->a", W3, W3)
    gap = np.where(over, 0.5 * r2 * (1 + const**2), r2)
    gap += l1 * l1_norm - const * (yty - wc)
    gap += 0.5 * l2 * (1 + const**2) * l2_sq
    ridge = (l1 == 0) & (l2 > 0)
    if ridge.any():
        # without an L1 part scikit-learn's dual point is 0 and its "gap" the primal
        # objective; the Fenchel dual at theta = r is exact: the conjugate of
        # l1 |w| + l2 w^2 / 2 is (|v| - l1)_+^2 / (2 l2) (v_+ only, if positive)
        xr = C[None] - GW  # X'r
        v = xr[:, :, 0] if positive else np.sqrt(np.sum(xr**2, axis=2))
        excess = np.maximum(v - l1[:, None], 0.0)
        fen = r2 - (yty - wc) + 0.5 * l2 * l2_sq + l1 * l1_norm
        fen += np.sum(excess**2, axis=1) / (2 * np.where(ridge, l2, 1.0))
        gap = np.where(ridge, fen, gap)
    return gap


def _check_batch(
    G: Any, c: Any, alphas: Any, l1_ratios: Any, yty: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Checked float64 arrays (G, c, alphas, l1_ratios, yty) of :func:`gram_paths`."""
    Gn, C = _as_numpy(G), _as_numpy(c)
    if C.ndim != 2:
        raise ValueError(f"c must have shape (B, p) (one target per problem); got {C.shape}.")
    B, p = C.shape
    if Gn.shape != (B, p, p):
        raise ValueError(f"G must have shape ({B}, {p}, {p}) to match c; got {Gn.shape}.")
    A = _as_numpy(alphas)
    if A.ndim != 2 or A.shape[0] != B:
        raise ValueError(f"alphas must have shape ({B}, n_alphas); got {A.shape}.")
    R = _as_numpy(l1_ratios).reshape(-1)
    R = np.full(B, R[0]) if R.size == 1 else R
    if R.shape != (B,) or not np.all((R >= 0) & (R <= 1)):
        raise ValueError(f"l1_ratios must be B={B} values in [0, 1]; got {l1_ratios!r}.")
    if not (np.all(np.isfinite(A)) and np.all(A >= 0)):
        raise ValueError("alphas must be finite and non-negative.")
    if not (np.all(np.isfinite(Gn)) and np.all(np.isfinite(C))):
        raise ValueError("G and c must be finite.")
    yy = None if yty is None else _as_numpy(yty).reshape(-1)
    if yy is not None and yy.shape != (B,):
        raise ValueError(f"yty must have shape ({B},); got {yy.shape}.")
    return Gn, C, A, R, yy


def _pad(G: np.ndarray) -> np.ndarray:
    """(B, p + 1, p + 1): ``G`` bordered by a zero row and column (the padding of a face)."""
    out = np.zeros((G.shape[0], G.shape[1] + 1, G.shape[2] + 1))
    out[:, :-1, :-1] = G
    return out


def _face_solve(
    Gpad: np.ndarray, c: np.ndarray, M: np.ndarray, s: np.ndarray, l1: np.ndarray, l2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Minimisers of every problem's quadratic on its face (inactive coordinates pinned to 0),
    and which problems' face systems were solvable (finite); ``Gpad`` from :func:`_pad`.

    The systems are gathered to the size K of the largest active set (active coordinates
    first, the rest of the K pointing at the zero border: identity rows), so one batched
    solve serves all.
    """
    B, p = c.shape
    K = int(M.sum(axis=1).max(initial=0))
    x = np.zeros((B, p))
    if K == 0:
        return x, np.ones(B, dtype=bool)
    idx = np.argsort(~M, axis=1, kind="stable")[:, :K]
    rows = np.arange(B)[:, None]
    act = M[rows, idx]
    q = np.where(act, idx, p)
    A = Gpad.reshape(-1).take(
        q[:, :, None] * (p + 1) + (q[:, None, :] + rows[:, :, None] * (p + 1) ** 2)
    )
    d = np.arange(K)
    A[:, d, d] += np.where(act, l2[:, None], 1.0)
    rhs = np.where(act, (c - l1[:, None] * s)[rows, idx], 0.0)
    try:
        xs = np.linalg.solve(A, rhs[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:  # one singular face: solve one by one, the rest unharmed
        xs = np.full_like(rhs, np.nan)
        for i in range(B):
            try:
                xs[i] = np.linalg.solve(A[i], rhs[i])
            except np.linalg.LinAlgError:
                pass
    x[rows, idx] = np.where(act, xs, 0.0)
    return x, np.asarray(np.isfinite(xs).all(axis=1))


def _drop_step(b: np.ndarray, x: np.ndarray, M: np.ndarray, wrong: np.ndarray) -> None:
    """Move each row's ``b`` towards its face minimiser ``x`` as far as the signs allow; the
    coefficients reaching zero leave the active set (``b``, ``M`` updated in place)."""
    t_all = np.where(wrong, b / np.where(wrong, b - x, 1.0), 1.0)
    t = t_all.min(axis=1, keepdims=True)
    keep = M & (~wrong | (t_all > t))
    b[:] = np.where(keep, b + t * (x - b), 0.0)
    M[:] = keep


class _Batch:
    """State of the batched active-set walk: every problem at its own alpha (``ia``)."""

    def __init__(self, G: np.ndarray, C: np.ndarray, A: np.ndarray, R: np.ndarray) -> None:
        self.G, self.C, self.A, self.R = G, C, A, R
        self.Gpad = _pad(G)
        B, p = C.shape
        self.b = np.zeros((B, p))
        self.M = np.zeros((B, p), dtype=bool)
        self.s = np.zeros((B, p))
        self.ia = np.zeros(B, dtype=np.int64)
        self.steps = np.zeros(B, dtype=np.int64)
        self.warm = np.zeros((B, p))  # each problem's previous solution: the fallback's start
        self.coefs = np.zeros((B, A.shape[1], p))
        self.iters = np.zeros((B, A.shape[1]), dtype=np.int64)
        tiny = float(np.finfo(float).tiny)
        self.kkt_tol = KKT_RTOL * np.maximum(np.abs(C).max(axis=1, initial=0.0), tiny)

    def penalties(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = self.A[rows, self.ia[rows]]
        return a * self.R[rows], a * (1 - self.R[rows])

    def settle(self, rows: np.ndarray, b: np.ndarray, n_iter: np.ndarray) -> None:
        """Record the solutions ``b`` of ``rows`` at their alphas; move on (warm start)."""
        at = self.ia[rows]
        self.coefs[rows, at] = b
        self.iters[rows, at] = n_iter
        self.b[rows], self.M[rows], self.s[rows], self.warm[rows] = b, b != 0, np.sign(b), b
        self.ia[rows] += 1
        self.steps[rows] = 0


def _batch_step(st: _Batch, L: np.ndarray, positive: bool) -> np.ndarray:
    """One active-set step of every live problem ``L``; returns the rows needing the fallback."""
    full = L.size == st.b.shape[0]  # then work in place, without copies
    l1, l2 = st.penalties(L)
    G, Gpad, C = (st.G, st.Gpad, st.C) if full else (st.G[L], st.Gpad[L], st.C[L])
    b, M, s = (st.b, st.M, st.s) if full else (st.b[L], st.M[L], st.s[L])
    x, ok = _face_solve(Gpad, C, M, s, l1, l2)
    wrong = M & (x * s <= 0)
    drop = ok & wrong.any(axis=1)
    if drop.any():
        bd, Md = b[drop], M[drop]
        _drop_step(bd, x[drop], Md, wrong[drop])
        b[drop], M[drop] = bd, Md
        s[drop] = np.where(Md, s[drop], 0.0)
    g = C - np.einsum("bpq,bq->bp", G, x) - l2[:, None] * x
    viol = (g if positive else np.abs(g)) - l1[:, None]
    viol[M] = -np.inf
    j = viol.argmax(axis=1)
    checked = ok & ~drop
    settled = checked & (viol[np.arange(L.size), j] <= st.kkt_tol[L])
    add = np.flatnonzero(checked & ~settled)
    b[checked] = x[checked]
    M[add, j[add]] = True
    s[add, j[add]] = 1.0 if positive else np.sign(g[add, j[add]])
    if not full:
        st.b[L], st.M[L], st.s[L] = b, M, s
    st.steps[L] += 1
    rows = L[settled]
    st.settle(rows, b[settled], st.steps[rows])
    slow = st.steps[L] >= STEPS_PER_FEATURE * st.C.shape[1] + 10  # settled rows are at 0
    return L[~ok | slow] if slow.any() or not ok.all() else L[:0]


def _batch_paths(
    G: np.ndarray,
    C: np.ndarray,
    A: np.ndarray,
    R: np.ndarray,
    positive: bool,
    tol: float,
    max_iter: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Coefs (B, n_alphas, p) and steps (B, n_alphas) of the batched walk."""
    st = _Batch(G, C, A, R)
    with np.errstate(invalid="ignore", over="ignore"):  # a singular face's inf/nan rows
        return _walk(st, positive, tol, max_iter)


def _walk(st: _Batch, positive: bool, tol: float, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Step every unfinished problem until each has settled all its alphas."""
    G, C, n = st.G, st.C, st.A.shape[1]
    while True:
        L = np.flatnonzero(st.ia < n)
        if not L.size:
            return st.coefs, st.iters
        for i in _batch_step(st, L, positive).tolist():
            (l1,), (l2,) = st.penalties(np.array([i]))
            w, it = _fallback_point(G[i], C[i], l1, l2, st.warm[i], positive, tol, max_iter)
            st.settle(np.array([i]), w[None], np.array([it]))


def gram_paths(
    G: Any,
    c: Any,
    alphas: Any,
    l1_ratios: Any,
    *,
    positive: bool = False,
    tol: float = 1e-4,
    max_iter: int = 10_000,
    yty: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """B elastic-net paths on the Gram form at once (the folds x l1_ratios of a CV).

    Problem ``i`` is :func:`regtorch.linear.path.gram_path` of ``(G[i], c[i], alphas[i],
    l1_ratios[i])``: the same exact points (KKT to ``1e-12`` of ``max |c[i]|``), the same
    warm starts along its alphas, the same fallback for a point that does not settle.

    Parameters
    ----------
    G : (B, p, p) array or tensor
        ``Xc'WXc / weight_sum`` per problem.
    c : (B, p)
        ``Xc'Wyc / weight_sum`` per problem (one target each).
    alphas : (B, n_alphas)
        Each row in path order (best decreasing); rows may differ.
    l1_ratios : (B,) or float, in [0, 1]
    positive, tol, max_iter
        As :func:`gram_path` (``tol``, ``max_iter`` only bound the fallback).
    yty : (B,), optional
        ``yc'Wyc / weight_sum``: ``gaps`` are then duality gaps, else KKT violations.

    Returns
    -------
    coefs : (B, n_alphas, p) ndarray
    n_iter : (B, n_alphas) int ndarray
    gaps : (B, n_alphas) ndarray

    Examples
    --------
    >>> import numpy as np
    >>> coefs, n_iter, gaps = gram_paths(
    ...     np.eye(2)[None], np.array([[1.0, 0.5]]), np.array([[0.8, 0.2]]), [1.0]
    ... )
    >>> coefs[0]
    array([[0.2, 0. ],
           [0.8, 0.3]])
    """
    Gn, C, A, R, yy = _check_batch(G, c, alphas, l1_ratios, yty)
    B, p = C.shape
    coefs = np.zeros((B, A.shape[1], p))
    iters = np.ones((B, A.shape[1]), dtype=np.int64)
    ridge = (R == 0) & (not positive)  # closed form per alpha, as gram_path
    lasso = np.flatnonzero(~ridge)
    if lasso.size and A.shape[1] and p:
        coefs[lasso], iters[lasso] = _batch_paths(
            Gn[lasso], C[lasso], A[lasso], R[lasso], positive, tol, max_iter
        )
    for i in np.flatnonzero(ridge).tolist():
        b = np.zeros(p)
        for j, alpha in enumerate(A[i]):
            b, iters[i, j] = _solve_point(Gn[i], C[i], 0.0, alpha, b, positive, tol, max_iter)
            coefs[i, j] = b
    gaps = np.zeros((B, A.shape[1]))
    for i in range(B if A.shape[1] else 0):
        gaps[i] = (
            _path_kkt(Gn[i], C[i, :, None], A[i], R[i], coefs[i, :, :, None], positive)
            if yy is None
            else path_duality_gaps(Gn[i], C[i], float(yy[i]), A[i], R[i], coefs[i], positive)
        )
    return coefs, iters, gaps
