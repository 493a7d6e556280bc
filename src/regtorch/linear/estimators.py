"""Linear estimators: LinearRegression, Ridge, Lasso, ElasticNet (scikit-learn API)."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from regtorch._base import (
    check_gram_range,
    check_param,
    data_fingerprint,
    validate_fit_input,
    validate_predict_input,
)
from regtorch.linear.solvers import (
    GramState,
    elastic_net,
    enet_duality_gap,
    gram_state,
    solve_least_squares,
)
from regtorch.nn.loop import TrainingDivergedError

__all__ = ["ElasticNet", "Lasso", "LinearRegression", "Ridge"]

CLOSED_FORMS = ("auto", "qr", "svd", "cholesky")
GRADIENT_SOLVERS = ("lbfgs", "adam")


class _LinearBase(RegressorMixin, BaseEstimator):
    """Stores coefficients like scikit-learn and predicts ``X @ coef_.T + intercept_``."""

    fit_intercept: bool
    device: str

    def _set_coef(
        self,
        coef: torch.Tensor,
        xo: torch.Tensor,
        yo: torch.Tensor,
        y_1d: bool,
        intercept: torch.Tensor | None = None,
    ) -> None:
        # coef: (p, k) -> scikit-learn's (k, p), or (p,) for 1-D y; ``intercept`` (k,) when
        # the solver computed it more accurately than yo - xo @ coef
        W = coef.mT.detach().cpu().to(torch.float64).numpy()
        b = (yo - xo @ coef) if intercept is None else intercept
        bn = b.detach().cpu().to(torch.float64).numpy()
        self.coef_ = W[0] if y_1d else W
        if not self.fit_intercept:
            self.intercept_: float | np.ndarray = 0.0  # scikit-learn's convention (a float)
        else:
            self.intercept_ = np.float64(bn[0]) if y_1d else bn  # as scikit-learn

    def predict(self, X: Any) -> np.ndarray:
        """Predict targets for ``X``; float64, shape ``(n_samples,)`` or ``(n, n_targets)``."""
        check_is_fitted(self, "coef_")
        Xv = validate_predict_input(self, X)
        return Xv @ np.asarray(self.coef_).T + self.intercept_

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # 2-D y fits one model per target
        return tags


def _gradient_fit(
    est: Any, X: torch.Tensor, y: torch.Tensor, sw: torch.Tensor | None, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train a linear module (the tutorial's way) on the standardised, centred design."""
    from regtorch.linear.solvers import center_and_weight
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
        from regtorch.linear.solvers import RankWarning

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
    est.history_ = hist
    est.n_iter_ = len(hist)
    _check_not_diverged(module, Xs, ys, hist, solver, lr)
    coef = (module.linear.weight.detach().mT * sy.unsqueeze(0)) / sx.unsqueeze(1)
    coef[const] = 0.0  # their weights saw no gradient and keep their random start
    return coef, c.X_offset, c.y_offset


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


class LinearRegression(_LinearBase):
    """Ordinary (or weighted) least squares, exact by default, with regression statistics.

    Parameters
    ----------
    fit_intercept : bool
        Fit an intercept (the data are centred first).
    solver : {"auto", "qr", "svd", "cholesky", "lbfgs", "adam"}
        Closed forms: "auto" solves problems up to ``n * p^2 = 1e7`` (p <= 128) from the
        exactly centred Gram in double-double arithmetic ("extended": correct to float64 on
        any CPU and BLAS; columns from 1e-300 to 1e300 are scaled exactly), larger ones by
        Cholesky on the centred Gram with iterative refinement, falling back to QR when
        ill-conditioned and to SVD (minimum norm) when rank deficient. On problems of the
        extended size, "qr", "svd" and "cholesky" refine their float64 answer with the
        extended-precision residual and take their statistics from the extended path; where
        their float64 answer cannot be trusted they fall back with a warning, and
        ``solver_`` says so. "lbfgs"/"adam" train a linear module by gradient descent
        (``history_`` is kept); a diverging run raises ``TrainingDivergedError``.
    max_iter : int or None
        Epochs for the gradient solvers (default 100 for L-BFGS, 3000 for Adam).
    tol : float
        Gradient solvers stop when the training loss improves by less than ``tol``
        (relative) over an epoch.
    learning_rate : float or None
        Gradient solvers' learning rate (default 1.0 for L-BFGS, 0.05 for Adam).
    random_state : int or None
        Seed of the gradient solvers' initial weights.
    device : str
        "cpu" (default), "cuda", "mps" or "auto".

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,) or (n_targets, n_features)
    intercept_ : float or ndarray of shape (n_targets,)
    rank_ : int
    solver_ : str
        The closed form actually used, naming any fallback, e.g.
        ``"qr (fallback from cholesky: scaled Gram condition number 3.1e+16 > 1e+10)"``.
    n_iter_ : int
        Epochs run by a gradient solver; 1 for a closed form.
    history_ : regtorch.nn.loop.History
        Loss curves, gradient solvers only.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [1.0], [2.0]]); y = np.array([1.0, 3.0, 5.0])
    >>> LinearRegression().fit(X, y).coef_
    array([2.])
    """

    def __init__(
        self,
        *,
        fit_intercept: bool = True,
        solver: str = "auto",
        max_iter: int | None = None,
        tol: float = 1e-10,
        learning_rate: float | None = None,
        random_state: int | None = None,
        device: str = "cpu",
    ) -> None:
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.learning_rate = learning_rate
        self.random_state = random_state
        self.device = device

    _alpha: float = 0.0

    def _check_params(self) -> None:
        check_param("solver", self.solver, kind=str, options=CLOSED_FORMS + GRADIENT_SOLVERS)
        check_param("fit_intercept", self.fit_intercept, kind=bool, options=(True, False))
        check_param("tol", self.tol, kind=numbers.Real, low=0)
        if self.max_iter is not None:
            check_param("max_iter", self.max_iter, kind=numbers.Integral, low=1)
        if self.learning_rate is not None:
            check_param(
                "learning_rate", self.learning_rate, kind=numbers.Real, low=0, low_open=True
            )

    def fit(self, X: Any, y: Any, sample_weight: Any | None = None) -> LinearRegression:
        """Fit the model; returns ``self``."""
        self._check_params()
        Xt, yt, sw, y_1d = validate_fit_input(self, X, y, sample_weight, device=self.device)
        alpha = float(self._alpha)
        if self.solver in GRADIENT_SOLVERS:
            coef, xo, yo = _gradient_fit(self, Xt, yt, sw, alpha)
            self.rank_ = Xt.shape[1]
            self.solver_ = self.solver
            self._R = None
            self._bse_unit = None
            sol = None
        else:
            self.__dict__.pop("history_", None)  # gradient-only attribute
            sol, xo, yo = solve_least_squares(
                Xt, yt, alpha, self.solver, sample_weight=sw, fit_intercept=self.fit_intercept
            )
            coef = sol.coef
            self.rank_ = sol.rank
            self.solver_ = sol.solver
            self.n_iter_ = 1  # one direct solve
            self._R = sol.R
            self._bse_unit = sol.bse_unit
        self._set_coef(coef, xo, yo, y_1d, None if sol is None else sol.intercept)
        if sol is not None and sol.sst is not None:
            self._fit_info = self._extended_fit_info(Xt, yt, sw, xo, sol.sst)
        else:
            state = None if sol is None else sol.state
            self._fit_info = _fit_info(Xt, yt, sw, coef, xo, yo, self.fit_intercept, state)
        self._fit_info["fingerprint"] = data_fingerprint(Xt, yt, sw)
        return self

    def _extended_fit_info(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        sw: torch.Tensor | None,
        xo: torch.Tensor,
        sst: np.ndarray,
    ) -> dict[str, Any]:
        """Fit statistics with the residuals of the reported coefficients in double-double."""
        from regtorch.linear.solvers import extended_sse

        Xn = X.detach().cpu().numpy()
        yn = y.detach().cpu().numpy()
        wn = None if sw is None else sw.detach().cpu().numpy().reshape(-1)
        coef = np.atleast_2d(self.coef_).T  # (p, k)
        b = np.broadcast_to(np.asarray(self.intercept_, dtype=np.float64), (yn.shape[1],))
        sse = extended_sse(Xn, yn, wn, coef, np.array(b))
        w = None if sw is None else sw.reshape(-1, 1).to(X.dtype)
        return _info_dict(X, w, torch.as_tensor(sse), torch.as_tensor(sst), xo)

    def summary(
        self,
        level: float = 0.95,
        cov_type: str = "nonrobust",
        X: Any | None = None,
        y: Any | None = None,
        sample_weight: Any | None = None,
    ) -> Any:
        """Regression table: coefficients, standard errors, t, p, intervals and fit statistics.

        Parameters
        ----------
        level : float
            Confidence level of the intervals.
        cov_type : {"nonrobust", "HC0", "HC1", "HC2", "HC3"}
            Heteroskedasticity-robust types need the training data again (``X``, ``y``,
            ``sample_weight``); the model keeps only its triangular factor.

        Returns
        -------
        regtorch.linear.inference.RegressionSummary
        """
        from regtorch.linear.inference import summarize

        check_is_fitted(self, "coef_")
        return summarize(
            self, level=level, cov_type=cov_type, X=X, y=y, sample_weight=sample_weight
        )

    def predict_interval(self, X: Any, level: float = 0.95, kind: str = "confidence") -> np.ndarray:
        """Mean prediction with a confidence (mean) or prediction (new observation) interval.

        Returns
        -------
        ndarray of shape (n_samples, 3)
            Columns: prediction, lower bound, upper bound (single-target models).
        """
        from regtorch.linear.inference import predict_interval

        check_is_fitted(self, "coef_")
        return predict_interval(self, X, level=level, kind=kind)


def _fit_info(
    X: torch.Tensor,
    y: torch.Tensor,
    sw: torch.Tensor | None,
    coef: torch.Tensor,
    xo: torch.Tensor,
    yo: torch.Tensor,
    fit_intercept: bool,
    state: GramState | None,
    block_rows: int = 8192,
) -> dict[str, Any]:
    """Residual and total sums of squares the statistics need, in float64."""
    w = None if sw is None else sw.reshape(-1, 1).to(X.dtype)
    if state is not None:
        sst = state.yty
        # sse from the Gram; exact enough unless the fit is nearly perfect (cancellation)
        sse = sst - 2 * (coef * state.Xty).sum(0) + (coef * (state.G @ coef)).sum(0)
        if bool((sse > 1e-4 * sst).all()):
            return _info_dict(X, w, sse, sst, xo)
    sse = y.new_zeros(y.shape[1])
    for i in range(0, X.shape[0], block_rows):
        e = (y[i : i + block_rows] - yo) - (X[i : i + block_rows] - xo) @ coef
        if w is not None:
            e = e * w[i : i + block_rows].sqrt()
        sse += e.square().sum(0)
    ww = torch.ones_like(y[:, :1]) if w is None else w
    if fit_intercept:
        ym = (y * ww).sum(0) / ww.sum()
        sst = ((y - ym).square() * ww).sum(0)
    else:
        sst = (y.square() * ww).sum(0)
    return _info_dict(X, w, sse, sst, xo)


def _info_dict(
    X: torch.Tensor,
    w: torch.Tensor | None,
    sse: torch.Tensor,
    sst: torch.Tensor,
    xo: torch.Tensor,
) -> dict[str, Any]:
    n = int(X.shape[0])
    return {
        "n": n,
        "n_eff": n if w is None else int((w > 0).sum()),
        "sw_sum": float(n) if w is None else float(w.sum()),
        "sse": sse.cpu().numpy(),
        "sst": sst.cpu().numpy(),
        "log_w_sum": 0.0 if w is None else float(torch.log(w[w > 0]).sum()),
        "X_offset": xo.cpu().numpy(),
    }


class Ridge(LinearRegression):
    """Least squares with an L2 penalty: minimises ``||y - Xw||^2 + alpha ||w||^2``.

    Parameters are those of :class:`LinearRegression` plus ``alpha`` (>= 0).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [1.0], [2.0]]); y = np.array([1.0, 3.0, 5.0])
    >>> Ridge(alpha=0.0).fit(X, y).coef_
    array([2.])
    """

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        fit_intercept: bool = True,
        solver: str = "auto",
        max_iter: int | None = None,
        tol: float = 1e-10,
        learning_rate: float | None = None,
        random_state: int | None = None,
        device: str = "cpu",
    ) -> None:
        super().__init__(
            fit_intercept=fit_intercept,
            solver=solver,
            max_iter=max_iter,
            tol=tol,
            learning_rate=learning_rate,
            random_state=random_state,
            device=device,
        )
        self.alpha = alpha

    def _check_params(self) -> None:
        super()._check_params()
        check_param("alpha", self.alpha, kind=numbers.Real, low=0, finite=True)

    def fit(self, X: Any, y: Any, sample_weight: Any | None = None) -> Ridge:
        """Fit the model; returns ``self``."""
        check_param("alpha", self.alpha, kind=numbers.Real, low=0, finite=True)
        self._alpha = float(self.alpha)
        super().fit(X, y, sample_weight)
        return self

    def summary(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        raise NotImplementedError(
            "summary() is defined for ordinary and weighted least squares; use "
            "LinearRegression (Ridge's penalty biases the estimates, so t-tests do not apply)."
        )

    predict_interval = summary


class ElasticNet(_LinearBase):
    """Linear regression with combined L1 and L2 penalties (scikit-learn's objective).

    Minimises ``1/(2 n) ||y - Xw||^2 + alpha * l1_ratio * ||w||_1
    + 0.5 * alpha * (1 - l1_ratio) * ||w||^2``, by FISTA on the Gram matrix (torch, so it
    runs on CUDA too) followed by an exact solve on the active set.

    Parameters
    ----------
    alpha : float
        Penalty strength (>= 0).
    l1_ratio : float
        Mix between L1 (1.0) and L2 (0.0).
    fit_intercept : bool
    max_iter : int
        Maximum FISTA iterations per target.
    tol : float
        Relative coefficient change that ends the iterations; the fit counts as converged
        when its duality gap is at most ``tol * ||y||^2 / n_samples`` (scikit-learn's test,
        with no absolute floor), else a ``ConvergenceWarning`` is raised.
    positive : bool
        Constrain coefficients to be >= 0.
    warm_start : bool
        Start from the previous ``coef_``.
    device : str

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [1.0], [2.0]]); y = np.array([1.0, 3.0, 5.0])
    >>> ElasticNet(alpha=0.0).fit(X, y).coef_.round(6)
    array([2.])
    """

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        l1_ratio: float = 0.5,
        fit_intercept: bool = True,
        max_iter: int = 1000,
        tol: float = 1e-4,
        positive: bool = False,
        warm_start: bool = False,
        device: str = "cpu",
    ) -> None:
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.positive = positive
        self.warm_start = warm_start
        self.device = device

    def _check_params(self) -> None:
        check_param("alpha", self.alpha, kind=numbers.Real, low=0, finite=True)
        check_param("l1_ratio", self.l1_ratio, kind=numbers.Real, low=0, high=1, finite=True)
        check_param("max_iter", self.max_iter, kind=numbers.Integral, low=1)
        check_param("tol", self.tol, kind=numbers.Real, low=0)
        for flag in ("fit_intercept", "positive", "warm_start"):
            check_param(flag, getattr(self, flag), kind=bool, options=(True, False))

    def fit(self, X: Any, y: Any, sample_weight: Any | None = None) -> ElasticNet:
        """Fit the model; returns ``self``."""
        self._check_params()
        Xt, yt, sw, y_1d = validate_fit_input(self, X, y, sample_weight, device=self.device)
        check_gram_range(self, Xt, yt)
        n, p = Xt.shape
        k = yt.shape[1]
        if sw is not None:
            # scikit-learn rescales weights to sum to n_samples
            sw = sw * (n / sw.sum())
        st = gram_state(Xt, yt, sw, bool(self.fit_intercept))
        xo, yo = st.X_offset, st.y_offset
        G, Xty = st.G, st.Xty
        G, Xty = G / n, Xty / n
        l1 = float(self.alpha * self.l1_ratio)
        l2 = float(self.alpha * (1.0 - self.l1_ratio))
        coef = Xt.new_zeros(p, k)
        prev = getattr(self, "coef_", None) if self.warm_start else None
        n_iters, gaps = [], []
        not_converged: list[tuple[int, float, float]] = []
        for j in range(k):
            init = None
            if prev is not None and np.atleast_2d(prev).shape == (k, p):
                init = torch.as_tensor(np.atleast_2d(prev)[j], dtype=Xt.dtype, device=Xt.device)
            wj, it, _ = elastic_net(
                G,
                Xty[:, j],
                l1,
                l2,
                max_iter=int(self.max_iter),
                tol=float(self.tol),
                positive=bool(self.positive),
                coef_init=init,
            )
            coef[:, j] = wj
            n_iters.append(it)
            yty = float(st.yty[j]) / n
            gap = enet_duality_gap(G, Xty[:, j], yty, l1, l2, wj, bool(self.positive))
            gaps.append(gap)
            # scikit-learn's test: duality gap <= tol * ||y||^2 / n, no absolute floor
            if not gap <= float(self.tol) * yty:
                not_converged.append((j, gap, float(self.tol) * yty))
        if not_converged:
            j, gap, limit = max(not_converged, key=lambda t: t[1] - t[2])
            warnings.warn(
                f"Objective did not converge after {self.max_iter} iterations: duality gap "
                f"{gap:.3g} > tol * ||y||^2 / n_samples = {limit:.3g}"
                f"{f' (target {j})' if k > 1 else ''}. Increase max_iter or tol, or scale "
                "the features.",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.n_iter_ = n_iters[0] if y_1d else np.array(n_iters)
        self.dual_gap_ = gaps[0] if y_1d else np.array(gaps)
        self._set_coef(coef, xo, yo, y_1d)
        return self

    @property
    def sparse_coef_(self) -> Any:
        """``coef_`` as a SciPy sparse matrix."""
        from scipy import sparse

        return sparse.csr_matrix(np.atleast_2d(self.coef_))


class Lasso(ElasticNet):
    """Linear regression with an L1 penalty: ElasticNet with ``l1_ratio=1``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0], [1.0], [2.0]]); y = np.array([1.0, 3.0, 5.0])
    >>> Lasso(alpha=0.1).fit(X, y).coef_.round(4)
    array([1.85])
    """

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        fit_intercept: bool = True,
        max_iter: int = 1000,
        tol: float = 1e-4,
        positive: bool = False,
        warm_start: bool = False,
        device: str = "cpu",
    ) -> None:
        super().__init__(
            alpha=alpha,
            l1_ratio=1.0,
            fit_intercept=fit_intercept,
            max_iter=max_iter,
            tol=tol,
            positive=positive,
            warm_start=warm_start,
            device=device,
        )
