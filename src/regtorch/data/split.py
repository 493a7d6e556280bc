"""The one split rule: a row's part (train, validation, test) from the seed and its index."""

from __future__ import annotations

import numpy as np

__all__ = ["hash01"]


def hash01(index: np.ndarray, seed: int) -> np.ndarray:
    """A seeded hash of row indices to [0, 1) (splitmix64): splits need no global view."""
    z = index.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)
