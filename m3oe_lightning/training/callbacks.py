"""Callbacks of our own: fault injection, compile, and what a person sees while a run trains."""

from __future__ import annotations

import os
import signal
import time

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from m3oe_lightning import metric_keys as keys

RUNNING_LOSS = "loss"  # the step loss shown in the progress bar (not sent to the logger)


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


class EpochClock:
    """Seconds per finished epoch so far, and what that projects for the epochs left."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.first = 0

    def tick(self, trainer: L.Trainer) -> tuple[float, float | None]:
        """(seconds since fit started, projected seconds left, None when the epoch cap is open-ended)."""
        now = time.perf_counter()
        if self.started is None:
            self.started = now
        done = trainer.current_epoch + 1
        elapsed = now - self.started
        cap = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        left = None if cap is None else elapsed / max(1, done - self.first) * (cap - done)
        return elapsed, left

    def start(self, trainer: L.Trainer) -> None:
        self.started = time.perf_counter()
        self.first = trainer.current_epoch  # a resumed fit starts mid-way


def clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar(TQDMProgressBar):
    """Lightning's bar with what a person watches: running train loss, last ``val/auc_mean``, ETA of the fit.

    Lightning's own shows ``v_num`` (the logger's version, meaningless with MLflow) and nothing else.
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.clock = EpochClock()
        self.eta: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.clock.start(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        _, self.eta = self.clock.tick(trainer)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | str | float]:
        shown: dict[str, int | str | float] = {}
        for name in (RUNNING_LOSS, keys.VAL_AUC_MEAN):
            value = trainer.callback_metrics.get(name)
            if value is not None:
                shown[name] = f"{float(value):.4f}"
        if self.eta is not None:
            shown["eta"] = clock_text(self.eta)
        return shown


class EpochLine(L.Callback):
    """One line per epoch on stdout when the progress bar is off (sweeps): loss, val AUC, time, ETA."""

    def __init__(self) -> None:
        self.clock = EpochClock()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.start(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the epoch's validation (Lightning runs it inside the training epoch) and its train/loss
        if trainer.sanity_checking or trainer.progress_bar_callback is not None or not trainer.is_global_zero:
            return
        elapsed, left = self.clock.tick(trainer)
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        for name in (keys.key("train", keys.LOSS), keys.VAL_AUC_MEAN):
            if name in metrics:
                parts.append(f"{name} {float(metrics[name]):.4f}")
        parts += [f"{clock_text(elapsed)} elapsed", f"ETA {clock_text(left)}"]
        print(" · ".join(parts), flush=True)


class ModelLine(ModelSummary):
    """The model summary as one line (name, parameters, size) instead of Lightning's table, whose FLOPs
    column reads 0 for every model that sets no example input."""

    def summarize(self, summary_data: list[tuple[str, list[str]]], total_parameters: int,
                  trainable_parameters: int, model_size: float, total_training_modes: dict[str, int],
                  total_flops: int, **kwargs: object) -> None:
        columns = dict(summary_data)
        model = next((t for n, t in zip(columns.get("Name", []), columns.get("Type", [])) if n == "model"), "model")
        print(f"model {model}: {get_human_readable_count(total_parameters)} parameters "
              f"({get_human_readable_count(trainable_parameters)} trainable, {model_size:.1f} MB)")
