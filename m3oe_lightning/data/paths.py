"""Where the raw data lives.

The data is never part of the repository (GroupLens terms forbid redistribution), so every entry point
has to find it. The order mirrors the documented ``data.root`` default: an explicit setting wins, then
the ``M3OE_DATA_DIR`` environment variable (for CI and shared machines), then a local ``./data`` (git
ignored, where ``data.download=true`` puts files), then a ``shared/data`` folder beside the checkout.

Without an explicit setting each dataset is looked for on its own (:func:`find_dataset_folder`): the
first of those roots that holds *that dataset's* files wins. A ``./data`` holding only the user's own
CSV therefore does not hide the MovieLens files in ``../shared/data``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

ENV_VAR = "M3OE_DATA_DIR"

# <repo>/m3oe_lightning/data/paths.py -> parents[2] is <repo>.
_REPO_ROOT = Path(__file__).resolve().parents[2]


def _shared_candidates() -> list[Path]:
    """``../shared/data`` seen from the working directory, then from the repository root."""
    return [Path.cwd().parent / "shared" / "data", _REPO_ROOT.parent / "shared" / "data"]


def _explicit(root: str | Path | None) -> Path | None:
    return Path(root).expanduser().resolve() if root is not None and str(root) != "" else None


def candidate_roots(root: str | Path | None) -> list[Path]:
    """The roots a dataset is looked for under, in order: ``root`` alone when given, else the environment
    variable (when set), ``./data`` and ``../shared/data`` (existing or not, without repeats)."""
    explicit = _explicit(root)
    if explicit is not None:
        return [explicit]
    env = os.environ.get(ENV_VAR, "")
    found = [Path(env).expanduser().resolve()] if env else []
    found += [(Path.cwd() / "data").resolve(), *(c.resolve() for c in _shared_candidates())]
    return list(dict.fromkeys(found))


def resolve_data_root(root: str | Path | None) -> Path:
    """The folder that holds the dataset folders when none is found (``movielens-1m/``, ...): where a
    reader's "missing files" message points and a download would go.

    An explicit ``root`` is returned as given (made absolute) even if it does not exist, so that the
    reader can fail with a message naming it. Without one the environment variable wins when set, then
    the first existing candidate; if none exists, ``./data`` is returned.
    """
    explicit = _explicit(root)
    if explicit is not None:
        return explicit
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser().resolve()
    local = Path.cwd() / "data"
    if local.is_dir():
        return local.resolve()
    for candidate in _shared_candidates():
        if candidate.is_dir():
            return candidate.resolve()
    return local.resolve()


def find_dataset_folder(root: str | Path | None, find: Callable[[Path], Path | None]) -> Path | None:
    """``find(candidate)`` for each of :func:`candidate_roots` in turn: the first folder it returns (the one
    holding the dataset's files), or ``None`` when no root holds them."""
    for candidate in candidate_roots(root):
        folder = find(candidate)
        if folder is not None:
            return folder
    return None
