"""Read CSV, Parquet and NumPy files into a pandas DataFrame that knows where it came from.

A frame from :func:`read_table` carries ``attrs["source"]`` (path, kind, delimiter, encoding),
so that :func:`where` can turn row positions into file lines for a message. Every problem a
user can cause raises :class:`DataError` (a ``ValueError``) with one line naming the file.
"""

from __future__ import annotations

import codecs
import csv
import math
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DataError", "SUPPORTED", "design_limit", "read_table", "where"]

SUPPORTED = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".npy", ".npz")
# an encoded design (or an .npz's arrays) larger than this share of the available memory is
# refused up front (a fit holds it about three times: the matrix, a frame, the model's tensor)
DESIGN_MEMORY_SHARE = 0.25
LIMIT_ENV = "REGTORCH_MAX_DESIGN_BYTES"


class DataError(ValueError):
    """A data problem the user can fix."""


def read_table(
    path: str | os.PathLike[str],
    sep: str | None = None,
    encoding: str = "utf-8",
    text_columns: Collection[str] = (),
) -> Any:
    """Read a table into a pandas DataFrame.

    CSV (delimiter sniffed unless ``sep`` is given; text in ``encoding``, a UTF-16 byte-order
    mark is recognised), Parquet (``.parquet``/``.pq``), and NumPy ``.npy`` (a 2-D array;
    columns ``x0, x1, ...``, or a structured array) or ``.npz`` (one 1-D array per column, or a
    single 2-D array). ``text_columns`` are read as text whatever they look like (the
    categorical columns of a fitted model). The frame's ``attrs["source"]`` says where it came
    from, so that messages can name the file and line of a bad value.
    """
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file.")
    if p.is_dir():
        raise DataError(f"{p} is a folder; give a CSV, Parquet or NumPy file.")
    ext = p.suffix.lower()
    if ext not in SUPPORTED:
        raise DataError(
            f"{p}: unknown file type {ext or '(none)'!r}; use one of {', '.join(SUPPORTED)}."
        )
    if p.stat().st_size == 0:
        raise DataError(f"{p} is empty.")
    source: dict[str, Any] = {"path": str(p), "kind": "table"}
    if ext in (".parquet", ".pq"):
        df = _read_parquet(p)
    elif ext in (".npy", ".npz"):
        df = _read_numpy(p, pd)
    else:
        encoding = _csv_encoding(p, encoding)
        df, sep = _read_csv(p, sep, encoding, set(text_columns), pd)
        source.update(kind="csv", sep=sep, encoding=encoding)
    if len(df.columns) == 0:
        raise DataError(f"{p} has no columns.")
    if len(df) == 0:
        raise DataError(f"{p} has a header but no data rows.")
    df.attrs["source"] = source
    return df


def _check_unique(names: list[str], p: Path) -> None:
    seen, dup = set(), []
    for n in names:
        if n in seen and n not in dup:
            dup.append(n)
        seen.add(n)
    if dup:
        raise DataError(f"{p} has duplicate column names: {', '.join(map(str, dup))}; rename them.")


def _read_parquet(p: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        names = list(pq.read_schema(p).names)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{p} is not a readable Parquet file ({exc}).") from exc
    _check_unique(names, p)  # before reading: pyarrow cannot select among equal names
    try:
        table = pq.read_table(p)
    except Exception as exc:
        raise DataError(f"{p} is not a readable Parquet file ({exc}).") from exc
    return table.to_pandas()


def _csv_encoding(p: Path, encoding: str) -> str:
    """``encoding``, or UTF-16 where a UTF-8 read meets a UTF-16 byte-order mark."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"--encoding {encoding}: unknown text encoding.") from None
    with p.open("rb") as fh:
        start = fh.read(4)
    utf8 = codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
    if utf8 and start[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return "utf-16"
    return encoding


def _python_encoding(encoding: str) -> str:
    """The codec Python reads with: UTF-8 drops a byte-order mark, as Arrow does."""
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _read_csv(p: Path, sep: str | None, encoding: str, text: set[str], pd: Any) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    with p.open("r", newline="", encoding=_python_encoding(encoding), errors="replace") as fh:
        head = fh.read(65536)
    if not head.strip():
        raise DataError(f"{p} is empty.")
    if sep is None:
        try:
            sep = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
        except csv.Error:
            sep = "\t" if p.suffix.lower() == ".tsv" else ","
    sep = {"\\t": "\t", "tab": "\t"}.get(sep, sep)  # `--sep '\t'` as typed in a shell
    if len(sep) != 1 or sep in '\r\n"':
        raise DataError(f"--sep {sep!r}: give one character, e.g. ';' or '\\t'.")
    first = next((ln for ln in head.splitlines() if ln), "")
    header = next(csv.reader([first], delimiter=sep), [])
    _check_unique([h.strip() for h in header], p)
    try:
        table = pcsv.read_csv(
            p,
            read_options=pcsv.ReadOptions(encoding=encoding),
            parse_options=pcsv.ParseOptions(delimiter=sep),
            convert_options=pcsv.ConvertOptions(
                strings_can_be_null=True,
                column_types={c: pa.string() for c in header if c in text},
            ),
        )
    except UnicodeDecodeError as exc:
        raise DataError(_decode_error(p, encoding, sep, header)) from exc
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise DataError(f"{p} is empty.") from exc
        if "UTF8" in str(exc) or "UTF-8" in str(exc):
            raise DataError(_decode_error(p, encoding, sep, header)) from exc
        line = _ragged_line(p, sep, encoding, len(header)) if "Expected" in str(exc) else None
        where = f" (line {line})" if line else ""
        raise DataError(
            f"{p} could not be parsed as CSV with delimiter {sep!r}{where}: {exc}"
        ) from exc
    if any(pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) for f in table.schema):
        # Arrow keeps text it cannot decode as bytes
        raise DataError(_decode_error(p, encoding, sep, header))
    return table.to_pandas(), sep


def _ragged_line(p: Path, sep: str, encoding: str, width: int) -> int | None:
    """The first line whose record has a number of fields other than ``width``."""
    with p.open(newline="", encoding=_python_encoding(encoding), errors="replace") as fh:
        reader = csv.reader(fh, delimiter=sep)
        start = 1
        for record in reader:
            if record and len(record) != width:
                return start
            start = reader.line_num + 1
    return None


def _decode_error(p: Path, encoding: str, sep: str, header: list[str]) -> str:
    """A one-line message locating the first bytes that ``encoding`` cannot decode."""
    decoder = codecs.getincrementaldecoder(_python_encoding(encoding))()
    offset = 0
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as exc:
                bad = raw[exc.start : exc.end]
                prefix = raw[: exc.start].decode(_python_encoding(encoding), errors="replace")
                col = len(next(csv.reader([prefix], delimiter=sep), [""])) - 1
                where = f", column {header[col]!r}" if lineno > 1 and col < len(header) else ""
                return (
                    f"{p} line {lineno}{where} (byte offset {offset + exc.start}) is not valid "
                    f"{encoding} text ({bad!r}); the file is probably in another encoding: give "
                    "it with --encoding, e.g. --encoding latin-1 or cp1252."
                )
            offset += len(raw)
    return f"{p} is not valid {encoding} text; give its encoding with --encoding."


def _csv_lines(source: dict[str, Any], rows: list[int]) -> list[int]:
    """The 1-based file line (the header is line 1) where each data row (0-based) starts."""
    wanted, found = set(rows), {}
    path, sep = source["path"], source.get("sep") or ","
    encoding = _python_encoding(source.get("encoding", "utf-8"))
    with open(path, newline="", encoding=encoding, errors="replace") as fh:
        reader = csv.reader(fh, delimiter=sep)
        start, index = 1, -1  # index -1 is the header
        for record in reader:
            if record:  # Arrow skips empty lines
                if index in wanted:
                    found[index] = start
                index += 1
                if index > max(wanted):
                    break
            start = reader.line_num + 1
    return [found.get(r, r + 2) for r in rows]


def where(df: Any, mask: Any, limit: int = 5) -> str:
    """Where the rows of ``mask`` are, for a message: ``"t.csv lines 3, 9 and 2 more"``.

    Lines are counted in the file, header included; files other than CSV get data rows
    (1-based). A frame that did not come from :func:`read_table` gets row positions.
    """
    idx = np.flatnonzero(np.asarray(mask))
    if len(idx) == 0:
        return ""
    source = df.attrs.get("source") or {}
    try:  # the index of a frame read by read_table is its row number in the file
        rows = [int(r) for r in df.index[idx[:limit]]] if source else list(idx[:limit])
    except (TypeError, ValueError):
        rows, source = list(idx[:limit]), {}
    if source.get("kind") == "csv":
        label, numbers = "line", _csv_lines(source, rows)
    else:
        label, numbers = "row", [r + 1 for r in rows]
    text = f"{label}{'s' if len(idx) > 1 else ''} {', '.join(map(str, numbers))}"
    if len(idx) > limit:
        text += f" and {len(idx) - limit} more"
    return f"{source['path']} {text}" if source else text


def _read_numpy(p: Path, pd: Any) -> Any:
    with p.open("rb") as fh:
        magic = fh.read(6)
    if p.suffix.lower() == ".npz" and magic[:2] == b"PK":
        _check_npz_sizes(p)
    elif magic == b"\x93NUMPY":
        with p.open("rb") as fh:
            _check_npy_size(fh, p.stat().st_size, str(p))
    else:
        raise DataError(f"{p} is not a NumPy {p.suffix.lower()} file (no NumPy or zip header).")
    try:
        obj = np.load(p, allow_pickle=False)  # never unpickle user files
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{p}: object arrays are not supported (they need pickle).") from exc
        raise DataError(f"{p} is not a readable NumPy file ({exc}).") from exc
    except Exception as exc:
        raise DataError(f"{p} is not a readable NumPy file ({exc}).") from exc
    if isinstance(obj, np.ndarray):
        if obj.ndim == 1 and obj.dtype.names:  # a structured array: one column per field
            return pd.DataFrame({n: obj[n] for n in obj.dtype.names})
        arr = obj.reshape(-1, 1) if obj.ndim == 1 else obj
        if arr.ndim != 2:
            raise DataError(f"{p} holds a {obj.ndim}-D array; a table needs 2-D.")
        return pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])
    try:
        with obj:
            arrays = {k: obj[k] for k in obj.files}
    except Exception as exc:  # a damaged member, or an object array
        if "allow_pickle" in str(exc):
            raise DataError(f"{p}: object arrays are not supported (they need pickle).") from exc
        raise DataError(f"{p} is not a readable NumPy file ({exc}).") from exc
    if not arrays:
        raise DataError(f"{p} holds no arrays.")
    if len(arrays) == 1 and next(iter(arrays.values())).ndim == 2:
        arr = next(iter(arrays.values()))
        return pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])
    if any(np.ndim(v) != 1 for v in arrays.values()) or len({len(v) for v in arrays.values()}) > 1:
        raise DataError(
            f"{p}: an .npz table needs 1-D arrays of equal length (one per column); "
            f"got shapes { {k: np.shape(v) for k, v in arrays.items()} }."
        )
    return pd.DataFrame(arrays)


def _npy_header(fh: Any, name: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Shape and dtype from a ``.npy`` header, without reading the data."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = npformat.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = npformat.read_array_header_2_0(fh)
        else:  # 3.0 (UTF-8 field names) has no public reader
            read = getattr(npformat, "_read_array_header")  # noqa: B009 - private in numpy
            shape, _, dtype = read(fh, version)
    except Exception as exc:  # numpy raises ValueError and others for a bad header
        raise DataError(f"{name} is not a readable NumPy file ({exc}).") from exc
    return tuple(int(d) for d in shape), dtype


def _check_npy_size(fh: Any, size: int, name: str) -> int:
    """Refuse a header that declares more data than the file holds; the declared bytes."""
    shape, dtype = _npy_header(fh, name)
    need = math.prod(shape) * (8 if dtype.hasobject else dtype.itemsize)
    have = size - fh.tell()
    if need > have:
        raise DataError(
            f"{name} is not a readable NumPy file: its header declares a {dtype} array of shape "
            f"{shape} ({_human(need)}) but it holds only {_human(have)} of data (truncated, or "
            "not what it claims)."
        )
    return need


def _check_npz_sizes(p: Path) -> None:
    """Each member's header against its size, and the total against the memory budget."""
    import zipfile

    try:
        with zipfile.ZipFile(p) as zf:
            total = 0
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    with zf.open(info) as fh:
                        total += _check_npy_size(fh, info.file_size, f"{p}:{info.filename}")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{p} is not a readable .npz file ({exc}).") from exc
    limit = design_limit()
    if total > limit:
        raise DataError(
            f"{p} unpacks to {_human(total)}, more than the memory limit of {_human(limit)} "
            f"(set {LIMIT_ENV} to change it)."
        )


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover - the loop returns


def design_limit() -> int:
    """Bytes an encoded design may take: ``$REGTORCH_MAX_DESIGN_BYTES``, else a share of the
    memory available now."""
    env = os.environ.get(LIMIT_ENV)
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise DataError(f"{LIMIT_ENV}={env!r}: give a number of bytes.") from None
    return int(available_memory() * DESIGN_MEMORY_SHARE)


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable``; physical memory where unknown)."""
    available = 0
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if not available:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            available = 8 * 1024**3
    return int(available)
