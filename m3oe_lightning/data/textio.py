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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from m3oe_lightning.errors import UserInputError

_UNIT_SEP = b"\x1f"  # ASCII "unit separator": never part of real text, safe as a substitute separator
_UTF8_BOM = b"\xef\xbb\xbf"  # what Windows editors put before the first byte of a "UTF-8" file
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_INT_RE = r"\s*[+-]?\d+\s*"
_PANDAS_FIELDS_RE = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def _normalise(data: bytes) -> bytes:
    """No byte-order mark, Unix line ends, no trailing newlines (so the last line is not counted as an
    empty row). A BOM would otherwise stick to the first field (``\ufeff1`` is not an integer)."""
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
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


def first_out_of_int64(series: pd.Series) -> int | None:
    """Position of the first integer literal outside int64, or None (``series`` holds integers only).

    pandas reads 2**63 as uint64 (casting it to int64 would wrap to -2**63) and anything larger as
    Python ints in an object column (casting raises ``OverflowError``): both are caught here.
    """
    kind = series.dtype.kind
    if kind == "i":
        return None
    values = series.to_numpy()
    if kind == "u":
        bad = np.flatnonzero(values > np.uint64(INT64_MAX))
    elif kind == "f":
        bad = np.flatnonzero(np.abs(values) >= 2.0**63)
    else:  # only reached when some value did not fit uint64: the slow path is rare
        bad = np.flatnonzero([not INT64_MIN <= int(str(v).strip()) <= INT64_MAX for v in values])
    return int(bad[0]) if bad.size else None


def require_integers(df: pd.DataFrame, columns: Sequence[str], path: Path, *, header_lines: int) -> None:
    """Raise naming the line of the first non-integer value (or one too large for int64) in any of
    ``columns``; cast them to int64."""
    for col in columns:
        pos = first_non_integer(df[col])
        if pos is not None:
            value = df[col].iloc[pos]
            got = ("an empty field" if pd.isna(value) or str(value) == ""
                   else repr(value) if isinstance(value, str) else str(value))
            line = pos + 1 + header_lines
            raise UserInputError(f"{path}, line {line}: {col} must be an integer, got {got}")
        pos = first_out_of_int64(df[col])
        if pos is not None:
            raise UserInputError(f"{path}, line {pos + 1 + header_lines}: {col} {str(df[col].iloc[pos]).strip()} "
                                 f"does not fit a 64-bit integer ({INT64_MIN} to {INT64_MAX})")
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


# --- column-selective readers for larger tables (CSV via pyarrow, Parquet) ---------------------------
#
# Rows of a table read here are numbered 0.. in file order. :class:`RowLocator` turns a row number back
# into what a user can open: ``line N`` of a CSV (blank lines and quoted line breaks accounted for; found
# by a scan only when an error is reported) or ``row N`` of a Parquet file.

_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv", ".tsv.gz", ".txt", ".txt.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


def table_format(path: Path) -> str:
    """``csv`` or ``parquet`` from the file name; anything else is a user error naming the file."""
    name = path.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    raise UserInputError(f"{path}: unknown table format; name CSV files *.csv (or .csv.gz, .tsv) and Parquet "
                         f"files *.parquet")


def _open_text(path: Path) -> io.TextIOBase:
    """The file as text; ``utf-8-sig`` drops a leading byte-order mark (else it sticks to the first column's
    name: ``\ufeffuser_id``), as pyarrow and pandas do when they parse the same file."""
    if path.name.lower().endswith(".gz"):
        import gzip

        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    if path.name.lower().endswith(".bz2"):
        import bz2

        return io.TextIOWrapper(bz2.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open("r", encoding="utf-8-sig", newline="")


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """``(first line number, fields)`` of every non-blank CSV record, header included."""
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        previous_end = 0
        for fields in reader:
            start = previous_end + 1
            previous_end = reader.line_num
            if fields:  # a blank line: pyarrow skips it too
                yield start, fields


def csv_line_of_row(path: Path, row: int, delimiter: str = ",") -> int:
    """1-based line on which data row ``row`` (0-based, header excluded) of a CSV file starts."""
    for k, (line, _) in enumerate(_csv_rows(path, delimiter)):
        if k == row + 1:
            return line
    return row + 2  # not reached for a row that exists; a plain-file guess otherwise


def _first_bad_field_count(path: Path, delimiter: str) -> str | None:
    """Describe the first record whose field count differs from the header's (the slow path of an error)."""
    expected = None
    for line, fields in _csv_rows(path, delimiter):
        if expected is None:
            expected = len(fields)
        elif len(fields) != expected:
            return f"{path}, line {line}: expected {expected} fields separated by {delimiter!r}, found {len(fields)}"
    return None


@dataclass(frozen=True)
class RowLocator:
    """Names a row of one file the way a user finds it: ``<file>, line N`` (CSV) or ``<file>, row N``."""

    path: Path
    kind: str
    delimiter: str = ","

    def where(self, row: int) -> str:
        if self.kind == "csv":
            return f"{self.path}, line {csv_line_of_row(self.path, row, self.delimiter)}"
        return f"{self.path}, row {row + 1}"

    def header(self) -> str:
        return f"{self.path}, line 1" if self.kind == "csv" else str(self.path)


def _arrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.csv
        import pyarrow.parquet
    except ImportError as exc:  # pragma: no cover - pyarrow ships with the project's dependencies
        raise UserInputError(f"reading CSV/Parquet tables needs pyarrow ({exc}); pip install pyarrow") from exc
    return pyarrow


def table_columns(path: Path, *, delimiter: str = ",") -> list[str]:
    """The column names of a CSV header or a Parquet schema (nothing else is read)."""
    pa = _arrow()
    try:
        if table_format(path) == "parquet":
            return list(pa.parquet.read_schema(path).names)
        with _open_text(path) as fh:
            header = next(csv.reader(fh, delimiter=delimiter), None)
    except (OSError, EOFError, UnicodeDecodeError, pa.ArrowException) as exc:
        raise UserInputError(f"{path}: cannot read it ({exc})") from exc
    if not header:
        raise UserInputError(f"{path} is empty; expected a header line with column names")
    return header


def require_table_columns(path: Path, needed: dict[str, str], *, delimiter: str = ",") -> list[str]:
    """Check every key of ``needed`` (column -> the setting that asks for it) is in the file's header."""
    columns = table_columns(path, delimiter=delimiter)
    present = set(columns)
    for column, why in needed.items():
        if column not in present:
            shown = ", ".join(columns[:40]) + (f", ... ({len(columns)} in all)" if len(columns) > 40 else "")
            where = f"{path}, line 1" if table_format(path) == "csv" else str(path)
            raise UserInputError(f"{where}: no column {column!r} (needed by {why}); the columns are {shown}")
    return columns


def read_table(
    path: Path,
    columns: Sequence[str],
    *,
    category_columns: Sequence[str] = (),
    float_columns: Sequence[str] = (),
    delimiter: str = ",",
) -> tuple[pd.DataFrame, RowLocator]:
    """Read ``columns`` of a CSV (header line; ``.gz``/``.bz2`` decompressed) or Parquet file.

    Columns in ``category_columns`` come back as categoricals of **strings** (the same values whatever the
    file format: an integer 7 is ``"7"`` in CSV and Parquet alike); CSV ``float_columns`` are parsed as
    float64; the others with the types pyarrow infers (numbers, booleans, strings). Only an empty CSV field
    is missing (``NA`` or ``null`` are text). Every CSV record must have as many fields as the header (a
    short or long line is an error naming its line). An empty table is an error. Row ``i`` of the frame is
    row ``i`` of the file; the locator names it.

    CSV is parsed by pyarrow (multi-threaded). Its type inference looks at the first block only, so when a
    later value does not fit (``2.5`` in a column of integers, ``abc`` among numbers) the file is read again
    with those columns as text; the callers' checks then name the first bad value's line.
    """
    pa = _arrow()
    kind = table_format(path)
    locator = RowLocator(path, kind, delimiter)
    columns = list(dict.fromkeys(columns))
    category = [c for c in columns if c in set(category_columns)]
    floats = [c for c in columns if c in set(float_columns) and c not in category]
    dict_type = pa.dictionary(pa.int32(), pa.string())

    def read_csv(*, safe: bool):
        types = {c: dict_type for c in category}
        types.update({c: pa.string() if safe else pa.float64() for c in floats})
        if safe:
            types.update({c: pa.string() for c in columns if c not in types})
        return pa.csv.read_csv(
            path,
            read_options=pa.csv.ReadOptions(use_threads=True),
            parse_options=pa.csv.ParseOptions(delimiter=delimiter, newlines_in_values=safe),
            convert_options=pa.csv.ConvertOptions(
                include_columns=columns, column_types=types,
                null_values=[""],  # only an empty field is missing ("NA", "n/a", "null" are values)
                strings_can_be_null=True,
            ),
        )

    try:
        if kind == "parquet":
            table = pa.parquet.read_table(path, columns=columns)
        else:
            try:
                table = read_csv(safe=False)  # the fast path
            except pa.ArrowInvalid:
                message = _first_bad_field_count(path, delimiter)
                if message:
                    raise UserInputError(message) from None
                table = read_csv(safe=True)  # quoted line breaks or a value of another type: all as text
    except pa.ArrowInvalid as exc:
        raise UserInputError(f"{path}: cannot parse it ({exc})") from exc
    except (OSError, EOFError, UnicodeDecodeError, pa.ArrowException) as exc:
        raise UserInputError(f"{path}: cannot read it ({exc}); replace it with a valid "
                             f"{'Parquet' if kind == 'parquet' else 'CSV'} file") from exc
    if table.num_rows == 0:
        raise UserInputError(f"{path} has no rows")
    frame = table.to_pandas()
    for column in category:
        frame[column] = as_string_category(frame[column])
    return frame, locator


def as_string_category(series: pd.Series) -> pd.Categorical:
    """A categorical whose categories are strings, whatever the column's type: an integer 7 is ``"7"``, and
    so is an integral float 7.0 (a Parquet id column with missing values is float); missing stays missing.
    Works on the distinct values only (one factorize), not row by row."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes, uniques = series.cat.codes.to_numpy(np.int64), series.cat.categories
    else:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
    text = _text(pd.Index(uniques))
    if not len(text):
        return pd.Categorical.from_codes(np.full(len(codes), -1, np.int64), categories=pd.Index([], dtype=object))
    inverse, categories = pd.factorize(text)
    new_codes = np.where(codes >= 0, inverse[np.maximum(codes, 0)], -1)
    return pd.Categorical.from_codes(new_codes, categories=pd.Index(np.asarray(categories, dtype=object)))


def _text(values: pd.Index) -> np.ndarray:
    """Distinct (non-missing) values as strings; integral floats without ``.0``, booleans as true/false."""
    if values.dtype.kind == "f":
        numbers = values.to_numpy(np.float64)
        integral = numbers == np.round(numbers)
        return np.where(integral, np.char.mod("%d", np.where(integral, numbers, 0).astype(np.int64)),
                        numbers.astype(str)).astype(object)
    if values.dtype.kind == "b":
        return np.where(values.to_numpy(bool), "true", "false").astype(object)
    return np.asarray([str(v) for v in values], dtype=object)


_BOOL_TEXT = {"true": 1.0, "false": 0.0}


def _parse_numbers(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(float64 values, mask of present values that are not numbers) of a text column; ``true``/``false``
    (any case) read as 1/0, as pyarrow reads them in a boolean column."""
    values = pd.Series(np.asarray(series, dtype=object))
    present = values.notna().to_numpy()
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64, copy=True)
    failed = present & np.isnan(numbers)
    if failed.any():
        text = values[failed].astype(str).str.strip().str.lower()
        numbers[failed] = text.map(_BOOL_TEXT).to_numpy(np.float64, na_value=np.nan)
        failed = present & np.isnan(numbers) & ~values.astype(str).str.strip().str.lower().eq("nan").to_numpy()
    return numbers, failed


def first_non_numeric(series: pd.Series) -> int | None:
    """Position of the first present value that is not a number (booleans count as 0/1), or None."""
    if series.dtype.kind in "iufb":
        return None
    bad = np.flatnonzero(_parse_numbers(series)[1])
    return int(bad[0]) if bad.size else None


def as_numbers(series: pd.Series) -> np.ndarray:
    """A column already checked by :func:`first_non_numeric` as float64 (missing -> NaN)."""
    if series.dtype.kind in "iufb":
        return series.to_numpy(np.float64, na_value=np.nan)
    return _parse_numbers(series)[0]
