"""Checkpoints that are either whole or absent, and a resume that survives a damaged one.

Lightning writes a checkpoint through fsspec; a full disk left a truncated ``best-epoch000.ckpt`` behind,
and a truncated ``last.ckpt`` made every later resume fail with a raw ``RuntimeError``. Here a checkpoint
is written to a temporary file in the same folder, flushed to disk and renamed over the old one; the
previous ``last.ckpt`` is kept as ``last.ckpt.prev`` until the new one is complete, so a resume can fall
back to it.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from m3oe_lightning.errors import UserInputError

PREVIOUS = ".prev"  # suffix of the kept previous version of a checkpoint that is overwritten each epoch
KEEP_PREVIOUS = ("last.ckpt",)


def write_whole(path: Path, write: Any, *, keep_previous: bool = False) -> None:
    """``write(handle)`` into ``path`` atomically; on an OS error nothing partial is left and the error is
    one line naming the path (a full disk, an unwritable folder)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.exists():
            os.replace(path, path.with_name(path.name + PREVIOUS))
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserInputError(f"cannot write {path}: {error.strerror or error}; free space there or point "
                             f"paths.checkpoint_dir (or paths.log_dir) at a writable folder") from None


def is_whole(path: Path) -> bool:
    """A torch checkpoint is a zip archive: whole when every member's CRC checks out (nothing unpickled)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def usable(path: Path) -> Path:
    """``path`` if whole; else its kept previous version (one warning line); else a one-line error."""
    if is_whole(path):
        return path
    previous = path.with_name(path.name + PREVIOUS)
    if is_whole(previous):
        print(f"warning: {path} is damaged (truncated or corrupt); resuming from the previous one, {previous}")
        return previous
    raise UserInputError(f"{path} is damaged (truncated or corrupt) and no previous version is kept; start the run "
                         f"afresh (resume=false) or delete that run's checkpoint folder")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with :func:`write_whole` (``trainer.plugins``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        write_whole(target, lambda handle: torch.save(checkpoint, handle), keep_previous=target.name in KEEP_PREVIOUS)
