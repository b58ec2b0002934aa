"""Lightning's per-Trainer chatter, silenced where the project builds many Trainers (clients, benches)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence the per-Trainer banner ("GPU available…") and loader hints of many small local fits."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
             "lightning.fabric.utilities.rank_zero")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# What every run printed that the project caused or that asks nothing of the user (issue #16):
NOISE_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\).*",        # Lightning 2.6 on torch 2.13, once per batch transfer
    r".*smaller than the logging interval.*",        # we log per epoch; the step interval does not matter
    r".*does not have many workers.*",               # data are preloaded tensors sliced in-process
    r".*sync_dist=True.*when logging on epoch level.*",  # our epoch metrics come from synced torchmetrics
    # the run's folder holds its encoders and network.json (what scores with its checkpoints) before the first one
    r".*Checkpoint directory .* exists and is not empty.*",
)
NOISE_MESSAGES = ("litlogger",  # Lightning's advert for its cloud logger, printed by every Trainer
                  "Skipping setting a default `ModelSummary`")  # we pass our one-line summary on purpose


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in NOISE_MESSAGES)


def silence_noise() -> None:
    """For the rest of the process: drop the warnings and messages listed above (idempotent)."""
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in target.filters):
            target.addFilter(_DropNoise())
