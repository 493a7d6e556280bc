"""The ``fit`` command's baseline row: ordinary least squares, as scikit-learn computes it.

Computed here with NumPy rather than with ``sklearn.linear_model.LinearRegression``, whose
import pulls in ``scipy.stats`` and costs about half a second of every ``regtorch fit``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASELINE_LABEL = "baseline (scikit-learn LinearRegression)"
# scikit-learn's LinearRegression(tol=1e-6) passes tol to lstsq as the singular-value cutoff
# relative to the largest: singular values below it count as zero (a minimum-norm solution)
SKLEARN_RCOND = 1e-6


@dataclass(frozen=True)
class LeastSquares:
    """A fitted least-squares line: ``coef`` (n_features,) or (n_targets, n_features)."""

    coef: np.ndarray
    intercept: np.ndarray | float

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions, shaped like the ``y`` of the fit."""
        return np.asarray(X, dtype=np.float64) @ self.coef.T + self.intercept


def fit_least_squares(
    X: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray | None = None,
    rcond: float = SKLEARN_RCOND,
) -> LeastSquares:
    """Least squares with an intercept, exactly as scikit-learn's ``LinearRegression``.

    X and y are centred (weighted means under ``sample_weight``), rows scaled by the square
    root of their weights, and solved by SVD (LAPACK gelsd) with ``rcond``; the intercept is
    ``y_mean - x_mean @ coef``.

    Examples
    --------
    >>> X = np.array([[0.0], [1.0], [2.0]])
    >>> fit_least_squares(X, 1 + 2 * X[:, 0]).predict(np.array([[3.0]]))
    array([7.])
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if sample_weight is None:
        x_mean, y_mean = X.mean(axis=0), y.mean(axis=0)
        Xc, yc = X - x_mean, y - y_mean
    else:
        w = np.asarray(sample_weight, dtype=np.float64)
        x_mean = np.average(X, axis=0, weights=w)
        y_mean = np.average(y, axis=0, weights=w)
        root = np.sqrt(w)
        Xc = (X - x_mean) * root[:, None]
        yc = (y - y_mean) * (root if y.ndim == 1 else root[:, None])
    coef = np.linalg.lstsq(Xc, yc, rcond=rcond)[0].T  # (n_targets, n_features) or (n_features,)
    return LeastSquares(coef, y_mean - x_mean @ coef.T)
