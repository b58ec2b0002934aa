"""Train/val/test row indices.

Two kinds every reader has: ``random`` (a seeded permutation, the default) and ``ordered`` (consecutive
blocks in file order; ML-1M's ``ratings.dat`` is grouped by user, so an ordered split puts mostly
*different users* in val/test -- a harder, cold-start-like setting). Split sizes are cumulative floors of
``fractions * n``, so ML-1M ordered gives exactly 800,167 / 100,021 / 100,021 rows.

A reader may add a kind of its own that cuts consecutive blocks of another row order
(:func:`split_in_order`): MovieLens's ``released`` cuts the order the released M3oE code's input file
has, which :func:`merge_grouped_order` rebuilds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Sized
from typing import Any, Literal

import numpy as np

from m3oe_lightning.errors import UserInputError

SplitKind = Literal["random", "ordered"]
SPLIT_KINDS: tuple[str, ...] = ("random", "ordered")
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
# every split a training run reads must have rows: an empty val split stops EarlyStopping after epoch 1,
# an empty test split leaves the run without results
TRAINING_SPLITS: tuple[str, ...] = SPLIT_NAMES


def check_fractions(setting: str, value: Any, *, nonempty: tuple[str, ...] = ()) -> list[float]:
    """``value`` as three non-negative numbers (train, val, test) summing to 1; the parts named in
    ``nonempty`` must be > 0. Anything else is one line naming ``setting``."""
    try:
        fractions = [float(v) for v in value if not isinstance(v, bool)]
    except (TypeError, ValueError):
        fractions = []
    names = SPLIT_NAMES
    if (len(fractions) != 3 or any(not f >= 0 for f in fractions)
            or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6)
            or any(fractions[names.index(part)] <= 0 for part in nonempty)):
        value = list(value) if isinstance(value, (list, tuple)) else value
        rule = f", with {' and '.join(nonempty)} > 0" if nonempty else ""
        raise UserInputError(f"{setting}={value!r}: give three non-negative numbers (train, val, test) "
                             f"summing to 1{rule}")
    return fractions


def _boundaries(n_rows: int, fractions: Sequence[float]) -> tuple[int, int]:
    """End of train and end of val, as cumulative floors (a tiny epsilon absorbs float error)."""
    fractions = check_fractions("split fractions", fractions)
    end_train = min(n_rows, int(math.floor(n_rows * fractions[0] + 1e-9)))
    end_val = min(n_rows, int(math.floor(n_rows * (fractions[0] + fractions[1]) + 1e-9)))
    return end_train, end_val


def check_split_kind(kind: str, *, also: Sequence[str] = ()) -> None:
    """Fail fast (before reading any file) on a misspelt ``data.split``; ``also``: the reader's own kinds."""
    kinds = (*SPLIT_KINDS, *also)
    if kind not in kinds:
        released = kind == "released"  # protocol=released on a dataset without that file order
        hint = " (released: MovieLens's own order; elsewhere data.split=ordered is the nearest)" if released else ""
        raise UserInputError(f"data.split={kind!r} is not a split kind of this dataset; use one of "
                             f"{', '.join(kinds)}{hint}")


def require_rows(parts: Sequence[Sized], *, nonempty: Sequence[str] = TRAINING_SPLITS,
                 advice: str = "use more rows") -> None:
    """Each split named in ``nonempty`` must hold a row; else one line with the row counts and ``advice``."""
    counts = dict(zip(SPLIT_NAMES, (len(p) for p in parts)))
    empty = [name for name in nonempty if counts[name] == 0]
    if empty:
        shown = ", ".join(f"{counts[name]:,} {name}" for name in SPLIT_NAMES)
        raise UserInputError(f"{sum(counts.values()):,} rows split into {shown} rows: the {' and '.join(empty)} "
                             f"split{'s are' if len(empty) > 1 else ' is'} empty; {advice}")


def split_indices(
    n_rows: int,
    kind: str = "random",
    seed: int = 2022,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    *,
    nonempty: Sequence[str] = (),
    advice: str = "use more rows",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(train_idx, val_idx, test_idx)`` as int64 arrays covering ``range(n_rows)`` once.

    ``random`` draws one permutation from ``numpy.random.default_rng(seed)`` and then sorts each part,
    so a split's rows keep file order (cache-friendly, and the datamodule shuffles batches anyway).
    ``ordered`` cuts the file order into consecutive blocks; ``seed`` is ignored. The splits named in
    ``nonempty`` must get a row (a tiny table can round one to none): else one line with the counts.
    """
    check_split_kind(kind)
    if n_rows < 0:
        raise ValueError(f"n_rows must be >= 0, got {n_rows}")
    end_train, end_val = _boundaries(n_rows, fractions)
    if nonempty:
        require_rows((range(end_train), range(end_train, end_val), range(end_val, n_rows)), nonempty=nonempty,
                     advice=advice)
    if kind == "random":
        order = np.random.default_rng(seed).permutation(n_rows).astype(np.int64)
        parts = (order[:end_train], order[end_train:end_val], order[end_val:])
        return tuple(np.sort(p) for p in parts)  # type: ignore[return-value]
    if kind == "ordered":
        return (
            np.arange(0, end_train, dtype=np.int64),
            np.arange(end_train, end_val, dtype=np.int64),
            np.arange(end_val, n_rows, dtype=np.int64),
        )
    raise AssertionError(f"unhandled split kind {kind!r}")  # unreachable: check_split_kind guards it


def first_appearance_order(keys: np.ndarray) -> np.ndarray:
    """Row indices grouped by key: groups in the order their key first appears, rows of a group in their
    original order. This is the row order pandas < 2.2 gave an inner ``merge`` (grouped by the left
    frame's keys; pandas 2.2 keeps the left frame's order instead), which the released code's data has."""
    _, first, inverse = np.unique(np.asarray(keys), return_index=True, return_inverse=True)
    return np.argsort(first[inverse.reshape(-1)], kind="stable").astype(np.int64)


def merge_grouped_order(*keys: np.ndarray) -> np.ndarray:
    """The row order after inner merges on ``keys[0]``, then ``keys[1]``, … (each a column of the original
    rows), each merge grouping as :func:`first_appearance_order` does."""
    order = np.arange(len(keys[0]) if keys else 0, dtype=np.int64)
    for key in keys:
        order = order[first_appearance_order(np.asarray(key)[order])]
    return order


def split_in_order(
    order: np.ndarray,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    *,
    nonempty: Sequence[str] = (),
    advice: str = "use more rows",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Consecutive blocks of ``order`` (a permutation of the row indices) as ``(train, val, test)``, sized
    as :func:`split_indices` sizes them; each part sorted, so a split's rows keep file order."""
    order = np.asarray(order, dtype=np.int64)
    parts = split_indices(len(order), "ordered", fractions=fractions, nonempty=nonempty, advice=advice)
    return tuple(np.sort(order[p]) for p in parts)  # type: ignore[return-value]
