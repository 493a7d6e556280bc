"""The two sources every fit consumes: :class:`ArraySource` and ``TableSource``.

Both yield :class:`~regtorch.data.table.Batch` objects (``Z = [X, y]`` in float64, global
row indices, sample weights) from ``batches(missing, epoch_seed)`` and share ``features``,
``targets``, ``weight``, ``n_rows``, ``batch_rows``, ``path`` and ``encoder``. ``ArraySource``
serves arrays already in memory (numpy, pandas, torch); ``TableSource``
(:mod:`regtorch.data.table`) reads tables on disk in batches sized by a memory budget. Under
``torch.distributed`` each yields only this rank's share, so a fit consumes either the same way.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from regtorch._validation import as_float_tensor, check_finite, check_X_y_tensors
from regtorch.data.schema import Encoder
from regtorch.data.table import Batch
from regtorch.distributed import rank_world

__all__ = ["ArraySource"]


class ArraySource:
    """Arrays in memory served as batches, like a table on disk.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        numpy array, pandas DataFrame or torch tensor of numbers.
    y : array-like of shape (n_samples,) or (n_samples, n_targets)
    sample_weight : array-like of shape (n_samples,), optional
        Finite and >= 0.
    batch_rows : int, optional
        Rows per batch; default all rows in one batch.
    feature_names : list of str, optional
        Default: a DataFrame's columns, else ``x0, x1, ...``.

    Examples
    --------
    >>> import numpy as np
    >>> src = ArraySource(np.ones((5, 2)), np.arange(5.0), batch_rows=2)
    >>> [b.rows.tolist() for b in src.batches()]
    [[0, 1], [2, 3], [4]]
    """

    path = "<arrays>"

    def __init__(
        self,
        X: Any,
        y: Any,
        sample_weight: Any = None,
        batch_rows: int | None = None,
        feature_names: list[str] | None = None,
    ) -> None:
        if feature_names is None and hasattr(X, "columns"):
            feature_names = [str(c) for c in X.columns]
        y_in, X_in = _tensor(y, "y"), _tensor(X, "X")
        one_target = y_in.ndim == 1
        Xt, yt = check_X_y_tensors(X_in, y_in)
        n, p = (int(d) for d in Xt.shape)
        if feature_names is None:
            feature_names = [f"x{j}" for j in range(p)]
        if len(feature_names) != p:
            raise ValueError(
                f"feature_names has {len(feature_names)} names, but X has {p} columns."
            )
        if batch_rows is not None and not batch_rows >= 1:
            raise ValueError(f"batch_rows must be a positive number of rows, got {batch_rows}.")
        self.features = list(feature_names)
        self.encoder = Encoder(self.features, {})
        k = int(yt.shape[1])
        self.targets = ["y"] if one_target else [f"y{j}" for j in range(k)]
        self.n_rows = n
        self.batch_rows = int(batch_rows or n)
        self.weight: str | None = None
        self._w: np.ndarray | None = None
        if sample_weight is not None:
            self._w = _weights(sample_weight, n)
            self.weight = "sample_weight"
        # (n_samples, n_features + n_targets), column-major like a table's batches
        self._Z = np.asfortranarray(
            np.column_stack([Xt.detach().cpu().numpy(), yt.detach().cpu().numpy()])
        )

    def batches(self, missing: str = "error", epoch_seed: int | None = None) -> Iterator[Batch]:
        """This rank's batches (batch ``b`` goes to rank ``b % world``).

        ``missing`` is accepted for the common interface: the arrays were checked finite.
        With ``epoch_seed`` this rank's batches come in an order shuffled by that seed.
        """
        rank, world = rank_world()
        starts = list(range(0, self.n_rows, self.batch_rows))[rank::world]
        if epoch_seed is not None:
            order = np.random.default_rng(epoch_seed).permutation(len(starts))
            starts = [starts[i] for i in order]
        p = len(self.features)
        for s in starts:
            e = min(s + self.batch_rows, self.n_rows)
            Z = self._Z if e - s == self.n_rows else np.asfortranarray(self._Z[s:e])
            w = None if self._w is None else self._w[s:e]
            yield Batch(Z, np.arange(s, e, dtype=np.int64), p, w)


def _weights(sample_weight: Any, n: int) -> np.ndarray:
    """Sample weights as float64 (n,), checked finite and >= 0."""
    t = _tensor(sample_weight, "sample_weight")
    if t.ndim != 1 or int(t.shape[0]) != n:
        raise ValueError(
            f"sample_weight must have shape ({n},) like the rows of X, got {tuple(t.shape)}."
        )
    check_finite(t, "sample_weight")
    w = t.detach().cpu().numpy()
    if (w < 0).any():
        i = int(np.flatnonzero(w < 0)[0])
        raise ValueError(
            f"sample_weight must be >= 0; {int((w < 0).sum())} value(s) are negative, the "
            f"first {float(w[i])!r} at row {i}."
        )
    return w


def _tensor(data: Any, name: str) -> torch.Tensor:
    """``data`` as a checked float64 tensor (sharing memory with numpy input)."""
    with warnings.catch_warnings():
        # pandas hands out read-only arrays; these tensors are only read, never written
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return as_float_tensor(data, name=name, dtype=torch.float64)
