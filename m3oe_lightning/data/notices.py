"""One-line warnings from the data layer (a dropped duplicate, a rebuilt or unwritable cache).

``warnings.warn`` prints two lines (the message and the source line that raised it) and only once per
place; a user reading a run's output needs one line each time, saying what happened and what to do.
"""

from __future__ import annotations

import sys

PREFIX = "warning: "


def warn(message: str) -> None:
    """Print ``warning: <message>`` as one line on stderr."""
    print(f"{PREFIX}{' '.join(message.split())}", file=sys.stderr, flush=True)
