"""Repeated interactions: the same (user, item) twice lets a test row also be a training row.

``cat u.data u.data`` doubles every rating; a random split then puts a copy of most test rows in train and
the test AUC measures memory, not generalisation. Readers check the key that identifies an interaction
(MovieLens: (user, item); ``data=tabular``: ``data.duplicate_key``) *before* splitting, and
``data.duplicates`` says what to do: ``drop`` (the default: keep each key's first row, one warning line
with the count), ``error`` (one line naming the file and the first repeated line) or ``keep``.

The setting is optional (``+data.duplicates=error`` on the command line): the presets do not list it, so
their config hashes stay what they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from m3oe_lightning.data.notices import warn
from m3oe_lightning.data.readers.frames import Where, shown
from m3oe_lightning.errors import UserInputError

SETTING = "data.duplicates"
POLICIES: tuple[str, ...] = ("drop", "error", "keep")
DEFAULT_POLICY = "drop"


def check_policy(value: Any) -> str:
    """``data.duplicates`` as one of :data:`POLICIES`; anything else is one line naming the setting."""
    if value not in POLICIES:
        raise UserInputError(f"{SETTING}={value!r}: use one of {', '.join(POLICIES)} (default {DEFAULT_POLICY})")
    return str(value)


def _key_frame(keys: Sequence[Any]) -> pd.DataFrame:
    """The key columns side by side; categoricals by their codes (cheap to compare, same equality)."""
    return pd.DataFrame({
        str(i): (np.asarray(k.codes) if isinstance(k, pd.Categorical) else np.asarray(k)) for i, k in enumerate(keys)
    })


def _value(keys: Sequence[Any], row: int) -> str:
    parts = [shown(k[row]) for k in keys]
    return parts[0] if len(parts) == 1 else f"({', '.join(parts)})"


def handle_duplicates(keys: Sequence[Any], *, policy: str, where: Where, source: str,
                      key_name: str) -> np.ndarray | None:
    """Apply ``policy`` to rows whose ``keys`` (aligned columns) repeat an earlier row's.

    Returns the mask of rows to keep, or ``None`` when every row stays (no repeat, or ``keep``).
    ``where(row)`` names a row (``<file>, line N``); ``source`` names the file(s) in the warning.
    """
    if policy == "keep" or not len(keys) or len(keys[0]) == 0:
        return None
    frame = _key_frame(keys)
    repeated = frame.duplicated(keep="first").to_numpy()
    count = int(repeated.sum())
    if count == 0:
        return None
    if policy == "error":
        row = int(np.flatnonzero(repeated)[0])
        group = frame.groupby(list(frame.columns), sort=False).ngroup().to_numpy()
        first = int(np.flatnonzero(group == group[row])[0])
        raise UserInputError(f"{where(row)}: {key_name} {_value(keys, row)} repeats {where(first)} "
                             f"({count:,} duplicate {key_name} rows; {SETTING}=error, drop or keep to go on)")
    warn(f"{source}: {count:,} duplicate {key_name} rows dropped ({SETTING}=drop; error|keep to choose)")
    return ~repeated
