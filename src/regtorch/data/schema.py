"""Turn a table into checked float64 (X, y): targets, features, missing values, categories.

Files are read by :mod:`regtorch.data.readers`. Every problem a user can cause raises
:class:`DataError` (a ``ValueError``) with one line that names the problem, the place (file,
column, line) and what to do.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from regtorch.data.readers import (
    DESIGN_MEMORY_SHARE,
    LIMIT_ENV,
    SUPPORTED,
    DataError,
    _check_unique,  # noqa: F401 - streaming imports it from here
    _human,
    design_limit,
    read_table,
    where,
)

__all__ = [
    "DataError",
    "Encoder",
    "SUPPORTED",
    "design_limit",
    "prepare",
    "read_table",
    "sample_weights",
    "where",
]

# a categorical column with more distinct values than this is probably an identifier
MAX_LEVELS = 1000
# a text column whose values are numbers at least this often, with more distinct numbers than
# NUMERIC_MIN_DISTINCT, is a numeric column with typos, not a category
NUMERIC_SHARE = 0.9
NUMERIC_MIN_DISTINCT = 20


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

    def transform(self, df: Any, max_bytes: int | None = None) -> np.ndarray:
        """Encode ``df`` (which must hold every input column) into a float64 matrix.

        Missing values (blank text included), infinite numbers and, unless ``unknown`` is
        "ignore", unseen categories are errors naming the column and the rows. A design
        larger than ``max_bytes`` (default :func:`design_limit`) is refused before it is built.
        """
        import pandas as pd

        absent = [c for c in self.features if c not in df.columns]
        if absent:
            raise DataError(
                f"The data lack column(s) the model needs: {', '.join(map(str, absent))}."
            )
        names = self.output_names
        check_design_size(len(df), len(names), self.categories, max_bytes)
        old = [c for c, cats in self.categories.items() if "" in cats]  # blank was a level
        bad = missing_masks(df, [c for c in self.features if c not in old], self.categories)
        if bad:
            raise DataError(
                missing_message(
                    df, bad, "fix them (fit and evaluate can drop those rows with --missing drop)"
                )
            )
        X = np.zeros((len(df), len(names)))  # (n_samples, n_encoded_features)
        j = 0
        for col in self.features:
            if col not in self.categories:
                X[:, j] = _numeric(df, col)
                j += 1
                continue
            cats = self.categories[col]
            values = _as_text(df[col], cats)
            if col in old:
                values = values.fillna("")
            # int64: the codes come as int8, and j + code must not wrap past 127
            codes = pd.Categorical(values, categories=cats).codes.astype(np.int64)
            unseen_mask = np.asarray(values.notna()) & (codes < 0)
            if unseen_mask.any() and self.unknown == "error":
                unseen = sorted(set(values[unseen_mask]))
                raise DataError(
                    f"Column {col!r} has categories not seen in training: "
                    f"{', '.join(unseen[:5])}{' ...' if len(unseen) > 5 else ''} "
                    f"({where(df, unseen_mask)}); use --unknown-category ignore to encode them "
                    "as zeros (the reference level)."
                )
            rows = np.flatnonzero(codes > 0)  # the reference level (code 0) gets no column
            X[rows, j + codes[rows] - 1] = 1.0
            j += len(cats) - 1
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
    """Real numbers or booleans (complex numbers are not: casting would drop a part)."""
    import pandas as pd

    dtype = s.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return True
    return bool(pd.api.types.is_numeric_dtype(dtype)) and not pd.api.types.is_complex_dtype(dtype)


def _numbers(s: Any) -> Any:
    """A text column parsed as numbers: NaN where a value is missing or not a number."""
    import pandas as pd

    return pd.to_numeric(s.astype(object), errors="coerce").astype(np.float64)


def _not_numbers(df: Any, col: str) -> np.ndarray:
    """Mask of the values of a text column that are present but not numbers."""
    s = df[col]
    return np.asarray(s.notna()) & np.isnan(_numbers(s).to_numpy())


def _example(df: Any, col: str, mask: np.ndarray) -> str:
    """``'3.2x' at t.csv line 7`` for the first row of ``mask``."""
    first = int(np.flatnonzero(mask)[0])
    return f"{df[col].iloc[first]!r} at {where(df, np.arange(len(df)) == first)}"


def _numeric(df: Any, col: str) -> np.ndarray:
    s = df[col]
    if not _is_numeric(s):
        bad = _not_numbers(df, col)
        if not bad.any():  # e.g. complex numbers, dates
            raise DataError(f"Column {col!r} is not numeric (dtype {s.dtype}).")
        raise DataError(
            f"Column {col!r} is not numeric: {bad.sum()} value(s) are not numbers, e.g. "
            f"{_example(df, col, bad)}."
        )
    return s.to_numpy(dtype=np.float64, na_value=np.nan)


def _as_text(s: Any, cats: Collection[str] = ()) -> Any:
    """A column as pandas text, blanks missing; numbers in the form ``cats`` use (``"1"``,
    not ``"1.0"``, when a Parquet column of codes came back as floats)."""
    import pandas as pd

    if _is_numeric(s) and not pd.api.types.is_bool_dtype(s.dtype):
        known = set(cats)

        def form(v: Any) -> str:
            t = str(v)
            if t not in known and float(v).is_integer():
                t = str(int(v))
            return t

        text = s.map({v: form(v) for v in s.dropna().unique()}).astype("string")
    else:
        text = s.astype("string")
    return text.mask(text.str.strip() == "")


def missing_masks(df: Any, cols: list[str], text: Collection[str]) -> dict[str, np.ndarray]:
    """Column -> mask of its missing values (infinite numbers and blank text count)."""
    out = {}
    for c in cols:
        if c not in df.columns:
            continue
        s = df[c]
        if c in text or not _is_numeric(s):
            mask = np.asarray(_as_text(s).isna())
        else:
            mask = ~np.isfinite(s.to_numpy(dtype=np.float64, na_value=np.nan))
        if mask.any():
            out[c] = mask
    return out


def missing_message(df: Any, bad: dict[str, np.ndarray], remedy: str) -> str:
    """``Missing or infinite values in column(s) 'a' (2) at t.csv lines 3, 9; <remedy>.``"""
    rows = np.logical_or.reduce(list(bad.values()))
    return (
        f"Missing or infinite values in column(s) {missing_counts(bad)} at {where(df, rows)}; "
        f"{remedy}."
    )


def missing_counts(bad: dict[str, np.ndarray]) -> str:
    """``'a' (2), 'b' (1)``: the columns with missing values and how many each."""
    return ", ".join(f"{c!r} ({int(m.sum())})" for c, m in bad.items())


def check_design_size(
    n_rows: int, n_cols: int, categories: dict[str, list[str]], max_bytes: int | None = None
) -> None:
    """Refuse an encoded design of more than ``max_bytes`` before allocating it."""
    limit = design_limit() if max_bytes is None else max_bytes
    need = n_rows * n_cols * 8
    if need <= limit:
        return
    hint = ""
    if categories:
        col, cats = max(categories.items(), key=lambda kv: len(kv[1]))
        hint = (
            f"; column {col!r} alone has {len(cats)} levels: drop it with --features or "
            "lower --max-levels"
        )
    raise DataError(
        f"The encoded data would take {_human(need)} ({n_rows} rows x {n_cols} columns x 8 "
        f"bytes), more than the limit of {_human(limit)} ({DESIGN_MEMORY_SHARE:.0%} of the "
        f"available memory; {LIMIT_ENV} sets it){hint}."
    )


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
    max_levels: int = MAX_LEVELS,
    max_bytes: int | None = None,
    weight: str | None = None,
) -> tuple[np.ndarray, np.ndarray, Encoder, Any]:
    """Check a table and split it into float64 ``X`` and ``y``.

    Parameters
    ----------
    df : DataFrame
        Best read with :func:`read_table`, so that messages name the file and line.
    target : str or list of str
        Target column(s).
    features : list of str or None
        Input columns; default all other columns (the weight column excepted).
    categorical : {"error", "onehot"}
        What to do with text columns among the features. A text column that is almost all
        numbers (a typo in a numeric column) is an error either way.
    missing : {"error", "drop"}
        Rows with a missing value (NaN, a blank, inf) in a used column, text columns included:
        an error naming the columns, counts and lines, or dropped.
    encoder : Encoder, optional
        A fitted encoder (prediction time): its columns and categories are used.
    max_levels : int
        Most categories a one-hot column may have.
    max_bytes : int, optional
        Most bytes the encoded ``X`` may take (default :func:`design_limit`).
    weight : str, optional
        A column of sample weights: never a feature, checked like the other used columns
        (a missing weight follows ``missing``), finite and >= 0. Take the values of the kept
        rows with :func:`sample_weights`.

    Returns
    -------
    X, y, encoder, kept
        ``kept`` is the boolean mask of rows used.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"a": [1.0, 2.0, 3.0], "c": ["u", "v", "u"], "y": [1.0, 2.0, 4.0]})
    >>> X, y, enc, kept = prepare(df, "y", categorical="onehot")
    >>> enc.output_names
    ['a', 'c=v']
    """
    targets = [target] if isinstance(target, str) else list(target)
    cols = [str(c) for c in df.columns]
    _check_targets(df, cols, targets)
    extra = [] if weight is None else [weight]
    if weight is not None:
        _check_weight_column(cols, targets, features, weight)
        _check_target(df, weight, "Weight")
    if encoder is None:
        feats, text = _new_features(df, cols, targets, features, categorical, weight)
        categories: Collection[str] = text
    else:
        feats, categories = encoder.features, encoder.categories
    old = [] if encoder is None else [c for c, v in encoder.categories.items() if "" in v]
    used = [c for c in feats if c not in old] + targets + extra
    df, kept = _drop_missing(df, used, categories, missing)
    if weight is not None:
        sample_weights(df, weight)
    if encoder is None:
        cats = {f: sorted(text_levels(df[f])) for f in text}
        _check_levels(cats, max_levels)
        encoder = Encoder(feats, cats, unknown_category)
    y = np.column_stack([_numeric(df, t) for t in targets])
    X = encoder.transform(df, max_bytes=max_bytes)
    return X, y, encoder, kept


def _drop_missing(
    df: Any, used: list[str], text: Collection[str], missing: str
) -> tuple[Any, np.ndarray]:
    """The rows complete in the ``used`` columns and their mask; an error unless "drop"."""
    bad = missing_masks(df, used, text)
    kept = np.ones(len(df), dtype=bool)
    if bad:
        if missing != "drop":
            raise DataError(
                missing_message(df, bad, "fix them or use --missing drop to drop those rows")
            )
        kept = ~np.logical_or.reduce(list(bad.values()))
        df = df[kept]
        if len(df) == 0:
            raise DataError("No rows left after dropping the rows with missing values.")
    return df, kept


def sample_weights(df: Any, weight: str, kept: Any = None) -> np.ndarray:
    """The weight column of the ``kept`` rows as float64, checked finite and >= 0."""
    frame = df if kept is None else df[np.asarray(kept)]
    w = _numeric(frame, weight)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        place = where(frame, np.arange(len(w)) == first)
        raise DataError(bad_weights_message(weight, int(bad.sum()), float(w[first]), place))
    return w


def bad_weights_message(col: str, count: int, value: float, place: str) -> str:
    """The one message for negative, infinite or missing sample weights."""
    return (
        f"Weight column {col!r}: sample weights must be finite and >= 0; {count} value(s) are "
        f"not, the first {value!r} at {place}."
    )


def text_levels(s: Any) -> set[str]:
    """The distinct present values of a column read as text (the categories it holds)."""
    return set(_as_text(s).dropna().unique().tolist())


def text_counts(s: Any) -> dict[str, int]:
    """How often each present value of a column read as text occurs."""
    return {str(k): int(v) for k, v in _as_text(s).dropna().value_counts().items()}


def check_counts_not_almost_numeric(col: str, counts: dict[str, int]) -> None:
    """:func:`_check_not_almost_numeric` for a streamed column, from its value counts."""
    import pandas as pd

    if len(counts) <= NUMERIC_MIN_DISTINCT:
        return
    n = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
    is_number = np.isfinite(_numbers(pd.Series(list(counts), dtype=object)).to_numpy())
    if is_number.sum() <= NUMERIC_MIN_DISTINCT or n[is_number].sum() < NUMERIC_SHARE * n.sum():
        return
    values = [repr(v) for v, ok in zip(counts, is_number) if not ok][:5]
    raise DataError(
        f"Column {col!r} holds numbers except for {int(n[~is_number].sum())} value(s): "
        f"{', '.join(values)} (one-hot encoding would make {len(counts) - 1} indicator columns "
        "of it); fix those values, or drop the column with --features."
    )


def _check_targets(df: Any, cols: list[str], targets: list[str]) -> None:
    """Target columns given once, present and numeric."""
    _no_duplicates(targets, "target")
    absent = [t for t in targets if t not in cols]
    if absent:
        raise DataError(f"Target column {', '.join(map(repr, absent))} not found; {_listing(cols)}")
    for t in targets:
        _check_target(df, t)


def _new_features(
    df: Any,
    cols: list[str],
    targets: list[str],
    features: list[str] | None,
    categorical: str,
    weight: str | None,
) -> tuple[list[str], list[str]]:
    """The feature columns and which of them are text, checked for a new encoder."""
    feats = _feature_columns(cols, targets, features, weight)
    empty = [
        f
        for f in feats
        if df[f].isna().all() or (not _is_numeric(df[f]) and _as_text(df[f]).isna().all())
    ]
    if empty:
        raise DataError(
            f"Feature column(s) {', '.join(map(repr, empty))} have no values (all missing); "
            "drop them with --features."
        )
    text = [f for f in feats if not _is_numeric(df[f])]
    for f in text:
        _check_not_almost_numeric(df, f, categorical)
    if text and categorical != "onehot":
        listing = ", ".join(
            f"{f!r}" + (f" (e.g. {_example(df, f, m)})" if (m := _not_numbers(df, f)).any() else "")
            for f in text
        )
        raise DataError(
            f"Non-numeric feature column(s): {listing}; drop them with --features or encode "
            "them with --categorical onehot."
        )
    return feats, text


def _check_target(df: Any, t: str, what: str = "Target") -> None:
    if df[t].isna().all():
        raise DataError(f"{what} column {t!r} has no values.")
    if not _is_numeric(df[t]):
        bad = _not_numbers(df, t)
        example = f"{_example(df, t, bad)}, {bad.sum()} such value(s)" if bad.any() else ""
        needs = "regression needs a number" if what == "Target" else "weights are numbers"
        raise DataError(f"{what} column {t!r} is not numeric ({example or df[t].dtype}); {needs}.")


def _check_weight_column(
    cols: list[str], targets: list[str], features: list[str] | None, weight: str
) -> None:
    """The weight column exists and is neither a target nor a feature."""
    if weight not in cols:
        raise DataError(f"Weight column {weight!r} not found; {_listing(cols)}")
    role = "the target" if weight in targets else "a feature"
    if weight in targets or (features is not None and weight in features):
        raise DataError(f"Column {weight!r} cannot be both the sample weights and {role}.")


def _feature_columns(
    cols: list[str], targets: list[str], features: list[str] | None, weight: str | None = None
) -> list[str]:
    """The feature columns (default: all but the targets and the weight), checked."""
    if weight is not None:
        _check_weight_column(cols, targets, features, weight)
    others = [c for c in cols if c not in targets and c != weight]
    feats = others if features is None else list(features)
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
    return feats


def _check_not_almost_numeric(df: Any, col: str, categorical: str) -> None:
    """A text column that is nearly all numbers, with many distinct ones, has typos."""
    import pandas as pd

    counts = df[col].value_counts(dropna=True)  # each distinct value once: parse those only
    if len(counts) <= NUMERIC_MIN_DISTINCT:
        return
    is_number = np.isfinite(_numbers(pd.Series(counts.index, dtype=object)).to_numpy())
    if is_number.sum() <= NUMERIC_MIN_DISTINCT:
        return
    if counts[is_number].sum() < NUMERIC_SHARE * counts.sum():
        return
    bad = _not_numbers(df, col)
    values = list(dict.fromkeys(map(repr, df[col][bad].iloc[:5])))
    consequence = (
        f" (one-hot encoding would make {df[col].nunique() - 1} indicator columns of it)"
        if categorical == "onehot"
        else ""
    )
    raise DataError(
        f"Column {col!r} holds numbers except for {int(bad.sum())} value(s): "
        f"{', '.join(values)} at {where(df, bad)}{consequence}; fix those values, or drop the "
        "column with --features."
    )


def _check_levels(cats: dict[str, list[str]], max_levels: int) -> None:
    many = {c: len(v) for c, v in cats.items() if len(v) > max_levels}
    if many:
        listing = ", ".join(f"{c!r} ({n})" for c, n in many.items())
        raise DataError(
            f"Categorical column(s) with more than --max-levels {max_levels} distinct values: "
            f"{listing}; an identifier? Drop it with --features, or raise --max-levels."
        )
