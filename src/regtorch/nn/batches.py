"""Where the training loop takes its batches from: tensors in memory, or a streamed table.

Both providers give the loop the same things: ``epoch(generator, index)``, an iterator of
``(xb, yb)`` on the device (``(xb, yb, wb)`` when ``weighted``: sample weights, the loss
then the weighted mean over the batch); the validation rows; the epoch's loss from the device-side
running sum (reduced over ranks once per epoch when streamed); and a ``state_dict`` with what
a checkpoint must match. Positions inside the data are always epoch boundaries: an epoch's
order depends only on its index and the loop's generator, which checkpoints keep.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from regtorch import distributed
from regtorch._validation import as_float_tensor, check_X_y_tensors, resolve_device

__all__ = ["StreamBatches", "TensorBatches", "WeightedLoss", "tensor_batches"]

Pair = tuple[torch.Tensor, torch.Tensor]


class WeightedLoss:
    """``loss_fn``'s weighted mean over rows: ``sum(w_i * l_i) / sum(w)``, ``l_i`` the mean
    of row ``i``'s elementwise losses; without weights, ``loss_fn`` itself. With integer
    weights it is the loss of the rows repeated that many times.

    Examples
    --------
    >>> f = WeightedLoss(nn.MSELoss())
    >>> float(f(torch.zeros(2, 1), torch.tensor([[1.0], [2.0]]), torch.tensor([3.0, 1.0])))
    1.75
    """

    def __init__(self, loss_fn: nn.Module) -> None:
        if not isinstance(getattr(loss_fn, "reduction", None), str):
            raise ValueError(
                "Sample weights need a loss with a 'reduction' (mse, mae, huber, smooth_l1 or "
                f"a torch loss module); {type(loss_fn).__name__} has none."
            )
        self.loss_fn = loss_fn
        rowwise: Any = copy.copy(loss_fn)
        rowwise.reduction = "none"
        self.rowwise = rowwise

    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor | None = None
    ) -> torch.Tensor:
        if w is None:
            return cast(torch.Tensor, self.loss_fn(pred, target))
        rows = self.rowwise(pred, target).reshape(len(pred), -1).mean(1)
        # zero-weight rows drop out even when their loss is infinite
        rows = torch.where(w > 0, rows, torch.zeros((), dtype=rows.dtype, device=rows.device))
        return (rows * w).sum() / w.sum()


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
        self.weighted = False
        self.w: torch.Tensor | None = None
        self.w_val: torch.Tensor | None = None

    def set_weights(self, w: Any | None, w_val: Any | None = None) -> None:
        """Weight the training rows by ``w`` (n,) and the validation rows by ``w_val``
        (None: unweighted validation); non-negative, some positive."""
        if w is None:
            raise ValueError("sample_weight_val needs sample_weight for the training rows.")
        self.w = _weights(w, self.n_rows, "sample_weight", self.X)
        if w_val is not None:
            if self._val is None:
                raise ValueError("sample_weight_val was given without validation data.")
            self.w_val = _weights(w_val, len(self._val[0]), "sample_weight_val", self.X)
        self.weighted = True

    def full(self) -> tuple[torch.Tensor, ...]:
        """Every training row (full-batch steps and L-BFGS closures), with the weights."""
        return (self.X, self.y) if self.w is None else (self.X, self.y, self.w)

    def epoch(self, generator: torch.Generator, index: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """One epoch's mini-batches in a fresh random order."""
        n, bs = self.n_rows, self.batch_size
        perm = torch.randperm(n, generator=generator).to(self.device)
        if self.w is not None:  # a separate loop: the unweighted one stays as fast
            for i in range(0, n, bs):
                idx = perm[i : i + bs]
                yield self.X[idx], self.y[idx], self.w[idx]
            return
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
        if self.w_val is not None:
            return loss_fn(module(self._val[0]), self._val[1], self.w_val)
        return loss_fn(module(self._val[0]), self._val[1])

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint of this run must match (``weighted`` only when it is)."""
        out = {"rows": self.n_rows, "batch": self.batch_size, "world": 1}
        return {**out, "weighted": True} if self.weighted else out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of other data or another batch size."""
        _same(state, self.state_dict())


def _weights(w: Any, n: int, name: str, like: torch.Tensor) -> torch.Tensor:
    """Sample weights as a (n,) tensor like ``like``'s; finite, non-negative, some positive."""
    wt = torch.as_tensor(w).detach().reshape(-1)
    if len(wt) != n:
        raise ValueError(f"{name} has {len(wt)} values for {n} rows.")
    wt = wt.to(dtype=torch.float64)
    if not bool(torch.isfinite(wt).all()) or bool((wt < 0).any()):
        raise ValueError(f"{name} must be finite and non-negative.")
    top = float(wt.max())
    if not top > 0:
        raise ValueError(f"{name} must contain at least one non-zero weight; all are zero.")
    # only ratios matter: a power of two brings the largest near 1 (exact), so float32 holds it
    wt = wt * math.ldexp(1.0, -math.frexp(top)[1])
    return wt.to(device=like.device, dtype=like.dtype)


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
    if bool(saved.get("weighted", False)) != bool(now.get("weighted", False)):
        had = "with" if saved.get("weighted") else "without"
        raise ValueError(
            f"it was written {had} sample weights; resume with the same data and weights"
        )
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
    weight_scale : float
        With a weighted source (``source.weight``), the batches' ``w`` times this (a power of
        two bringing the weights near 1 for float32): the training and validation losses
        are then weighted means, and rows of weight 0 are skipped.
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
        weight_scale: float = 1.0,
    ) -> None:
        self.source, self.keep, self.missing = source, keep, missing
        self.weighted = getattr(source, "weight", None) is not None
        self.weight_scale = float(weight_scale)
        self.k = len(source.targets)
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

    def _scaled(self, Z: np.ndarray, w: np.ndarray | None = None) -> torch.Tensor:
        # one float64 temporary, scaled in place, then one cast
        out = np.subtract(Z, self.mean)
        np.divide(out, self.scale, out=out)
        if self.weighted:  # the weights ride along as a last column
            out = np.column_stack([out, np.asarray(w, dtype=np.float64) * self.weight_scale])
        return torch.from_numpy(out.astype(np.float32)).to(self.device, self.dtype)

    def _select(self, b: Any, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The mask ``sel`` less the rows of weight 0 (they count for nothing), and ``b.w``."""
        if not self.weighted:
            return sel, None
        w = np.asarray(b.w, dtype=np.float64)
        return sel & (w > 0), w

    def _validation_rows(self, is_val: Callable[[np.ndarray], np.ndarray], limit: int) -> Any:
        parts, kept = [], 0
        for b in self.source.batches(self.missing):
            if kept >= limit:
                break
            sel, w = self._select(b, is_val(b.rows))
            if sel.any():
                n = limit - kept
                parts.append(self._scaled(b.Z[sel][:n], None if w is None else w[sel][:n]))
                kept += len(parts[-1])
        width = self.p + self.k + self.weighted
        if not parts:
            return torch.zeros(0, width, device=self.device, dtype=self.dtype)
        return torch.cat(parts)

    def epoch(self, generator: torch.Generator, index: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """This rank's ``n_steps`` mini-batches, drawn from a bounded shuffle buffer.

        The buffer is cut from the stream of training rows at fixed multiples of
        ``buffer_rows``, so the batches do not depend on how the source sizes its reads.
        """
        from regtorch.data.prefetch import prefetch

        p = self.p
        taken = 0
        width = p + self.k + self.weighted
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
            sel, w = self._select(b, self.keep(b.rows))
            if sel.all():
                yield self._scaled(b.Z, w)  # no copy of the batch when every row trains
            elif sel.any():
                yield self._scaled(b.Z[sel], None if w is None else w[sel])

    def _draw(
        self, buf: torch.Tensor, gen: torch.Generator, limit: int
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Up to ``limit`` shuffled batches of ``buf``; features and targets held apart
        (contiguous), so each batch is one gather from each, as in memory."""
        bs = self.batch_size
        if limit <= 0 or len(buf) < bs:
            return
        p, k = self.p, self.k
        X, Y = buf[:, :p].contiguous(), buf[:, p : p + k].contiguous()
        perm = torch.randperm(len(buf), generator=gen).to(self.device)
        stop = min(len(buf) - bs + 1, limit * bs)
        if self.weighted:
            W = buf[:, p + k].contiguous()
            for i in range(0, stop, bs):
                idx = perm[i : i + bs]
                yield X[idx], Y[idx], W[idx]
            return
        for i in range(0, stop, bs):
            idx = perm[i : i + bs]
            yield X[idx], Y[idx]

    def epoch_loss(self, total: torch.Tensor, count: int) -> torch.Tensor:
        """Mean loss per row over every rank's rows (one reduction per epoch)."""
        t_sum, t_n = distributed.reduce_sum([float(total), float(count)])
        # count: rows, or the weight summed over the rows (a float that may be below 1)
        mean = t_sum / t_n if t_n > 0 else math.nan
        return torch.tensor(mean, dtype=total.dtype, device=total.device)

    def validation_loss(self, module: nn.Module, loss_fn: nn.Module) -> torch.Tensor | None:
        """The validation loss over every rank's validation rows, or None without any."""
        if not self.has_validation:
            return None
        V, p, k = self._val, self.p, self.k
        if self.weighted:
            W = V[:, p + k]
            total = float(W.sum())
            local = float(loss_fn(module(V[:, :p]), V[:, p : p + k], W)) * total if len(V) else 0.0
        else:
            total = float(len(V))
            local = float(loss_fn(module(V[:, :p]), V[:, p:])) * total if len(V) else 0.0
        v_sum, v_n = distributed.reduce_sum([local, total])
        return torch.tensor(v_sum / v_n if v_n else math.nan, dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint of this run must match (its position is the epoch boundary),
        and the sizes that shape the batches."""
        out = {
            "rows": self.n_rows,
            "batch": self.batch_size,
            "world": self.world,
            "buffer": self.buffer_rows,
            "val_limit": self.val_limit,
        }
        return {**out, "weighted": True} if self.weighted else out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of other data, batch size or number of processes; take its
        buffer and validation sizes (defaults from the memory free at the time)."""
        now = self.state_dict()
        _same(state, {k: now[k] for k in ("rows", "batch", "world", "weighted") if k in now})
        self.buffer_rows = int(state.get("buffer", self.buffer_rows))
        limit = int(state.get("val_limit", self.val_limit))
        if limit != self.val_limit:
            self.val_limit = limit
            self._val = self._validation_rows(self.is_val, limit)
