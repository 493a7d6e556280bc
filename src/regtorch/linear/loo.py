"""Exact leave-one-out for ridge (RidgeCV(cv=None)) and the spectral ridge helpers.

Two passes over the rows in memory: one for the centred weighted Gram (the engine's
moments), eigendecomposed once for every alpha, and one for each row's leverage and residual
under every alpha (GEMMs on blocks of rows, on two threads for large data), reduced in row
order. The same ``alpha_``, scores and ``cv_results_`` as scikit-learn's "GCV mode" where
that is exact; where column scales differ by orders of magnitude (its eigendecomposition
then loses the small columns' digits) the coefficients, residuals and leverages come from
equilibrated Cholesky factors per alpha instead, and stay exact.
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from regtorch._threads import worker_pool, worth_threads
from regtorch.linear.solvers import center_and_weight, gram_state
from regtorch.linear.streamed import check_gram_overflow

__all__ = ["loo_fit", "ridge_path"]

# rows per block of the leave-one-out pass (leverages and residuals for every alpha)
LOO_BLOCK_ROWS = 4_096
# values of X from which the leave-one-out pass computes its blocks on two threads
PARALLEL_LOO_SIZE = 4_000_000
# leave-one-out with n_samples <= n_features eigendecomposes the n x n Gram: bounded here
GRAM_MAX_ROWS = 20_000
# leverages from an equilibrated Cholesky per alpha where it gains this much conditioning
EQUILIBRATION_GAIN = 1e4


@dataclass
class _Running:
    """Count, mean and centred sum of squares over blocks of rows (Chan et al.'s merge);
    numpy arrays or tensors alike."""

    n: int = 0
    mean: Any = None
    m2: Any = None

    @staticmethod
    def stats(v: Any) -> tuple[int, Any, Any]:
        """A block's count, mean and centred sum of squares (to :meth:`add` later)."""
        mb = v.mean(0)
        d = v - mb
        d *= d
        return v.shape[0], mb, d.sum(0)

    def add(self, nb: int, mb: Any, m2b: Any) -> None:
        """Merge a block's :meth:`stats`."""
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta * delta * (self.n * nb / n)
        self.n = n

    def se(self) -> np.ndarray:
        """Standard error of the mean (sample standard deviation / sqrt(n))."""
        assert self.m2 is not None
        return np.sqrt(_numpy(self.m2) / max(self.n - 1, 1) / self.n)


def _numpy(a: Any) -> np.ndarray:
    return a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _eig_coefs(
    L: torch.Tensor, basis: torch.Tensor, proj: torch.Tensor, alphas: torch.Tensor
) -> torch.Tensor:
    """Ridge coefficients ``(n_alphas, p, k)``: ``basis @ (proj / (L + alpha))``.

    At ``alpha = 0`` directions with a negligible eigenvalue get no weight (minimum norm).
    """
    denom = L[None, :, None] + alphas[:, None, None]  # (n_alphas, r, 1)
    tol = float(L.abs().max()) * L.shape[0] * torch.finfo(L.dtype).eps if L.numel() else 0.0
    null = (alphas[:, None, None] == 0) & (L[None, :, None] <= tol)
    inv = torch.where(null, torch.zeros_like(denom), 1.0 / torch.where(null, 1.0, denom))
    return basis @ (proj.unsqueeze(0) * inv)


def ridge_path(G: torch.Tensor, Xty: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """``(G + alpha I)^-1 Xty`` for every alpha: (n_alphas, p, k).

    A Cholesky factor per alpha of the equilibrated system ``D (G + alpha I) D`` (``D`` its
    diagonal's inverse square root), with two steps of refinement: exact to the system's
    own conditioning when the columns' scales differ by orders of magnitude, where one
    eigendecomposition of the unscaled Gram loses the small columns' digits (1e-4 at a
    scale ratio of 1e6). Alpha 0, or a system Cholesky cannot factor, gets the
    eigendecomposition's minimum-norm solution.
    """
    na, p = alphas.shape[0], G.shape[0]
    A = G.unsqueeze(0) + alphas[:, None, None] * torch.eye(p, dtype=G.dtype, device=G.device)
    d = A.diagonal(dim1=-2, dim2=-1)
    D = torch.where(d > 0, d.clamp_min(torch.finfo(G.dtype).tiny).rsqrt(), 1.0)  # (na, p)
    B = Xty.unsqueeze(0).expand(na, -1, -1)
    Lf, info = torch.linalg.cholesky_ex(A * D[:, :, None] * D[:, None, :])
    coefs = D[:, :, None] * torch.cholesky_solve(D[:, :, None] * B, Lf)
    for _ in range(2):  # refinement on the unscaled system
        r = B - A @ coefs
        coefs = coefs + D[:, :, None] * torch.cholesky_solve(D[:, :, None] * r, Lf)
    # alpha 0: the minimum-norm solution, which a Cholesky factor that happens to succeed
    # on a singular Gram (rounding) does not give
    bad = (info != 0) | ~torch.isfinite(coefs).flatten(1).all(1) | (alphas == 0)
    if bool(bad.any()):
        L, V = _eigh(G)
        coefs[bad] = _eig_coefs(L, V, V.mT @ Xty, alphas[bad])
    return coefs


def _eigh(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric matrix; on the CPU through
    numpy's LAPACK, the thread pool the moments' BLAS calls already use (torch's OpenMP
    threads and OpenBLAS's spin against each other when they alternate)."""
    if G.device.type == "cpu":
        L, V = np.linalg.eigh(G.numpy())
        return torch.from_numpy(L), torch.from_numpy(V)
    L, V = torch.linalg.eigh(G)
    return L, V


@dataclass
class _Spectrum:
    """One eigendecomposition of the centred weighted Gram serving every alpha (LOO)."""

    kind: str  # "cov": eigenvectors of Xc'WXc (p, r); "gram": of Xw Xw' (n, r)
    L: torch.Tensor  # (r,)
    basis: torch.Tensor
    proj: torch.Tensor  # (r, k): V'Xc'Wyc ("cov") or U'W^(1/2)yc ("gram")
    X_offset: torch.Tensor
    y_offset: torch.Tensor
    to_coef: torch.Tensor | None = None  # (p, r) Xw'U ("gram")
    # centre rows inside the GEMM: no column's mean exceeds its spread (no cancellation)
    center_in_gemm: bool = False
    gram: tuple[torch.Tensor, torch.Tensor] | None = None  # (G, Xty) of "cov" from moments

    def coefs(self, alphas: torch.Tensor) -> torch.Tensor:
        """Ridge coefficients ``(n_alphas, p, k)``: from the Gram by :func:`ridge_path`
        where there is one (exact when column scales differ widely), else the spectrum's."""
        if self.gram is not None:
            return ridge_path(*self.gram, alphas)
        basis = self.basis if self.to_coef is None else self.to_coef
        return _eig_coefs(self.L, basis, self.proj, alphas)


def _spectrum(
    X: torch.Tensor,
    y: torch.Tensor,
    sw: torch.Tensor | None,
    fit_intercept: bool,
    mode: Any,
    peaks: torch.Tensor | None = None,
    names: list[str] | None = None,
) -> _Spectrum:
    """The decomposition scikit-learn's _RidgeGCV uses: of the p x p Gram when n > p, else n x n."""
    n, p = X.shape
    if n > p and mode != "svd":
        gs = gram_state(X, y, sw, fit_intercept, top=peaks)
        # the penalty is not scale-free: a column whose squares overflow is named
        check_gram_overflow(gs.G.diagonal(), names or [f"x{j}" for j in range(p)], "RidgeCV")
        L, V = _eigh(gs.G)
        small = bool((gs.X_offset.square() * gs.weight_sum <= gs.G.diagonal()).all())
        proj = V.mT @ gs.Xty
        return _Spectrum("cov", L, V, proj, gs.X_offset, gs.y_offset, None, small, (gs.G, gs.Xty))
    if n <= p and n > GRAM_MAX_ROWS:
        raise ValueError(
            f"RidgeCV(cv=None) with n_samples={n} <= n_features={p} eigendecomposes the "
            f"n_samples x n_samples Gram; more than {GRAM_MAX_ROWS} rows is too large. "
            "Use cv=K (K-fold)."
        )
    c = center_and_weight(X, y, sw, fit_intercept)
    U, s, Vh = torch.linalg.svd(c.X, full_matrices=False)
    if n > p:  # gcv_mode="svd": the p x p spectrum from the design's SVD
        return _Spectrum(
            "cov", s.square(), Vh.mT, s[:, None] * (U.mT @ c.y), c.X_offset, c.y_offset
        )
    L, U = torch.linalg.eigh(c.X @ c.X.mT) if mode != "svd" else (s.square(), U)  # n x n
    return _Spectrum("gram", L, U, U.mT @ c.y, c.X_offset, c.y_offset, c.X.mT @ U)


def feature_names(est: Any) -> list[str] | None:
    """An estimator's fitted feature names (for messages), or None."""
    names = getattr(est, "feature_names_in_", None)
    return None if names is None else [str(v) for v in names]


def _loo_blocks(
    X: torch.Tensor,
    y: torch.Tensor,
    sw: torch.Tensor | None,
    sp: _Spectrum,
    alphas: torch.Tensor,
    fit_intercept: bool,
    weight_sum: float,
    per_block: Callable[[int, torch.Tensor], Any],
) -> Iterator[Any]:
    """Per block of rows, in row order: ``per_block(start, e)`` of its leave-one-out errors
    ``e (r, n_alphas, k)`` (data units); on the CPU it runs in the worker threads too."""
    n, p = X.shape
    na, k = alphas.shape[0], y.shape[1]
    if sp.kind == "gram":
        yield per_block(0, _loo_gram(X, y, sw, sp, alphas, fit_intercept, weight_sum))
        return
    # residual / (1 - leverage), leverage = w_i/W + w_i P_i' diag(1 / (L + alpha)) P_i;
    # the residuals from the rows and ridge_path's coefficients, not the spectrum: its
    # small directions carry the eigendecomposition's error when column scales differ
    D = 1.0 / (sp.L[:, None] + alphas[None, :])  # (p, n_alphas)
    BD = sp.coefs(alphas).permute(1, 0, 2).reshape(p, na * k)  # (p, n_alphas * k)
    mV = (sp.X_offset @ sp.basis)[None, :]  # (1, p)
    exact = _exact_leverages(sp, alphas)
    share = 1.0 / weight_sum if fit_intercept else 0.0
    if _numpy_pass(X):  # numpy: one BLAS pool for every GEMM of the pass
        yield from _loo_blocks_numpy(X, y, sw, sp, D, BD, mV, share, exact, per_block)
        return
    for i in range(0, n, LOO_BLOCK_ROWS):
        Xb = X[i : i + LOO_BLOCK_ROWS]
        Xc = None if sp.center_in_gemm else Xb - sp.X_offset

        def times(M: torch.Tensor, Xb: torch.Tensor = Xb, Xc: Any = Xc) -> torch.Tensor:
            """``(Xb - m) @ M``; (x - m)'M = x'M - m'M: no centred copy of the block."""
            if Xc is not None:
                return Xc @ M
            return torch.addmm(sp.X_offset[None, :] @ M, Xb, M, beta=-1.0)

        P, fit = times(sp.basis), times(BD)  # (r, p), (r, n_alphas * k)
        lev = P.square() @ D  # (r, n_alphas)
        for a, M in exact:
            lev[:, a] = times(M).square().sum(1)
        lev += share  # the intercept's 1/W
        if sw is not None:
            lev *= sw[i : i + LOO_BLOCK_ROWS, None]
        keep = lev.neg_().add_(1.0)  # 1 - leverage
        yc = y[i : i + LOO_BLOCK_ROWS] - sp.y_offset  # (r, k)
        e = (yc if k == 1 else yc.repeat(1, na)) - fit
        yield per_block(i, e.reshape(-1, na, k).div_(keep.unsqueeze(2)))


def _numpy_pass(X: torch.Tensor) -> bool:
    """Whether the leave-one-out pass runs in numpy (CPU tensors)."""
    return X.device.type == "cpu"


def _exact_leverages(sp: _Spectrum, alphas: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """``(index, M)`` for each alpha whose leverages the spectrum would give inexactly.

    Where the unscaled system's condition number exceeds the equilibrated one's by more
    than ``EQUILIBRATION_GAIN`` (column scales far apart), the eigendecomposition's error
    in the small directions reaches the leverages. There ``M = D L^-T`` from the Cholesky
    factor of ``D (G + alpha I) D = L L'`` gives ``x'(G + alpha I)^-1 x = ||x'M||^2`` to the
    equilibrated system's conditioning, at ``p^2`` more multiply-adds per row.
    """
    if sp.gram is None or sp.L.numel() == 0:
        return []
    G = sp.gram[0]
    eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    lmax, lmin = float(sp.L.max()), float(sp.L.min())
    out = []
    for a, alpha in enumerate(alphas.tolist()):
        # the spectrum's smallest eigenvalue may come out negative (its error is eps x the
        # largest): then its own condition number is unbounded
        cond = (lmax + alpha) / (lmin + alpha) if lmin + alpha > 0 else math.inf
        if cond < EQUILIBRATION_GAIN:
            continue  # no equilibration can gain that much: no eigvalsh needed
        A = G + alpha * eye
        d = A.diagonal()
        if not bool((d > 0).all()):
            continue  # a zero row: singular, the spectrum's minimum-norm leverages
        Dv = d.rsqrt()
        S = A * Dv[:, None] * Dv[None, :]
        ls = np.linalg.eigvalsh(S.cpu().numpy())
        if ls[0] <= 0 or cond < EQUILIBRATION_GAIN * (ls[-1] / ls[0]):
            continue  # singular after equilibration too, or too little gained
        L, info = torch.linalg.cholesky_ex(S)
        if int(info) != 0:
            continue
        Linv = torch.linalg.solve_triangular(L, eye, upper=False)
        out.append((a, Dv[:, None] * Linv.mT))
    return out


def _loo_blocks_numpy(
    X: torch.Tensor,
    y: torch.Tensor,
    sw: torch.Tensor | None,
    sp: _Spectrum,
    D: torch.Tensor,
    BD: torch.Tensor,
    mV: torch.Tensor,
    share: float,
    exact: list[tuple[int, torch.Tensor]],
    per_block: Callable[[int, torch.Tensor], Any],
) -> Iterator[Any]:
    """:func:`_loo_blocks` on the CPU, each block's products in numpy (the same formulas)."""
    Xn, yn, V = X.numpy(), y.numpy(), sp.basis.numpy()
    Dn, BDn, mVn, xo, yo = (t.numpy() for t in (D, BD, mV, sp.X_offset, sp.y_offset))
    swn = None if sw is None else sw.numpy()
    mBn = xo @ BDn  # (n_alphas * k,): the offsets' fitted values
    exact_n = [(a, M.numpy(), xo @ M.numpy()) for a, M in exact]
    na, k = Dn.shape[1], yn.shape[1]
    p = Xn.shape[1]
    # per-thread work arrays: a fresh array per block would be page-faulted in every time
    local = threading.local()

    def block(i: int) -> Any:
        if not hasattr(local, "P"):
            local.P, local.P2 = np.empty((LOO_BLOCK_ROWS, p)), np.empty((LOO_BLOCK_ROWS, p))
            local.lev, local.e = np.empty((LOO_BLOCK_ROWS, na)), np.empty((LOO_BLOCK_ROWS, na * k))
            local.levx = np.empty((LOO_BLOCK_ROWS, len(exact_n)))
        Xb = Xn[i : i + LOO_BLOCK_ROWS]
        r = Xb.shape[0]
        P, P2, lev, e = local.P[:r], local.P2[:r], local.lev[:r], local.e[:r]
        levx = local.levx[:r]
        # fitted values (centred) for every alpha and target, then the projection
        if sp.center_in_gemm:  # (x - m)'B = x'B - m'B: no centred copy of the block
            np.matmul(Xb, BDn, out=e)
            e -= mBn
            np.matmul(Xb, V, out=P)
            P -= mVn
        else:
            np.subtract(Xb, xo, out=P2)
            np.matmul(P2, BDn, out=e)
            np.matmul(P2, V, out=P)
        for j, (_, M, mM) in enumerate(exact_n):
            Z = Xb @ M - mM if sp.center_in_gemm else P2 @ M
            levx[:, j] = np.einsum("ij,ij->i", Z, Z)
        np.multiply(P, P, out=P2)
        np.matmul(P2, Dn, out=lev)  # (r, n_alphas): P^2 D
        for j, (a, _, _) in enumerate(exact_n):
            lev[:, a] = levx[:, j]
        if swn is None:
            np.subtract(1.0 - share, lev, out=lev)  # 1 - leverage = 1 - 1/W - P^2 D
        else:
            lev += share  # the intercept's 1/W
            lev *= swn[i : i + r, None]
            np.subtract(1.0, lev, out=lev)
        yc = yn[i : i + r] - yo
        np.subtract(yc if k == 1 else np.tile(yc, (1, na)), e, out=e)
        e3 = e.reshape(r, na, k)
        e3 /= lev[:, :, None]
        return per_block(i, e3)

    starts = range(0, Xn.shape[0], LOO_BLOCK_ROWS)
    if not worth_threads(Xn.size, PARALLEL_LOO_SIZE):
        yield from map(block, starts)
        return
    from concurrent.futures import Future

    # blocks computed on two threads (single-threaded BLAS each), handed on in row order
    with worker_pool() as pool:
        pending: collections.deque[Future[Any]] = collections.deque()
        for i in starts:
            pending.append(pool.submit(block, i))
            if len(pending) >= 4:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _loo_gram(
    X: torch.Tensor,
    y: torch.Tensor,
    sw: torch.Tensor | None,
    sp: _Spectrum,
    alphas: torch.Tensor,
    fit_intercept: bool,
    weight_sum: float,
) -> torch.Tensor:
    """Leave-one-out errors ``(n, n_alphas, k)`` from the n x n spectrum (n <= p).

    As scikit-learn's _RidgeGCV: ``c / d`` with ``c = (K + alpha)^-1 y`` and ``d`` its
    diagonal, which avoids the cancellation of ``residual / (1 - leverage)`` when the fit
    nearly interpolates.
    """
    U = sp.basis
    D = 1.0 / (sp.L[:, None] + alphas[None, :])  # (n, n_alphas)
    root = torch.ones_like(y[:, 0]) if sw is None else sw.sqrt()
    c = torch.einsum("ir,rak->iak", U, sp.proj[:, None, :] * D[:, :, None])
    d = U.square() @ D
    if fit_intercept:
        d -= (U @ (D * (U.mT @ root)[:, None])) * (root / weight_sum)[:, None]
    e = c / d.unsqueeze(2)  # sqrt(w_i) times the leave-one-out error
    if sw is None:
        return e
    pos = (root > 0)[:, None, None]
    # a row of weight 0 does not move the fit: its error is the full fit's residual
    fit = torch.einsum("np,apk->nak", X - sp.X_offset, sp.coefs(alphas))
    resid = (y - sp.y_offset)[:, None, :] - fit
    return torch.where(pos, e / torch.where(pos, root[:, None, None], 1.0), resid)


def _score_scale(y: torch.Tensor, sw: torch.Tensor | None, scoring: Any) -> torch.Tensor:
    """``c`` (k,) with score = c0 - c * sum_i w_i e_i^2 per target (``c0`` 1 for r2, else 0)."""
    w = torch.ones_like(y[:, 0]) if sw is None else sw.to(y.dtype)
    if scoring is None:  # scikit-learn's GCV score: -mean of w_i e_i^2
        return y.new_full((y.shape[1],), 1.0 / y.shape[0])
    if scoring == "neg_mean_squared_error":
        return y.new_full((y.shape[1],), 1.0 / float(w.sum()))
    ym = (w @ y) / w.sum()
    return 1.0 / (w @ (y - ym).square())  # r2: 1 / total sum of squares (inf when constant)


def loo_fit(
    est: Any,
    X: torch.Tensor,
    y: torch.Tensor,
    sw: torch.Tensor | None,
    alphas_np: np.ndarray,
    y_1d: bool,
    peaks: torch.Tensor | None = None,
) -> Any:
    """Efficient exact leave-one-out for every alpha, then the choice of alpha (``est._select``:
    a :class:`~regtorch.linear.ridgecv.RidgeCVFit`)."""
    n, k = X.shape[0], y.shape[1]
    if n < 2:
        raise ValueError(f"RidgeCV(cv=None) needs at least 2 samples, got {n} sample.")
    fi, scoring, per_target = bool(est.fit_intercept), est.scoring, bool(est.alpha_per_target)
    alphas = torch.as_tensor(alphas_np, dtype=X.dtype, device=X.device)
    sp = _spectrum(X, y, sw, fi, est.gcv_mode, peaks, feature_names(est))
    W = float(n if sw is None else sw.sum())
    c = _score_scale(y, sw, scoring)
    c0 = 1.0 if scoring == "r2" else 0.0
    sq_sum: Any = 0.0  # sum of w_i e_i^2 per alpha, target
    # per-row w_i e_i^2 (mean over targets) and, where the score is not proportional to
    # it, the per-row score terms: standard errors for mse_se_ and the 1se rule
    sq_rows = _Running()
    term_rows = _Running() if per_target or scoring == "r2" else None
    store = est.store_cv_results
    results = np.empty((n, k, alphas.shape[0]), _numpy(y[:0]).dtype) if store else None
    # the blocks come as numpy arrays from the CPU pass, as tensors otherwise
    host = (None if sw is None else _numpy(sw), _numpy(c), _numpy(y))

    def per_block(i: int, e: Any) -> tuple[Any, Any, Any]:
        """A block's share: sum of w e^2, and the per-row statistics (order-free parts).
        ``e`` (a work array of the pass) is overwritten."""
        r, on_host = e.shape[0], isinstance(e, np.ndarray)
        swb, cb, yb = host if on_host else (sw, c, y)
        if results is not None and scoring is not None:  # disjoint rows: thread-safe
            results[i : i + r] = _numpy((yb[i : i + r, None, :] - e).swapaxes(1, 2))
        sq = e
        sq *= e
        if swb is not None:
            sq *= swb[i : i + r, None, None]
        terms = None
        if term_rows is not None:
            u = (np if on_host else torch).nan_to_num(cb * sq, nan=0.0)  # r2: inf * 0
            terms = _Running.stats(u if per_target else u.mean(2))
        if results is not None and scoring is None:
            results[i : i + r] = _numpy(sq.swapaxes(1, 2))
        return sq.sum(0), _Running.stats(sq[:, :, 0] if k == 1 else sq.mean(2)), terms

    # merged in row order: the result does not depend on the threads' timing
    for part, sq_stats, terms in _loo_blocks(X, y, sw, sp, alphas, fi, W, per_block):
        sq_sum = sq_sum + part
        sq_rows.add(*sq_stats)
        if term_rows is not None:
            term_rows.add(*terms)
    sq_sum = torch.as_tensor(sq_sum, dtype=y.dtype, device=y.device)
    se_sq = sq_rows.se()
    score_se = n * (term_rows.se() if term_rows is not None else float(c[0]) * se_sq)
    score = c0 - c * sq_sum
    if scoring == "r2":  # constant target: scikit-learn's r2_score gives 1 (perfect) or 0
        const = torch.isinf(c)
        score[:, const] = (sq_sum[:, const] == 0).to(score.dtype)
    score_mean = score if per_target else score.mean(1)
    cv = None
    if results is not None:
        cv = results[:, 0, :] if y_1d else results
    return est._select(
        sp.coefs(alphas),
        sp.y_offset,
        sp.X_offset,
        alphas_np,
        score_mean.cpu().numpy(),
        score_se,
        (sq_sum.mean(1) / W).cpu().numpy()[:, None],
        se_sq * (n / W),
        n,
        y_1d,
        cv,
    )
