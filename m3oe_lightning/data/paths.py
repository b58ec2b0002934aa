"""Where the raw data lives.

The data is never part of the repository (GroupLens terms forbid redistribution), so every entry point
has to find it. The order mirrors the documented ``data.root`` default: an explicit setting wins, then
the ``M3OE_DATA_DIR`` environment variable (for CI and shared machines), then a local ``./data`` (git
ignored, where ``data.download=true`` puts files), then a ``shared/data`` folder beside the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "M3OE_DATA_DIR"

# <repo>/m3oe_lightning/data/paths.py -> parents[2] is <repo>.
_REPO_ROOT = Path(__file__).resolve().parents[2]


def _shared_candidates() -> list[Path]:
    """``../shared/data`` seen from the working directory, then from the repository root."""
    return [Path.cwd().parent / "shared" / "data", _REPO_ROOT.parent / "shared" / "data"]


def resolve_data_root(root: str | Path | None) -> Path:
    """Return the folder that holds the dataset folders (``movielens-1m/``, ``movielens-100k/`` ...).

    An explicit ``root`` is returned as given (made absolute) even if it does not exist, so that the
    reader can fail with a message naming it. Without one the first existing candidate wins; if none
    exists, ``./data`` is returned, which is where a download would put the files.
    """
    if root is not None and str(root) != "":
        return Path(root).expanduser().resolve()
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
