"""Lightning's callback entry points, looked up once per process instead of once per ``Trainer``.

Every ``Trainer(...)`` asks ``importlib.metadata.entry_points(group="lightning.pytorch.callbacks_factory")``
for third-party callback factories, and that call reads the metadata of every installed distribution:
12 ms here, per Trainer. A federated round builds a fresh Trainer for each client's local fit, so at 100
clients that lookup alone was 1.2 s of a 24 s round (``make bench``'s federated rows). The installed
distributions do not change while a process runs, so the *lookup* is cached; the factories found are still
loaded and called by Lightning for every Trainer (each gets fresh callback objects, as before).
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

from lightning.fabric.utilities import registry


@functools.cache
def cached_entry_points(**selection: Any) -> metadata.EntryPoints:
    """``importlib.metadata.entry_points(**selection)``, computed once per selection."""
    return metadata.entry_points(**selection)


def cache_callback_entry_points() -> None:
    """From now on in this process, Lightning's callback entry-point lookup is :func:`cached_entry_points`
    (idempotent). Lightning reads the name ``entry_points`` from its registry module at each call."""
    registry.entry_points = cached_entry_points
