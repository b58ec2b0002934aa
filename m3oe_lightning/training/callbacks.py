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


class CompileModel(L.Callback):
    """``torch.compile`` the model's forward in place at setup (``callbacks=compile``).

    In place (``nn.Module.compile``), so state-dict keys, checkpoints and federated weights are unchanged.
    Off by default: on the 2-core CPU machine ``make bench``'s ``paper-compile`` preset measured the compile
    time and the (absent) gain; see experiments/bench/compile/README.md.
    """

    def __init__(self, dynamic: bool | None = True, mode: str | None = None, backend: str = "inductor") -> None:
        self.options = {"dynamic": dynamic, "mode": mode, "backend": backend}
        self.compiled = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.compiled:
            pl_module.model.compile(**self.options)
            self.compiled = True
