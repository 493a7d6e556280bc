"""Tables on disk read in batches: a Parquet file, a folder of them, or a CSV.

A :class:`TableSource` streams its rows in batches sized by a memory budget; in a
``torch.distributed`` process group each rank reads its own share (runs of consecutive
Parquet row groups round-robin, CSV batches round-robin).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regtorch.data.memory import (
    BYTES_PER_VALUE,
    CSV_BLOCK_BYTES,
    MIN_BATCH_ROWS,
    UNIT_ROWS,
    _reading_bytes,
    _resident_after_start_up,
    _resident_bytes,
    default_memory_limit,
)
from regtorch.data.readers import DataError, _check_unique
from regtorch.data.schema import _feature_columns, _listing, _no_duplicates
from regtorch.distributed import rank_world

__all__ = ["Batch", "TableSource"]

PARQUET_SUFFIXES = (".parquet", ".pq")


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
        starts = [start for _, _, start in self._work_units(rank_world()[1])]
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
        rank, world = rank_world()
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
