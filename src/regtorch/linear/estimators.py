"""Linear estimators: LinearRegression, Ridge, Lasso, ElasticNet (scikit-learn API)."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
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
    fingerprint_of_moments,
    validate_fit_data,
    validate_predict_input,
)
from regtorch.linear.gradient import _check_not_diverged as _check_not_diverged  # moved there
from regtorch.linear.gradient import _gradient_fit
from regtorch.linear.inference import _info_dict
from regtorch.linear.lstsq import solve_least_squares
from regtorch.linear.solvers import GramState, elastic_net, enet_duality_gap, gram_state

__all__ = ["ElasticNet", "LinearFit", "Lasso", "LinearRegression", "Ridge"]

CLOSED_FORMS = ("auto", "qr", "svd", "cholesky")
GRADIENT_SOLVERS = ("lbfgs", "adam")


class _LinearBase(RegressorMixin, BaseEstimator):
    """Stores coefficients like scikit-learn and predicts ``X @ coef_.T + intercept_``."""

    fit_intercept: bool
    device: str

    def _store_coef(
        self,
        coef: torch.Tensor,
        intercept: torch.Tensor,
        y_1d: bool,
        feature_names: Sequence[str] | None,
    ) -> None:
        """``coef_`` and ``intercept_`` from ``coef (p, k)`` and ``intercept (k,)``.

        Called only by the classes' ``_set_fitted``. ``feature_names`` (a streamed fit's
        columns) also sets ``n_features_in_`` and ``feature_names_in_``; in memory the input
        validation has set them.
        """
        # coef: (p, k) -> scikit-learn's (k, p), or (p,) for 1-D y
        W = coef.mT.detach().cpu().to(torch.float64).numpy()
        bn = intercept.detach().cpu().to(torch.float64).numpy()
        self.coef_ = W[0] if y_1d else W
        if not self.fit_intercept:
            self.intercept_: float | np.ndarray = 0.0  # scikit-learn's convention (a float)
        else:
            self.intercept_ = np.float64(bn[0]) if y_1d else bn  # as scikit-learn
        if feature_names is not None:
            self.n_features_in_ = len(feature_names)
            self.feature_names_in_ = np.asarray(list(feature_names), dtype=object)

    def predict(self, X: Any) -> np.ndarray:
        """Predict targets for ``X``; float64, shape ``(n_samples,)`` or ``(n, n_targets)``."""
        check_is_fitted(self, "coef_")
        Xv = validate_predict_input(self, X)
        return Xv @ np.asarray(self.coef_).T + self.intercept_

    def coef_frame(self) -> Any:
        """The coefficients as a pandas DataFrame, one row per term.

        Returns
        -------
        pandas.DataFrame
            Index ``["intercept", *feature names]`` (``x0, x1, ...`` for a model fitted
            without names; no intercept row when ``fit_intercept=False``); one column
            ``"coef"`` for a 1-D target, else one per target (``"y0", "y1", ...``).

        Examples
        --------
        >>> import numpy as np
        >>> X = np.array([[0.0], [1.0], [2.0]]); y = np.array([1.0, 3.0, 5.0])
        >>> LinearRegression().fit(X, y).coef_frame()["coef"].round(6).tolist()
        [1.0, 2.0]
        """
        from regtorch.linear.inference import coef_frame

        check_is_fitted(self, "coef_")
        return coef_frame(self)

    def to_torch(self) -> torch.nn.Module:
        """A plain ``torch.nn.Module`` mapping raw features to predictions (see
        :func:`regtorch.export.to_torch`)."""
        from regtorch.export import to_torch

        return to_torch(self)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # 2-D y fits one model per target
        return tags


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
        Xt, yt, sw, y_1d, peaks = validate_fit_data(self, X, y, sample_weight, device=self.device)
        alpha = float(self._alpha)
        gram = None  # the accumulated moments, when the solver took them
        if self.solver in GRADIENT_SOLVERS:
            coef, xo, yo, hist = _gradient_fit(self, Xt, yt, sw, alpha)
            b = yo - xo @ coef if self.fit_intercept else torch.zeros_like(yo)
            info = _fit_info(Xt, yt, sw, coef, xo, yo, self.fit_intercept, None)
            fit = LinearFit(coef, b, Xt.shape[1], self.solver, info, n_iter=len(hist))
            fit.history = hist
        else:
            sol, xo, yo = solve_least_squares(
                Xt,
                yt,
                alpha,
                self.solver,
                sample_weight=sw,
                fit_intercept=self.fit_intercept,
                peaks=peaks,
            )
            gram = sol.state
            b = yo - xo @ sol.coef if sol.intercept is None else sol.intercept
            b = b if self.fit_intercept else torch.zeros_like(b)
            if sol.sst is not None:
                info = _extended_fit_info(Xt, yt, sw, xo, sol.coef, b, sol.sst)
            else:
                info = _fit_info(Xt, yt, sw, sol.coef, xo, yo, self.fit_intercept, sol.state)
            fit = LinearFit(sol.coef, b, sol.rank, sol.solver, info, sol.R, sol.bse_unit)
        moments = None if gram is None else gram.moments
        fit.info["fingerprint"] = (
            data_fingerprint(Xt, yt, sw, peaks)
            if moments is None
            else fingerprint_of_moments(moments, peaks, Xt.shape[0], Xt.shape[1])
        )
        self._set_fitted(fit, y_1d)
        return self

    def _set_fitted(
        self, fit: LinearFit, y_1d: bool, feature_names: Sequence[str] | None = None
    ) -> None:
        """Write the fitted state (every fit, in memory or streamed, ends here)."""
        self._store_coef(fit.coef, fit.intercept, y_1d, feature_names)
        self.rank_ = fit.rank
        self.solver_ = fit.solver
        self.n_iter_ = fit.n_iter
        self._R = fit.R
        self._bse_unit = fit.bse_unit
        self._fit_info = fit.info
        if fit.history is None:
            self.__dict__.pop("history_", None)  # gradient-only attribute
        else:
            self.history_ = fit.history

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


@dataclass
class LinearFit:
    """A least-squares fit as its estimator keeps it (data units): see ``_set_fitted``."""

    coef: torch.Tensor  # (p, k)
    intercept: torch.Tensor  # (k,), zeros without an intercept
    rank: int
    solver: str  # what computed the coefficients, naming any fallback
    info: dict[str, Any]  # sums the statistics need: see _info_dict
    R: torch.Tensor | None = None  # (p, p), R'R = Xc' W Xc, when full rank
    bse_unit: np.ndarray | None = None  # sqrt diag of the unscaled covariance (extended)
    n_iter: int = 1  # one direct solve
    history: Any = None  # gradient solvers' History


def _extended_fit_info(
    X: torch.Tensor,
    y: torch.Tensor,
    sw: torch.Tensor | None,
    xo: torch.Tensor,
    coef: torch.Tensor,
    intercept: torch.Tensor,
    sst: np.ndarray,
) -> dict[str, Any]:
    """Fit statistics with the residuals of the reported coefficients in double-double."""
    from regtorch.linear.extended import extended_sse

    Xn = X.detach().cpu().numpy()
    yn = y.detach().cpu().numpy()
    wn = None if sw is None else sw.detach().cpu().numpy().reshape(-1)
    c = coef.detach().cpu().to(torch.float64).numpy()  # (p, k)
    b = intercept.detach().cpu().to(torch.float64).numpy()
    sse = extended_sse(Xn, yn, wn, c, b)
    w = None if sw is None else sw.reshape(-1, 1).to(X.dtype)
    return _info_dict(X, w, torch.as_tensor(sse), torch.as_tensor(sst), xo)


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
        Xt, yt, sw, y_1d, peaks = validate_fit_data(self, X, y, sample_weight, device=self.device)
        check_gram_range(self, Xt, yt, peaks)
        self._fit_gram(gram_state(Xt, yt, sw, bool(self.fit_intercept), top=peaks), y_1d)
        return self

    def _fit_gram(
        self, st: GramState, y_1d: bool, feature_names: Sequence[str] | None = None
    ) -> None:
        """Fit from the centred, weighted Gram (in memory or streamed) and store the result.

        Divided by the weight total: scikit-learn's objective, whose weights are rescaled to
        sum to ``n_samples`` (``1 / (2 n)`` times the weighted sse).
        """
        p, k = st.Xty.shape
        G, Xty = st.G / st.weight_sum, st.Xty / st.weight_sum
        l1 = float(self.alpha * self.l1_ratio)
        l2 = float(self.alpha * (1.0 - self.l1_ratio))
        coef = G.new_zeros(p, k)
        prev = getattr(self, "coef_", None) if self.warm_start else None
        n_iters, gaps = [], []
        not_converged: list[tuple[int, float, float]] = []
        for j in range(k):
            init = None
            if prev is not None and np.atleast_2d(prev).shape == (k, p):
                init = torch.as_tensor(np.atleast_2d(prev)[j], dtype=G.dtype, device=G.device)
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
            yty = float(st.yty[j]) / st.weight_sum
            gap = enet_duality_gap(G, Xty[:, j], yty, l1, l2, wj, bool(self.positive))
            gaps.append(gap)
            # scikit-learn's test: duality gap <= tol * ||y||^2 / n, no absolute floor
            if not gap <= float(self.tol) * yty:
                not_converged.append((j, gap, float(self.tol) * yty))
        if not_converged:
            self._warn_not_converged(not_converged, k)
        b = st.y_offset - st.X_offset @ coef
        self._set_fitted(coef, b, y_1d, n_iters, gaps, feature_names)

    def _warn_not_converged(self, not_converged: list[tuple[int, float, float]], k: int) -> None:
        j, gap, limit = max(not_converged, key=lambda t: t[1] - t[2])
        warnings.warn(
            f"Objective did not converge after {self.max_iter} iterations: duality gap "
            f"{gap:.3g} > tol * ||y||^2 / n_samples = {limit:.3g}"
            f"{f' (target {j})' if k > 1 else ''}. Increase max_iter or tol, or scale "
            "the features.",
            ConvergenceWarning,
            stacklevel=4,
        )

    def _set_fitted(
        self,
        coef: torch.Tensor,
        intercept: torch.Tensor,
        y_1d: bool,
        n_iters: list[int],
        gaps: list[float],
        feature_names: Sequence[str] | None = None,
    ) -> None:
        """Write the fitted state (every fit, in memory or streamed, ends here)."""
        self.n_iter_ = n_iters[0] if y_1d else np.array(n_iters)
        self.dual_gap_ = gaps[0] if y_1d else np.array(gaps)
        self._store_coef(coef, intercept, y_1d, feature_names)

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
