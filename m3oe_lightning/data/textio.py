"""Strict, fast readers for the delimited text files that raw datasets come in.

Why not plain ``pandas.read_csv``: ML-1M separates fields with ``::``, which pandas only handles with its
slow Python engine, and pandas reports malformed rows poorly (short rows silently become NaN, blank
lines are skipped so row numbers drift from line numbers). Here a multi-byte separator is rewritten to
one control byte, the field count of every line is checked with numpy, and then the C engine parses
the bytes. Every problem is raised as one :class:`UserInputError` that names the file and the 1-based
line number, so a user can open the file at that line.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from m3oe_lightning.errors import UserInputError

_UNIT_SEP = b"\x1f"  # ASCII "unit separator": never part of real text, safe as a substitute separator
_INT_RE = r"\s*[+-]?\d+\s*"
_PANDAS_FIELDS_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _normalise(data: bytes) -> bytes:
    """Unix line ends, no trailing newlines (so the last line is not counted as an empty row)."""
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    return data.rstrip(b"\n")


def _line_starts(arr: np.ndarray) -> np.ndarray:
    """Offsets at which each line begins (``arr`` holds no trailing newline)."""
    newlines = np.flatnonzero(arr == ord("\n"))
    return np.concatenate(([0], newlines + 1)).astype(np.int64)


def check_field_counts(data: bytes, sep: bytes, n_fields: int, path: Path, *, shown_sep: str) -> int:
    """Check every line has ``n_fields`` fields; return the number of lines.

    Counts separator bytes per line with one ``np.add.reduceat`` (no Python loop over lines).
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    starts = _line_starts(arr)
    counts = np.add.reduceat((arr == sep[0]).view(np.uint8), starts, dtype=np.int64)
    bad = np.flatnonzero(counts != n_fields - 1)
    if bad.size:
        line = int(bad[0])
        end = int(starts[line + 1]) - 1 if line + 1 < starts.size else arr.size
        what = "an empty line" if end == int(starts[line]) else f"{int(counts[line]) + 1} fields"
        raise UserInputError(
            f"{path}, line {line + 1}: expected {n_fields} fields separated by {shown_sep!r}, found {what}"
        )
    return int(starts.size)


def first_non_integer(series: pd.Series) -> int | None:
    """Position of the first value that is not an integer literal, or None if the column is integral."""
    if series.dtype.kind in "iu":
        return None
    if series.dtype.kind == "f":  # pandas parsed numbers but saw a decimal point or an empty field
        values = series.to_numpy()
        ok = ~np.isnan(values) & (values == np.round(values))
    else:
        ok = series.astype(str).str.fullmatch(_INT_RE).to_numpy(dtype=bool, na_value=False)
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if bad.size else None


def require_integers(df: pd.DataFrame, columns: Sequence[str], path: Path, *, header_lines: int) -> None:
    """Raise naming the line of the first non-integer value in any of ``columns``; cast them to int64."""
    for col in columns:
        pos = first_non_integer(df[col])
        if pos is not None:
            value = df[col].iloc[pos]
            got = ("an empty field" if pd.isna(value) or str(value) == ""
                   else repr(value) if isinstance(value, str) else str(value))
            line = pos + 1 + header_lines
            raise UserInputError(f"{path}, line {line}: {col} must be an integer, got {got}")
        df[col] = df[col].astype(np.int64)


def require_in_range(
    values: np.ndarray, low: int, high: int, path: Path, column: str, *, header_lines: int
) -> None:
    """Raise naming the line of the first value outside ``[low, high]``."""
    bad = np.flatnonzero((values < low) | (values > high))
    if bad.size:
        pos = int(bad[0])
        raise UserInputError(
            f"{path}, line {pos + 1 + header_lines}: {column} must be between {low} and {high}, "
            f"got {values[pos]}"
        )


def read_bytes(path: Path) -> bytes:
    """Whole file as bytes, normalised; an empty file is an error (it is always a broken download)."""
    data = _normalise(path.read_bytes())
    if not data.strip():
        raise UserInputError(f"{path} is empty; replace it with the original file")
    return data


def read_separated(
    path: Path,
    *,
    sep: str,
    names: Sequence[str],
    int_columns: Sequence[str],
    encoding: str = "latin-1",
) -> pd.DataFrame:
    """Read a header-less, unquoted file whose fields are separated by ``sep`` (``::``, tab, ``|``).

    Columns in ``int_columns`` are validated and returned as int64; all others as strings.
    Row ``i`` of the result is line ``i + 1`` of the file.
    """
    data = read_bytes(path)
    raw_sep = sep.encode(encoding)
    if len(raw_sep) > 1:
        data = data.replace(raw_sep, _UNIT_SEP)
        raw_sep = _UNIT_SEP
    check_field_counts(data, raw_sep, len(names), path, shown_sep=sep)
    df = pd.read_csv(
        io.BytesIO(data),
        sep=raw_sep.decode(encoding),
        header=None,
        names=list(names),
        engine="c",
        quoting=csv.QUOTE_NONE,
        na_filter=False,
        skip_blank_lines=False,
        encoding=encoding,
        dtype={c: str for c in names if c not in int_columns},
    )
    require_integers(df, int_columns, path, header_lines=0)
    return df


def read_csv_with_header(
    path: Path,
    *,
    required: Sequence[str],
    int_columns: Sequence[str],
    optional_float_columns: Sequence[str] = (),
    category_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """Read a comma-separated file with a header line (quoted fields allowed; ``.gz`` is decompressed).

    Every column is parsed (not just ``required``) so that a line with too many fields is reported, not
    silently truncated. Empty fields become NaN: allowed in ``optional_float_columns``, an error in
    ``int_columns``. ``category_columns`` (repetitive text) are parsed as categoricals, which is much
    cheaper than a million Python strings. Row ``i`` of the result is line ``i + 2`` of the file.
    """
    try:
        df = pd.read_csv(
            path,
            engine="c",
            keep_default_na=False,
            na_values=[""],
            skip_blank_lines=False,
            low_memory=False,
            dtype={c: "category" for c in category_columns},
        )
    except pd.errors.EmptyDataError as exc:
        raise UserInputError(f"{path} is empty; replace it with the original file") from exc
    except pd.errors.ParserError as exc:
        match = _PANDAS_FIELDS_RE.search(str(exc))
        if match:
            expected, line, saw = match.groups()
            raise UserInputError(f"{path}, line {line}: expected {expected} comma-separated fields, "
                                 f"found {saw}") from exc
        raise UserInputError(f"{path}: cannot parse as CSV ({exc})") from exc
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # e.g. a truncated or non-gzip .gz file
        raise UserInputError(f"{path}: cannot read it ({exc}); replace it with the original file") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserInputError(f"{path}, line 1: header lacks column(s) {', '.join(missing)}; "
                             f"found {', '.join(map(str, df.columns))}")
    if len(df) == 0:
        raise UserInputError(f"{path} has a header but no rows; replace it with the original file")
    require_integers(df, int_columns, path, header_lines=1)
    for col in optional_float_columns:
        if df[col].dtype.kind not in "iuf":
            numeric = pd.to_numeric(df[col], errors="coerce")
            pos = int(np.flatnonzero((numeric.isna() & df[col].notna()).to_numpy())[0])
            raise UserInputError(f"{path}, line {pos + 2}: {col} must be a number or empty, "
                                 f"got {df[col].iloc[pos]!r}")
    return df
