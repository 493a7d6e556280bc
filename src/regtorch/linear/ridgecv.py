"""RidgeCV: ridge regression with its penalty chosen by leave-one-out or K-fold CV.

Leave-one-out (``cv=None``, scikit-learn's "GCV mode", which is exact leave-one-out) takes
two passes over the rows in memory (:mod:`regtorch.linear.loo`). K-fold CV works from per-fold moments (:mod:`regtorch.linear.folds`): one
eigendecomposition per training set, then every alpha in O(p^2), and the held-out errors
exactly from the held-out fold's moments; it streams as well.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from regtorch._base import check_param, validate_fit_data
from regtorch._threads import torch_threads
from regtorch.linear.cv import MAX_ALPHAS
from regtorch.linear.estimators import _LinearBase
from regtorch.linear.loo import feature_names, loo_fit, ridge_path

__all__ = ["RidgeCV", "RidgeCVFit"]

SCORINGS = (None, "neg_mean_squared_error", "r2")
SELECTION_RULES = ("min", "1se")
GCV_MODES = (None, "auto", "eigen", "svd")
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


def _fold_scores(states: Any, alphas: torch.Tensor, scoring: Any) -> tuple[np.ndarray, np.ndarray]:
    """Held-out score and weighted MSE (averaged over targets) per alpha and fold."""
    K = states.n_folds
    scores, mses = np.empty((alphas.shape[0], K)), np.empty((alphas.shape[0], K))
    for f in range(K):
        tr = states.train(f)
        coefs = ridge_path(tr.G, tr.Xty, alphas)  # (n_alphas, p, k)
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
        if a.ndim != 1 or a.size == 0 or a.size > MAX_ALPHAS:
            raise ValueError(
                f"alphas must be a 1-D array of 1 to {MAX_ALPHAS} values; got shape {a.shape}."
            )
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
            with torch_threads(1 if Xt.device.type == "cpu" else None):
                fit = loo_fit(self, Xt, yt, sw, alphas, y_1d, peaks)
        else:
            from regtorch.linear.folds import fold_states_in_memory

            with torch_threads(1):  # as in LassoCV: numpy's BLAS pass, then small torch ops
                states = fold_states_in_memory(
                    Xt,
                    yt,
                    sw,
                    self.cv,
                    self.random_state,
                    fit_intercept=bool(self.fit_intercept),
                    feature_names=feature_names(self),  # an overflowing column is named
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
            ridge_path(full.G, full.Xty, alphas),
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
