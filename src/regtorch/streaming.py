"""Fitting data larger than memory: tables read in batches with pyarrow, mergeable states.

A :class:`TableSource` streams a Parquet file, a folder of Parquet files or a CSV in batches
sized by a memory budget; in a ``torch.distributed`` process group each rank reads its own
share (runs of consecutive Parquet row groups round-robin, CSV batches round-robin). Linear
models accumulate :class:`MomentState` (count, mean, centred cross-products of ``[X, y]``;
merged with Chan's formula, never raw sums of squares), reduced across ranks in rank order so
every rank holds the same answer.
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

from regtorch.data import DataError, _check_unique, _feature_columns, _listing, _no_duplicates
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
# bytes held per value of a batch: the Arrow batch, the float64 copy, a centred copy, the
# prefetched batch, slack (measured 72 for 64k-row batches)
BYTES_PER_VALUE = 8 * 10
# CSV blocks read at a time (the same on every rank)
CSV_BLOCK_BYTES = 1 << 23
# small Parquet row groups are read together, up to this many rows per unit of work
UNIT_ROWS = 1 << 16
# memory a streamed fit needs beyond its batches once started: reader and allocator buffers,
# the prefetch thread, solver workspaces (measured 14-20 MiB on CPU)
WORKING_SET = 16 * 2**20
# row groups read together cost up to this much more once their column chunks pass ~512 KiB:
# the allocator keeps large buffers in segments of their own (measured +30 MiB)
LARGE_GROUP_SLACK = 32 * 2**20
# and beyond that they are held ~2.5 times (compressed, decoded, as Arrow arrays; 3 for a
# margin): whole runs peaked 70 MiB over start-up with 9.6 MiB row groups, 88 with 46 MiB
ROW_GROUP_COPIES = 3
# the fewest rows a batch may have when the budget is tight
MIN_BATCH_ROWS = 4096
PARQUET_SUFFIXES = (".parquet", ".pq")


def default_memory_limit() -> int:
    """A quarter of the machine's memory."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    except (ValueError, OSError, AttributeError):
        return 2 * 1024**3


def parse_memory(text: str) -> int:
    """``"2GB"``, ``"512MB"``, ``"1.5G"`` or bytes -> bytes (at least one byte)."""
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
    scale, number = 1, t
    for u in sorted(units, key=len, reverse=True):
        if t.endswith(u):
            scale, number = units[u], t[: -len(u)].strip()
            break
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(
            f"Cannot read the memory size {text!r}; write e.g. 2GB or 512MB."
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"Cannot read the memory size {text!r}: it must be a finite size.")
    if value <= 0:
        raise ValueError(f"Cannot read the memory size {text!r}: it must be positive.")
    if value < 1:
        raise ValueError(f"Cannot read the memory size {text!r}: it is less than one byte.")
    return int(value)


def _resident_bytes() -> int:
    """This process's resident memory now (Linux; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _resident_after_start_up() -> int:
    """Resident bytes once the code a streamed fit runs is loaded.

    Libraries map their pages on first use (scikit-learn and SciPy on import, LAPACK on the
    first factorisation): that memory is the process's, not the batches', so it is counted
    as held before the budget is split.
    """
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import regtorch.estimators.linear  # noqa: F401
    from regtorch.training import _num_threads

    with _num_threads(1):
        torch.linalg.qr(torch.eye(8, dtype=torch.float64), mode="r")
    return _resident_bytes()


def _reading_bytes(group: int) -> int:
    """Memory a streamed fit needs beside its batches, reading ``group`` bytes at a time."""
    return int(WORKING_SET + min(LARGE_GROUP_SLACK, 16 * group) + ROW_GROUP_COPIES * group)


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
        A Parquet file, a folder of Parquet files, or a CSV file. A folder is read
        non-recursively: only its own ``.parquet``/``.pq`` files, in name order; subfolders
        and names starting with ``.`` or ``_`` (``_SUCCESS``, ``_metadata``) are skipped, and a
        warning names skipped subfolders that hold Parquet files. Every file must have the same
        columns (same names, numeric or not alike); pandas index columns
        (``__index_level_0__``) are not data, as when the file is read in memory.
    target : str or list of str
    features : list of str or None
        Default: every other numeric column.
    memory_limit : int or None
        Bytes for the whole process's resident memory (peak RSS) while it reads and fits;
        decides the batch size. What the process holds once its libraries are loaded counts
        against it, and a budget below that plus a working set and one batch is refused with
        the minimum (a network's fit checks again once its optimizer is loaded). Not covered:
        what runs after the fit, such as plots and reports (matplotlib, ~15 MiB). Default: a
        quarter of the machine's memory.
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
        encoding: str = "utf-8",
    ) -> None:
        import codecs

        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file or folder.")
        if memory_limit is not None and not memory_limit >= 1:
            raise ValueError(
                f"memory_limit must be a positive number of bytes, got {memory_limit}."
            )
        if batch_rows is not None and not batch_rows >= 1:
            raise ValueError(f"batch_rows must be a positive number of rows, got {batch_rows}.")
        self.targets = [target] if isinstance(target, str) else list(target)
        self.sep = sep
        try:
            self.encoding = codecs.lookup(encoding).name
        except LookupError:
            raise ValueError(f"Unknown text encoding {encoding!r}; try utf-8, latin-1.") from None
        self.n_rows: int | None = None
        # (file, row group, first global row) of every Parquet row group, in reading order
        self.units: list[tuple[Path, int, int]] = []
        self._group_rows: list[int] = []
        self._file_start: dict[Path, int] = {}
        if self.path.is_dir():
            self.files, self.kind = self._folder_files(), "parquet"
        elif self.path.suffix.lower() in PARQUET_SUFFIXES:
            self.files, self.kind = [self.path], "parquet"
        elif self.path.suffix.lower() in (".csv", ".tsv", ".txt"):
            self.files, self.kind = [self.path], "csv"
        else:
            raise DataError(f"{self.path}: streaming reads Parquet files, folders of them, or CSV.")
        if self.kind == "parquet":
            names, types = self._parquet_schema()
        else:
            names, types = self._csv_schema()
        self.file_bytes = sum(f.stat().st_size for f in self.files)
        self.features = self._check_columns(names, types, features)
        self._set_budget(memory_limit, batch_rows)

    def _check_columns(
        self, names: list[str], types: dict[str, Any], features: list[str] | None
    ) -> list[str]:
        """The feature list, after the same checks as the in-memory reader."""
        import pyarrow.types as pat

        _no_duplicates(self.targets, "target")
        absent = [t for t in self.targets if t not in names]
        if absent:
            raise DataError(
                f"Target column {', '.join(map(repr, absent))} not found; {_listing(names)}"
            )

        def numeric(n: str) -> bool:
            t = types[n]
            # a CSV column empty in its first block reads as null: checked when converting
            return bool(
                pat.is_integer(t) or pat.is_floating(t) or pat.is_boolean(t) or pat.is_null(t)
            )

        for t in self.targets:
            if not numeric(t):
                raise DataError(
                    f"Target column {t!r} is not numeric{self._example(t)}; regression needs a "
                    "number."
                )
        feats = _feature_columns(names, self.targets, features)  # the in-memory rules
        text = [f for f in feats if not numeric(f)]
        if text:
            raise DataError(
                f"Non-numeric feature column(s) {', '.join(map(repr, text))}"
                f"{self._example(text[0])}: streaming fits take numeric columns only; drop them "
                "with --features."
            )
        return feats

    def _set_budget(self, memory_limit: int | None, batch_rows: int | None) -> None:
        """Batch rows from the budget left once the process has started."""
        width = len(self.features) + len(self.targets)
        budget = int(memory_limit or default_memory_limit())
        self.memory_limit = budget
        held = _resident_after_start_up()
        group = self._largest_unit_bytes(width)
        fixed = held + _reading_bytes(group)
        least = fixed + BYTES_PER_VALUE * width * MIN_BATCH_ROWS
        if batch_rows is None and budget < least:
            mib = 2**20
            raise DataError(
                f"A memory limit of {budget / mib:.0f} MiB is too small: this process already "
                f"holds {held / mib:.0f} MiB once started, and reading needs "
                f"{(least - held) / mib:.0f} MiB more (its row groups decode to "
                f"{group / mib:.0f} MiB); the minimum is {math.ceil(least / mib)} MiB: use --memory-limit "
                f"{math.ceil(least / mib)}MB or more."
            )
        self._sized_by_budget = batch_rows is None
        # at most 64k rows: larger batches fall out of cache and slow the Gram (measured)
        self.batch_rows = int(
            batch_rows or min(1 << 16, (budget - fixed) // (BYTES_PER_VALUE * width))
        )

    def spare_bytes(self, purpose: str) -> int:
        """Budget left beside what is resident now, reading and half of it for batches.

        For a fit that loads more code after this source was sized (a network's optimizer
        loads ~75 MiB): the batches shrink to fit, and a budget with no room left for a
        batch is refused, naming the minimum.
        """
        width = len(self.features) + len(self.targets)
        held = _resident_bytes()
        per_row = BYTES_PER_VALUE * width
        free = self.memory_limit - held - _reading_bytes(self._largest_unit_bytes(width))
        if self._sized_by_budget and free < 2 * per_row * MIN_BATCH_ROWS:
            least = self.memory_limit - free + 2 * per_row * MIN_BATCH_ROWS
            mib = 2**20
            raise DataError(
                f"A memory limit of {self.memory_limit / mib:.0f} MiB is too small {purpose}: "
                f"this process holds {held / mib:.0f} MiB once started; the minimum is "
                f"{math.ceil(least / mib)} MiB: use --memory-limit {math.ceil(least / mib)}MB "
                "or more."
            )
        if self._sized_by_budget:
            self.batch_rows = int(min(self.batch_rows, free // 2 // per_row))
        return max(int(free - self.batch_rows * per_row), 0)

    def _folder_files(self) -> list[Path]:
        """The folder's own Parquet files (not its subfolders'), in name order."""
        files, skipped, others = [], [], []
        for p in sorted(self.path.iterdir()):
            if p.name.startswith((".", "_")):
                continue
            if p.is_dir():
                if any(q.suffix.lower() in PARQUET_SUFFIXES for q in p.rglob("*")):
                    skipped.append(p.name)
            elif p.suffix.lower() in PARQUET_SUFFIXES:
                files.append(p)
            else:
                others.append(p.name)
        if skipped:
            warnings.warn(
                f"{self.path}: subfolder(s) {', '.join(skipped[:5])}"
                f"{' ...' if len(skipped) > 5 else ''} hold Parquet files that are not read; "
                "only the folder's own files are.",
                stacklevel=3,
            )
        if not files:
            raise DataError(
                f"{self.path} holds no .parquet files of its own"
                + (" (subfolders are not read)." if skipped else ".")
            )
        if others:
            warnings.warn(
                f"{self.path}: skipping {len(others)} file(s) that are not .parquet: "
                f"{', '.join(others[:5])}{' ...' if len(others) > 5 else ''}.",
                stacklevel=3,
            )
        return files

    def _parquet_schema(self) -> tuple[list[str], dict[str, Any]]:
        """Columns and types, the same in every file; row groups and row counts."""
        import pyarrow.parquet as pq

        names: list[str] = []
        types: dict[str, Any] = {}
        start = 0
        for f in self.files:
            try:
                with pq.ParquetFile(f) as pf:
                    meta, schema = pf.metadata, pf.schema_arrow
            except Exception as exc:  # pyarrow raises several types for a bad file
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DataError(f"{f}: not readable as Parquet ({msg}).") from exc
            cols, ctypes = _data_columns(schema)
            _check_unique(cols, f)
            if f == self.files[0]:
                names, types = cols, ctypes
            else:
                _same_columns(f, cols, ctypes, self.files[0], names, types)
            self._file_start[f] = start
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                self.units.append((f, g, start))
                self._group_rows.append(rows)
                start += rows
        self.n_rows = start
        if start == 0:
            raise DataError(
                f"{self.path} has a header but no data rows"
                + (" (in any of its files)." if len(self.files) > 1 else ".")
            )
        return names, types

    def _work_units(self, world: int) -> list[tuple[Path, list[int], int]]:
        """Consecutive row groups of one file read together: (file, groups, first global row).

        Small groups are coalesced up to ``UNIT_ROWS`` rows, fewer when that would leave
        ranks idle; the cut depends on the files and ``world`` only, so every rank agrees and
        each row belongs to exactly one unit.
        """
        n = self.n_rows or 0
        target = max(1, min(UNIT_ROWS, n // (4 * world)))
        out: list[tuple[Path, list[int], int]] = []
        rows = 0
        for (f, g, start), k in zip(self.units, self._group_rows):
            if out and out[-1][0] == f and rows + k <= target:
                out[-1][1].append(g)
                rows += k
            else:
                out.append((f, [g], start))
                rows = k
        return out

    def _largest_unit_bytes(self, width: int) -> int:
        """Decoded bytes of the largest unit of row groups read together."""
        starts = [start for _, _, start in self._work_units(_rank_world()[1])]
        sizes = np.diff([*starts, self.n_rows or 0])
        return int(max(sizes, default=0)) * width * 8

    def _csv_schema(self) -> tuple[list[str], dict[str, Any]]:
        import pyarrow as pa

        f = self.files[0]
        if f.stat().st_size == 0:
            raise DataError(f"{f} is empty.")
        try:
            schema = self._csv_reader(1 << 16).schema
            names = list(schema.names)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{f}: the header is not {self.encoding} text ({exc.reason}, byte "
                f"{exc.object[exc.start : exc.start + 1]!r}); give the file's encoding with "
                "--encoding, e.g. latin-1."
            ) from exc
        except pa.ArrowInvalid as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "Empty CSV" in msg:
                raise DataError(f"{f} is empty.") from exc
            raise DataError(f"{f} could not be read as CSV: {msg}") from exc
        _check_unique(names, f)
        return names, {n: schema.field(n).type for n in names}

    def _csv_reader(self, block: int, columns: list[str] | None = None) -> Any:
        import csv

        import pyarrow as pa
        import pyarrow.csv as pcsv

        sep = self.sep
        if sep is None:
            with self._open_text() as fh:
                head = fh.read(65536)
            head = head[: head.rfind("\n") + 1] or head  # whole lines only
            try:
                sep = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
            except csv.Error:
                sep = "\t" if self.files[0].suffix.lower() == ".tsv" else ","
        self.sep = sep
        convert = pcsv.ConvertOptions()
        if columns is not None:  # read only the used columns, all as float64
            convert = pcsv.ConvertOptions(
                include_columns=columns, column_types={c: pa.float64() for c in columns}
            )
        return pcsv.open_csv(
            self.files[0],
            read_options=pcsv.ReadOptions(block_size=block, encoding=self.encoding),
            parse_options=pcsv.ParseOptions(delimiter=sep, newlines_in_values=True),
            convert_options=convert,
        )

    def _open_text(self) -> Any:
        """The CSV as text in its encoding (a UTF-8 byte-order mark skipped, bad bytes as U+FFFD)."""
        enc = "utf-8-sig" if self.encoding == "utf-8" else self.encoding
        return self.files[0].open("r", newline="", encoding=enc, errors="replace")

    def _csv_lines(self) -> Iterator[tuple[int, list[str]]]:
        """(first line number, fields) of each CSV record after the header (error paths)."""
        import csv

        with self._open_text() as fh:
            reader = csv.reader(fh, delimiter=self.sep or ",")
            next(reader, None)
            line = reader.line_num + 1
            for fields in reader:
                if fields:  # pyarrow skips blank lines too
                    yield line, fields
                line = reader.line_num + 1

    def _example(self, col: str) -> str:
        """' (e.g. 'x' at t.csv line 9)': the first value of a CSV column that is no number."""
        if self.kind != "csv":
            return ""
        header = self._csv_header()
        if col not in header:
            return ""
        k = header.index(col)
        for line, fields in self._csv_lines():
            if k < len(fields) and _not_a_number(fields[k]):
                return f" (e.g. {fields[k]!r} at {self.files[0]} line {line})"
        return ""

    def _where(self, file: Path, row: int) -> str:
        """'<file> line N' (CSV, 1-based in the file) or '<file> row N' (Parquet, 1-based)."""
        if self.kind == "csv":
            for i, (line, _) in enumerate(self._csv_lines()):
                if i == row:
                    return f"{file} line {line}"
        return f"{file} row {row + 1}"

    def _bad_csv_value(self, exc: Exception, first_row: int) -> DataError:
        """A one-line error naming the file, column, line and value a conversion failed on."""
        import re

        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        m = re.search(r"column #(\d+).*invalid value '(.*)'$", text)
        f = self.files[0]
        if m is not None:
            header = self._csv_header()
            j = int(m.group(1))
            col = self.features + self.targets
            name = header[j] if j < len(header) else (col[j] if j < len(col) else f"#{j}")
            k = header.index(name) if name in header else j
            for i, (line, fields) in enumerate(self._csv_lines()):
                if i < first_row or k >= len(fields):
                    continue
                value = fields[k]
                if "\ufffd" in value:
                    return DataError(
                        f"{f} line {line}, column {name!r}: the value holds bytes that are not "
                        f"{self.encoding} text; give the file's encoding with --encoding."
                    )
                if _not_a_number(value):
                    return DataError(
                        f"{f} line {line}, column {name!r}: {value!r} is not a number; fix it "
                        "or leave that column out with --features."
                    )
            return DataError(
                f"{f}, column {name!r}: {m.group(2)!r} is not a number; fix it or leave that "
                "column out with --features."
            )
        return DataError(f"{f} could not be read as CSV: {text}")

    def _csv_header(self) -> list[str]:
        """The CSV's column names as Python's csv module reads them (error paths)."""
        import csv

        with self._open_text() as fh:
            return next(csv.reader(fh, delimiter=self.sep or ","), [])

    def _to_numpy(self, rb: Any, first_row: int, missing: str, file: Path, local: int) -> Batch:
        """``first_row``: global index of the batch's first row; ``local``: its index in ``file``."""
        cols = self.features + self.targets
        n = rb.num_rows
        Z = _batch_matrix(rb, cols)
        rows = np.arange(first_row, first_row + n, dtype=np.int64)
        bad = ~np.isfinite(Z)
        if bad.any():
            if missing != "drop":
                counts = {cols[j]: int(v) for j, v in enumerate(bad.sum(0)) if v}
                listing = ", ".join(f"{c!r} ({v})" for c, v in counts.items())
                i = int(np.flatnonzero(bad.any(1))[0])
                j = int(np.flatnonzero(bad[i])[0])
                raise DataError(
                    f"Missing or infinite values in column(s) {listing} among {n} rows read; "
                    f"the first is in column {cols[j]!r} at {self._where(file, local + i)}; fix "
                    "them or use --missing drop."
                )
            keep = ~bad.any(1)
            Z, rows = Z[keep], rows[keep]
        return Batch(Z, rows, len(self.features))

    def batches(self, missing: str = "error", epoch_seed: int | None = None) -> Iterator[Batch]:
        """This rank's batches; with ``epoch_seed`` the units of row groups come shuffled."""
        rank, world = _rank_world()
        if self.kind == "parquet":
            yield from self._parquet_batches(rank, world, missing, epoch_seed)
            return
        import pyarrow as pa

        cols = self.features + self.targets
        # a fixed block size: every rank must cut the file into the same blocks, so that the
        # round robin below partitions the rows
        offset = 0
        try:
            reader = self._csv_reader(CSV_BLOCK_BYTES, cols)
            for i, rb in enumerate(reader):
                if i % world == rank:
                    yield self._to_numpy(rb.select(cols), offset, missing, self.files[0], offset)
                offset += rb.num_rows
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise self._bad_csv_value(exc, offset) from exc

    def _parquet_batches(
        self, rank: int, world: int, missing: str, epoch_seed: int | None
    ) -> Iterator[Batch]:
        import pyarrow.parquet as pq

        cols = self.features + self.targets
        units = self._work_units(world)[rank::world]
        if epoch_seed is not None:
            order = np.random.default_rng(epoch_seed).permutation(len(units))
            units = [units[i] for i in order]
        pf, opened = None, None
        try:
            for f, groups, start in units:
                try:
                    if opened != f:
                        if pf is not None:
                            pf.close()
                        pf, opened = pq.ParquetFile(f), f
                    assert pf is not None
                    offset = start
                    # one decoding thread: pyarrow's pool held more memory, and a varying amount
                    # (measured); the prefetch thread already overlaps reading with the fit
                    for rb in pf.iter_batches(
                        batch_size=self.batch_rows,
                        row_groups=groups,
                        columns=cols,
                        use_threads=False,
                    ):
                        local = offset - self._file_start[f]
                        yield self._to_numpy(rb, offset, missing, f, local)
                        offset += rb.num_rows
                except DataError:
                    raise
                except (OSError, ValueError, KeyError) as exc:  # a file changed or truncated
                    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                    raise DataError(f"{f}: not readable as Parquet ({msg}).") from exc
        finally:
            if pf is not None:
                pf.close()


def _data_columns(schema: Any) -> tuple[list[str], dict[str, Any]]:
    """Column names and types of a Parquet schema, without pandas' index columns."""
    import json

    index: set[str] = set()
    meta = schema.metadata or {}
    if b"pandas" in meta:
        try:
            info = json.loads(meta[b"pandas"])
            index = {c for c in info.get("index_columns", []) if isinstance(c, str)}
        except (ValueError, TypeError, AttributeError):
            index = set()
    names = [n for n in schema.names if n not in index]
    types: dict[str, Any] = {}
    for i, n in enumerate(schema.names):
        if n not in index:
            types.setdefault(n, schema.field(i).type)
    return names, types


def _kind(t: Any) -> str:
    import pyarrow.types as pat

    numeric = pat.is_integer(t) or pat.is_floating(t) or pat.is_boolean(t) or pat.is_null(t)
    return "numeric" if numeric else str(t)


def _same_columns(
    f: Path,
    cols: list[str],
    types: dict[str, Any],
    first: Path,
    names: list[str],
    first_types: dict[str, Any],
) -> None:
    """One-line errors for a file whose columns differ from the folder's first file."""
    missing = [c for c in names if c not in types]
    if missing:
        raise DataError(f"{f} lacks column {missing[0]!r}, which {first.name} has.")
    extra = [c for c in cols if c not in first_types]
    if extra:
        raise DataError(f"{f} has column {extra[0]!r}, which {first.name} lacks.")
    for c in names:
        a, b = _kind(first_types[c]), _kind(types[c])
        if a != b and "null" not in (str(first_types[c]), str(types[c])):
            raise DataError(
                f"{f}: column {c!r} is {types[c]} there but {first_types[c]} in {first.name}."
            )


def _not_a_number(value: str) -> bool:
    """Whether pyarrow's CSV reader would refuse ``value`` as a float64 (or a null)."""
    import pyarrow.csv as pcsv

    if value in pcsv.ConvertOptions().null_values:
        return False
    try:
        float(value)
    except ValueError:
        return True
    return "_" in value  # Python reads 1_000, pyarrow does not


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
    scale: torch.Tensor | None = None,
    dd_scale: np.ndarray | None = None,
    dd_shift: np.ndarray | None = None,
) -> tuple[torch.Tensor, Any]:
    """R factor (m, m) of the centred ``[X, y] * scale``: per-batch QR, stacked; merged over ranks.

    ``mean`` is in the units of ``Z * scale``. With ``dd_scale``, the same pass also
    accumulates the double-double moments of ``Z`` about ``dd_shift`` (returned second,
    else None), for :func:`regtorch.solvers.solve_from_moments`.
    """
    import torch.distributed as dist

    from regtorch import _doubledouble as ddm

    s = torch.ones(m, dtype=torch.float64) if scale is None else scale
    R = torch.zeros(0, m, dtype=torch.float64)
    mom = None
    with _num_threads(1):
        for b in _prefetch(source.batches(missing)):
            Z = b.Z if keep is None else b.Z[keep(b.rows)]
            if len(Z):
                Zt = torch.from_numpy(np.ascontiguousarray(Z)) * s - mean
                R = torch.linalg.qr(torch.cat([R, Zt]), mode="r")[1]
                if dd_scale is not None and dd_shift is not None:
                    part = ddm.dd_moments(np.asarray(Z, dtype=np.float64), None, dd_shift, dd_scale)
                    mom = part if mom is None else mom.merge(part)
    if len(R) < m:  # fewer rows than columns on this rank: pad to a square factor
        R = torch.cat([R, torch.zeros(m - len(R), m, dtype=torch.float64)])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [torch.empty_like(R) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, R.contiguous())
        R = torch.linalg.qr(torch.cat(parts), mode="r")[1]
        if dd_scale is not None and dd_shift is not None:
            mom = _all_gather_dd(mom, m, dd_shift, dd_scale)
    return R, mom


def _all_gather_dd(mom: Any, m: int, shift: np.ndarray, scale: np.ndarray) -> Any:
    """Merge every rank's double-double moments in rank order."""
    import torch.distributed as dist

    from regtorch import _doubledouble as ddm

    size = 2 + 2 * m + 2 * m * m
    if mom is None:
        mine = torch.zeros(size, dtype=torch.float64)
    else:
        flat = [np.atleast_1d(mom.w[0]), np.atleast_1d(mom.w[1]), *mom.s1, mom.s2[0].ravel()]
        mine = torch.from_numpy(np.concatenate([*flat, mom.s2[1].ravel()]))
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    total = None
    for t in parts:
        a = t.numpy()
        mm = m * m
        part = ddm.DDMoments(
            shift,
            scale,
            (a[0:1].reshape(()), a[1:2].reshape(())),
            (a[2 : 2 + m], a[2 + m : 2 + 2 * m]),
            (a[2 + 2 * m : 2 + 2 * m + mm].reshape(m, m), a[2 + 2 * m + mm :].reshape(m, m)),
        )
        total = part if total is None else total.merge(part)
    return total


def _solve_from_r(
    R: torch.Tensor, p: int, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Coefficients, sse and the X factor from the R of ``[Xc, yc]``; None if singular."""
    Rxx, rxy, Ryy = R[:p, :p], R[:p, p:], R[p:, p:]
    # each pivot relative to its column's norm (the centred column norm): scale-free
    norms = torch.linalg.vector_norm(Rxx, dim=0)
    if p and not bool((Rxx.diagonal().abs() > norms * p * 1e-14).all()):
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

    A second pass runs when one pass cannot be trusted: an ill-conditioned or rank-deficient
    Gram, or a fit so good that its sse from the Gram would cancel. It computes a tall-skinny
    QR and, where affordable (``n * m^2 <= EXTENDED_FLOPS``), double-double moments: the
    statistics then come from those (as in memory), and where the QR's coefficients cannot
    be trusted either, so do the coefficients, with ``solver_`` and a warning saying so.
    """
    from regtorch.estimators.linear import LinearRegression, Ridge, _info_dict
    from regtorch.solvers import (
        EXTENDED_FLOPS,
        EXTENDED_MAX_FEATURES,
        STREAM_REFINE_COND,
        RankWarning,
    )

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
    if state.n < 2 or state.mean is None or state.C is None or state.scale is None:
        raise DataError(f"{source.path}: fewer than 2 training rows.")
    fit_intercept = bool(estimator.fit_intercept)
    alpha = float(getattr(estimator, "alpha", 0.0))
    gs, scale = _stream_gram(state, fit_intercept, alpha, source.features)
    sol = _solve_gram_quietly(gs, alpha)
    coef = sol.coef
    sse = gs.yty - 2 * (coef * gs.Xty).sum(0) + (coef * (gs.G @ coef)).sum(0)
    method = "streaming-cholesky"
    cond = math.inf if sol.cond is None else sol.cond
    affordable = m <= EXTENDED_MAX_FEATURES and state.n * m * m <= EXTENDED_FLOPS
    ext = refined = None
    if (
        sol.rank < p
        or cond > STREAM_QR_COND
        or (affordable and cond > STREAM_REFINE_COND)
        or bool((sse <= 1e-4 * gs.yty).any())
    ):
        method, coef, sse, ext, refined = _second_pass(
            source, keep, missing, state, gs, scale, sol, alpha, fit_intercept, affordable
        )
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
    sx, sy = scale[:p], scale[p:]
    xo, yo = gs.X_offset / sx, gs.y_offset / sy
    sst = gs.yty / sy**2
    estimator.n_features_in_ = p
    estimator.feature_names_in_ = np.asarray(source.features, dtype=object)
    estimator._bse_unit = None
    if ext is not None and method.startswith("streaming-extended"):
        estimator._set_coef(ext.coef, xo, yo, k == 1, ext.intercept)
        sse = torch.as_tensor(ext.sse)
    elif ext is not None and refined is not None:
        estimator._set_coef(
            torch.as_tensor(refined[0]), xo, yo, k == 1, torch.as_tensor(refined[1])
        )
        sse = torch.as_tensor(ext.sse)
    else:
        estimator._set_coef(coef * sx.unsqueeze(1) / sy.unsqueeze(0), xo, yo, k == 1)
        sse = sse / sy**2
    R = None if sol.R is None else sol.R / sx.unsqueeze(0)
    if ext is not None and alpha == 0:
        R, estimator._bse_unit = ext.R, ext.bse_unit  # statistics from the dd moments
    estimator.rank_, estimator.solver_, estimator.n_iter_ = sol.rank, method, 1
    estimator._R = R
    estimator._fit_info = _info_dict(torch.zeros(int(state.n), 0), None, sse.clamp_min(0), sst, xo)
    estimator.__dict__.pop("history_", None)
    return {
        "rows_read": seen,
        "rows_fit": int(state.n),
        "seconds": time.perf_counter() - t0,
        "cond": sol.cond,
        "batch_rows": source.batch_rows,
    }


def _stream_gram(
    state: MomentState, fit_intercept: bool, alpha: float, names: list[str]
) -> tuple[Any, torch.Tensor]:
    """The GramState to solve (columns scaled by ``scale``, returned second)."""
    from regtorch.solvers import GramState

    assert state.C is not None and state.mean is not None and state.scale is not None
    C, mean, scale = state.C, state.mean, state.scale
    if not fit_intercept:  # uncentred moments: add the mean back
        C = C + state.n * torch.outer(mean, mean)
        mean = torch.zeros_like(mean)
    if alpha > 0:
        # the ridge penalty is not scale-free: solve in the data's own units
        C, mean = C / torch.outer(scale, scale), mean / scale
        bad = torch.nonzero(~torch.isfinite(C.diagonal()) | (C.diagonal() > 1e300)).flatten()
        if bad.numel():
            j = int(bad[0])
            col = names[j] if j < len(names) else "the target"
            raise ValueError(
                f"Ridge cannot be streamed with column {col!r}: its squares overflow float64 "
                "(the penalty is not scale-free). Rescale it, or fit in memory."
            )
        scale = torch.ones_like(scale)
    p = len(names)
    gs = GramState(C[:p, :p], C[:p, p:], C[p:, p:].diagonal().clone(), mean[:p], mean[p:], state.n)
    return gs, scale


def _second_pass(
    source: TableSource,
    keep: Callable[[np.ndarray], np.ndarray] | None,
    missing: str,
    state: MomentState,
    gs: Any,
    scale: torch.Tensor,
    sol: Any,
    alpha: float,
    fit_intercept: bool,
    affordable: bool,
) -> tuple[str, torch.Tensor, torch.Tensor, Any, tuple[np.ndarray, np.ndarray] | None]:
    """TSQR (and dd moments when affordable).

    Returns ``(method, coef, sse, extended solution, refined)``: ``coef`` and ``sse`` in the
    scaled units of ``gs``; ``refined`` the TSQR's coefficients and intercepts refined with
    the dd residual (data units), when the dd moments were taken. ``sol`` is updated in
    place (rank, R of the TSQR).
    """
    from regtorch.solvers import (
        TSQR_TRUST_COND,
        centre_moments,
        refine_from_moments,
        solve_from_moments,
    )

    assert state.mean is not None and state.scale is not None
    p = gs.G.shape[0]
    m = p + gs.Xty.shape[1]
    mean = torch.cat([gs.X_offset, gs.y_offset])
    dd_scale = state.scale.numpy() if affordable else None
    shift = (state.mean / state.scale).numpy() if fit_intercept else np.zeros(m)
    R, mom = _tsqr(source, keep, missing, mean, m, scale, dd_scale, shift)
    coef, sse = sol.coef, gs.yty - 2 * (sol.coef * gs.Xty).sum(0)
    sse = sse + (sol.coef * (gs.G @ sol.coef)).sum(0)
    method = "streaming-cholesky"
    qr_sol = _solve_from_r(R, p, alpha)
    if qr_sol is not None:
        coef, sse, R_xx = qr_sol
        sol.R = R_xx if alpha == 0 else None
        sol.rank = p
        method = "streaming-tsqr"
    ext = refined = None
    if mom is not None:
        em = centre_moments(mom, fit_intercept, int(state.n), alpha, p)
        ext = solve_from_moments(em, p, fit_intercept, alpha)
        ext = ext if ext.rank == p else None
        if ext is not None and qr_sol is not None and alpha == 0:
            sx, sy = scale[:p], scale[p:]
            c = (coef * sx.unsqueeze(1) / sy.unsqueeze(0)).numpy()
            b, b0, _ = refine_from_moments(em, p, fit_intercept, c, (qr_sol[2] / sx).numpy())
            refined = (b, b0)
    cond = math.inf if sol.cond is None else sol.cond
    if ext is not None and (qr_sol is None or cond > TSQR_TRUST_COND):
        why = (
            f"float64 found rank {sol.rank} < {p}"
            if qr_sol is None
            else f"scaled Gram condition number {cond:.2g} > {TSQR_TRUST_COND:.0e}"
        )
        method = f"streaming-extended (fallback from {method}: {why})"
        warnings.warn(f"Streamed fit: {method}.", UserWarning, stacklevel=3)
        sol.rank = p
    return method, coef, sse, ext, refined


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
    # the first optimizer step loads torch's compiler stack (~75 MiB, measured): load it
    # before the budget is split, so that it counts as held
    warm = torch.nn.Parameter(torch.zeros(1))
    warm.grad = torch.zeros(1)
    make_optimizer(estimator.solver, [warm], 1e-3).step()
    spare = source.spare_bytes("to train a network")

    def part(rows: np.ndarray) -> np.ndarray:
        return _hash01(rows, seed)

    t0 = time.perf_counter()
    moments, _ = _accumulate(source, lambda r: part(r) >= hi, missing, progress, "statistics")
    local_rows = moments.n
    moments = moments.all_reduce(p + k)
    if moments.n < 2 or moments.mean is None or moments.C is None:
        raise DataError(f"{source.path}: fewer than 2 training rows.")
    # the state holds Z times a per-column power of two (exact): back to the data's units
    scale = getattr(moments, "scale", None)
    sc = torch.ones_like(moments.mean) if scale is None else scale
    mean = (moments.mean / sc).numpy()
    std = np.sqrt(np.maximum((moments.C.diagonal() / sc**2).numpy() / moments.n, 0.0))
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
