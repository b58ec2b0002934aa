"""Entry point: ``python -m m3oe_lightning.tune [training overrides] [tune.* settings]`` (``m3oe-tune``,
``make tune``).

Tunes one row (an experiment preset or any training overrides, under one protocol) in a persistent Optuna
study: every trial is a training run with ``test=false`` nested under the study's MLflow run, selected on
``val/auc_mean_best`` only, pruned when hopeless. Rerunning the same command continues the study.
Writes ``<results_dir>/<study>/results.{md,csv}`` and ``study.json``, and the chosen settings as
``conf/experiment/tuned/<study>.yaml``.
Bad settings are one line and leave the study untouched. docs/tuning.md; README, "Tuning".
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.config import CONF_DIR, exits_on_interrupt, report_user_errors
from m3oe_lightning.errors import Interrupted, UserInputError
from m3oe_lightning.tracking import preflight, provenance
from m3oe_lightning.training.settings import validate
from m3oe_lightning.tuning import outputs, space
from m3oe_lightning.tuning import study as studies
from m3oe_lightning.tuning import trial as trials

if TYPE_CHECKING:
    from m3oe_lightning.tuning.parent_run import ParentRun

# MLflow (~2 s) is imported inside tune(), like Optuna: `--help` and settings errors answer without it
OBJECTIVE = keys.VAL_AUC_MEAN_BEST  # what a trial is scored on: the training run's selection value
TUNED_DIR = Path(CONF_DIR) / "experiment" / "tuned"


def tune(cfg: DictConfig) -> dict[str, Any]:
    """Check everything, open (or continue) the study, run trials up to the budget, write the outputs."""
    settings = studies.TuneSettings.from_config(cfg.tune)
    params = space.parse_space(cfg.tune.space)
    space.check_against(params, cfg)
    validate(cfg)
    kind = settings.sampler if settings.sampler != "auto" else (
        "grid" if all(p.kind == "choice" for p in params) else "tpe")
    grid = space.grid_of(params) if kind == "grid" else None
    budget = _budget(settings.trials, kind, params)
    hydra_cfg = HydraConfig.get()
    choices, given = hydra_cfg.runtime.choices, list(hydra_cfg.overrides.task)
    row = studies.row_overrides(given)
    name = settings.study or studies.default_study_name(choices.get("experiment"), choices.get("model"),
                                                        str(cfg.data.name), choices.get("protocol"))
    command = provenance.command_line("tune", given)
    config_dir = settings.config_dir or TUNED_DIR
    preflight.check_store(cfg.logger.tracking_uri)
    preflight.check_writable(config_dir, "tune.config_dir")
    storage = studies.open_storage(settings.storage, settings.heartbeat_s)
    described = space.describe_space(params)
    found = studies.existing_study(storage, name)
    if found is not None:
        studies.refuse_another_search(found, described, row)  # before anything is written
    # -- from here on the study is written
    preflight.check_writable(settings.results_dir, "tune.results_dir")  # before any trial, not before refusals
    study = studies.create_study(storage, name, studies.build_sampler(kind, grid, settings.seed),
                                 studies.build_pruner(settings.pruner))
    studies.record(study, {studies.SPACE_ATTR: described, studies.ROW_ATTR: studies.row_identity(row),
                           studies.PRUNER_ATTR: settings.pruner, studies.SAMPLER_ATTR: kind,
                           studies.COMMAND_ATTR: command})
    grace = 3 * settings.heartbeat_s
    studies.recover_stale(study, grace, settings.heartbeat_s)
    from m3oe_lightning.tuning.parent_run import ParentRun

    parent = ParentRun(str(cfg.logger.tracking_uri), str(cfg.logger.experiment_name),
                       cfg.logger.get("artifact_location"))
    parent.open(name, study.user_attrs.get(studies.PARENT_RUN_ATTR),
                {"command": command, "tune_storage": settings.storage, "tune_sampler": kind,
                 "tune_budget": str(budget)})
    studies.record(study, {studies.PARENT_RUN_ATTR: parent.run_id})
    folder = settings.out_dir / name
    print(f"study {name} in {settings.storage}: {studies.counted(study.get_trials())} of {budget} trials done "
          f"({kind} sampler, objective {OBJECTIVE}, MLflow parent run {parent.run_id})", flush=True)
    try:
        ran = _run_trials(study, storage, parent, params, settings, budget=budget, row=row, folder=folder, grace=grace)
    except Interrupted:
        parent.close("KILLED", {}, [])
        raise
    except BaseException:
        parent.close("FAILED", {}, [])
        raise
    return _finish(study, parent, params, settings, name=name, kind=kind, row=row, command=command,
                   experiment=choices.get("experiment"), folder=settings.results_dir / name, config_dir=config_dir,
                   ran=ran, epoch_cap=cfg.trainer.get("max_epochs"))


def _budget(trials_setting: int | None, kind: str, params: list[space.Param]) -> int:
    if kind == "grid":
        size = space.grid_size(params)
        if trials_setting is not None and trials_setting > size:
            raise UserInputError(f"tune.trials={trials_setting}: the grid has only {size} points; use at most {size}")
        return trials_setting or size
    if trials_setting is None:
        raise UserInputError("tune.trials=null: the tpe sampler needs a budget; pass e.g. tune.trials=20")
    return trials_setting


class TrialFailed(Exception):
    """A trial's training process failed or logged no objective: the trial is FAIL, the study goes on."""


def _run_trials(study, storage, parent: ParentRun, params, settings: studies.TuneSettings, *, budget: int,
                row: list[str], folder: Path, grace: float) -> list[str]:
    """Trials until the study has ``budget`` ended ones (or the timeout); the states of those run here.

    One ``study.optimize(n_trials=1)`` per trial: Optuna then keeps the trial's heartbeat, fails stale
    trials first, and lets the grid sampler stop; the budget is counted here, over every sitting.
    """
    import optuna

    started, states = time.monotonic(), []

    def objective(trial: optuna.Trial) -> float:
        values = {p.path: p.suggest(trial) for p in params}
        command = trials.trial_command(
            row=row, values=space.trial_overrides(params, values), tuned_paths=[p.path for p in params],
            study=study.study_name, number=trial.number, storage=settings.storage, monitor=settings.monitor,
            folder=folder / "trials" / str(trial.number), parent_run_id=parent.run_id)
        print(f"trial {trial.number}: {' '.join(space.trial_overrides(params, values))} ...", flush=True)
        try:
            code = trials.run(command)
        except BaseException:
            studies.fail_and_retry(study, trial._trial_id)  # the next sitting runs these values again
            raise
        run = parent.trial_run(study.study_name, trial.number)
        value = run.data.metrics.get(OBJECTIVE) if run is not None else None
        frozen = storage.get_trial(trial._trial_id)
        if run is not None:
            trial.set_user_attr(studies.RUN_ID_ATTR, run.info.run_id)
        if value is not None:
            trial.set_user_attr(studies.VALUE_ATTR, float(value))
        state, why = "COMPLETE", ""
        if code != 0 or value is None:
            state, why = "FAIL", trials.error_line(command.log_file) if code != 0 else f"no {OBJECTIVE} logged"
            trial.set_user_attr(studies.ERROR_ATTR, why)
        elif studies.pruned_at(frozen) is not None:
            state = "PRUNED"
        if run is not None:
            parent.client.set_tag(run.info.run_id, "tune_state", state)
        result = "" if value is None else f"{OBJECTIVE} {float(value):.4f}, "
        print(f"trial {trial.number}: {result}{len(frozen.intermediate_values)} epochs, {state}"
              f"{': ' + why if why else ''} ({command.log_file})", flush=True)
        states.append(state)
        if state == "FAIL":
            raise TrialFailed(why)
        if state == "PRUNED":
            raise optuna.TrialPruned()
        return float(value)

    while studies.counted(study.get_trials(deepcopy=False)) < budget:
        if settings.timeout is not None and time.monotonic() - started >= settings.timeout:
            print(f"tune.timeout={settings.timeout:g} s reached: rerun the command to continue the study", flush=True)
            break
        studies.recover_stale(study, grace, settings.heartbeat_s)
        study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False)
    return states


def _finish(study, parent: ParentRun, params, settings: studies.TuneSettings, *, name: str, kind: str,
            row: list[str], command: str, experiment: str | None, folder: Path, config_dir: Path,
            ran: list[str], epoch_cap: int | None) -> dict[str, Any]:
    every = study.get_trials()
    chosen = outputs.best(every)
    config_file = None
    if chosen is not None:
        config_file = config_dir / f"{name}.yaml"
        config_file.write_text(outputs.tuned_config(chosen, params, study=name, experiment=experiment,
                                                    row=studies.training_overrides(row), command=command,
                                                    objective=OBJECTIVE))
    found = outputs.rows(every, params)
    files = outputs.write_results(folder, found, params, study=name, objective=OBJECTIVE, command=command,
                                  storage=settings.storage, sampler=kind, pruner=settings.pruner, chosen=chosen,
                                  config_file=config_file, row=studies.training_overrides(row), epoch_cap=epoch_cap)
    print(outputs.table(found, params, OBJECTIVE, fmt="simple"))
    tags = {"trials": f"{studies.counted(every)} ended"}
    if chosen is not None:
        tags.update({"best_trial": str(chosen.number), "best_value": f"{chosen.value:.6f}",
                     **{f"best.{p.path}": space.override_text(p.decode(chosen.params[p.path])) for p in params}})
        print(f"chosen on validation: trial {chosen.number} ({OBJECTIVE} {chosen.value:.4f}) -> {config_file}")
    print(f"results: {', '.join(map(str, files))}")
    parent.close("FINISHED", tags, [*files, *([config_file] if config_file else [])])
    if ran and all(state == "FAIL" for state in ran) and chosen is None:
        errors = [t.user_attrs.get(studies.ERROR_ATTR) for t in every if studies.ERROR_ATTR in t.user_attrs]
        raise UserInputError(f"every trial of study {name} failed; the last: {errors[-1] if errors else '?'}")
    return {"study": name, "best_value": None if chosen is None else chosen.value,
            "best_params": {} if chosen is None else dict(chosen.params), "config": config_file}


@exits_on_interrupt
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="tune")
def _hydra_main(cfg: DictConfig) -> None:
    report_user_errors(tune, cfg)


def main() -> None:
    """``tune.space.<path>=<spec>`` needs no ``+`` and no quotes: they are added before Hydra parses."""
    sys.argv = [sys.argv[0], *space.quote_space_arguments(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
