"""LassoCV and ElasticNetCV from per-fold sufficient statistics (in memory, streamed, distributed).

One pass builds a mergeable moment state per fold (:mod:`regtorch.linear.folds`); every
alpha of every fold is then solved on the training Gram with warm starts along the path
(:func:`regtorch.linear.path.gram_path`) and scored exactly from the held-out fold's
moments. No second pass over the data.
"""

from __future__ import annotations

import numbers
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning

from regtorch._base import check_gram_range, check_param, validate_fit_data
from regtorch._threads import torch_threads
from regtorch.linear.estimators import _LinearBase
from regtorch.linear.folds import (
    MAX_STREAMED_FOLDS,
    FoldStates,
    check_fold_sizes,
    cv_states,
    fold_states_in_memory,
)
from regtorch.linear.moments import BatchSource

__all__ = [
    "ElasticNetCV",
    "FoldStates",
    "LassoCV",
    "cv_states",
    "fold_states_in_memory",
    "stream_fit_cv",
]

SELECTION_RULES = ("min", "1se")


def choose(mse: np.ndarray, alphas: np.ndarray, rule: str = "min") -> tuple[int, int]:
    """Indices ``(l1_ratio, alpha)`` chosen from ``mse (n_l1, n_alphas, n_folds)``.

    ``"min"``: the smallest mean CV error (the first l1_ratio on ties, as scikit-learn).
    ``"1se"``: at the l1_ratio of the minimum, the largest alpha whose mean error is at most
    the minimum plus its standard error (std over folds, ddof=1, over ``sqrt(n_folds)``).
    """
    mean = mse.mean(axis=2)
    best = [int(np.argmin(m)) for m in mean]
    i = int(np.argmin([m[j] for m, j in zip(mean, best)]))
    j = best[i]
    if rule == "1se":
        se = standard_error(mse[i])
        ok = np.flatnonzero(mean[i] <= mean[i, j] + se[j])
        j = int(ok[np.argmax(alphas[i][ok])])
    return i, j


def standard_error(mse: np.ndarray) -> np.ndarray:
    """Standard error of the mean over the last axis (folds): ``std(ddof=1) / sqrt(K)``."""
    k = mse.shape[-1]
    return np.asarray(mse.std(axis=-1, ddof=1) / np.sqrt(k))


# alphas on a CV path at most (each fold keeps alphas x features coefficients)
MAX_ALPHAS = 10_000


class ElasticNetCV(_LinearBase):
    """Elastic net with the penalty chosen by K-fold cross-validation, from per-fold moments.

    scikit-learn's ``ElasticNetCV`` (1.9) parameters and attributes. The folds' statistics
    come from one pass over the data; each fold's path is solved exactly on its training
    Gram (merged from the other folds) and scored from the held-out fold's moments.

    Parameters
    ----------
    l1_ratio : float or list of float
        Mix between L1 (1.0) and L2 (0.0); with a list, the best is chosen too.
    eps : float
        ``alpha_min / alpha_max`` of the automatic grid.
    alphas : int or array-like
        Number of alphas on the automatic grid (from all training rows, per l1_ratio), or
        the alphas themselves (sorted decreasing).
    fit_intercept : bool
    precompute, copy_X, verbose, n_jobs, selection
        Accepted for compatibility; the fit always works on the Gram, exactly.
    max_iter : int
        Maximum iterations of the final refit's iterative solver.
    tol : float
        Duality-gap tolerance of the refit (scikit-learn's test).
    cv : int, splitter or iterable of (train, test), default None (5 folds)
        An int gives hash folds of the row index seeded by ``random_state`` (the engine's
        split rule: streamed, in-memory and distributed fits see the same folds). A
        splitter or index pairs give one fold per test set.
    positive : bool
    random_state : int or None
        Seed of the hash folds (None: 0).
    selection_rule : {"min", "1se"}
        ``"1se"``: the largest alpha whose mean CV error is within one standard error of
        the minimum (with a list of l1_ratios, at the l1_ratio of the minimum).

    Attributes
    ----------
    alpha_, l1_ratio_, alphas_, mse_path_, coef_, intercept_, n_iter_, dual_gap_
        As scikit-learn.
    mse_se_ : ndarray, shaped like ``mse_path_`` without its fold axis
        Standard error of the mean CV error per alpha.
    coef_path_ : ndarray (n_alphas, n_features)
        The path on all rows at ``l1_ratio_`` over its alphas.
    cv_folds_ : int

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> X, y = load_diabetes(return_X_y=True)
    >>> m = ElasticNetCV(l1_ratio=[0.5, 1.0], cv=5).fit(X, y)
    >>> m.mse_path_.shape
    (2, 100, 5)
    """

    def __init__(
        self,
        *,
        l1_ratio: float | Sequence[float] = 0.5,
        eps: float = 1e-3,
        alphas: int | Sequence[float] = 100,
        fit_intercept: bool = True,
        precompute: Any = "auto",
        max_iter: int = 1000,
        tol: float = 1e-4,
        cv: Any = None,
        copy_X: bool = True,
        verbose: Any = 0,
        n_jobs: int | None = None,
        positive: bool = False,
        random_state: Any = None,
        selection: str = "cyclic",
        selection_rule: str = "min",
    ) -> None:
        self.l1_ratio = l1_ratio
        self.eps = eps
        self.alphas = alphas
        self.fit_intercept = fit_intercept
        self.precompute = precompute
        self.max_iter = max_iter
        self.tol = tol
        self.cv = cv
        self.copy_X = copy_X
        self.verbose = verbose
        self.n_jobs = n_jobs
        self.positive = positive
        self.random_state = random_state
        self.selection = selection
        self.selection_rule = selection_rule

    def _l1_ratios(self) -> np.ndarray:
        return np.atleast_1d(np.asarray(getattr(self, "l1_ratio", 1.0), dtype=np.float64))

    def _check_params(self) -> None:
        ratios = getattr(self, "l1_ratio", 1.0)
        for r in np.atleast_1d(np.asarray(ratios, dtype=object)):
            check_param("l1_ratio", r, kind=numbers.Real, low=0, high=1, finite=True)
        if np.ndim(ratios) > 1 or np.size(ratios) == 0:
            raise ValueError(f"l1_ratio must be a number or a 1-D list, got {ratios!r}.")
        check_param("eps", self.eps, kind=numbers.Real, low=0, low_open=True, finite=True)
        if isinstance(self.alphas, numbers.Integral) and not isinstance(self.alphas, bool):
            # every fold keeps its path (alphas x features): bounded before any work
            check_param("alphas", self.alphas, kind=numbers.Integral, low=1, high=MAX_ALPHAS)
        else:
            grid = np.asarray(self.alphas, dtype=object)
            if grid.ndim != 1 or grid.size == 0 or grid.size > MAX_ALPHAS:
                raise ValueError(
                    f"The 'alphas' parameter must be an int in [1, {MAX_ALPHAS}] or a 1-D "
                    f"array of 1 to {MAX_ALPHAS} values, got {self.alphas!r}."
                )
            for i, a in enumerate(grid):
                check_param(f"alphas[{i}]", a, kind=numbers.Real, low=0, finite=True)
        check_param("max_iter", self.max_iter, kind=numbers.Integral, low=1)
        check_param("tol", self.tol, kind=numbers.Real, low=0)
        for flag in ("fit_intercept", "positive", "copy_X"):
            check_param(flag, getattr(self, flag), kind=bool, options=(True, False))
        check_param("selection", self.selection, kind=str, options=("cyclic", "random"))
        check_param("selection_rule", self.selection_rule, kind=str, options=SELECTION_RULES)
        pre = self.precompute  # scikit-learn's: "auto", a bool or a Gram matrix (unused here)
        text = isinstance(pre, (str, bytes))
        if not (pre == "auto" if text else isinstance(pre, bool) or np.ndim(pre) == 2):
            raise ValueError(
                f"The 'precompute' parameter must be 'auto', a bool or a 2-D array-like; "
                f"got {pre!r}."
            )
        if isinstance(self.cv, numbers.Integral) and not isinstance(self.cv, bool):
            check_param("cv", self.cv, kind=numbers.Integral, low=2)

    def fit(self, X: Any, y: Any, sample_weight: Any | None = None) -> ElasticNetCV:
        """Choose alpha (and l1_ratio) by cross-validation, then refit on all rows."""
        self._check_params()
        Xt, yt, sw, y_1d, peaks = validate_fit_data(self, X, y, sample_weight)
        if yt.shape[1] != 1:
            raise ValueError(f"For multi-task outputs, use MultiTask{type(self).__name__}")
        if not y_1d:
            warnings.warn(
                "A column-vector y was passed when a 1d array was expected. Please change "
                "the shape of y to (n_samples, ), for example using ravel().",
                DataConversionWarning,
                stacklevel=2,
            )
        peaks = check_gram_range(self, Xt, yt, peaks)
        # one torch thread: the pass runs in numpy's BLAS, the paths are small torch ops,
        # and torch's OpenMP threads would spin against OpenBLAS's (4 ms per tiny matmul)
        with torch_threads(1):
            states = fold_states_in_memory(
                Xt.cpu(),
                yt.cpu(),
                sw,
                self.cv,
                self.random_state,
                fit_intercept=bool(self.fit_intercept),
                peaks=peaks,
            )
            self._fit_folds(states, None)
        return self

    def _grids(self, c: torch.Tensor) -> np.ndarray:
        """The alphas ``(n_l1, n_alphas)``: scikit-learn's grid from all rows, or the given ones."""
        from regtorch.linear.path import alpha_grid, path_c_max

        ratios = self._l1_ratios()
        if isinstance(self.alphas, numbers.Integral) and not isinstance(self.alphas, bool):
            c_max = path_c_max(c, bool(self.positive))
            return np.stack([alpha_grid(c_max, r, self.eps, int(self.alphas)) for r in ratios])
        given = np.sort(np.asarray(self.alphas, dtype=np.float64))[::-1]
        return np.tile(given, (len(ratios), 1))

    def _path(
        self, st: Any, alphas: np.ndarray, l1_ratio: float
    ) -> tuple[np.ndarray, np.ndarray, list[int], list[float]]:
        """One exact path on ``st``: coefficients ``(n_alphas, p)``, intercepts, steps, gaps."""
        from regtorch.linear.path import gram_path

        W = st.weight_sum
        coefs, n_iter, gaps = gram_path(
            st.G / W,
            st.Xty[:, 0] / W,
            alphas,
            float(l1_ratio),
            positive=bool(self.positive),
            tol=float(self.tol),
            max_iter=int(self.max_iter),
            yty=float(st.yty[0]) / W,
        )
        b = np.asarray(torch.as_tensor(coefs, dtype=torch.float64).cpu()).reshape(len(alphas), -1)
        b0 = float(st.y_offset[0]) - b @ st.X_offset.numpy()
        return b, b0, list(n_iter), list(gaps)

    def _fold_paths(
        self, trains: list[Any], grids: np.ndarray, ratios: Any
    ) -> list[tuple[tuple[int, int], np.ndarray, np.ndarray]]:
        """Every (l1_ratio, fold) path at once (one batched exact solver): for each pair its
        coefficients ``(n_alphas, p)`` and intercepts ``(n_alphas,)``."""
        from regtorch.linear.path import gram_paths

        pairs = [(i, k) for i in range(len(ratios)) for k in range(len(trains))]
        G = np.stack([(trains[k].G / trains[k].weight_sum).numpy() for _, k in pairs])
        c = np.stack([(trains[k].Xty[:, 0] / trains[k].weight_sum).numpy() for _, k in pairs])
        coefs, _, _ = gram_paths(
            G,
            c,
            np.stack([grids[i] for i, _ in pairs]),
            np.array([ratios[i] for i, _ in pairs], dtype=np.float64),
            positive=bool(self.positive),
            tol=float(self.tol),
            max_iter=int(self.max_iter),
        )
        out = []
        for (i, k), b in zip(pairs, np.asarray(coefs)):
            b0 = float(trains[k].y_offset[0]) - b @ trains[k].X_offset.numpy()
            out.append(((i, k), b, b0))
        return out

    def _fit_folds(self, states: FoldStates, feature_names: Sequence[str] | None) -> None:
        """Score every alpha on every fold from ``states``, choose, refit on all rows."""
        self._check_params()
        if states.n_targets != 1:
            raise ValueError(f"For multi-task outputs, use MultiTask{type(self).__name__}")
        full = states.full()
        ratios = self._l1_ratios()
        grids = self._grids(full.Xty[:, 0] / full.weight_sum)
        K = states.n_folds
        mse = np.empty((len(ratios), grids.shape[1], K))
        trains = [states.train(k) for k in range(K)]
        for (i, k), b, b0 in self._fold_paths(trains, grids, ratios):
            mse[i, :, k] = states.heldout_mse(k, b, b0)
        i, j = choose(mse, grids, str(self.selection_rule))
        alpha, l1_ratio = float(grids[i, j]), float(ratios[i])
        # the path on all rows passes through alpha_: its point there is the exact refit
        coef_path, b0, n_iter, gaps = self._path(full, grids[i], l1_ratio)
        limit = float(self.tol) * float(full.yty[0]) / full.weight_sum
        if not gaps[j] <= limit:
            warnings.warn(
                f"The refit at alpha={alpha:.4g} did not converge: duality gap {gaps[j]:.3g} > "
                f"tol * ||y||^2 / n_samples = {limit:.3g}.",
                ConvergenceWarning,
                stacklevel=3,
            )
        auto = isinstance(self.alphas, numbers.Integral) and not isinstance(self.alphas, bool)
        self._set_fitted(
            torch.as_tensor(coef_path[j], dtype=torch.float64).reshape(-1, 1),
            torch.tensor([float(b0[j])], dtype=torch.float64),
            # scikit-learn's shapes: one grid per l1_ratio when computed (the ratio axis
            # dropped for one ratio), mse_path_ squeezed
            alphas=(grids[0] if len(ratios) == 1 else grids) if auto else grids[0],
            mse_path=np.squeeze(mse),
            alpha=alpha,
            l1_ratio=l1_ratio,
            coef_path=coef_path,
            n_iter=int(n_iter[j]),
            dual_gap=float(gaps[j]),
            feature_names=feature_names,
        )

    def _set_fitted(
        self,
        coef: torch.Tensor,
        intercept: torch.Tensor,
        *,
        alphas: np.ndarray,
        mse_path: np.ndarray,
        alpha: float,
        l1_ratio: float,
        coef_path: np.ndarray,
        n_iter: int,
        dual_gap: float,
        feature_names: Sequence[str] | None = None,
    ) -> None:
        """Write the fitted state (every fit, in memory, streamed or loaded, ends here).

        ``coef (p, 1)``, ``intercept (1,)``; ``alphas`` and ``mse_path`` in the public
        shapes of ``alphas_`` and ``mse_path_`` (folds on the last axis).
        """
        self.alpha_ = float(alpha)
        if hasattr(self, "l1_ratio"):
            self.l1_ratio_ = float(l1_ratio)  # LassoCV has none, as scikit-learn
        self.alphas_ = np.asarray(alphas, dtype=np.float64)
        self.mse_path_ = np.asarray(mse_path, dtype=np.float64)
        self.mse_se_ = standard_error(self.mse_path_)
        self.cv_folds_ = int(self.mse_path_.shape[-1])
        self.coef_path_ = np.asarray(coef_path, dtype=np.float64)
        self.n_iter_ = int(n_iter)
        self.dual_gap_ = float(dual_gap)
        self._store_coef(coef, intercept, True, feature_names)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = False  # 2-D y is refused, as scikit-learn's
        return tags


class LassoCV(ElasticNetCV):
    """Lasso with alpha chosen by K-fold cross-validation: ``ElasticNetCV`` with ``l1_ratio=1``.

    Same parameters and attributes as :class:`ElasticNetCV` without ``l1_ratio`` (and, as
    scikit-learn's, no ``l1_ratio_``).

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> X, y = load_diabetes(return_X_y=True)
    >>> LassoCV(cv=5).fit(X, y).mse_path_.shape
    (100, 5)
    """

    def __init__(
        self,
        *,
        eps: float = 1e-3,
        alphas: int | Sequence[float] = 100,
        fit_intercept: bool = True,
        precompute: Any = "auto",
        max_iter: int = 1000,
        tol: float = 1e-4,
        copy_X: bool = True,
        cv: Any = None,
        verbose: Any = False,
        n_jobs: int | None = None,
        positive: bool = False,
        random_state: Any = None,
        selection: str = "cyclic",
        selection_rule: str = "min",
    ) -> None:
        self.eps = eps
        self.alphas = alphas
        self.fit_intercept = fit_intercept
        self.precompute = precompute
        self.max_iter = max_iter
        self.tol = tol
        self.copy_X = copy_X
        self.cv = cv
        self.verbose = verbose
        self.n_jobs = n_jobs
        self.positive = positive
        self.random_state = random_state
        self.selection = selection
        self.selection_rule = selection_rule


def stream_fit_cv(
    est: Any,
    source: BatchSource,
    *,
    missing: str = "error",
    test_fraction: float = 0.0,
    seed: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit ``LassoCV``, ``ElasticNetCV`` or ``RidgeCV`` from ``source`` in one pass.

    Rows get their fold from :func:`regtorch.data.split.fold_of` with ``seed`` (default: the
    estimator's ``random_state``, None meaning 0; the rows a ``test_fraction`` holds out are
    skipped), so the folds match an in-memory fit with the same ``random_state`` on the same
    rows. ``est.cv`` must be None (5 folds) or an int.
    Under ``torchrun`` each rank reads its share and the fold states are merged in rank
    order. Returns timing and row counts.
    """
    if not hasattr(est, "_fit_folds"):
        raise ValueError(
            f"stream_fit_cv fits LassoCV, ElasticNetCV and RidgeCV; got {type(est).__name__}."
        )
    est._check_params()
    if hasattr(est, "_stream_n_folds"):
        n_folds = int(est._stream_n_folds())
    elif est.cv is None:
        n_folds = 5
    elif isinstance(est.cv, numbers.Integral) and not isinstance(est.cv, bool):
        n_folds = int(est.cv)
    else:
        raise ValueError(
            "A streamed fit takes hash folds: cv must be None or an int, got "
            f"{type(est.cv).__name__}."
        )
    if seed is None:
        rs = getattr(est, "random_state", None)
        if rs is not None and not (isinstance(rs, numbers.Integral) and not isinstance(rs, bool)):
            raise ValueError(f"A streamed fit needs an int random_state (or seed), got {rs!r}.")
        seed = 0 if rs is None else int(rs)
    if n_folds > MAX_STREAMED_FOLDS:
        raise ValueError(
            f"A streamed fit keeps one state per fold; cv={n_folds} is more than "
            f"{MAX_STREAMED_FOLDS} folds."
        )
    if source.n_rows is not None:  # known before the pass (Parquet): refuse at once
        check_fold_sizes(n_folds, source.n_rows, None, f"cv={n_folds}")
    t0 = time.perf_counter()
    states = cv_states(
        source,
        n_folds,
        seed,
        fit_intercept=bool(est.fit_intercept),
        missing=missing,
        test_fraction=test_fraction,
        progress=progress,
    )
    sizes = [s.rows for s in states.fold]
    check_fold_sizes(n_folds, sum(sizes), min(sizes), f"cv={n_folds}")
    est._fit_folds(states, list(source.features))
    return {
        "rows_read": states.rows_read,
        "rows_fit": sum(s.rows for s in states.fold),
        "weight_sum": sum(s.n for s in states.fold),
        "n_folds": n_folds,
        "seconds": time.perf_counter() - t0,
        "batch_rows": source.batch_rows,
    }
