"""Fitting data larger than memory: tables read in batches with pyarrow, mergeable states.

A :class:`TableSource` streams a Parquet file, a folder of Parquet files or a CSV in batches
sized by a memory budget; in a ``torch.distributed`` process group each rank reads its own
share (Parquet row groups round-robin, CSV batches round-robin). Linear models accumulate
:class:`MomentState` (count, mean, centred cross-products of ``[X, y]``; merged with Chan's
formula, never raw sums of squares), reduced across ranks in rank order so every rank holds
the same answer.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from regtorch.data import DataError, _listing, _no_duplicates
from regtorch.training import _num_threads

__all__ = [
    "MomentState",
    "TableSource",
    "default_memory_limit",
    "parse_memory",
    "stream_fit_linear",
]

# a one-pass fit takes a second, QR pass above this condition number of the scaled Gram
STREAM_QR_COND = 1e6
# and warns above this one if the QR pass was not possible
STREAM_COND_WARN = 1e8
# centre a batch explicitly when a column's squared mean exceeds its variance this many times
CANCELLATION_RATIO = 1e3
# bytes held per value of a batch: the Arrow batch, the float64 copy, a centred copy, slack
BYTES_PER_VALUE = 8 * 8
# CSV blocks read at a time (the same on every rank)
CSV_BLOCK_BYTES = 1 << 23


def default_memory_limit() -> int:
    """A quarter of the machine's memory."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    except (ValueError, OSError, AttributeError):
        return 2 * 1024**3


def parse_memory(text: str) -> int:
    """``"2GB"``, ``"512MB"``, ``"1.5G"`` or bytes -> bytes."""
    t = text.strip().upper().replace("IB", "B")
    units = {
        "KB": 1024,
        "MB": 1024**2,
        "GB": 1024**3,
        "TB": 1024**4,
        "K": 1024,
        "M": 1024**2,
        "G": 1024**3,
        "T": 1024**4,
        "B": 1,
    }
    value = None
    for u in sorted(units, key=len, reverse=True):
        if t.endswith(u):
            try:
                value = float(t[: -len(u)]) * units[u]
            except ValueError:
                pass
            break
    else:
        try:
            value = float(t)
        except ValueError:
            pass
    if value is None or not math.isfinite(value) or value <= 0:
        raise ValueError(f"Cannot read the memory size {text!r}; write e.g. 2GB or 512MB.")
    return int(value)


def _resident_bytes() -> int:
    """This process's resident memory now (Linux; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _batch_matrix(rb: Any, cols: list[str]) -> np.ndarray:
    """A record batch's columns as one column-major float64 matrix (nulls become NaN)."""
    import pyarrow as pa

    try:  # one C++ copy for all columns; bool columns are not supported there
        Z = np.asarray(rb.select(cols).to_tensor(null_to_nan=True, row_major=False))
        return Z if Z.dtype == np.float64 else Z.astype(np.float64, order="F")
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, TypeError):
        Z = np.empty((rb.num_rows, len(cols)), dtype=np.float64, order="F")
        for j, c in enumerate(cols):
            Z[:, j] = rb.column(c).to_numpy(zero_copy_only=False)
        return Z


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _hash01(index: np.ndarray, seed: int) -> np.ndarray:
    """A seeded hash of row indices to [0, 1) (splitmix64): splits need no global view."""
    z = index.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


@dataclass
class Batch:
    """Rows of a table: ``Z = [X, y]`` (n, p + k), column-major, and global row indices."""

    Z: np.ndarray
    rows: np.ndarray
    p: int

    @property
    def X(self) -> np.ndarray:
        return self.Z[:, : self.p]

    @property
    def y(self) -> np.ndarray:
        return self.Z[:, self.p :]


class TableSource:
    """A table too large for memory, read in batches.

    Parameters
    ----------
    path : path
        A Parquet file, a folder of Parquet files, or a CSV file.
    target : str or list of str
    features : list of str or None
        Default: every other numeric column.
    memory_limit : int or None
        Bytes; decides the batch size. Default: a quarter of the machine's memory.
    batch_rows : int or None
        Overrides the size derived from ``memory_limit``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        target: str | list[str],
        features: list[str] | None = None,
        memory_limit: int | None = None,
        batch_rows: int | None = None,
        sep: str | None = None,
    ) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file or folder.")
        self.targets = [target] if isinstance(target, str) else list(target)
        self.sep = sep
        if self.path.is_dir():
            self.files = sorted(
                p for p in self.path.rglob("*") if p.suffix.lower() in (".parquet", ".pq")
            )
            if not self.files:
                raise DataError(f"{self.path} holds no .parquet files.")
            self.kind = "parquet"
        elif self.path.suffix.lower() in (".parquet", ".pq"):
            self.files, self.kind = [self.path], "parquet"
        elif self.path.suffix.lower() in (".csv", ".tsv", ".txt"):
            self.files, self.kind = [self.path], "csv"
        else:
            raise DataError(f"{self.path}: streaming reads Parquet files, folders of them, or CSV.")
        if self.kind == "parquet":
            try:
                metas = [pq.ParquetFile(f).metadata for f in self.files]
                schema = pq.ParquetFile(self.files[0]).schema_arrow
            except Exception as exc:
                raise DataError(f"{self.path}: not readable as Parquet ({exc}).") from exc
            self.n_rows: int | None = sum(m.num_rows for m in metas)
            # (file, row group, first global row): the unit of work shared among ranks
            self.units: list[tuple[Path, int, int]] = []
            start = 0
            for f, m in zip(self.files, metas):
                for g in range(m.num_row_groups):
                    self.units.append((f, g, start))
                    start += m.row_group(g).num_rows
            names, types = list(schema.names), {n: schema.field(n).type for n in schema.names}
        else:
            names, types = self._csv_schema()
            self.n_rows = None
            self.units = []
        self.file_bytes = sum(f.stat().st_size for f in self.files)
        _no_duplicates(self.targets, "target")
        absent = [t for t in self.targets if t not in names]
        if absent:
            raise DataError(
                f"Target column {', '.join(map(repr, absent))} not found; {_listing(names)}"
            )
        import pyarrow.types as pat

        def numeric(n: str) -> bool:
            t = types[n]
            # a CSV column empty in its first block reads as null: checked when converting
            return bool(
                pat.is_integer(t) or pat.is_floating(t) or pat.is_boolean(t) or pat.is_null(t)
            )

        for t in self.targets:
            if not numeric(t):
                raise DataError(f"Target column {t!r} is not numeric; regression needs a number.")
        feats = [n for n in names if n not in self.targets] if features is None else list(features)
        _no_duplicates(feats, "feature")
        absent = [f for f in feats if f not in names]
        if absent:
            raise DataError(
                f"Feature column(s) {', '.join(map(repr, absent))} not found; {_listing(names)}"
            )
        text = [f for f in feats if not numeric(f)]
        if text:
            raise DataError(
                f"Non-numeric feature column(s) {', '.join(map(repr, text))}: streaming fits take "
                "numeric columns only; drop them with --features."
            )
        self.features = feats
        width = len(feats) + len(self.targets)
        budget = memory_limit or default_memory_limit()
        self.memory_limit = budget
        # the budget is for the whole process: what is already resident (Python, torch,
        # pyarrow) is not available to batches, and Parquet decodes a row group whole
        held, group = _resident_bytes(), self._largest_row_group_bytes(width)
        free = budget - held - group
        if batch_rows is None and free < BYTES_PER_VALUE * width * 4096:
            raise DataError(
                f"A memory limit of {budget / 2**20:.0f} MiB is too small: this process already "
                f"holds {held / 2**20:.0f} MiB and a row group decodes to {group / 2**20:.0f} "
                "MiB; allow more memory (e.g. --memory-limit 2GB)."
            )
        # at most 64k rows: larger batches fall out of cache and slow the Gram (measured)
        self.batch_rows = int(batch_rows or min(1 << 16, free // (BYTES_PER_VALUE * width)))

    def _largest_row_group_bytes(self, width: int) -> int:
        if self.kind != "parquet" or not self.units:
            return 0
        import pyarrow.parquet as pq

        rows = max(pq.ParquetFile(f).metadata.row_group(g).num_rows for f, g, _ in self.units[:256])
        return int(rows * width * 8)

    def _csv_schema(self) -> tuple[list[str], dict[str, Any]]:

        reader = self._csv_reader(1 << 16)
        schema = reader.schema
        return list(schema.names), {n: schema.field(n).type for n in schema.names}

    def _csv_reader(self, block: int, columns: list[str] | None = None) -> Any:
        import csv

        import pyarrow as pa
        import pyarrow.csv as pcsv

        sep = self.sep
        if sep is None:
            with self.files[0].open("r", newline="", encoding="utf-8", errors="replace") as fh:
                head = fh.read(65536)
            head = head[: head.rfind("\n") + 1] or head  # whole lines only
            try:
                sep = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
            except csv.Error:
                sep = ","
        self.sep = sep
        convert = pcsv.ConvertOptions()
        if columns is not None:  # read only the used columns, all as float64
            convert = pcsv.ConvertOptions(
                include_columns=columns, column_types={c: pa.float64() for c in columns}
            )
        return pcsv.open_csv(
            self.files[0],
            read_options=pcsv.ReadOptions(block_size=block),
            parse_options=pcsv.ParseOptions(delimiter=sep, newlines_in_values=True),
            convert_options=convert,
        )

    def _to_numpy(self, rb: Any, first_row: int, missing: str) -> Batch:
        cols = self.features + self.targets
        n = rb.num_rows
        Z = _batch_matrix(rb, cols)
        rows = np.arange(first_row, first_row + n, dtype=np.int64)
        bad = ~np.isfinite(Z)
        if bad.any():
            if missing != "drop":
                counts = {cols[j]: int(v) for j, v in enumerate(bad.sum(0)) if v}
                listing = ", ".join(f"{c!r} ({v})" for c, v in counts.items())
                raise DataError(
                    f"Missing or infinite values in column(s) {listing} in rows "
                    f"{first_row}..{first_row + n - 1}; fix them or use --missing drop."
                )
            keep = ~bad.any(1)
            Z, rows = Z[keep], rows[keep]
        return Batch(Z, rows, len(self.features))

    def batches(self, missing: str = "error", epoch_seed: int | None = None) -> Iterator[Batch]:
        """This rank's batches; with ``epoch_seed`` the row groups come in a shuffled order."""
        rank, world = _rank_world()
        cols = self.features + self.targets
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            units = self.units[rank::world]
            if epoch_seed is not None:
                order = np.random.default_rng(epoch_seed).permutation(len(units))
                units = [units[i] for i in order]
            handles: dict[Path, Any] = {}
            for f, g, start in units:
                pf = handles.setdefault(f, pq.ParquetFile(f))
                offset = start
                for rb in pf.iter_batches(
                    batch_size=self.batch_rows, row_groups=[g], columns=cols, use_threads=True
                ):
                    yield self._to_numpy(rb, offset, missing)
                    offset += rb.num_rows
            return
        import pyarrow as pa

        # a fixed block size: every rank must cut the file into the same blocks, so that the
        # round robin below partitions the rows
        reader = self._csv_reader(CSV_BLOCK_BYTES, cols)
        offset = 0
        try:
            for i, rb in enumerate(reader):
                if i % world == rank:
                    yield self._to_numpy(rb.select(cols), offset, missing)
                offset += rb.num_rows
        except pa.ArrowInvalid as exc:
            raise DataError(
                f"{self.path}: a used column holds a value that is not a number ({exc}); fix it "
                "or leave that column out with --features."
            ) from exc


@dataclass
class MomentState:
    """Mergeable moments of ``Z = [X, y]``: count, mean and centred cross-products.

    ``update`` with batches, ``merge`` states from other ranks (Chan et al.'s parallel
    formula), then read the centred Gram, ``X'y`` and ``y'y`` for the solvers.
    """

    n: float = 0.0
    mean: torch.Tensor | None = None  # (m,)
    C: torch.Tensor | None = None  # (m, m)

    def update(self, Z: torch.Tensor) -> None:
        """Add a batch ``(rows, m)`` in float64."""
        if Z.shape[0] == 0:
            return
        n = float(Z.shape[0])
        mb = Z.mean(0)
        # raw Gram minus the mean's share: no centred copy of the batch; where a column's
        # mean dwarfs its spread that subtraction would cancel digits, so centre instead
        C = Z.mT @ Z - n * torch.outer(mb, mb)
        spread = C.diagonal()
        if bool((n * mb.square() > CANCELLATION_RATIO * spread.clamp_min(1e-300)).any()):
            Zc = Z - mb
            C = Zc.mT @ Zc
        self.merge(MomentState(n, mb, C))

    def merge(self, other: MomentState) -> None:
        """Fold ``other`` into this state."""
        if other.n == 0 or other.mean is None or other.C is None:
            return
        if self.n == 0 or self.mean is None or self.C is None:
            self.n, self.mean, self.C = other.n, other.mean.clone(), other.C.clone()
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.C = self.C + other.C + torch.outer(delta, delta) * (self.n * other.n / n)
        self.mean = self.mean + delta * (other.n / n)
        self.n = n

    def to_tensor(self, m: int) -> torch.Tensor:
        """Flat ``[n, mean, C]`` for collective communication."""
        if self.mean is None or self.C is None:
            return torch.zeros(1 + m + m * m, dtype=torch.float64)
        return torch.cat([torch.tensor([self.n], dtype=torch.float64), self.mean, self.C.flatten()])

    @classmethod
    def from_tensor(cls, t: torch.Tensor, m: int) -> MomentState:
        n = float(t[0])
        if n == 0:
            return cls()
        return cls(n, t[1 : 1 + m].clone(), t[1 + m :].reshape(m, m).clone())

    def all_reduce(self, m: int) -> MomentState:
        """Merge every rank's state, in rank order (the same result on every rank)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        mine = self.to_tensor(m)
        parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, mine)
        total = MomentState()
        for t in parts:
            total.merge(MomentState.from_tensor(t, m))
        return total


class _Progress:
    """Rows per second and an ETA on stderr (rank 0, in a terminal or when forced)."""

    def __init__(self, total: int | None, show: bool, desc: str) -> None:
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="rows", unit_scale=True, desc=desc, leave=False)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _prefetch(it: Iterator[Batch], depth: int = 1) -> Iterator[Batch]:
    """Read the next batches in a thread while this one is reduced (pyarrow and the GEMM
    release the GIL); at most ``depth`` batches wait, so memory stays bounded."""
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for b in it:
                if not put(b):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


def _accumulate(
    source: TableSource,
    keep: Callable[[np.ndarray], np.ndarray] | None,
    missing: str,
    progress: bool,
    desc: str,
) -> tuple[MomentState, int]:
    state = MomentState()
    rank, world = _rank_world()
    total = None if source.n_rows is None else source.n_rows // world
    bar = _Progress(total, progress and rank == 0, desc)
    # one torch thread: pyarrow's decoding threads keep the other cores busy (measured faster)
    with _num_threads(1):
        return _accumulate_loop(source, keep, missing, state, bar)


def _accumulate_loop(
    source: TableSource,
    keep: Callable[[np.ndarray], np.ndarray] | None,
    missing: str,
    state: MomentState,
    bar: _Progress,
) -> tuple[MomentState, int]:
    seen = 0
    try:
        for b in _prefetch(source.batches(missing)):
            Z = b.Z if keep is None else b.Z[keep(b.rows)]
            state.update(torch.from_numpy(Z))
            seen += len(b.rows)
            bar.update(len(b.rows))
    finally:
        bar.close()
    return state, seen


def _solve_gram_quietly(gs: Any, alpha: float) -> Any:
    """solve_from_state without its warnings: the caller decides (it may take the QR path)."""
    from regtorch.solvers import solve_from_state

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return solve_from_state(gs, alpha)


def _tsqr(
    source: TableSource,
    keep: Callable[[np.ndarray], np.ndarray] | None,
    missing: str,
    mean: torch.Tensor,
    m: int,
) -> torch.Tensor:
    """R factor (m, m) of the centred ``[X, y]``: per-batch QR, stacked; merged over ranks."""
    import torch.distributed as dist

    R = torch.zeros(0, m, dtype=torch.float64)
    with _num_threads(1):
        for b in _prefetch(source.batches(missing)):
            Z = b.Z if keep is None else b.Z[keep(b.rows)]
            if len(Z):
                stacked = torch.cat([R, torch.from_numpy(np.ascontiguousarray(Z)) - mean])
                R = torch.linalg.qr(stacked, mode="r")[1]
    if len(R) < m:  # fewer rows than columns on this rank: pad to a square factor
        R = torch.cat([R, torch.zeros(m - len(R), m, dtype=torch.float64)])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [torch.empty_like(R) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, R.contiguous())
        R = torch.linalg.qr(torch.cat(parts), mode="r")[1]
    return R


def _solve_from_r(
    R: torch.Tensor, p: int, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Coefficients, sse and the X factor from the R of ``[Xc, yc]``; None if singular."""
    Rxx, rxy, Ryy = R[:p, :p], R[:p, p:], R[p:, p:]
    d = Rxx.diagonal().abs()
    if p and float(d.min()) <= float(d.max()) * p * 1e-14:
        return None
    if alpha > 0:
        aug = torch.cat([Rxx, math.sqrt(alpha) * torch.eye(p, dtype=R.dtype)])
        rhs = torch.cat([rxy, torch.zeros(p, rxy.shape[1], dtype=R.dtype)])
        Q, Ra = torch.linalg.qr(aug)
        coef = torch.linalg.solve_triangular(Ra, Q.mT @ rhs, upper=True)
        resid = torch.cat([rxy - Rxx @ coef, Ryy])
        return coef, resid.square().sum(0), Rxx
    coef = torch.linalg.solve_triangular(Rxx, rxy, upper=True)
    return coef, Ryy.square().sum(0), Rxx


def stream_fit_linear(
    estimator: Any,
    source: TableSource,
    *,
    missing: str = "error",
    test_fraction: float = 0.0,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit a ``LinearRegression`` or ``Ridge`` in one pass over ``source``.

    Rows whose seeded hash falls below ``test_fraction`` are held out (no global shuffle
    needed). In a process group every rank reads its share and the states are merged in
    rank order. Returns timing and row counts; the estimator is fitted in place and supports
    ``summary()`` like an in-memory fit.
    """
    from regtorch.estimators.linear import LinearRegression, Ridge, _info_dict
    from regtorch.solvers import GramState, RankWarning

    if type(estimator) not in (LinearRegression, Ridge):
        raise ValueError(
            f"Streaming fits LinearRegression and Ridge (one pass over a mergeable state); "
            f"got {type(estimator).__name__}."
        )
    estimator._check_params()
    if estimator.solver not in ("auto", "cholesky"):
        raise ValueError("Streaming solves from the accumulated Gram: use solver='auto'.")
    p, k = len(source.features), len(source.targets)
    m = p + k
    keep = None if test_fraction <= 0 else (lambda rows: _hash01(rows, seed) >= test_fraction)
    t0 = time.perf_counter()
    local, seen = _accumulate(source, keep, missing, progress, "streaming fit")
    state = local.all_reduce(m)
    if state.n < 2 or state.mean is None or state.C is None:
        raise DataError(f"{source.path}: fewer than 2 training rows.")
    fit_intercept = bool(estimator.fit_intercept)
    C, mean = state.C, state.mean
    if not fit_intercept:  # uncentred moments: add the mean back
        C = C + state.n * torch.outer(mean, mean)
        mean = torch.zeros_like(mean)
    gs = GramState(C[:p, :p], C[:p, p:], C[p:, p:].diagonal().clone(), mean[:p], mean[p:], state.n)
    alpha = float(getattr(estimator, "alpha", 0.0))
    sol = _solve_gram_quietly(gs, alpha)
    coef = sol.coef
    sse = gs.yty - 2 * (coef * gs.Xty).sum(0) + (coef * (gs.G @ coef)).sum(0)
    method = "streaming-cholesky"
    # the stable path: a second pass, a tall-skinny QR of the centred data, when the Gram
    # is ill-conditioned or the fit so good that sse from the Gram would cancel
    if sol.rank == p and (
        sol.cond is None or sol.cond > STREAM_QR_COND or bool((sse <= 1e-4 * gs.yty).any())
    ):
        R = _tsqr(source, keep, missing, mean, p + k)
        qr_sol = _solve_from_r(R, p, alpha)
        if qr_sol is not None:
            coef, sse, R_xx = qr_sol
            sol.R = R_xx if alpha == 0 else None
            method = "streaming-tsqr"
    if method == "streaming-cholesky" and sol.cond is not None and sol.cond > STREAM_COND_WARN:
        warnings.warn(
            f"The scaled Gram matrix is ill-conditioned (condition number {sol.cond:.2g}).",
            UserWarning,
            stacklevel=2,
        )
    if sol.rank < p:
        warnings.warn(
            f"The design matrix is rank deficient (rank {sol.rank} < {p} features); returning "
            "the minimum-norm least-squares solution.",
            RankWarning,
            stacklevel=2,
        )
    xo, yo = gs.X_offset, gs.y_offset
    estimator.n_features_in_ = p
    estimator.feature_names_in_ = np.asarray(source.features, dtype=object)
    estimator._set_coef(coef, xo, yo, k == 1)
    estimator.rank_, estimator.solver_, estimator.n_iter_ = sol.rank, method, 1
    estimator._R = sol.R
    estimator._fit_info = _info_dict(
        torch.zeros(int(state.n), 0), None, sse.clamp_min(0), gs.yty, xo
    )
    estimator.__dict__.pop("history_", None)
    return {
        "rows_read": seen,
        "rows_fit": int(state.n),
        "seconds": time.perf_counter() - t0,
        "cond": sol.cond,
        "batch_rows": source.batch_rows,
    }


def stream_metrics(
    estimator: Any,
    source: TableSource,
    *,
    test_fraction: float,
    seed: int = 0,
    missing: str = "error",
    sample: int = 5000,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """R2, MSE, RMSE and MAE on the held-out rows, reduced across ranks.

    Also returns up to ``sample`` (true, predicted) rows of this rank, for plots.
    """
    from regtorch.metrics import RegressionMetrics

    acc = RegressionMetrics()
    linear = hasattr(estimator, "coef_")
    ys, ps, kept = [], [], 0
    for b in source.batches(missing):
        sel = _hash01(b.rows, seed) < test_fraction
        if sel.any():
            if linear:  # the linear prediction, without per-batch input checks
                coef, icpt = np.atleast_2d(estimator.coef_), np.atleast_1d(estimator.intercept_)
                pred = b.X[sel] @ coef.T + icpt
            else:
                import pandas as pd

                frame = pd.DataFrame(b.X[sel], columns=source.features)
                pred = estimator.predict(frame).reshape(int(sel.sum()), -1)
            acc.update(b.y[sel], pred)
            if kept < sample:
                ys.append(b.y[sel][: sample - kept])
                ps.append(pred[: sample - kept])
                kept += len(ys[-1])
    acc = _all_reduce_metrics(acc, len(source.targets))
    k = len(source.targets)
    y_s = np.vstack(ys) if ys else np.zeros((0, k))
    p_s = np.vstack(ps) if ps else np.zeros((0, k))
    return acc.compute(force_finite=False), y_s, p_s


def _all_reduce_metrics(acc: Any, k: int) -> Any:
    import torch.distributed as dist

    from regtorch.metrics import RegressionMetrics

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return acc
    z = torch.zeros(k, dtype=torch.float64)
    mine = torch.cat(
        [
            torch.tensor([acc.n], dtype=torch.float64),
            *(z if v is None else v.cpu() for v in (acc.mean, acc.m2, acc.sse, acc.sae)),
        ]
    )
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    total = RegressionMetrics()
    for t in parts:
        if float(t[0]) > 0:
            total.merge(
                RegressionMetrics(float(t[0]), *(t[1 + i * k : 1 + (i + 1) * k] for i in range(4)))
            )
    return total


def _reduce_min(value: float) -> float:
    """The smallest ``value`` over ranks (identity outside a process group)."""
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t[0])


def _reduce_sum(values: list[float]) -> list[float]:
    """Sum floats over ranks (identity outside a process group)."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def stream_fit_mlp(
    estimator: Any,
    source: TableSource,
    *,
    missing: str = "error",
    test_fraction: float = 0.0,
    val_fraction: float = 0.1,
    seed: int = 0,
    shuffle_rows: int | None = None,
    max_val_rows: int = 200_000,
    progress: bool = False,
) -> dict[str, Any]:
    """Train an ``MLPRegressor`` on a table streamed from disk, epoch after epoch.

    A first pass computes the standardisation statistics of the training rows. Each epoch
    visits this rank's row groups in a seeded order and draws mini-batches from a bounded
    shuffle buffer (``shuffle_rows``, from the memory budget). Rows are split by a seeded hash
    of their index: test (``test_fraction``), validation (next ``val_fraction``, at most
    ``max_val_rows`` per rank kept in memory) and training. Under ``torchrun`` the module is
    wrapped in ``DistributedDataParallel`` (gloo on CPU, NCCL on CUDA) and each rank takes
    ``batch_size / world_size`` rows per step and every rank takes the same number of steps
    per epoch (the fewest any rank can fill), so each step averages exactly the global batch.
    The weights of the epoch with the lowest validation loss are kept.
    """
    import copy

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from regtorch.estimators.mlp import MLPRegressor
    from regtorch.modules import MLP
    from regtorch.training import History, init_module, make_optimizer, make_scheduler

    if type(estimator) is not MLPRegressor:
        raise ValueError(f"stream_fit_mlp trains an MLPRegressor, got {type(estimator).__name__}.")
    estimator._check_params()
    if estimator.solver == "lbfgs":
        raise ValueError(
            "solver='lbfgs' needs full batches; streamed training uses adam, adamw or sgd."
        )
    rank, world = _rank_world()
    p, k = len(source.features), len(source.targets)
    lo, hi = test_fraction, test_fraction + val_fraction

    def part(rows: np.ndarray) -> np.ndarray:
        return _hash01(rows, seed)

    t0 = time.perf_counter()
    moments, _ = _accumulate(source, lambda r: part(r) >= hi, missing, progress, "statistics")
    local_rows = moments.n
    moments = moments.all_reduce(p + k)
    if moments.n < 2 or moments.mean is None or moments.C is None:
        raise DataError(f"{source.path}: fewer than 2 training rows.")
    mean = moments.mean.numpy()
    std = np.sqrt(np.maximum(moments.C.diagonal().numpy() / moments.n, 0.0))
    if not estimator.standardize:
        mean, std = np.zeros_like(mean), np.ones_like(std)
    std = np.where(std > 0, std, 1.0)
    x_mean, x_scale, y_mean, y_scale = mean[:p], std[:p], mean[p:], std[p:]

    from regtorch._validation import resolve_device

    dev = resolve_device(estimator.device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", torch.cuda.current_device())  # set by init_from_env

    def scaled(Z: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((Z - mean) / std).astype(np.float32)).to(dev)

    # validation rows, bounded
    # the validation rows and, later, the shuffle buffer come out of the memory budget too
    row_bytes = 4 * (p + k) * 3
    spare = max(source.memory_limit - _resident_bytes(), 64 * 2**20)
    max_val_rows = int(min(max_val_rows, spare // 4 // row_bytes))
    val_parts, kept = [], 0
    for b in source.batches(missing):
        h = part(b.rows)
        sel = (h >= lo) & (h < hi)
        if sel.any() and kept < max_val_rows:
            val_parts.append(scaled(b.Z[sel][: max_val_rows - kept]))
            kept += len(val_parts[-1])
    V = torch.cat(val_parts) if val_parts else torch.zeros(0, p + k, device=dev)

    sizes = estimator.hidden_layer_sizes
    sizes = (sizes,) if isinstance(sizes, int) else tuple(sizes)
    module = MLP(p, sizes, k, estimator.activation)
    init_module(module, seed)
    module.to(dev)
    model: torch.nn.Module = module
    if world > 1:
        model = DistributedDataParallel(
            module, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    bs, epochs = estimator._plan(int(moments.n))
    local_bs = max(1, (bs or 1024) // world)
    global_bs = local_bs * world
    # every rank takes the same number of steps per epoch (the fewest any rank can fill), so
    # each step averages exactly `global_bs` rows across ranks
    n_steps = int(_reduce_min(local_rows // local_bs))
    if n_steps < 1:
        raise DataError(
            f"A rank has fewer than {local_bs} training rows: use fewer processes (at most one "
            f"per Parquet row group; this table has {len(source.units) or 'few'}) or a smaller "
            "--batch-size."
        )
    lr = float(estimator.lr if estimator.lr is not None else estimator.learning_rate_init)
    opt = make_optimizer(estimator.solver, model.parameters(), lr, float(estimator.alpha))
    sched = make_scheduler(estimator.lr_schedule, opt, epochs)
    buffer_rows = int(
        shuffle_rows or max(local_bs * 8, min(source.batch_rows * 4, spare // 4 // row_bytes))
    )
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    loss_fn = torch.nn.MSELoss()
    hist = History()
    best, best_state, best_epoch = math.inf, None, 0

    taken = 0

    def steps(buf: torch.Tensor) -> tuple[float, int]:
        nonlocal taken
        total, n = 0.0, 0
        perm = torch.randperm(len(buf), generator=gen).to(dev)
        for i in range(0, len(buf) - local_bs + 1, local_bs):
            if taken >= n_steps:
                break
            taken += 1
            zb = buf[perm[i : i + local_bs]]
            opt.zero_grad(set_to_none=True)
            out = loss_fn(model(zb[:, :p]), zb[:, p:])
            out.backward()
            opt.step()
            total += float(out.detach()) * len(zb)
            n += len(zb)
        return total, n

    with _num_threads(None):
        for epoch in range(epochs):
            module.train()
            lrs = float(opt.param_groups[0]["lr"])
            total, count, taken = 0.0, 0, 0
            carry = torch.zeros(0, p + k, device=dev)
            for b in source.batches(missing, epoch_seed=seed * 7919 + epoch):
                if taken >= n_steps:
                    break
                sel = part(b.rows) >= hi
                if not sel.any():
                    continue
                carry = torch.cat([carry, scaled(b.Z[sel])])
                if len(carry) >= buffer_rows:
                    used = (len(carry) // local_bs) * local_bs
                    t_, n_ = steps(carry[:used])
                    total, count = total + t_, count + n_
                    carry = carry[used:]
            if len(carry) >= local_bs and taken < n_steps:
                t_, n_ = steps(carry)
                total, count = total + t_, count + n_
            if sched is not None:
                sched.step()
            module.eval()
            with torch.inference_mode():
                vs = float(((module(V[:, :p]) - V[:, p:]) ** 2).mean(1).sum()) if len(V) else 0.0
            t_sum, t_n, v_sum, v_n = _reduce_sum([total, count, vs, float(len(V))])
            train_loss = t_sum / max(t_n, 1)
            val_loss = v_sum / v_n if v_n else math.nan
            if not math.isfinite(train_loss):
                raise ValueError(
                    f"Training diverged at epoch {epoch + 1}: the loss became {train_loss}. "
                    f"Lower the learning rate (it was {lr:g})."
                )
            hist.train_loss.append(train_loss)
            hist.lr.append(lrs)
            hist.time.append(time.perf_counter() - t0)
            if v_n:
                hist.val_loss.append(val_loss)
            score = val_loss if v_n else train_loss
            if score < best:
                best, best_epoch = score, epoch + 1
                best_state = copy.deepcopy(module.state_dict())
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    estimator.n_features_in_ = p
    estimator.feature_names_in_ = np.asarray(source.features, dtype=object)
    estimator.x_mean_, estimator.x_scale_ = x_mean, x_scale
    estimator.y_mean_, estimator.y_scale_ = y_mean, y_scale
    estimator.module_ = module
    estimator._module64 = copy.deepcopy(module).to(device="cpu", dtype=torch.float64).eval()
    estimator.history_ = hist
    estimator.n_iter_ = len(hist)
    estimator.loss_curve_ = list(hist.train_loss)
    estimator.best_epoch_ = best_epoch or len(hist)
    estimator._n_outputs = k
    estimator._y_1d = k == 1
    if world > 1:
        dist.barrier()
    return {
        "rows_fit": int(moments.n),
        "seconds": time.perf_counter() - t0,
        "epochs": len(hist),
        "global_batch": global_bs,
        "batch_rows": source.batch_rows,
    }
