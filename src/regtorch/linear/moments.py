"""Mergeable sufficient statistics of ``[X, y]``: count, mean and centred cross-products.

Linear models accumulate a :class:`MomentState` batch by batch (merged with Chan et al.'s
formula, never raw sums of squares) and across ranks in rank order, so every rank holds the
same answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from regtorch import distributed
from regtorch._validation import column_peaks
from regtorch.data.prefetch import Progress, prefetch
from regtorch.nn.loop import _num_threads

__all__ = ["BatchSource", "MomentState"]


class BatchSource(Protocol):
    """What the linear fits need of a data source (``TableSource``, ``ArraySource``)."""

    @property
    def features(self) -> list[str]: ...
    @property
    def targets(self) -> list[str]: ...
    @property
    def n_rows(self) -> int | None: ...
    @property
    def batch_rows(self) -> int | None: ...
    @property
    def path(self) -> Any: ...
    def batches(self, missing: str = ..., epoch_seed: int | None = ...) -> Iterator[Any]: ...


# centre a batch explicitly when a column's squared mean exceeds its variance this many times
CANCELLATION_RATIO = 1e3

# |values| within 2**-400..2**400: their products and sums of a batch's products stay
# normal floats, so a power-of-two scaling may be applied after them
SAFE_EXPONENT = 400


def _products_in_range(top: torch.Tensor) -> bool:
    """Whether columns with these largest magnitudes can form their Gram unscaled."""
    big = 2.0**SAFE_EXPONENT
    return bool(((top < big) & ((top == 0) | (top > 1 / big))).all())


@dataclass
class MomentState:
    """Mergeable moments of ``Z = [X, y]``: count, mean and centred cross-products.

    ``update`` with batches, ``merge`` states from other ranks (Chan et al.'s parallel
    formula), then read the centred Gram, ``X'y`` and ``y'y`` for the solvers. Columns are
    held multiplied by powers of two (``scale``, exact), chosen from the largest ``|value|``
    seen, so magnitudes from 1e-300 to 1e300 neither overflow nor underflow: ``mean`` and
    ``C`` are in those scaled units.
    """

    n: float = 0.0  # weighted count (sum of the weights; rows without weights)
    mean: torch.Tensor | None = None  # (m,) weighted mean of Z * scale
    C: torch.Tensor | None = None  # (m, m) centred weighted cross-products of Z * scale
    scale: torch.Tensor | None = None  # (m,) powers of two
    rows: int = 0  # rows with a positive weight (the statistics' observations)
    log_w: float = 0.0  # sum of the log weights (the weighted log-likelihood's constant)

    def update(
        self, Z: torch.Tensor, w: torch.Tensor | None = None, top: torch.Tensor | None = None
    ) -> None:
        """Add a batch ``(rows, m)`` in float64, with optional sample weights ``(rows,)``.

        Rows of weight 0 count for nothing; a negative or non-finite weight raises
        ``ValueError``. ``top`` (optional, ``(m,)``): bounds of the columns' magnitudes known
        in advance (e.g. over all the data), which spares a pass over the batch.
        """
        if w is not None:
            w = _check_weights(w, Z.shape[0])
            keep = w > 0
            if not bool(keep.all()):
                Z, w = Z[keep], w[keep]
        if Z.shape[0] == 0:
            return
        if top is None:
            top = column_peaks(Z)
        _, e = torch.frexp(torch.where(top > 0, top, torch.ones_like(top)))
        s = torch.ldexp(torch.ones_like(top), -e)
        log_w = 0.0
        if w is None and _products_in_range(top):
            # scaling by powers of two commutes with every rounding while nothing overflows
            # or underflows: scale the mean and Gram, not a copy of the batch (same bits)
            n = float(Z.shape[0])
            mb = Z.mean(0) * s
            C = (Z.mT @ Z) * torch.outer(s, s) - n * torch.outer(mb, mb)
        else:
            Z = Z * s  # exact
            if w is None:
                n = float(Z.shape[0])
                mb = Z.mean(0)
                A = Z
            else:
                n, log_w = float(w.sum()), float(w.log().sum())
                mb = (w @ Z) / n
                A = Z * w.sqrt().unsqueeze(1)
            # raw Gram minus the mean's share: no centred copy of the batch
            C = A.mT @ A - n * torch.outer(mb, mb)
        spread = C.diagonal()
        # where a column's mean dwarfs its spread the subtraction cancels digits: centre
        if bool((n * mb.square() > CANCELLATION_RATIO * spread.clamp_min(1e-300)).any()):
            Zs = Z * s if w is None else Z  # the weighted branch has scaled Z already
            Ac = Zs - mb if w is None else (Zs - mb) * w.sqrt().unsqueeze(1)
            C = Ac.mT @ Ac
        self.merge(MomentState(n, mb, C, s, int(Z.shape[0]), log_w))

    def _at(self, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, C)`` expressed with the (smaller, power-of-two) ``scale``."""
        assert self.mean is not None and self.C is not None and self.scale is not None
        r = scale / self.scale  # powers of two <= 1: exact
        return self.mean * r, self.C * torch.outer(r, r)

    def merge(self, other: MomentState) -> None:
        """Fold ``other`` into this state."""
        if other.n == 0 or other.mean is None or other.C is None or other.scale is None:
            return
        if self.n == 0 or self.mean is None or self.C is None or self.scale is None:
            self.n, self.mean, self.C = other.n, other.mean.clone(), other.C.clone()
            self.scale, self.rows, self.log_w = other.scale.clone(), other.rows, other.log_w
            return
        scale = torch.minimum(self.scale, other.scale)
        (m1, C1), (m2, C2) = self._at(scale), other._at(scale)
        n = self.n + other.n
        delta = m2 - m1
        self.C = C1 + C2 + torch.outer(delta, delta) * (self.n * other.n / n)
        self.mean = m1 + delta * (other.n / n)
        self.scale = scale
        self.n = n
        self.rows += other.rows
        self.log_w += other.log_w

    def to_tensor(self, m: int) -> torch.Tensor:
        """Flat ``[n, rows, log_w, scale, mean, C]`` for collective communication."""
        if self.mean is None or self.C is None or self.scale is None:
            return torch.zeros(3 + 2 * m + m * m, dtype=torch.float64)
        head = torch.tensor([self.n, float(self.rows), self.log_w], dtype=torch.float64)
        return torch.cat([head, self.scale, self.mean, self.C.flatten()])

    @classmethod
    def from_tensor(cls, t: torch.Tensor, m: int) -> MomentState:
        """The state :meth:`to_tensor` flattened."""
        n, rows, log_w = float(t[0]), int(t[1]), float(t[2])
        if n == 0:
            return cls()
        scale = t[3 : 3 + m].clone()
        mean = t[3 + m : 3 + 2 * m].clone()
        return cls(n, mean, t[3 + 2 * m :].reshape(m, m).clone(), scale, rows, log_w)

    def all_reduce(self, m: int) -> MomentState:
        """Merge every rank's state, in rank order (the same result on every rank)."""
        if not distributed.is_distributed():
            return self
        total = MomentState()
        for t in distributed.all_gather(self.to_tensor(m)):
            total.merge(MomentState.from_tensor(t, m))
        return total


def _check_weights(w: torch.Tensor, n: int) -> torch.Tensor:
    """Sample weights ``(n,)`` in float64; ValueError for a wrong shape, negative or NaN/inf."""
    w = w.reshape(-1).to(torch.float64)
    if w.shape[0] != n:
        raise ValueError(f"sample_weight has {w.shape[0]} values for {n} rows.")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("sample_weight contains NaN or infinite values.")
    if bool((w < 0).any()):
        raise ValueError(f"sample_weight must be non-negative; found {float(w.min()):g}.")
    from regtorch._base import check_weight_range

    check_weight_range(w.numpy())
    return w


def _accumulate(
    source: BatchSource,
    keep: Callable[[np.ndarray], np.ndarray] | None,
    missing: str,
    progress: bool,
    desc: str,
) -> tuple[MomentState, int]:
    """This rank's moments of the kept rows (weighted by the batches' ``w``); rows read."""
    state = MomentState()
    rank, world = distributed.rank_world()
    total = None if source.n_rows is None else source.n_rows // world
    bar = Progress(total, progress and rank == 0, desc)
    # one torch thread: pyarrow's decoding threads keep the other cores busy (measured faster)
    with _num_threads(1):
        return _accumulate_loop(source, keep, missing, state, bar)


def _accumulate_loop(
    source: BatchSource,
    keep: Callable[[np.ndarray], np.ndarray] | None,
    missing: str,
    state: MomentState,
    bar: Progress,
) -> tuple[MomentState, int]:
    seen = 0
    try:
        for b in prefetch(source.batches(missing)):
            Z, w = kept_rows(b, keep)
            state.update(torch.from_numpy(Z), None if w is None else torch.from_numpy(w))
            seen += len(b.rows)
            bar.update(len(b.rows))
    finally:
        bar.close()
    return state, seen


def kept_rows(
    b: Any, keep: Callable[[np.ndarray], np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A batch's ``Z`` and weights (None when unweighted), restricted to the kept rows."""
    w = getattr(b, "w", None)
    if keep is None:
        return b.Z, w
    mask = keep(b.rows)
    return b.Z[mask], None if w is None else np.asarray(w)[mask]
