"""The study: its settings, its persistent storage, what it records about itself, and what is left to run.

A study lives in an Optuna RDB storage (default ``sqlite:///logs/optuna.db``) so a rerun of the same
command continues it. It records its search space and row (the training overrides it tunes) as user
attributes: a rerun that names the same study with another space or another row is refused instead of
mixing two searches in one table. A trial whose process died (``kill -9``, a lost machine) stops sending
heartbeats; the next run marks it FAIL and queues the same parameters again, so the budget counts only
trials that ended (complete, pruned, or failed for real).
"""

from __future__ import annotations

import inspect
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from m3oe_lightning.errors import UserInputError, check_int, check_number
from m3oe_lightning.tracking.preflight import check_writable

if TYPE_CHECKING:
    import optuna
    from optuna.storages import RDBStorage
    from optuna.trial import FrozenTrial

SAMPLERS = ("auto", "grid", "tpe")
PRUNERS = ("median", "threshold", "none")
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# study user attributes
SPACE_ATTR, ROW_ATTR, PRUNER_ATTR = "space", "row", "pruner"
PARENT_RUN_ATTR, COMMAND_ATTR, SAMPLER_ATTR = "mlflow_parent_run_id", "command", "sampler"
# trial user attributes (PRUNED_AT is written by the pruning callback inside the trial's process)
PRUNED_AT, RUN_ID_ATTR, VALUE_ATTR, ERROR_ATTR = "pruned_at_epoch", "mlflow_run_id", "val_best", "error"
RETRY_OF, RETRIES = "tune_retry_of", "tune_retries"  # trial system attributes of a queued retry
MAX_RETRIES = 3  # a trial killed this often in a row is left FAIL (and counts against the budget)
# Overrides that say where a run logs or how it prints, not what it trains: they may differ between
# the sittings of one study (another machine, another store) without making it another row.
LOGISTICS = ("paths.", "logger.", "hydra.", "trainer.enable_progress_bar", "trainer.enable_model_summary",
             "threads", "allocator", "eval_chunk_rows", "task_name", "tune.")


@dataclass(frozen=True)
class TuneSettings:
    """``cfg.tune``, checked: every refusal names its setting."""

    study: str | None
    storage: str
    sampler: str
    trials: int | None
    timeout: float | None
    seed: int
    pruner: dict[str, Any]
    heartbeat_s: int
    out_dir: Path
    results_dir: Path
    config_dir: Path | None
    monitor: str

    @classmethod
    def from_config(cls, tune: DictConfig) -> TuneSettings:
        if tune.study is not None and not STUDY_NAME.fullmatch(str(tune.study)):
            raise UserInputError(f"tune.study={tune.study!r}: use letters, digits, '.', '_' or '-' (it names files)")
        if tune.sampler not in SAMPLERS:
            raise UserInputError(f"tune.sampler={tune.sampler!r}: use one of {', '.join(SAMPLERS)}")
        check_int("tune.trials", tune.trials, optional=True)
        check_number("tune.timeout", tune.timeout, low=0, low_open=True, optional=True)
        check_int("tune.seed", tune.seed, minimum=0)
        check_int("tune.heartbeat_s", tune.heartbeat_s)
        pruner = OmegaConf.to_container(tune.pruner, resolve=True)
        check_pruner(pruner)
        if not str(tune.storage).strip():
            raise UserInputError("tune.storage= is empty; use e.g. sqlite:///logs/optuna.db")
        return cls(study=tune.study, storage=str(tune.storage), sampler=str(tune.sampler), trials=tune.trials,
                   timeout=tune.timeout, seed=int(tune.seed), pruner=pruner, heartbeat_s=int(tune.heartbeat_s),
                   out_dir=Path(str(tune.out_dir)), monitor=str(tune.monitor),
                   results_dir=Path(str(tune.get("results_dir") or tune.out_dir)),
                   config_dir=Path(str(tune.config_dir)) if tune.config_dir else None)


def check_pruner(pruner: Mapping[str, Any]) -> None:
    name = pruner.get("name")
    if name not in PRUNERS:
        raise UserInputError(f"tune.pruner.name={name!r}: use one of {', '.join(PRUNERS)}")
    check_int("tune.pruner.startup_trials", pruner.get("startup_trials"), minimum=0)
    check_int("tune.pruner.warmup_epochs", pruner.get("warmup_epochs"), minimum=0)
    check_number("tune.pruner.lower", pruner.get("lower"), optional=name != "threshold")


def build_pruner(pruner: Mapping[str, Any]) -> optuna.pruners.BasePruner:
    """The pruner of ``tune.pruner`` (the parent and every trial's process build the same one)."""
    import optuna

    if pruner["name"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(pruner["startup_trials"]),
                                           n_warmup_steps=int(pruner["warmup_epochs"]))
    if pruner["name"] == "threshold":
        return optuna.pruners.ThresholdPruner(lower=float(pruner["lower"]), n_warmup_steps=int(pruner["warmup_epochs"]))
    return optuna.pruners.NopPruner()


def build_sampler(kind: str, grid: Mapping[str, list[Any]] | None, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if kind == "grid":
        return optuna.samplers.GridSampler(dict(grid or {}), seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def row_overrides(task_overrides: Sequence[str]) -> list[str]:
    """The overrides every trial repeats: the user's, without the tuning settings and Hydra's own."""
    return [o for o in task_overrides if not _key(o).startswith(("tune.", "hydra."))]


def training_overrides(row: Sequence[str]) -> list[str]:
    """The row's overrides that change what a trial trains, in the order given."""
    return [o for o in row if not _key(o).startswith(LOGISTICS)]


def row_identity(row: Sequence[str]) -> list[str]:
    """What two sittings of one study must share: the training overrides, sorted."""
    return sorted(training_overrides(row))


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def default_study_name(experiment: str | None, model: str | None, data: str, protocol: str | None) -> str:
    """``paper-m3oe-movielens1m`` (+ ``-<protocol>`` when a protocol is chosen): one study per row and protocol."""
    row = (experiment or model or "row").replace("/", "-")
    name = "-".join(part for part in (row, data, protocol) if part)
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def open_storage(url: str, heartbeat_s: int) -> RDBStorage:
    """The RDB storage, with heartbeats: a trial whose process died is failed and queued again."""
    import optuna
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if url.startswith("sqlite:///"):
        check_writable(Path(url.removeprefix("sqlite:///")).parent, f"tune.storage={url}: its folder")
    # the callback's keyword was renamed in Optuna 4.9 (failed_trial_callback before)
    renamed = "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage.__init__).parameters
    callback = {"heartbeat_stale_trial_callback" if renamed else "failed_trial_callback": queue_again}
    for attempt in range(SCHEMA_RACE_TRIES):
        try:
            return RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s, **callback)
        except Exception as error:
            if _lost_schema_race(error) and attempt + 1 < SCHEMA_RACE_TRIES:
                time.sleep(0.2 * (attempt + 1))  # the other process is creating the tables: open them after it
                continue
            # a URL SQLAlchemy cannot open: a settings problem
            raise UserInputError(f"tune.storage={url!r}: cannot open it as an Optuna storage ({error})") from None
    raise AssertionError("unreachable")


SCHEMA_RACE_TRIES = 5


def _lost_schema_race(error: Exception) -> bool:
    """A new storage whose tables another process created at the same moment (a second tuner, a dashboard).

    Optuna creates the schema on first open with ``CREATE TABLE`` (no ``IF NOT EXISTS`` across processes),
    so the slower of two processes opening a fresh file fails with "table … already exists"; opened again,
    it finds the tables and goes on.
    """
    return "already exists" in str(error)


def existing_study(storage: RDBStorage, name: str) -> optuna.Study | None:
    """The study of that name, loaded without writing anything; None when there is none."""
    import optuna

    if name not in optuna.get_all_study_names(storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def refuse_another_search(study: optuna.Study, space: str, row: Sequence[str]) -> None:
    """A study that exists with another space or another row is refused (before anything is written)."""
    stored_space = study.user_attrs.get(SPACE_ATTR)
    if stored_space is not None and stored_space != space:
        raise UserInputError(f"tune.study={study.study_name}: the study exists with another search space "
                             f"({_show(stored_space)}); name a new study with tune.study=<name> or repeat that space")
    stored_row = study.user_attrs.get(ROW_ATTR)
    if stored_row is not None and list(stored_row) != list(row_identity(row)):
        raise UserInputError(f"tune.study={study.study_name}: the study exists for other training overrides "
                             f"({' '.join(stored_row) or 'none'}); name a new study with tune.study=<name>")


def _show(space: str) -> str:
    import json

    return "; ".join(f"{p['path']}: " + (",".join(p["choices"]) if p["kind"] == "choice" else
                                         f"{p['kind']}:{p['low']:g}:{p['high']:g}") for p in json.loads(space))


def create_study(storage: RDBStorage, name: str, sampler: optuna.samplers.BaseSampler,
                 pruner: optuna.pruners.BasePruner) -> optuna.Study:
    import optuna

    return optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                               direction="maximize", load_if_exists=True)


def record(study: optuna.Study, attributes: Mapping[str, Any]) -> None:
    for key, value in attributes.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def queue_again(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a trial that died with the same parameters (its grid point too), up to :data:`MAX_RETRIES` times.

    Optuna's own retry callback changed names in 4.9; this one is the same few lines on its public API.
    """
    import optuna

    retries = int(trial.system_attrs.get(RETRIES, 0)) + 1
    if retries > MAX_RETRIES:
        return
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={**trial.system_attrs, RETRY_OF: trial.number, RETRIES: retries}))


def retried_as(trials: Sequence[FrozenTrial]) -> dict[int, int]:
    """Trial number → the number of the trial that retries it."""
    return {int(t.system_attrs[RETRY_OF]): t.number for t in trials if RETRY_OF in t.system_attrs}


def counted(trials: Sequence[FrozenTrial]) -> int:
    """Trials that used up budget: complete, pruned, or failed and not queued again."""
    from optuna.trial import TrialState

    retried = retried_as(trials)
    return sum(1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and t.number not in retried))


def recover_stale(study: optuna.Study, grace_s: float, poll_s: float, say=print) -> None:
    """Fail (and queue again) trials left RUNNING by a dead process; wait for any that are still alive.

    A trial's heartbeat is recorded by the process that waits for it; one that never got a heartbeat
    counts as dead once it started longer than ``grace_s`` ago. Only one process should work on a study:
    a second one waits here until the first one's trial ends or goes stale.
    """
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    announced: set[int] = set()
    while True:
        fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        now = time.time()
        for trial in running:
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            if not _has_heartbeat(study, trial) and now - started > grace_s:
                study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
                queue_again(study, study._storage.get_trial(trial._trial_id))
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        for trial in running:
            if trial.number not in announced:
                say(f"trial {trial.number} of study {study.study_name} is RUNNING in another process; waiting "
                    f"until it ends or its heartbeat is {grace_s:g} s old")
                announced.add(trial.number)
        time.sleep(poll_s)


def _has_heartbeat(study: optuna.Study, trial: FrozenTrial) -> bool:
    try:  # Optuna keeps no public read of a trial's heartbeat
        from optuna.storages._rdb import models

        with study._storage.scoped_session() as session:
            return models.TrialHeartbeatModel.where_trial_id(trial._trial_id, session) is not None
    except Exception:  # another Optuna layout: assume a heartbeat (fail_stale_trials then decides)
        return True


def fail_and_retry(study: optuna.Study, trial_id: int) -> None:
    """A trial this process gave up on (interrupted): FAIL, and its parameters queued for the next run."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        return
    queue_again(study, study._storage.get_trial(trial_id))


def pruned_at(trial: FrozenTrial) -> int | None:
    """The epoch the pruning callback stopped this trial at (None: not pruned).

    The attribute is keyed by trial number, so a retry (which inherits nothing but its parameters) and a
    trial of another study cannot be mistaken for a pruned one.
    """
    return trial.user_attrs.get(f"{PRUNED_AT}.{trial.number}")
