"""Tables on disk read in batches: a Parquet file, a folder of them, or a CSV.

A :class:`TableSource` streams its rows in batches sized by a memory budget; in a
``torch.distributed`` process group each rank reads its own share (runs of consecutive
Parquet row groups round-robin, CSV batches round-robin).
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regtorch.data.csvfile import CsvReading
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
from regtorch.data.schema import (
    MAX_LEVELS,
    Encoder,
    _check_levels,
    _feature_columns,
    _listing,
    _no_duplicates,
    bad_weights_message,
    check_counts_not_almost_numeric,
    missing_counts,
    missing_masks,
    text_counts,
)
from regtorch.distributed import rank_world
from regtorch.exceptions import DataWarning

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
    """Rows of a table: ``Z = [X, y]`` (n, p + k), column-major, global row indices, weights.

    ``rows`` are positions in the whole table (0-based), whatever the batch size, budget or
    number of ranks; ``w`` holds the sample weights (n,) or is None.
    """

    Z: np.ndarray
    rows: np.ndarray
    p: int
    w: np.ndarray | None = None

    @property
    def X(self) -> np.ndarray:
        return self.Z[:, : self.p]

    @property
    def y(self) -> np.ndarray:
        return self.Z[:, self.p :]


class TableSource(CsvReading):
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
    sep, encoding : str
        The CSV delimiter (sniffed when None) and text encoding.
    weight : str or None
        A numeric column of sample weights, read with each batch (``Batch.w``); never a
        feature. A missing weight follows ``missing`` like any used column; a negative one
        is an error naming the file and row.
    categorical : {"error", "onehot"}
        Text columns among the features: an error, or one-hot encoded by the same
        :class:`~regtorch.data.schema.Encoder` as in memory, its levels found by a first
        pass over the rows complete in every used column (as ``prepare`` finds them).
    max_levels : int
        Most categories a one-hot column may have.
    unknown_category : {"error", "ignore"}
        Stored in the encoder, for prediction on other data.

    Attributes
    ----------
    features : list of str
        The model's feature names, one-hot indicators included (``encoder.output_names``).
    encoder : Encoder
        Maps the input columns to ``features`` (no categories when there is no text).
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
        weight: str | None = None,
        categorical: str = "error",
        max_levels: int = MAX_LEVELS,
        unknown_category: str = "error",
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
        _check_choice("categorical", categorical, ("error", "onehot"))
        _check_choice("unknown_category", unknown_category, ("error", "ignore"))
        self.targets = [target] if isinstance(target, str) else list(target)
        self.weight = weight
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
        inputs, self._text = self._check_columns(names, types, features, categorical)
        self._columns = inputs + self.targets + ([] if weight is None else [weight])
        self.encoder = Encoder(inputs, {}, unknown_category)
        if self._text:
            self.encoder = Encoder(inputs, self._levels(max_levels), unknown_category)
        self.features = self.encoder.output_names
        self._set_budget(memory_limit, batch_rows)

    def _check_columns(
        self,
        names: list[str],
        types: dict[str, Any],
        features: list[str] | None,
        categorical: str,
    ) -> tuple[list[str], list[str]]:
        """The input columns and which are text, after the same checks as ``prepare``."""
        _no_duplicates(self.targets, "target")
        absent = [t for t in self.targets if t not in names]
        if absent:
            raise DataError(
                f"Target column {', '.join(map(repr, absent))} not found; {_listing(names)}"
            )
        for t in self.targets:
            if not _numeric_type(types[t]):
                raise DataError(
                    f"Target column {t!r} is not numeric{self._example(t)}; regression needs a "
                    "number."
                )
        # the in-memory rules, the weight column's included
        feats = _feature_columns(names, self.targets, features, self.weight)
        if self.weight is not None and not _numeric_type(types[self.weight]):
            raise DataError(
                f"Weight column {self.weight!r} is not numeric{self._example(self.weight)}; "
                "weights are numbers."
            )
        text = [f for f in feats if not _numeric_type(types[f])]
        if text and categorical != "onehot":
            raise DataError(
                f"Non-numeric feature column(s) {', '.join(map(repr, text))}"
                f"{self._example(text[0])}: drop them with --features or encode them with "
                "--categorical onehot."
            )
        return feats, text

    def _levels(self, max_levels: int) -> dict[str, list[str]]:
        """Categories of the text columns, over the rows complete in every used column."""
        found: dict[str, Counter[str]] = {c: Counter() for c in self._text}
        for rb, *_ in self._record_batches(0, 1, None, UNIT_ROWS):
            num, text = self._raw(rb)
            bad = self._missing(num, text)
            keep = ~np.logical_or.reduce(list(bad.values())) if bad else None
            for c in self._text:
                found[c].update(text_counts(text[c] if keep is None else text[c][keep]))
        for c, counts in found.items():  # as in memory: a column of numbers with typos
            check_counts_not_almost_numeric(c, dict(counts))
        cats = {c: sorted(v) for c, v in found.items()}
        _check_levels(cats, max_levels)
        return cats

    def _set_budget(self, memory_limit: int | None, batch_rows: int | None) -> None:
        """Batch rows from the budget left once the process has started."""
        width = len(self.features) + len(self.targets) + (self.weight is not None)
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
        width = len(self.features) + len(self.targets) + (self.weight is not None)
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
                DataWarning,
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
                DataWarning,
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

    def _raw(self, rb: Any) -> tuple[np.ndarray, Any]:
        """A record batch as float64 numeric columns (``_columns`` order) and a frame of text."""
        num = _batch_matrix(rb, [c for c in self._columns if c not in self._text])
        if not self._text:
            return num, None
        import pandas as pd

        return num, pd.DataFrame({c: rb.column(c).to_pandas() for c in self._text})

    def _missing(self, num: np.ndarray, text: Any) -> dict[str, np.ndarray]:
        """Column -> mask of its missing values (NaN, inf, null, blank text), as ``prepare``."""
        numeric = [c for c in self._columns if c not in self._text]
        bad = ~np.isfinite(num)
        found = {c: bad[:, j] for j, c in enumerate(numeric) if bad[:, j].any()}
        if text is not None:
            found.update(missing_masks(text, self._text, self._text))
        return {c: found[c] for c in self._columns if c in found}

    def _to_numpy(self, rb: Any, first_row: int, missing: str, file: Path, local: int) -> Batch:
        """``first_row``: global index of the batch's first row; ``local``: its index in ``file``."""
        n = rb.num_rows
        num, text = self._raw(rb)
        rows = np.arange(first_row, first_row + n, dtype=np.int64)
        bad = self._missing(num, text)
        if bad:
            drop = np.logical_or.reduce(list(bad.values()))
            if missing != "drop":
                i = int(np.flatnonzero(drop)[0])
                col = next(c for c, m in bad.items() if m[i])
                raise DataError(
                    f"Missing or infinite values in column(s) {missing_counts(bad)} among {n} "
                    f"rows read; the first is in column {col!r} at "
                    f"{self._where(file, local + i)}; fix them or use --missing drop."
                )
            num, rows = num[~drop], rows[~drop]
            text = None if text is None else text[~drop].reset_index(drop=True)
        w = None
        if self.weight is not None:
            w, num = np.ascontiguousarray(num[:, -1]), num[:, :-1]
            if (w < 0).any():
                i = int(np.flatnonzero(w < 0)[0])
                place = self._where(file, local + int(rows[i] - first_row))
                raise DataError(
                    bad_weights_message(self.weight, int((w < 0).sum()), float(w[i]), place)
                )
        Z = num if text is None else self._encode(num, text)
        return Batch(Z, rows, len(self.features), w)

    def _encode(self, num: np.ndarray, text: Any) -> np.ndarray:
        """``[encoder.transform(inputs), y]``, column-major, from complete rows."""
        numeric = [c for c in self.encoder.features if c not in self._text]
        frame = text.assign(**{c: num[:, j] for j, c in enumerate(numeric)})
        X = self.encoder.transform(frame)
        return np.asfortranarray(np.column_stack([X, num[:, len(numeric) :]]))

    def batches(self, missing: str = "error", epoch_seed: int | None = None) -> Iterator[Batch]:
        """This rank's batches; with ``epoch_seed`` the units of row groups come shuffled."""
        rank, world = rank_world()
        for rb, first, file, local in self._record_batches(
            rank, world, epoch_seed, self.batch_rows
        ):
            yield self._to_numpy(rb, first, missing, file, local)

    def _record_batches(
        self, rank: int, world: int, epoch_seed: int | None, batch_rows: int
    ) -> Iterator[tuple[Any, int, Path, int]]:
        """(record batch of the used columns, first global row, file, first row in the file)."""
        if self.kind == "parquet":
            yield from self._parquet_batches(rank, world, epoch_seed, batch_rows)
            return
        import pyarrow as pa

        cols = self._columns
        # a fixed block size: every rank must cut the file into the same blocks, so that the
        # round robin below partitions the rows
        offset = 0
        try:
            reader = self._csv_reader(CSV_BLOCK_BYTES, cols, self._text)
            for i, rb in enumerate(reader):
                if i % world == rank:
                    yield rb.select(cols), offset, self.files[0], offset
                offset += rb.num_rows
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise self._bad_csv_value(exc, offset) from exc

    def _parquet_batches(
        self, rank: int, world: int, epoch_seed: int | None, batch_rows: int
    ) -> Iterator[tuple[Any, int, Path, int]]:
        import pyarrow.parquet as pq

        cols = self._columns
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
                        batch_size=batch_rows,
                        row_groups=groups,
                        columns=cols,
                        use_threads=False,
                    ):
                        yield rb, offset, f, offset - self._file_start[f]
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


def _numeric_type(t: Any) -> bool:
    """Numbers or booleans; a CSV column empty in its first block reads as null (checked
    when converting)."""
    return _kind(t) == "numeric"


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}.")
