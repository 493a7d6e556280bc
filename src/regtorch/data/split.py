"""The one split rule: a row's part (train, validation, test) from the seed and its index.

Every fit (in memory or streamed, on one process or many) calls :func:`assign` on global
row indices, so a row lands in the same part whatever the batch size, memory budget or
number of processes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TEST", "TRAIN", "VALIDATION", "assign", "fold_of", "hash01"]

TRAIN, VALIDATION, TEST = 0, 1, 2


def hash01(index: np.ndarray, seed: int) -> np.ndarray:
    """A seeded hash of row indices to [0, 1) (splitmix64): splits need no global view."""
    z = index.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def assign(
    rows: np.ndarray, seed: int, test_fraction: float, val_fraction: float = 0.0
) -> np.ndarray:
    """The part of each row: 2 test, 1 validation, 0 train (int8).

    With ``h = hash01(rows, seed)``: test if ``h < test_fraction``, validation if
    ``test_fraction <= h < test_fraction + val_fraction``, train otherwise. A row's part
    depends on the seed and its global index only.

    Examples
    --------
    >>> import numpy as np
    >>> parts = assign(np.arange(100_000), seed=0, test_fraction=0.2, val_fraction=0.1)
    >>> [round(float((parts == k).mean()), 2) for k in (0, 1, 2)]
    [0.7, 0.1, 0.2]
    """
    _check_fractions(test_fraction, val_fraction)
    h = hash01(np.asarray(rows), seed)
    parts = np.zeros(h.shape, dtype=np.int8)
    parts[h < test_fraction + val_fraction] = VALIDATION
    parts[h < test_fraction] = TEST
    return parts


def fold_of(rows: np.ndarray, seed: int, n_folds: int, test_fraction: float = 0.0) -> np.ndarray:
    """The cross-validation fold of each row (int64): ``-1`` for held-out test rows.

    With ``h = hash01(rows, seed)``: a test row if ``h < test_fraction`` (the same rows
    :func:`assign` holds out), else fold ``floor((h - test_fraction) / (1 - test_fraction)
    * n_folds)``. A row's fold depends on the seed and its global index only.

    Examples
    --------
    >>> import numpy as np
    >>> folds = fold_of(np.arange(100_000), seed=0, n_folds=5, test_fraction=0.2)
    >>> [round(float((folds == k).mean()), 2) for k in (-1, 0, 1, 2, 3, 4)]
    [0.2, 0.16, 0.16, 0.16, 0.16, 0.16]
    """
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}.")
    _check_fractions(test_fraction, 0.0)
    h = hash01(np.asarray(rows), seed)
    u = (h - test_fraction) / (1.0 - test_fraction)
    folds = np.minimum(np.floor(u * n_folds), n_folds - 1).astype(np.int64)
    folds[h < test_fraction] = -1
    return folds


def _check_fractions(test_fraction: float, val_fraction: float) -> None:
    """Fractions in [0, 1) that leave some rows for training."""
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
    if not test_fraction + val_fraction < 1:
        raise ValueError(
            f"test_fraction + val_fraction must be below 1 (some rows must train), got "
            f"{test_fraction!r} + {val_fraction!r} = {test_fraction + val_fraction!r}."
        )
