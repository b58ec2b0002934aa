"""The pruning callback, built inside a trial's training process from ``callbacks.optuna_pruning``.

The tuner runs every trial as its own ``python -m m3oe_lightning.train`` process and adds this callback
through overrides (``++callbacks.optuna_pruning._target_=…``), so training itself knows nothing of Optuna.
After each validation epoch the callback reports the monitored value (``val/auc_mean``) to the trial in
the study's storage and asks the study's pruner; a hopeless trial records the epoch it was pruned at
(the tuner then marks it PRUNED) and stops training at the end of that epoch. Its MLflow run ends
FINISHED with the epochs it ran, so its best validation value stays comparable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.tuning.study import PRUNED_AT, PRUNER_ATTR, build_pruner

if TYPE_CHECKING:
    import optuna


class OptunaPruning(Callback):
    """Report ``monitor`` per validation epoch to trial ``trial`` of ``study`` in ``storage``; stop when pruned."""

    def __init__(self, storage: str, study: str, trial: int, monitor: str = keys.key("val", keys.AUC_MEAN)) -> None:
        self.storage, self.study_name, self.number, self.monitor = storage, study, int(trial), monitor
        self._trial: optuna.Trial | None = None

    def _open(self) -> optuna.Trial:
        if self._trial is None:
            import warnings

            import optuna

            optuna.logging.set_verbosity(optuna.logging.ERROR)
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            study = optuna.load_study(study_name=self.study_name, storage=self.storage)
            study.pruner = build_pruner(study.user_attrs[PRUNER_ATTR])
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, self.number)
            self._trial = optuna.trial.Trial(study, trial_id)
        return self._trial

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero:
            prune = self.report(trainer.callback_metrics.get(self.monitor), trainer.current_epoch + 1)
        if trainer.world_size > 1:
            prune = bool(trainer.strategy.broadcast(prune, 0))
        if prune:
            trainer.should_stop = True

    def report(self, value: Any, epoch: int) -> bool:
        """Report one epoch's value (step = epochs run); True when training should stop here."""
        from optuna.exceptions import UpdateFinishedTrialError

        if value is None:
            return False
        trial = self._open()
        try:
            trial.report(float(value), epoch)
            if not trial.should_prune():
                return False
            trial.set_user_attr(f"{PRUNED_AT}.{self.number}", epoch)  # read back by study.pruned_at
        except UpdateFinishedTrialError:  # the tuner gave this trial up (it died or was interrupted)
            return True
        print(f"trial {self.number}: pruned after epoch {epoch} ({self.monitor} {float(value):.4f})", flush=True)
        return True
