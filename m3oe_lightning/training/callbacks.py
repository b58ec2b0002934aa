"""Callbacks of our own."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtEpoch(L.Callback):
    """Fault injection: SIGKILL this process when epoch ``epoch`` starts (after the previous epoch's
    checkpoint is on disk). The resume tests use it to reproduce a ``kill -9`` at a known point:
    ``+callbacks.kill._target_=m3oe_lightning.training.callbacks.KillAtEpoch +callbacks.kill.epoch=1``.
    """

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)
