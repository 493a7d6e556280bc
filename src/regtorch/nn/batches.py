"""Where the training loop takes its batches from: tensors in memory, or a streamed table.

Both providers give the loop the same things: ``epoch(generator, index)``, an iterator of
``(xb, yb)`` on the device; the validation rows; the epoch's loss from the device-side
running sum (reduced over ranks once per epoch when streamed); and a ``state_dict`` with what
a checkpoint must match. Positions inside the data are always epoch boundaries: an epoch's
order depends only on its index and the loop's generator, which checkpoints keep.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from regtorch import distributed
from regtorch._validation import as_float_tensor, check_X_y_tensors, resolve_device

__all__ = ["StreamBatches", "TensorBatches", "tensor_batches"]

Pair = tuple[torch.Tensor, torch.Tensor]


class TensorBatches:
    """Tensors already on the device: a ``randperm`` per epoch and a gather per batch.

    ``batch_size=None`` (or at least the row count) trains full batch, which L-BFGS needs.

    Examples
    --------
    >>> b = TensorBatches(torch.zeros(10, 2), torch.zeros(10, 1), batch_size=4)
    >>> [len(xb) for xb, _ in b.epoch(torch.Generator().manual_seed(0), 0)]
    [4, 4, 2]
    """

    world = 1

    def __init__(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        batch_size: int | None = None,
        X_val: torch.Tensor | None = None,
        y_val: torch.Tensor | None = None,
    ) -> None:
        self.X, self.y = X, y
        self.n_rows = int(X.shape[0])
        self.batch_size = self.n_rows if batch_size is None else min(int(batch_size), self.n_rows)
        self.full_batch = self.batch_size >= self.n_rows
        self.device = X.device
        self._val = None if X_val is None or y_val is None else (X_val, y_val)
        self.has_validation = self._val is not None

    def full(self) -> Pair:
        """Every training row (full-batch steps and L-BFGS closures)."""
        return self.X, self.y

    def epoch(self, generator: torch.Generator, index: int) -> Iterator[Pair]:
        """One epoch's mini-batches in a fresh random order."""
        n, bs = self.n_rows, self.batch_size
        perm = torch.randperm(n, generator=generator).to(self.device)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]  # gather per batch: stays in cache, no full copy
            yield self.X[idx], self.y[idx]

    def epoch_loss(self, total: torch.Tensor, count: int) -> torch.Tensor:
        """Mean loss per row from the epoch's running sum (stays on the device)."""
        return total / count

    def validation_loss(self, module: nn.Module, loss_fn: nn.Module) -> torch.Tensor | None:
        """The validation loss (on the device), or None without validation data."""
        if self._val is None:
            return None
        return loss_fn(module(self._val[0]), self._val[1])

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint of this run must match."""
        return {"rows": self.n_rows, "batch": self.batch_size, "world": 1}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of other data or another batch size."""
        _same(state, self.state_dict())


def tensor_batches(
    X: Any,
    y: Any,
    X_val: Any,
    y_val: Any,
    batch_size: int | None,
    optimizer: str,
    device: str | torch.device,
    dtype: torch.dtype,
) -> TensorBatches:
    """Check the in-memory data and put it on the device as a ``TensorBatches``."""
    if X is None or y is None:
        raise ValueError("Pass the training data: X and y (or batches).")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if optimizer == "lbfgs" and batch_size is not None:
        raise ValueError("optimizer='lbfgs' needs full-batch training: set batch_size=None.")
    if (X_val is None) != (y_val is None):
        raise ValueError("Pass both X_val and y_val, or neither.")
    dev = resolve_device(device)
    Xt, yt = _prepare(X, y, dev, ("X", "y"), dtype)
    Xv = yv = None
    if X_val is not None:
        Xv, yv = _prepare(X_val, y_val, dev, ("X_val", "y_val"), dtype)
        if Xv.shape[1] != Xt.shape[1] or yv.shape[1] != yt.shape[1]:
            raise ValueError(
                f"Validation data has {Xv.shape[1]} features and {yv.shape[1]} targets, but "
                f"the training data has {Xt.shape[1]} and {yt.shape[1]}."
            )
    return TensorBatches(Xt, yt, batch_size, Xv, yv)


def _prepare(
    X: torch.Tensor | Any,
    y: torch.Tensor | Any,
    device: torch.device,
    names: tuple[str, str],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    Xt = as_float_tensor(X, name=names[0], dtype=dtype)
    yt = as_float_tensor(y, name=names[1], dtype=dtype)
    Xt, yt = check_X_y_tensors(Xt, yt, x_name=names[0], y_name=names[1])
    return Xt.to(device), yt.to(device)


def _same(saved: dict[str, Any], now: dict[str, Any]) -> None:
    for key, value in now.items():
        if saved.get(key) != value:
            what = {"world": "processes", "rows": "training rows", "batch": "rows per batch"}
            raise ValueError(
                f"it was written with {saved.get(key)} {what.get(key, key)}, this run has "
                f"{value}; resume with the same data, batch size and number of processes"
            )


class StreamBatches:
    """Training batches streamed from a table source, under ``torchrun`` too.

    Parameters
    ----------
    source : TableSource or ArraySource
        Yields this rank's ``Batch`` es (``.batches(missing, epoch_seed)``).
    keep : callable
        ``keep(rows) -> bool mask`` of the training rows (the split rule).
    is_val : callable
        ``is_val(rows) -> bool mask`` of the validation rows.
    mean, scale : ndarray
        Standardisation of the ``[X, y]`` columns.
    train_rows : int
        This rank's training rows (from the statistics pass).
    batch_size : int
        Global rows per step; each of the ``world`` ranks takes ``batch_size // world``.
    seed : int
        Seeds the order of the row groups in each epoch (with the epoch's index).
    shuffle_rows : int
        Rows of the shuffle buffer.
    max_val_rows : int
        Validation rows kept in memory on each rank.
    """

    full_batch = False

    def __init__(
        self,
        source: Any,
        *,
        keep: Callable[[np.ndarray], np.ndarray],
        is_val: Callable[[np.ndarray], np.ndarray],
        mean: np.ndarray,
        scale: np.ndarray,
        train_rows: int,
        batch_size: int,
        seed: int,
        shuffle_rows: int,
        max_val_rows: int,
        missing: str = "error",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.source, self.keep, self.missing = source, keep, missing
        self.rank, self.world = distributed.rank_world()
        self.p = len(source.features)
        self.mean, self.scale = mean, scale
        self.device, self.dtype, self.seed = torch.device(device), dtype, int(seed)
        self.batch_size = max(1, int(batch_size) // self.world)
        # every rank takes the same number of steps per epoch (the fewest any rank can fill),
        # so each step averages exactly `batch_size * world` rows across ranks
        self.n_steps = int(distributed.reduce_min(train_rows // self.batch_size))
        if self.n_steps < 1:
            from regtorch.data.readers import DataError

            units = len(getattr(source, "units", ())) or "few"
            raise DataError(
                f"A rank has fewer than {self.batch_size} training rows: use fewer processes "
                f"(at most one per Parquet row group; this table has {units}) or a smaller "
                "--batch-size."
            )
        self.n_rows = self.n_steps * self.batch_size
        # a whole number of batches
        self.buffer_rows = max(int(shuffle_rows) // self.batch_size, 1) * self.batch_size
        self.is_val, self.val_limit = is_val, int(max_val_rows)
        self._val = self._validation_rows(is_val, self.val_limit)
        self.has_validation = distributed.reduce_sum([float(len(self._val))])[0] > 0

    def _scaled(self, Z: np.ndarray) -> torch.Tensor:
        # one float64 temporary, scaled in place, then one cast
        out = np.subtract(Z, self.mean)
        np.divide(out, self.scale, out=out)
        return torch.from_numpy(out.astype(np.float32)).to(self.device, self.dtype)

    def _validation_rows(self, is_val: Callable[[np.ndarray], np.ndarray], limit: int) -> Any:
        parts, kept = [], 0
        for b in self.source.batches(self.missing):
            if kept >= limit:
                break
            sel = is_val(b.rows)
            if sel.any():
                parts.append(self._scaled(b.Z[sel][: limit - kept]))
                kept += len(parts[-1])
        width = self.p + len(self.source.targets)
        if not parts:
            return torch.zeros(0, width, device=self.device, dtype=self.dtype)
        return torch.cat(parts)

    def epoch(self, generator: torch.Generator, index: int) -> Iterator[Pair]:
        """This rank's ``n_steps`` mini-batches, drawn from a bounded shuffle buffer.

        The buffer is cut from the stream of training rows at fixed multiples of
        ``buffer_rows``, so the batches do not depend on how the source sizes its reads.
        """
        from regtorch.data.prefetch import prefetch

        p = self.p
        taken = 0
        width = p + len(self.source.targets)
        chunks = [torch.zeros(0, width, device=self.device, dtype=self.dtype)]
        held = 0
        # the next batch is read, selected and scaled in a thread while this one trains;
        # rows wait as a list of chunks, joined once per buffer
        for rows in prefetch(self._training_rows(index)):
            chunks.append(rows)
            held += len(rows)
            while held >= self.buffer_rows and taken < self.n_steps:
                carry = torch.cat(chunks)
                buf, rest = carry[: self.buffer_rows], carry[self.buffer_rows :]
                chunks, held = [rest], len(rest)
                for pair in self._draw(buf, generator, self.n_steps - taken):
                    taken += 1
                    yield pair
            if taken >= self.n_steps:
                return
        yield from self._draw(torch.cat(chunks), generator, self.n_steps - taken)

    def _training_rows(self, index: int) -> Iterator[torch.Tensor]:
        """This rank's training rows of epoch ``index``, scaled, in reading order."""
        for b in self.source.batches(self.missing, epoch_seed=self.seed * 7919 + index):
            sel = self.keep(b.rows)
            if sel.all():
                yield self._scaled(b.Z)  # no copy of the batch when every row trains
            elif sel.any():
                yield self._scaled(b.Z[sel])

    def _draw(self, buf: torch.Tensor, gen: torch.Generator, limit: int) -> Iterator[Pair]:
        """Up to ``limit`` shuffled batches of ``buf``; features and targets held apart
        (contiguous), so each batch is one gather from each, as in memory."""
        bs = self.batch_size
        if limit <= 0 or len(buf) < bs:
            return
        X, Y = buf[:, : self.p].contiguous(), buf[:, self.p :].contiguous()
        perm = torch.randperm(len(buf), generator=gen).to(self.device)
        for i in range(0, min(len(buf) - bs + 1, limit * bs), bs):
            idx = perm[i : i + bs]
            yield X[idx], Y[idx]

    def epoch_loss(self, total: torch.Tensor, count: int) -> torch.Tensor:
        """Mean loss per row over every rank's rows (one reduction per epoch)."""
        t_sum, t_n = distributed.reduce_sum([float(total), float(count)])
        return torch.tensor(t_sum / max(t_n, 1.0), dtype=total.dtype, device=total.device)

    def validation_loss(self, module: nn.Module, loss_fn: nn.Module) -> torch.Tensor | None:
        """The validation loss over every rank's validation rows, or None without any."""
        if not self.has_validation:
            return None
        V, p = self._val, self.p
        local = float(loss_fn(module(V[:, :p]), V[:, p:])) * len(V) if len(V) else 0.0
        v_sum, v_n = distributed.reduce_sum([local, float(len(V))])
        return torch.tensor(v_sum / v_n if v_n else math.nan, dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint of this run must match (its position is the epoch boundary),
        and the sizes that shape the batches."""
        return {
            "rows": self.n_rows,
            "batch": self.batch_size,
            "world": self.world,
            "buffer": self.buffer_rows,
            "val_limit": self.val_limit,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of other data, batch size or number of processes; take its
        buffer and validation sizes (defaults from the memory free at the time)."""
        now = self.state_dict()
        _same(state, {k: now[k] for k in ("rows", "batch", "world")})
        self.buffer_rows = int(state.get("buffer", self.buffer_rows))
        limit = int(state.get("val_limit", self.val_limit))
        if limit != self.val_limit:
            self.val_limit = limit
            self._val = self._validation_rows(self.is_val, limit)
