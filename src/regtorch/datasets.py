"""A noisy line and a noisy sine with their splits: the data of docs/reference-protocol.md."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ReferenceData", "make_line", "make_sine"]

N_SAMPLES = 1200
N_TRAIN_VAL = 1000  # rows 0..999 are split 80/20 into train/validation; 1000..1199 are test


@dataclass(frozen=True)
class ReferenceData:
    """A reference experiment's data, float32, targets of shape ``(n, 1)``.

    Attributes
    ----------
    X_train, y_train, X_val, y_val, X_test, y_test : ndarray
        The train (800 rows), validation (200) and test (200) splits.
    coef : float
        The generating coefficient of ``make_regression`` (the line's true slope).
    name : str
        ``"line"`` or ``"sine"``.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    coef: float
    name: str


def _base(random_state: int) -> tuple[np.ndarray, np.ndarray, float]:
    from sklearn.datasets import make_regression

    X, y, coef = make_regression(
        n_samples=N_SAMPLES,
        n_features=1,
        bias=3.0,
        noise=2,
        random_state=random_state,
        shuffle=True,
        coef=True,
    )
    return X, y, float(np.ravel(coef)[0])


def _split(
    X: np.ndarray, y: np.ndarray, coef: float, name: str, random_state: int
) -> ReferenceData:
    from sklearn.model_selection import train_test_split

    X = X.astype(np.float32)
    y = y.astype(np.float32).reshape(-1, 1)
    X_tr, X_va, y_tr, y_va = train_test_split(
        X[:N_TRAIN_VAL], y[:N_TRAIN_VAL], test_size=0.20, random_state=random_state, shuffle=True
    )
    return ReferenceData(
        X_tr, y_tr, X_va, y_va, X[N_TRAIN_VAL:], y[N_TRAIN_VAL:], coef=coef, name=name
    )


def make_line(random_state: int = 42) -> ReferenceData:
    """Experiment A: ``make_regression(1200, 1 feature, bias 3, noise 2)`` and its split.

    Examples
    --------
    >>> d = make_line()
    >>> d.X_train.shape, d.y_test.shape
    ((800, 1), (200, 1))
    """
    X, y, coef = _base(random_state)
    return _split(X, y, coef, "line", random_state)


def make_sine(
    random_state: int = 42,
    noise_seed: int = 0,
    noise: float = 0.1,
    legacy_noise_seed: int | None = None,
) -> ReferenceData:
    """Experiment B: the line's X with target ``sin(2 X) + N(0, noise^2)``, same split.

    The tutorial drew the noise unseeded; here it comes from
    ``numpy.random.default_rng(noise_seed)``, so the data are reproducible. With
    ``legacy_noise_seed`` it comes instead from ``numpy.random.RandomState(legacy_noise_seed)``:
    ``legacy_noise_seed=42`` reproduces the tutorial's draw after ``np.random.seed(42)``
    (``np.random.normal(0, noise, X.shape)``), without touching NumPy's global RNG.

    Examples
    --------
    >>> d = make_sine()
    >>> float(abs(d.y_train).max()) < 1.5
    True
    >>> tutorial = make_sine(legacy_noise_seed=42)
    """
    X, _, coef = _base(random_state)
    if legacy_noise_seed is not None:
        eps = np.random.RandomState(legacy_noise_seed).normal(0.0, noise, size=X.shape[0])
    else:
        eps = np.random.default_rng(noise_seed).normal(0.0, noise, size=X.shape[0])
    y = np.sin(2.0 * X[:, 0]) + eps
    return _split(X, y, coef, "sine", random_state)
