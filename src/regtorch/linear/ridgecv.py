"""RidgeCV: ridge regression with its penalty chosen by leave-one-out or K-fold CV.

Leave-one-out (``cv=None``, scikit-learn's "GCV mode", which is exact leave-one-out) takes
two passes over the rows in memory: one for the centred weighted Gram, eigendecomposed once
for every alpha, and one for each row's leverage and residual under every alpha (GEMMs on
blocks of rows). K-fold CV works from per-fold moments (:mod:`regtorch.linear.folds`): one
eigendecomposition per training set, then every alpha in O(p^2), and the held-out errors
exactly from the held-out fold's moments; it streams as well.
"""

from __future__ import annotations

import collections
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from regtorch._base import check_param, validate_fit_data
from regtorch._threads import worker_pool, worth_threads
from regtorch.linear.estimators import _LinearBase
from regtorch.linear.solvers import center_and_weight, gram_state
from regtorch.nn.loop import _num_threads

__all__ = ["RidgeCV", "RidgeCVFit"]

SCORINGS = (None, "neg_mean_squared_error", "r2")
SELECTION_RULES = ("min", "1se")
GCV_MODES = (None, "auto", "eigen", "svd")
# rows per block of the leave-one-out pass (leverages and residuals for every alpha)
LOO_BLOCK_ROWS = 4_096
# values of X from which the leave-one-out pass computes its blocks on two threads
PARALLEL_LOO_SIZE = 4_000_000
# leave-one-out with n_samples <= n_features eigendecomposes the n x n Gram: bounded here
GRAM_MAX_ROWS = 20_000
STREAMED_LOO = (
    "RidgeCV(cv=None) (leave-one-out) needs each row's leverage, a second pass over the "
    "data; stream it with cv=K (K-fold cross-validation from one pass)."
)


@dataclass
class RidgeCVFit:
    """A cross-validated ridge fit as :meth:`RidgeCV._set_fitted` stores it."""

    coef: torch.Tensor  # (p, k) at the chosen alpha(s)
    intercept: torch.Tensor  # (k,), zeros without an intercept
    alpha: float | np.ndarray  # (k,) with alpha_per_target
    best_score: float | np.ndarray
    alphas: np.ndarray  # (n_alphas,), as given
    mse_path: np.ndarray  # (n_alphas, n_folds); leave-one-out: (n_alphas, 1)
    mse_se: np.ndarray  # (n_alphas,)
    score_path: np.ndarray  # (n_alphas,) or (n_alphas, k): mean CV score
    n_folds: int  # K, or n_samples for leave-one-out
    cv_results: np.ndarray | None = None
    coef_path: np.ndarray | None = None  # (n_alphas, p) or (n_alphas, k, p), on all rows


@dataclass
class _Running:
    """Count, mean and centred sum of squares over blocks of rows (Chan et al.'s merge)."""

    n: int = 0
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None

    @staticmethod
    def stats(v: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
        """A block's count, mean and centred sum of squares (to :meth:`add` later)."""
        mb = v.mean(0)
        return v.shape[0], mb, (v - mb).square().sum(0)

    def update(self, v: torch.Tensor) -> None:
        self.add(*self.stats(v))

    def add(self, nb: int, mb: torch.Tensor, m2b: torch.Tensor) -> None:
        """Merge a block's :meth:`stats`."""
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta.square() * (self.n * nb / n)
        self.n = n

    def se(self) -> np.ndarray:
        """Standard error of the mean (sample standard deviation / sqrt(n))."""
        assert self.m2 is not None
        return (self.m2 / max(self.n - 1, 1) / self.n).sqrt().cpu().numpy()


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


def _ridge_path(G: torch.Tensor, Xty: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """``(G + alpha I)^-1 Xty`` for every alpha from one eigendecomposition: (n_alphas, p, k)."""
    L, V = _eigh(G)
    return _eig_coefs(L, V, V.mT @ Xty, alphas)


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

    def coefs(self, alphas: torch.Tensor) -> torch.Tensor:
        """Ridge coefficients ``(n_alphas, p, k)``."""
        basis = self.basis if self.to_coef is None else self.to_coef
        return _eig_coefs(self.L, basis, self.proj, alphas)


def _spectrum(
    X: torch.Tensor,
    y: torch.Tensor,
    sw: torch.Tensor | None,
    fit_intercept: bool,
    mode: Any,
    peaks: torch.Tensor | None = None,
) -> _Spectrum:
    """The decomposition scikit-learn's _RidgeGCV uses: of the p x p Gram when n > p, else n x n."""
    n, p = X.shape
    if n > p and mode != "svd":
        gs = gram_state(X, y, sw, fit_intercept, top=peaks)
        L, V = _eigh(gs.G)
        small = bool((gs.X_offset.square() * gs.weight_sum <= gs.G.diagonal()).all())
        return _Spectrum("cov", L, V, V.mT @ gs.Xty, gs.X_offset, gs.y_offset, None, small)
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
    # residual / (1 - leverage), leverage = w_i/W + w_i P_i' diag(1 / (L + alpha)) P_i
    D = 1.0 / (sp.L[:, None] + alphas[None, :])  # (p, n_alphas)
    BD = (sp.proj[:, None, :] * D[:, :, None]).reshape(p, na * k)
    mV = (sp.X_offset @ sp.basis)[None, :]  # (1, p)
    # 1 - leverage for unweighted rows: 1 - 1/W - P^2 D in one GEMM
    base = X.new_full((1, na), 1.0 - (1.0 / weight_sum if fit_intercept else 0.0))
    if X.device.type == "cpu":  # numpy: one BLAS pool for every GEMM of the pass
        share = 1.0 / weight_sum if fit_intercept else 0.0
        yield from _loo_blocks_numpy(X, y, sw, sp, D, BD, mV, share, per_block)
        return
    for i in range(0, n, LOO_BLOCK_ROWS):
        Xb = X[i : i + LOO_BLOCK_ROWS]
        if sp.center_in_gemm:  # (x - m)'V = x'V - m'V: no centred copy of the block
            P = torch.addmm(mV, Xb, sp.basis, beta=-1.0)
        else:
            P = (Xb - sp.X_offset) @ sp.basis  # (r, p)
        if sw is None:
            keep = torch.addmm(base, P.square(), D, alpha=-1.0)  # (r, n_alphas)
        else:
            lev = P.square() @ D
            if fit_intercept:
                lev += 1.0 / weight_sum
            keep = lev.mul_(sw[i : i + LOO_BLOCK_ROWS, None]).neg_().add_(1.0)
        yc = y[i : i + LOO_BLOCK_ROWS] - sp.y_offset  # (r, k)
        e = torch.addmm(yc if k == 1 else yc.repeat(1, na), P, BD, alpha=-1.0)
        yield per_block(i, e.reshape(-1, na, k).div_(keep.unsqueeze(2)))


def _loo_blocks_numpy(
    X: torch.Tensor,
    y: torch.Tensor,
    sw: torch.Tensor | None,
    sp: _Spectrum,
    D: torch.Tensor,
    BD: torch.Tensor,
    mV: torch.Tensor,
    share: float,
    per_block: Callable[[int, torch.Tensor], Any],
) -> Iterator[Any]:
    """:func:`_loo_blocks` on the CPU, each block's products in numpy (the same formulas)."""
    Xn, yn, V = X.numpy(), y.numpy(), sp.basis.numpy()
    Dn, BDn, mVn, xo, yo = (
        D.numpy(),
        BD.numpy(),
        mV.numpy(),
        sp.X_offset.numpy(),
        sp.y_offset.numpy(),
    )
    swn = None if sw is None else sw.numpy()
    na, k = Dn.shape[1], yn.shape[1]

    def block(i: int) -> Any:
        Xb = Xn[i : i + LOO_BLOCK_ROWS]
        P = Xb @ V - mVn if sp.center_in_gemm else (Xb - xo) @ V
        lev = (P * P) @ Dn  # (r, n_alphas)
        if swn is None:
            keep = (1.0 - share) - lev  # 1 - 1/W - P^2 D
        else:
            lev += share  # the intercept's 1/W
            keep = 1.0 - lev * swn[i : i + LOO_BLOCK_ROWS, None]
        yc = yn[i : i + LOO_BLOCK_ROWS] - yo
        e = (yc if k == 1 else np.tile(yc, (1, na))) - P @ BDn
        e = e.reshape(-1, na, k)
        e /= keep[:, :, None]
        return per_block(i, torch.from_numpy(e))

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


def _loo_fit(
    est: RidgeCV,
    X: torch.Tensor,
    y: torch.Tensor,
    sw: torch.Tensor | None,
    alphas_np: np.ndarray,
    y_1d: bool,
    peaks: torch.Tensor | None = None,
) -> RidgeCVFit:
    """Efficient exact leave-one-out for every alpha, then the choice of alpha."""
    n, k = X.shape[0], y.shape[1]
    if n < 2:
        raise ValueError(f"RidgeCV(cv=None) needs at least 2 samples, got {n} sample.")
    fi, scoring, per_target = bool(est.fit_intercept), est.scoring, bool(est.alpha_per_target)
    alphas = torch.as_tensor(alphas_np, dtype=X.dtype, device=X.device)
    sp = _spectrum(X, y, sw, fi, est.gcv_mode, peaks)
    W = float(n if sw is None else sw.sum())
    c = _score_scale(y, sw, scoring)
    c0 = 1.0 if scoring == "r2" else 0.0
    sq_sum = y.new_zeros(alphas.shape[0], k)  # sum of w_i e_i^2 per alpha, target
    # per-row w_i e_i^2 (mean over targets) and, where the score is not proportional to
    # it, the per-row score terms: standard errors for mse_se_ and the 1se rule
    sq_rows = _Running()
    term_rows = _Running() if per_target or scoring == "r2" else None
    store = est.store_cv_results
    results = y.new_empty(n, k, alphas.shape[0]) if store else None

    def per_block(i: int, e: torch.Tensor) -> tuple[torch.Tensor, Any, Any]:
        """A block's share: sum of w e^2, and the per-row statistics (order-free parts)."""
        sq = e.square()
        if sw is not None:
            sq *= sw[i : i + e.shape[0], None, None]
        terms = None
        if term_rows is not None:
            u = torch.nan_to_num(c * sq, nan=0.0)  # r2 of a constant target: inf * 0
            terms = _Running.stats(u if per_target else u.mean(2))
        if results is not None:  # disjoint rows: safe from the worker threads
            out = sq if scoring is None else y[i : i + e.shape[0], None, :] - e
            results[i : i + e.shape[0]] = out.permute(0, 2, 1)
        return sq.sum(0), _Running.stats(sq[:, :, 0] if k == 1 else sq.mean(2)), terms

    # merged in row order: the result does not depend on the threads' timing
    for part, sq_stats, terms in _loo_blocks(X, y, sw, sp, alphas, fi, W, per_block):
        sq_sum += part
        sq_rows.add(*sq_stats)
        if term_rows is not None:
            term_rows.add(*terms)
    se_sq = sq_rows.se()
    score_se = n * (term_rows.se() if term_rows is not None else float(c[0]) * se_sq)
    score = c0 - c * sq_sum
    if scoring == "r2":  # constant target: scikit-learn's r2_score gives 1 (perfect) or 0
        const = torch.isinf(c)
        score[:, const] = (sq_sum[:, const] == 0).to(score.dtype)
    score_mean = score if per_target else score.mean(1)
    cv = None
    if results is not None:
        cv = results.cpu().numpy()
        cv = cv[:, 0, :] if y_1d else cv
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


def _fold_scores(states: Any, alphas: torch.Tensor, scoring: Any) -> tuple[np.ndarray, np.ndarray]:
    """Held-out score and weighted MSE (averaged over targets) per alpha and fold."""
    K = states.n_folds
    scores, mses = np.empty((alphas.shape[0], K)), np.empty((alphas.shape[0], K))
    for f in range(K):
        tr = states.train(f)
        coefs = _ridge_path(tr.G, tr.Xty, alphas)  # (n_alphas, p, k)
        b = tr.y_offset - torch.einsum("p,apk->ak", tr.X_offset, coefs)
        te = states.test(f)
        mse = states.heldout_mse(f, coefs, b)  # (n_alphas, k)
        mses[:, f] = mse.mean(1)
        if scoring == "neg_mean_squared_error":
            scores[:, f] = -mse.mean(1)
            continue
        if states.fold[f].rows < 2:
            raise ValueError(
                f"R^2 is not defined on held-out fold {f}, which has fewer than 2 rows: use "
                "scoring='neg_mean_squared_error' or fewer folds."
            )
        sst = (te.yty / te.weight_sum).numpy()  # (k,)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(sst > 0, 1.0 - mse / sst, (mse == 0).astype(float))
        scores[:, f] = r2.mean(1)  # scikit-learn's r2_score: uniform average over targets
    return scores, mses


class RidgeCV(_LinearBase):
    """Ridge regression with the penalty chosen by cross-validation (scikit-learn's RidgeCV).

    ``cv=None`` runs exact leave-one-out for every alpha from one eigendecomposition of the
    centred weighted Gram (scikit-learn's "GCV mode", the same ``alpha_``, ``best_score_``
    and ``cv_results_``); in memory it reads the rows twice: once for ``X'WX`` and once for
    each row's leverage. ``cv=K`` (hash folds of the row index seeded by ``random_state``),
    a scikit-learn splitter or an iterable of ``(train, test)`` index pairs run K-fold CV
    from per-fold moments: one pass, one eigendecomposition per fold, every alpha in
    ``O(p^2)``; it also streams (:func:`regtorch.linear.cv.stream_fit_cv`).

    Parameters
    ----------
    alphas : array-like of float
        Penalties to try (``||y - Xw||^2_W + alpha ||w||^2``); > 0 for leave-one-out,
        >= 0 for K-fold.
    fit_intercept : bool
    scoring : {None, "neg_mean_squared_error", "r2"}
        None is scikit-learn's default: the negative mean of ``w_i e_i^2`` over the rows for
        leave-one-out, the held-out R^2 (averaged over folds) for K-fold. Held-out scores
        are weighted by ``sample_weight`` (scikit-learn's K-fold scores are unweighted
        unless metadata routing requests the weights).
    cv : None, int, splitter or iterable of (train, test)
        None: leave-one-out. An int K: K folds from the seeded hash of the row index.
    gcv_mode : {None, "auto", "eigen", "svd"}
        Leave-one-out decomposition: eigendecomposition of the smaller Gram (default) or
        the SVD of the centred weighted design.
    store_cv_results : bool
        Keep ``cv_results_`` (leave-one-out only): each row's squared error per alpha
        (``scoring=None``) or its leave-one-out prediction.
    alpha_per_target : bool
        Choose alpha per target (leave-one-out only).
    selection_rule : {"min", "1se"}
        "min": the best mean CV score. "1se": the largest alpha whose mean score is within
        one standard error of the best (the SE of the best alpha's fold scores, std with
        ddof=1 / sqrt(K)); with ``cv=None``, of the n per-row leave-one-out contributions
        (leave-one-out as n folds of one row).
    random_state : int or None
        Seed of the hash folds for an int ``cv`` (None: 0).
    device : str
        Where the leave-one-out pass runs ("cpu", "cuda", "auto"); K-fold runs on the CPU.

    Attributes
    ----------
    alpha_ : float or ndarray of shape (n_targets,)
    best_score_ : float or ndarray
    alphas_ : ndarray of shape (n_alphas,)
    score_path_ : ndarray of shape (n_alphas,) or (n_alphas, n_targets)
        Mean CV score per alpha (what ``alpha_`` maximises).
    mse_path_ : ndarray of shape (n_alphas, n_folds)
        Held-out weighted MSE per fold (averaged over targets); leave-one-out:
        ``(n_alphas, 1)``.
    mse_se_ : ndarray of shape (n_alphas,)
        Its standard error.
    cv_folds_ : int
        K, or n_samples for leave-one-out.
    coef_path_ : ndarray of shape (n_alphas, n_features) or (n_alphas, n_targets, n_features)
        Coefficients on all rows at every alpha.
    cv_results_ : ndarray of shape (n_samples, n_alphas) or (n_samples, n_targets, n_alphas)
    coef_, intercept_

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(50, 3)); y = X @ [1.0, 2.0, 0.0] + rng.normal(size=50)
    >>> RidgeCV(alphas=[0.1, 1.0, 10.0]).fit(X, y).alpha_
    1.0
    """

    def __init__(
        self,
        alphas: Any = (0.1, 1.0, 10.0),
        *,
        fit_intercept: bool = True,
        scoring: str | None = None,
        cv: Any = None,
        gcv_mode: str | None = None,
        store_cv_results: bool = False,
        alpha_per_target: bool = False,
        selection_rule: str = "min",
        random_state: int | None = 0,
        device: str = "cpu",
    ) -> None:
        self.alphas = alphas
        self.fit_intercept = fit_intercept
        self.scoring = scoring
        self.cv = cv
        self.gcv_mode = gcv_mode
        self.store_cv_results = store_cv_results
        self.alpha_per_target = alpha_per_target
        self.selection_rule = selection_rule
        self.random_state = random_state
        self.device = device

    def _check_params(self) -> None:
        for flag in ("fit_intercept", "store_cv_results", "alpha_per_target"):
            check_param(flag, getattr(self, flag), kind=bool, options=(True, False))
        if callable(self.scoring) or not isinstance(self.scoring, (str, type(None))):
            raise ValueError(
                f"RidgeCV supports scoring None, 'neg_mean_squared_error' or 'r2'; got "
                f"{self.scoring!r} (scorer objects and callables are not supported)."
            )
        check_param("scoring", self.scoring, kind=str, options=SCORINGS)
        check_param("gcv_mode", self.gcv_mode, kind=str, options=GCV_MODES)
        check_param("selection_rule", self.selection_rule, kind=str, options=SELECTION_RULES)
        if self.cv is not None and self.store_cv_results:
            raise ValueError("cv!=None and store_cv_results=True are incompatible")
        if self.cv is not None and self.alpha_per_target:
            raise ValueError("cv!=None and alpha_per_target=True are incompatible")
        self._alpha_values()

    def _alpha_values(self) -> np.ndarray:
        """``alphas`` as a checked 1-D float array (> 0 for leave-one-out, >= 0 otherwise)."""
        raw = self.alphas
        if isinstance(raw, (str, bytes)) or isinstance(raw, bool):
            raise ValueError(f"alphas must be a number or an array of numbers; got {raw!r}.")
        try:
            a = np.atleast_1d(np.asarray(raw, dtype=np.float64))
        except (TypeError, ValueError):
            raise ValueError(
                f"alphas must be a number or an array of numbers; got {raw!r}."
            ) from None
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"alphas must be a non-empty 1-D array; got shape {a.shape}.")
        strict = self.cv is None
        bad = ~np.isfinite(a) | ((a <= 0) if strict else (a < 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            need = "> 0 for leave-one-out (cv=None)" if strict else ">= 0"
            raise ValueError(f"alphas[{i}] == {float(a[i])!r}, must be finite and {need}.")
        return a

    def fit(self, X: Any, y: Any, sample_weight: Any | None = None) -> RidgeCV:
        """Fit the model, choosing alpha by cross-validation; returns ``self``."""
        self._check_params()
        alphas = self._alpha_values()
        device = self.device if self.cv is None else "cpu"
        Xt, yt, sw, y_1d, peaks = validate_fit_data(self, X, y, sample_weight, device=device)
        if self.cv is None:
            # one torch thread beside numpy's BLAS pool on the CPU: the pass's GEMMs run in
            # numpy, and two pools of spinning threads on the same cores slow each other
            with _num_threads(1 if Xt.device.type == "cpu" else None):
                fit = _loo_fit(self, Xt, yt, sw, alphas, y_1d, peaks)
        else:
            from regtorch.linear.folds import fold_states_in_memory

            with _num_threads(1):  # as in LassoCV: numpy's BLAS pass, then small torch ops
                states = fold_states_in_memory(
                    Xt,
                    yt,
                    sw,
                    self.cv,
                    self.random_state,
                    fit_intercept=bool(self.fit_intercept),
                    peaks=peaks,
                )
                fit = self._kfold(states, alphas, y_1d)
        self._set_fitted(fit, y_1d)
        return self

    def _stream_n_folds(self) -> int:
        """Folds of a streamed fit (``stream_fit_cv``): an int ``cv``; leave-one-out is refused."""
        if self.cv is None:
            raise ValueError(STREAMED_LOO)
        if isinstance(self.cv, bool) or not isinstance(self.cv, numbers.Integral):
            raise ValueError(
                "A streamed RidgeCV takes hash folds of the row index: cv must be an int >= 2, "
                f"got {type(self.cv).__name__}."
            )
        return int(self.cv)

    def _fit_folds(self, states: Any, feature_names: Sequence[str] | None) -> None:
        """Fit from fold statistics (streamed fits call this); y is 1-D for one target."""
        if self.cv is None:
            raise ValueError(STREAMED_LOO)
        self._check_params()
        y_1d = states.n_targets == 1
        self._set_fitted(self._kfold(states, self._alpha_values(), y_1d), y_1d, feature_names)

    def _kfold(self, states: Any, alphas_np: np.ndarray, y_1d: bool) -> RidgeCVFit:
        """Choose alpha from the folds' held-out scores, then refit on every row."""
        alphas = torch.as_tensor(alphas_np, dtype=torch.float64)
        scores, mses = _fold_scores(states, alphas, self.scoring)
        K = states.n_folds
        se = scores.std(1, ddof=1) / np.sqrt(K)
        mse_se = mses.std(1, ddof=1) / np.sqrt(K)
        full = states.full()
        return self._select(
            _ridge_path(full.G, full.Xty, alphas),
            full.y_offset,
            full.X_offset,
            alphas_np,
            scores.mean(1),
            se,
            mses,
            mse_se,
            K,
            y_1d,
            None,
        )

    def _select(
        self,
        coefs: torch.Tensor,
        y_offset: torch.Tensor,
        X_offset: torch.Tensor,
        alphas: np.ndarray,
        score: np.ndarray,
        score_se: np.ndarray,
        mse_path: np.ndarray,
        mse_se: np.ndarray,
        n_folds: int,
        y_1d: bool,
        cv_results: np.ndarray | None,
    ) -> RidgeCVFit:
        """The chosen alpha(s) (by ``selection_rule``) and their coefficients on all rows."""
        k = coefs.shape[2]
        per_target = score.ndim == 2
        cols = score if per_target else score[:, None]
        ses = score_se if per_target else score_se[:, None]
        idx = [
            _choose(cols[:, j], ses[:, j], alphas, self.selection_rule)
            for j in range(cols.shape[1])
        ]
        pick = idx * k if not per_target else idx
        coef = torch.stack([coefs[pick[j], :, j] for j in range(k)], 1)  # (p, k)
        b = y_offset - X_offset @ coef if self.fit_intercept else torch.zeros_like(y_offset)
        best = np.array([cols[i, j] for j, i in enumerate(idx)])
        if per_target and k > 1:
            alpha: float | np.ndarray = alphas[idx].astype(np.float64)
            best_score: float | np.ndarray = best
        else:
            alpha = float(alphas[idx[0]])
            # scikit-learn keeps a 1-element array for a 2-D single target per target
            best_score = best if per_target and not y_1d else float(best[0])
        path = coefs.mT.cpu().numpy()  # (n_alphas, k, p), as coef_ per alpha
        return RidgeCVFit(
            coef,
            b,
            alpha,
            best_score,
            alphas.copy(),
            mse_path,
            mse_se,
            score,
            n_folds,
            cv_results,
            path[:, 0] if y_1d else path,
        )

    def _set_fitted(
        self, fit: RidgeCVFit, y_1d: bool, feature_names: Sequence[str] | None = None
    ) -> None:
        """Write the fitted state (every fit, in memory or streamed, and io.load end here)."""
        self._store_coef(fit.coef, fit.intercept, y_1d, feature_names)
        self.alpha_ = fit.alpha
        self.best_score_ = fit.best_score
        self.alphas_ = np.asarray(fit.alphas, dtype=np.float64)
        self.mse_path_ = np.asarray(fit.mse_path, dtype=np.float64)
        self.mse_se_ = np.asarray(fit.mse_se, dtype=np.float64)
        self.score_path_ = np.asarray(fit.score_path, dtype=np.float64)
        self.cv_folds_ = int(fit.n_folds)
        if fit.coef_path is None:
            self.__dict__.pop("coef_path_", None)
        else:
            self.coef_path_ = np.asarray(fit.coef_path, dtype=np.float64)
        if fit.cv_results is None:
            self.__dict__.pop("cv_results_", None)
        else:
            self.cv_results_ = fit.cv_results


def _choose(score: np.ndarray, se: np.ndarray, alphas: np.ndarray, rule: str) -> int:
    """Index of the chosen alpha: the first best score, or the largest alpha within 1 SE."""
    if np.isnan(score).all():
        raise ValueError("Every cross-validation score is NaN; no alpha can be chosen.")
    best = int(np.nanargmax(score))
    if rule == "min":
        return best
    ok = np.flatnonzero(score >= score[best] - np.nan_to_num(se[best]))
    return int(ok[np.argmax(alphas[ok])])
