"""Reading a CSV in batches: its schema, its reader, and errors that name the line.

:class:`CsvReading` holds the CSV parts of :class:`regtorch.data.table.TableSource`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from regtorch.data.readers import DataError, _check_unique

__all__ = ["CsvReading"]


class CsvReading:
    """CSV schema, reader and error locations (mixed into ``TableSource``)."""

    files: list[Path]
    kind: str
    sep: str | None
    encoding: str
    _columns: list[str]

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

    def _csv_reader(
        self, block: int, columns: list[str] | None = None, text: Collection[str] = ()
    ) -> Any:
        """Batches of the CSV; ``columns`` read as float64, those in ``text`` as text."""
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
        if columns is not None:  # read only the used columns, as read_table would
            types = {c: pa.string() if c in text else pa.float64() for c in columns}
            convert = pcsv.ConvertOptions(
                include_columns=columns, column_types=types, strings_can_be_null=True
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
            col = self._columns
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
