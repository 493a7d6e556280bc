"""Tabular data: read CSV, Parquet and NumPy files, and turn a table into (X, y).

Every problem a user can cause raises :class:`DataError` (a ``ValueError``) with one line
that names the problem and what to do.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DataError", "Encoder", "SUPPORTED", "prepare", "read_table"]

SUPPORTED = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".npy", ".npz")


class DataError(ValueError):
    """A data problem the user can fix."""


def read_table(path: str | os.PathLike[str], sep: str | None = None) -> Any:
    """Read a table into a pandas DataFrame.

    CSV (delimiter sniffed unless ``sep`` is given), Parquet (``.parquet``/``.pq``), and NumPy
    ``.npy`` (a 2-D array; columns ``x0, x1, ...``) or ``.npz`` (one 1-D array per column, or a
    single 2-D array).
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
    if ext in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DataError(f"{p} is not a readable Parquet file ({exc}).") from exc
        _check_unique(list(table.column_names), p)
        df = table.to_pandas()
    elif ext in (".npy", ".npz"):
        df = _read_numpy(p, pd)
    else:
        df = _read_csv(p, sep, pd)
    if len(df.columns) == 0:
        raise DataError(f"{p} has no columns.")
    if len(df) == 0:
        raise DataError(f"{p} has a header but no data rows.")
    return df


def _check_unique(names: list[str], p: Path) -> None:
    seen, dup = set(), []
    for n in names:
        if n in seen and n not in dup:
            dup.append(n)
        seen.add(n)
    if dup:
        raise DataError(f"{p} has duplicate column names: {', '.join(map(str, dup))}; rename them.")


def _read_csv(p: Path, sep: str | None, pd: Any) -> Any:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    with p.open("r", newline="", encoding="utf-8", errors="replace") as fh:
        head = fh.read(65536)
    if not head.strip():
        raise DataError(f"{p} is empty.")
    if sep is None:
        try:
            sep = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
        except csv.Error:
            sep = "\t" if p.suffix.lower() == ".tsv" else ","
    header = next(csv.reader([head.splitlines()[0]], delimiter=sep))
    _check_unique([h.strip() for h in header], p)
    try:
        table = pcsv.read_csv(
            p,
            parse_options=pcsv.ParseOptions(delimiter=sep),
            convert_options=pcsv.ConvertOptions(strings_can_be_null=True),
        )
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            raise DataError(f"{p} is empty.") from exc
        raise DataError(f"{p} could not be parsed as CSV with delimiter {sep!r}: {exc}") from exc
    return table.to_pandas()


def _read_numpy(p: Path, pd: Any) -> Any:
    try:
        obj = np.load(p, allow_pickle=False)  # never unpickle user files
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(f"{p}: object arrays are not supported (they need pickle).") from exc
        raise DataError(f"{p} is not a readable NumPy file ({exc}).") from exc
    except Exception as exc:
        raise DataError(f"{p} is not a readable NumPy file ({exc}).") from exc
    if isinstance(obj, np.ndarray):
        arr = obj.reshape(-1, 1) if obj.ndim == 1 else obj
        if arr.ndim != 2:
            raise DataError(f"{p} holds a {obj.ndim}-D array; a table needs 2-D.")
        return pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])
    with obj:
        arrays = {k: obj[k] for k in obj.files}
    if len(arrays) == 1 and next(iter(arrays.values())).ndim == 2:
        arr = next(iter(arrays.values()))
        return pd.DataFrame(arr, columns=[f"x{i}" for i in range(arr.shape[1])])
    if any(np.ndim(v) != 1 for v in arrays.values()) or len({len(v) for v in arrays.values()}) > 1:
        raise DataError(
            f"{p}: an .npz table needs 1-D arrays of equal length (one per column); "
            f"got shapes { {k: np.shape(v) for k, v in arrays.items()} }."
        )
    return pd.DataFrame(arrays)


@dataclass
class Encoder:
    """Turns table columns into model features: numeric columns as they are, string
    columns one-hot encoded with the categories seen in training.

    The first category (sorted) of each column is the reference level and gets no column,
    so that an intercept and the indicators are not collinear.
    """

    features: list[str]  # input columns, in order
    categories: dict[str, list[str]] = field(default_factory=dict)  # column -> categories
    unknown: str = "error"  # or "ignore": an unseen category encodes as all zeros

    @property
    def output_names(self) -> list[str]:
        """Names of the model's feature columns after encoding."""
        out: list[str] = []
        for col in self.features:
            if col in self.categories:
                out += [f"{col}={c}" for c in self.categories[col][1:]]
            else:
                out.append(col)
        return out

    def transform(self, df: Any) -> np.ndarray:
        """Encode ``df`` (which must hold every input column) into a float64 matrix."""
        missing = [c for c in self.features if c not in df.columns]
        if missing:
            raise DataError(
                f"The data lack column(s) the model needs: {', '.join(map(str, missing))}."
            )
        blocks = []
        for col in self.features:
            s = df[col]
            if col in self.categories:
                cats = self.categories[col]
                values = s.astype("string").fillna("")
                unseen = sorted(set(values) - set(cats))
                if unseen and self.unknown == "error":
                    raise DataError(
                        f"Column {col!r} has categories not seen in training: "
                        f"{', '.join(unseen[:5])}{' ...' if len(unseen) > 5 else ''}; use "
                        "--unknown-category ignore to encode them as zeros (the reference "
                        "level)."
                    )
                levels = np.array(cats[1:], dtype=object)
                blocks.append((values.to_numpy()[:, None] == levels[None, :]).astype(np.float64))
            else:
                blocks.append(_numeric(s, col).reshape(-1, 1))
        X = np.hstack(blocks) if blocks else np.zeros((len(df), 0))
        if not np.isfinite(X).all():
            names = self.output_names
            bad = {names[j]: int(n) for j, n in enumerate((~np.isfinite(X)).sum(0)) if n}
            listing = ", ".join(f"{c!r} ({n})" for c, n in bad.items())
            raise DataError(
                f"Missing or infinite values in column(s) {listing}; fix them (fit and "
                "evaluate can drop those rows with --missing drop)."
            )
        return X

    def to_dict(self) -> dict[str, Any]:
        return {"features": self.features, "categories": self.categories, "unknown": self.unknown}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Encoder:
        return cls(
            list(d["features"]),
            {k: list(v) for k, v in d["categories"].items()},
            str(d.get("unknown", "error")),
        )


def _is_numeric(s: Any) -> bool:
    import pandas as pd

    return (
        bool(pd.api.types.is_numeric_dtype(s.dtype))
        and not pd.api.types.is_bool_dtype(s.dtype)
        or bool(pd.api.types.is_bool_dtype(s.dtype))
    )


def _numeric(s: Any, col: str) -> np.ndarray:
    if not _is_numeric(s):
        raise DataError(f"Column {col!r} is not numeric.")
    return s.to_numpy(dtype=np.float64, na_value=np.nan)


def _listing(cols: list[str]) -> str:
    text = f"the columns are: {', '.join(map(repr, cols))}."
    if len(cols) == 1:
        text += " Only one column was read: wrong --sep?"
    return text


def _no_duplicates(names: list[str], what: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"The {what} column(s) {', '.join(map(repr, dup))} are given twice.")


def prepare(
    df: Any,
    target: str | list[str],
    features: list[str] | None = None,
    categorical: str = "error",
    missing: str = "error",
    unknown_category: str = "error",
    encoder: Encoder | None = None,
) -> tuple[np.ndarray, np.ndarray, Encoder, Any]:
    """Check a table and split it into float64 ``X`` and ``y``.

    Parameters
    ----------
    df : DataFrame
    target : str or list of str
        Target column(s).
    features : list of str or None
        Input columns; default all other columns.
    categorical : {"error", "onehot"}
        What to do with string columns among the features.
    missing : {"error", "drop"}
        Rows with NaN/inf in the used columns: an error naming the columns and counts, or
        dropped.
    encoder : Encoder, optional
        A fitted encoder (prediction time): its columns and categories are used.

    Returns
    -------
    X, y, encoder, kept
        ``kept`` is the boolean mask of rows used.
    """
    targets = [target] if isinstance(target, str) else list(target)
    cols = [str(c) for c in df.columns]
    _no_duplicates(targets, "target")
    absent = [t for t in targets if t not in cols]
    if absent:
        raise DataError(f"Target column {', '.join(map(repr, absent))} not found; {_listing(cols)}")
    for t in targets:
        values = df[t].dropna()
        if len(values) == 0:
            raise DataError(f"Target column {t!r} has no values.")
        if not _is_numeric(df[t]):
            raise DataError(
                f"Target column {t!r} is not numeric (e.g. {values.iloc[0]!r}); "
                "regression needs a number."
            )
    if encoder is None:
        feats = [c for c in cols if c not in targets] if features is None else list(features)
        _no_duplicates(feats, "feature")
        both = [f for f in feats if f in targets]
        if both:
            raise DataError(
                f"Column(s) {', '.join(map(repr, both))} cannot be both a feature and the target."
            )
        absent = [f for f in feats if f not in cols]
        if absent:
            raise DataError(
                f"Feature column(s) {', '.join(map(repr, absent))} not found; {_listing(cols)}"
            )
        if not feats:
            raise DataError("No feature columns: the table holds only the target.")
        text = [f for f in feats if not _is_numeric(df[f])]
        if text and categorical != "onehot":
            raise DataError(
                f"Non-numeric feature column(s): {', '.join(map(repr, text))}; drop them with "
                "--features or encode them with --categorical onehot."
            )
        cats = {f: sorted(df[f].astype("string").fillna("").unique().tolist()) for f in text}
        encoder = Encoder(feats, cats, unknown_category)
    y = np.column_stack([_numeric(df[t], t) for t in targets])
    numeric_cols = [c for c in encoder.features if c not in encoder.categories] + targets
    bad = {
        c: int((~np.isfinite(df[c].to_numpy(dtype=np.float64, na_value=np.nan))).sum())
        for c in numeric_cols
        if c in cols and _is_numeric(df[c])
    }
    bad = {c: n for c, n in bad.items() if n}
    kept = np.ones(len(df), dtype=bool)
    if bad:
        if missing != "drop":
            listing = ", ".join(f"{c!r} ({n})" for c, n in bad.items())
            raise DataError(
                f"Missing or infinite values in column(s) {listing}; fix them or use "
                "--missing drop to drop those rows."
            )
        for c in bad:
            kept &= np.isfinite(df[c].to_numpy(dtype=np.float64, na_value=np.nan))
        df = df[kept]
        y = y[kept]
        if len(df) == 0:
            raise DataError("No rows left after dropping the rows with missing values.")
    X = encoder.transform(df)
    return X, y, encoder, kept
