"""Mergeable sufficient statistics of ``[X, y]``: count, mean and centred cross-products.

Linear models accumulate a :class:`MomentState` batch by batch (merged with Chan et al.'s
formula, never raw sums of squares) and across ranks in rank order, so every rank holds the
same answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from regtorch import distributed
from regtorch.data.prefetch import Progress, prefetch
from regtorch.nn.loop import _num_threads

if TYPE_CHECKING:
    from regtorch.data.table import TableSource

__all__ = ["MomentState"]

# centre a batch explicitly when a column's squared mean exceeds its variance this many times
CANCELLATION_RATIO = 1e3


@dataclass
class MomentState:
    """Mergeable moments of ``Z = [X, y]``: count, mean and centred cross-products.

    ``update`` with batches, ``merge`` states from other ranks (Chan et al.'s parallel
    formula), then read the centred Gram, ``X'y`` and ``y'y`` for the solvers. Columns are
    held multiplied by powers of two (``scale``, exact), chosen from the largest ``|value|``
    seen, so magnitudes from 1e-300 to 1e300 neither overflow nor underflow: ``mean`` and
    ``C`` are in those scaled units.
    """

    n: float = 0.0
    mean: torch.Tensor | None = None  # (m,) of Z * scale
    C: torch.Tensor | None = None  # (m, m) of Z * scale
    scale: torch.Tensor | None = None  # (m,) powers of two

    def update(self, Z: torch.Tensor) -> None:
        """Add a batch ``(rows, m)`` in float64."""
        if Z.shape[0] == 0:
            return
        n = float(Z.shape[0])
        top = Z.abs().amax(0)
        _, e = torch.frexp(torch.where(top > 0, top, torch.ones_like(top)))
        s = torch.ldexp(torch.ones_like(top), -e)
        Z = Z * s  # exact
        mb = Z.mean(0)
        # raw Gram minus the mean's share: no centred copy of the batch; where a column's
        # mean dwarfs its spread that subtraction would cancel digits, so centre instead
        C = Z.mT @ Z - n * torch.outer(mb, mb)
        spread = C.diagonal()
        if bool((n * mb.square() > CANCELLATION_RATIO * spread.clamp_min(1e-300)).any()):
            Zc = Z - mb
            C = Zc.mT @ Zc
        self.merge(MomentState(n, mb, C, s))

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
            self.scale = other.scale.clone()
            return
        scale = torch.minimum(self.scale, other.scale)
        (m1, C1), (m2, C2) = self._at(scale), other._at(scale)
        n = self.n + other.n
        delta = m2 - m1
        self.C = C1 + C2 + torch.outer(delta, delta) * (self.n * other.n / n)
        self.mean = m1 + delta * (other.n / n)
        self.scale = scale
        self.n = n

    def to_tensor(self, m: int) -> torch.Tensor:
        """Flat ``[n, scale, mean, C]`` for collective communication."""
        if self.mean is None or self.C is None or self.scale is None:
            return torch.zeros(1 + 2 * m + m * m, dtype=torch.float64)
        head = torch.tensor([self.n], dtype=torch.float64)
        return torch.cat([head, self.scale, self.mean, self.C.flatten()])

    @classmethod
    def from_tensor(cls, t: torch.Tensor, m: int) -> MomentState:
        n = float(t[0])
        if n == 0:
            return cls()
        scale = t[1 : 1 + m].clone()
        mean = t[1 + m : 1 + 2 * m].clone()
        return cls(n, mean, t[1 + 2 * m :].reshape(m, m).clone(), scale)

    def all_reduce(self, m: int) -> MomentState:
        """Merge every rank's state, in rank order (the same result on every rank)."""
        if not distributed.is_distributed():
            return self
        total = MomentState()
        for t in distributed.all_gather(self.to_tensor(m)):
            total.merge(MomentState.from_tensor(t, m))
        return total


def _accumulate(
    source: TableSource,
    keep: Callable[[np.ndarray], np.ndarray] | None,
    missing: str,
    progress: bool,
    desc: str,
) -> tuple[MomentState, int]:
    state = MomentState()
    rank, world = distributed.rank_world()
    total = None if source.n_rows is None else source.n_rows // world
    bar = Progress(total, progress and rank == 0, desc)
    # one torch thread: pyarrow's decoding threads keep the other cores busy (measured faster)
    with _num_threads(1):
        return _accumulate_loop(source, keep, missing, state, bar)


def _accumulate_loop(
    source: TableSource,
    keep: Callable[[np.ndarray], np.ndarray] | None,
    missing: str,
    state: MomentState,
    bar: Progress,
) -> tuple[MomentState, int]:
    seen = 0
    try:
        for b in prefetch(source.batches(missing)):
            Z = b.Z if keep is None else b.Z[keep(b.rows)]
            state.update(torch.from_numpy(Z))
            seen += len(b.rows)
            bar.update(len(b.rows))
    finally:
        bar.close()
    return state, seen
