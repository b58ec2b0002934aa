"""Row checks every reader makes when it joins raw tables: unique ids, known ids, a bad value shown.

Each reader names a row its own way (``<file>, line N`` with or without a header, or a row of a
concatenation of files), so the checks take ``where(row) -> str`` and stay the same everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from m3oe_lightning.errors import UserInputError

Where = Callable[[int], str]  # a row index -> how the user finds that row ("<file>, line N")


def shown(value: Any) -> str:
    """A raw value as an error message shows it: ``an empty field``, ``3`` (not ``3.0``), ``12345``."""
    if isinstance(value, (float, np.floating)):
        return "an empty field" if np.isnan(value) else f"{value:g}"
    return str(value)


def require_unique(ids: np.ndarray, where: Where, column: str) -> None:
    """A duplicated id would make a join ambiguous: report the row of its second occurrence."""
    duplicated = pd.Series(ids).duplicated().to_numpy()
    if duplicated.any():
        pos = int(np.flatnonzero(duplicated)[0])
        raise UserInputError(f"{where(pos)}: {column} {shown(ids[pos])} appears twice")


def lookup_rows(ids: np.ndarray, table_ids: np.ndarray, where: Where, *, column: str, table: Path,
                rows_are: str) -> np.ndarray:
    """Row of each id in the (unique) ``table_ids``; an id the table lacks is an error at its own row.

    ``rows_are`` names what the rows holding ``ids`` are, for the count in the message (``rating``, ``log``).
    """
    pos = pd.Index(table_ids).get_indexer(ids)
    bad = np.flatnonzero(pos < 0)
    if bad.size:
        first = int(bad[0])
        raise UserInputError(f"{where(first)}: {column} {shown(ids[first])} is not in {table} "
                             f"({bad.size:,} {rows_are} row(s) reference unknown {column}s)")
    return pos
