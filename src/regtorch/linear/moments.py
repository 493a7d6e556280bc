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
from regtorch._base import abs_peaks
from regtorch._threads import reading_threads
from regtorch._validation import column_peaks
from regtorch.data.prefetch import Progress, prefetch

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
# form a batch's Gram about the means so far when a squared mean exceeds the variance this
# many times (at most about one digit of the centred Gram is lost below it); the first
# batch judges from its first PILOT_ROWS rows
SHIFT_RATIO = 16.0
PILOT_ROWS = 256

# |values| within 2**-400..2**400: their products and sums of a batch's products stay
# normal floats, so a power-of-two scaling may be applied after them
SAFE_EXPONENT = 400


def _pow2_scale(top: torch.Tensor) -> torch.Tensor:
    """Per column, the power of two ``s`` with ``top * s`` in [0.5, 1) (1 for a zero column)."""
    t = top.detach().cpu().numpy().astype(np.float64)
    _, e = np.frexp(np.where(t > 0, t, 1.0))
    return torch.from_numpy(np.ldexp(1.0, -e)).to(top.device)


def _products_in_range(top: torch.Tensor) -> bool:
    """Whether columns with these largest magnitudes can form their Gram unscaled."""
    big = 2.0**SAFE_EXPONENT
    t = top.detach().cpu().numpy().astype(np.float64)
    return bool(((t < big) & ((t == 0) | (t > 1 / big))).all())


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
        # CPU float64 runs in numpy: one BLAS thread pool for the whole update (torch's
        # OpenMP threads would spin against OpenBLAS's between calls) and syrk for the Gram
        if Z.device.type == "cpu" and Z.dtype == torch.float64 and not Z.requires_grad:
            self._add(Z.numpy(), None if w is None else w.numpy(), top)
        else:
            self._add(Z, w, top)

    def update_columns(
        self, X: np.ndarray, y: np.ndarray, w: np.ndarray | None, top: torch.Tensor | None = None
    ) -> None:
        """:meth:`update` with ``Z = [X, y]`` given as its two float64 column blocks (no
        concatenated copy while the Gram can be formed unscaled) and optional peaks ``top``."""
        if w is not None:
            wt = _check_weights(torch.from_numpy(w), X.shape[0])
            keep = (wt > 0).numpy()
            if not keep.all():
                X, y, wt = X[keep], y[keep], wt[torch.from_numpy(keep)]
            w = wt.numpy()
        if X.shape[0]:
            self._add((X, y), w, top)

    def _add(self, Z: Any, w: Any, top: torch.Tensor | None) -> None:
        """Merge the moments of a non-empty batch (a numpy array, a pair of numpy column
        blocks, or a tensor on any device; weights positive and checked)."""
        cpu = not isinstance(Z, torch.Tensor)
        if top is None:
            top = torch.from_numpy(_peaks(Z)) if cpu else column_peaks(Z)
        s = _pow2_scale(top)
        log_w = 0.0 if w is None else float(torch.as_tensor(w).log().sum())
        rows = int(_rows(Z))
        shift = self._shift(Z, cpu, s)
        sx = s.numpy() if cpu else s
        if shift is None:
            n, mb, C = _batch_moments(Z, w, sx, _products_in_range(top))
        else:  # the moments of the shifted batch (|values| at most doubled), mean moved back
            Zc = (np.hstack(Z) if isinstance(Z, tuple) else Z) - shift
            n, mb, C = _batch_moments(Zc, w, sx, _products_in_range(2 * top))
            mb = mb + shift * sx
        if cpu:
            mb, C = torch.from_numpy(mb), torch.from_numpy(C)
        self.merge(MomentState(n, mb, C, s, rows, log_w))

    def _shift(self, Z: Any, cpu: bool, scale: torch.Tensor) -> Any:
        """A shift (data units) for a batch whose columns' means dwarf their spread, judged
        from the moments so far (or the batch's first rows): forming the Gram about it
        keeps the centring from cancelling digits, at the cost of one copy of the batch."""
        if self.mean is not None and self.C is not None and self.scale is not None:
            mean, var = self.mean, self.C.diagonal() / self.n
            if not bool((mean * mean > SHIFT_RATIO * var).any()):
                return None
            shift = self.mean / self.scale
            return shift.cpu().numpy() if cpu else shift.to(Z.device)
        head = np.hstack([a[:PILOT_ROWS] for a in Z]) if isinstance(Z, tuple) else Z[:PILOT_ROWS]
        # judged in the batch's power-of-two scaled units: squares of 1e200 do not overflow
        sc = scale.cpu().numpy() if cpu else scale.to(head.device)
        mean = (head * sc).mean(0)
        var = ((head * sc - mean) ** 2).mean(0)
        return mean / sc if bool((mean * mean > SHIFT_RATIO * var).any()) else None

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


def _peaks(Z: Any) -> np.ndarray:
    """``max |value|`` per column of a numpy array or a pair of column blocks."""
    if isinstance(Z, tuple):
        return np.concatenate([_peaks(a) for a in Z])
    return abs_peaks(Z)


def _rows(Z: Any) -> int:
    return int(Z[0].shape[0] if isinstance(Z, tuple) else Z.shape[0])


def _raw_gram(A: Any) -> Any:
    """``A' A`` of a numpy array (BLAS syrk: half a GEMM's work) or a tensor."""
    if isinstance(A, np.ndarray):
        # either memory order: the same buffer transposed is what makes numpy call syrk
        a = A if A.flags.c_contiguous or A.flags.f_contiguous else np.ascontiguousarray(A)
        return a.T @ a
    return A.mT @ A


def _sums_and_gram(Z: Any) -> tuple[Any, Any]:
    """Column sums and raw Gram of ``Z``: a numpy array, a pair ``(X, y)`` of numpy column
    blocks (``X' [y, 1]`` in one product: no pass of its own for the sums), or a tensor."""
    if isinstance(Z, tuple):
        X, y = Z
        p, t = X.shape[1], y.shape[1]
        y1 = np.empty((y.shape[0], t + 1))
        y1[:, :t], y1[:, t] = y, 1.0
        cross = X.T @ y1  # (p, t + 1): X'y and the sums of X
        G = np.empty((p + t, p + t))
        G[:p, :p] = _raw_gram(X)
        G[:p, p:] = cross[:, :t]
        G[p:, :p] = cross[:, :t].T
        G[p:, p:] = y.T @ y
        return np.concatenate([cross[:, t], y.sum(0)]), G
    if isinstance(Z, np.ndarray):
        return np.ones(Z.shape[0]) @ Z, _raw_gram(Z)  # BLAS: faster than sum(0)
    return Z.sum(0), _raw_gram(Z)


def _outer(v: Any) -> Any:
    return v[:, None] * v[None, :]


def _batch_moments(Z: Any, w: Any, s: Any, in_range: bool) -> tuple[float, Any, Any]:
    """Weighted count, mean and centred cross-products of ``Z * s`` (numpy or torch alike;
    ``Z`` may be a pair of numpy column blocks).

    ``s``: powers of two per column. While products stay in range (``in_range``, no
    weights) the scaling commutes with every rounding: the mean and Gram are scaled, not a
    copy of the batch (same bits).
    """
    if w is None and in_range:
        n = float(_rows(Z))
        sums, G = _sums_and_gram(Z)
        mb = sums / n * s
        C = G * _outer(s) - n * _outer(mb)
        Zs = None  # the scaled batch, formed only if needed below
    else:
        Z = np.hstack(Z) if isinstance(Z, tuple) else Z
        Zs = Z * s  # exact
        if w is None:
            n, mb, A = float(Z.shape[0]), Zs.mean(0), Zs
        else:
            n = float(w.sum())
            mb = (w @ Zs) / n
            A = Zs * (w**0.5)[:, None]
        # raw Gram minus the mean's share: no centred copy of the batch
        C = _raw_gram(A) - n * _outer(mb)
    # where a column's mean dwarfs its spread the subtraction cancels digits: centre
    if bool((n * mb * mb > CANCELLATION_RATIO * C.diagonal()).any()):
        Z = np.hstack(Z) if isinstance(Z, tuple) else Z
        Ac = (Z * s if Zs is None else Zs) - mb
        C = _raw_gram(Ac if w is None else Ac * (w**0.5)[:, None])
    return n, mb, C


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
    with reading_threads():
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
