"""``m3oe-tune``: a tiny Optuna study on synthetic data, end to end, and its refusals.

Trials are real ``python -m m3oe_lightning.train`` processes (10-30 s each on a busy 2-core runner, mostly
imports), so the end-to-end tests share one study: a two-point grid whose hopeless point is pruned, killed
with SIGKILL after its first trial and resumed. Everything else is checked in process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from m3oe_lightning.config import CONF_DIR
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.tune import tune
from m3oe_lightning.tuning import outputs, space
from m3oe_lightning.tuning import study as studies
from m3oe_lightning.tuning.pruning import OptunaPruning
from tests.helpers import REPO_ROOT, compose_train, isolated, run_in_process, run_module

TINY = ["data=synthetic", "data.rows=4000", "data.batch_size=256", "model=mlp", "seed=7", "trainer.max_epochs=2",
        "threads=1"]
STUDY = "tiny"  # named: the default name (test_a_users_tabular_data...) depends on the protocol default
EXPERIMENT = "m3oe-lightning"
# lr 3e-2 reaches val/auc_mean ~0.61 after one epoch on TINY; lr 1e-7 stays at ~0.50: a threshold of 0.55
# prunes exactly the hopeless point, whichever order the grid runs them in
HOPELESS_GRID = ["++tune.space.optimizer.lr='[3e-2,1e-7]'", "tune.pruner.name=threshold", "tune.pruner.lower=0.55",
                 "tune.pruner.warmup_epochs=0"]


def tune_args(tmp_path: Path) -> list[str]:
    return [*TINY, *isolated(tmp_path), f"tune.study={STUDY}", f"tune.config_dir={tmp_path / 'tuned'}"]


def storage_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'logs' / 'optuna.db'}"


def mlflow_runs(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def _wait_for(condition, timeout_s: float, what: str, process: subprocess.Popen, log: Path):
    """``condition()``'s first true value; fails at once (with the log's tail) when ``process`` has ended."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            raise AssertionError(f"the tuner exited ({process.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def _trials_or_none(url: str):
    """The study's trials, read without writing: a poll that opened the file for writing would create Optuna's
    tables itself and race the tuner doing the same."""
    path = url.removeprefix("sqlite:///")
    try:
        return optuna.load_study(study_name=STUDY, storage=f"sqlite:///file:{path}?mode=ro&uri=true").trials
    except Exception:  # no file, no tables or no study yet
        return None


@dataclass
class Sittings:
    """A tiny study killed with SIGKILL after its first trial ended, then resumed by the same command."""

    folder: Path
    before_kill: list[optuna.trial.FrozenTrial]
    rerun: subprocess.CompletedProcess[str]
    trials: list[optuna.trial.FrozenTrial]

    def one(self, state: optuna.trial.TrialState) -> optuna.trial.FrozenTrial:
        (found,) = [t for t in self.trials if t.state == state]
        return found


@pytest.fixture(scope="module")
def sittings(tmp_path_factory) -> Sittings:
    """One study for the end-to-end tests (each trial is a training process: they are shared, not repeated).

    The command-line form of the space (no ``++``, no quotes); a 1 s heartbeat, so the killed trial is
    stale 3 s later; the hopeless grid, so one point is pruned whichever order the grid runs in.
    """
    tmp_path = tmp_path_factory.mktemp("tune")
    args = [*tune_args(tmp_path), "tune.space.optimizer.lr=[3e-2,1e-7]", *HOPELESS_GRID[1:], "tune.heartbeat_s=1",
            f"tune.results_dir={tmp_path / 'reports'}"]
    url = storage_url(tmp_path)
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

    def one_ended_one_running():
        trials = _trials_or_none(url) or []
        states = [t.state for t in trials]
        return trials if any(s in ended for s in states) and optuna.trial.TrialState.RUNNING in states else None

    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen([sys.executable, "-m", "m3oe_lightning.tune", *args], cwd=REPO_ROOT, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            before = _wait_for(one_ended_one_running, 360, "the first trial to end and the second to start", first,
                               log)
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # the tuner and its trial, as a lost machine would
            first.wait()
    rerun = run_module("m3oe_lightning.tune", args, cwd=REPO_ROOT, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    return Sittings(tmp_path, before, rerun, optuna.load_study(study_name=STUDY, storage=url).trials)


@pytest.mark.slow
def test_a_study_killed_with_sigkill_resumes_without_repeating_an_ended_trial(sittings):
    (ended,) = [t for t in sittings.before_kill if t.state.is_finished()]
    assert f"trial {ended.number}: optimizer.lr" not in sittings.rerun.stdout  # not run again
    kept = next(t for t in sittings.trials if t.number == ended.number)
    assert (kept.state, kept.datetime_complete) == (ended.state, ended.datetime_complete)
    killed = sittings.one(optuna.trial.TrialState.FAIL)
    (retry,) = [t for t in sittings.trials if t.system_attrs.get(studies.RETRY_OF) == killed.number]
    assert retry.params == killed.params and retry.state.is_finished() and retry.state.name != "FAIL"
    # the budget (the grid's two points) is spent exactly: each point ended once, the killed attempt is not counted
    assert sorted(t.params["optimizer.lr"] for t in sittings.trials if t.state.name in ("COMPLETE", "PRUNED")) == [
        1e-7, 3e-2]
    assert studies.counted(sittings.trials) == 2 and len(sittings.trials) == 3

    _, found = mlflow_runs(sittings.folder)
    parents = [r for r in found if r.data.tags.get("tune_parent") == "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", "the resumed study kept its parent run"
    children = [r for r in found if "tune_trial" in r.data.tags]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(int(r.data.tags["tune_trial"]) for r in children if r.info.status == "FINISHED") == sorted(
        t.number for t in sittings.trials if t.state.name in ("COMPLETE", "PRUNED"))


@pytest.mark.slow
def test_the_hopeless_trial_is_pruned_after_its_first_validation_epoch(sittings):
    pruned, complete = sittings.one(optuna.trial.TrialState.PRUNED), sittings.one(optuna.trial.TrialState.COMPLETE)
    assert pruned.params == {"optimizer.lr": 1e-7} and sorted(pruned.intermediate_values) == [1]
    assert studies.pruned_at(pruned) == 1
    assert complete.params == {"optimizer.lr": 3e-2} and sorted(complete.intermediate_values) == [1, 2]
    _, found = mlflow_runs(sittings.folder)
    (run,) = [r for r in found if r.data.tags.get("tune_trial") == str(pruned.number)]
    assert run.data.tags["tune_state"] == "PRUNED" and run.info.status == "FINISHED"


@pytest.mark.slow
def test_trials_never_evaluate_the_test_split_and_the_objective_is_the_best_validation_value(sittings):
    client, found = mlflow_runs(sittings.folder)
    trial_runs = {int(r.data.tags["tune_trial"]): r for r in found if r.info.status == "FINISHED"
                  and "tune_trial" in r.data.tags}
    assert len(trial_runs) == 2
    for number, run in trial_runs.items():
        assert run.data.params["test"] == "False"
        assert not [m for m in run.data.metrics if m.startswith("test/")], "a trial evaluated the test split"
        history = [m.value for m in client.get_metric_history(run.info.run_id, "val/auc_mean")]
        # the objective is the run's best validation value, the one its checkpoint callback selected
        assert run.data.metrics["val/auc_mean_best"] == pytest.approx(max(history))
        trial = next(t for t in sittings.trials if t.number == number)
        assert trial.user_attrs[studies.VALUE_ATTR] == pytest.approx(run.data.metrics["val/auc_mean_best"])
    complete = sittings.one(optuna.trial.TrialState.COMPLETE)
    assert complete.value == pytest.approx(trial_runs[complete.number].data.metrics["val/auc_mean_best"])


@pytest.mark.slow
def test_the_study_writes_its_table_and_the_tuned_config(sittings):
    complete = sittings.one(optuna.trial.TrialState.COMPLETE)
    folder = sittings.folder / "reports" / STUDY  # tune.results_dir; the trials' logs stay under tune.out_dir
    assert (sittings.folder / "logs" / "tune" / STUDY / "trials" / str(complete.number) / "train.log").is_file()
    assert not (sittings.folder / "logs" / "tune" / STUDY / "results.csv").exists()
    table = (folder / "results.csv").read_text().splitlines()
    assert table[0] == "trial,optimizer.lr,val/auc_mean_best,epochs,best_epoch,minutes,state,mlflow_run_id"
    cells = {line.split(",")[0]: line.split(",")[1:7] for line in table[1:]}
    assert len(cells) == 3
    best_epoch = max(complete.intermediate_values, key=complete.intermediate_values.get)
    assert cells[str(complete.number)][0] == "0.03" and cells[str(complete.number)][2:4] == ["2", str(best_epoch)]
    assert cells[str(complete.number)][5] == "COMPLETE"
    minutes = (complete.datetime_complete - complete.datetime_start).total_seconds() / 60
    assert float(cells[str(complete.number)][4]) == pytest.approx(minutes, abs=1e-3)
    pruned = sittings.one(optuna.trial.TrialState.PRUNED)
    assert cells[str(pruned.number)][0] == "1e-07" and cells[str(pruned.number)][2:4] == ["1", "1"]
    assert cells[str(pruned.number)][5] == "PRUNED (epoch 1)"
    killed = sittings.one(optuna.trial.TrialState.FAIL)
    assert cells[str(killed.number)][5].startswith("FAIL (retried as ")
    markdown = (folder / "results.md").read_text()
    assert markdown.startswith(f"# Tuning: {STUDY}") and "PRUNED (epoch 1)" in markdown
    assert "PRUNED (epoch 1)" in sittings.rerun.stdout  # the table is printed too
    summary = json.loads((folder / "study.json").read_text())
    assert summary["chosen"] == {"trial": complete.number, "value": complete.value, "values": {"optimizer.lr": "0.03"}}
    assert summary["epoch_cap"] == 2 and "model=mlp" in summary["row"] and summary["objective"] == "val/auc_mean_best"
    assert not [o for o in summary["row"] if o.startswith(("tune.", "paths.", "logger."))]

    tuned = sittings.folder / "tuned" / f"{STUDY}.yaml"
    text = tuned.read_text()
    assert text.startswith("# @package _global_\n")
    assert "# command: python -m m3oe_lightning.tune " in text and "tune.space.optimizer.lr=" in text
    assert f"trial {complete.number}, val/auc_mean_best {complete.value:.6f}" in text
    config = OmegaConf.load(tuned)
    assert config.optimizer.lr == 0.03 and config.logger.tags.tuned == STUDY
    assert "defaults" not in config  # the row was no experiment preset: nothing to include


@pytest.mark.slow
def test_the_tuning_report_gathers_each_studys_chosen_trial_and_cost(sittings):
    reports = sittings.folder / "reports"
    done = run_module("m3oe_lightning.reports.tuning", ["--dir", str(reports)], cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    complete = sittings.one(optuna.trial.TrialState.COMPLETE)
    text = (reports / "README.md").read_text()
    line = next(row for row in text.splitlines() if row.startswith(f"| `{STUDY}`"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    best_epoch = max(complete.intermediate_values, key=complete.intermediate_values.get)
    assert cells[2:6] == ["lr 0.03", f"{complete.value:.4f}", f"{best_epoch} / 2", "1 · 1 · 1"]
    total = sum((t.datetime_complete - t.datetime_start).total_seconds() / 60 for t in sittings.trials
                if t.datetime_complete is not None)
    assert float(cells[6]) == pytest.approx(total, abs=0.06)
    assert "1 studies" in text and "do not edit" in text


def test_the_tuning_report_refuses_a_folder_without_studies(tmp_path):
    done = run_module("m3oe_lightning.reports.tuning", ["--dir", str(tmp_path)], cwd=REPO_ROOT, timeout=60)
    assert done.returncode != 0 and "no study.json under it" in done.stderr and "Traceback" not in done.stderr


def test_a_storage_whose_tables_another_process_is_creating_is_opened_again(tmp_path, monkeypatch):
    """Two processes opening a fresh file at once: the slower one's CREATE TABLE fails; it retries, not gives up."""
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import OperationalError

    made = []

    class Racing(RDBStorage):
        @functools.wraps(RDBStorage.__init__)  # the same keywords, as open_storage inspects them
        def __init__(self, *args, **kwargs):
            if not made:
                made.append("lost")
                raise OperationalError("CREATE TABLE study_directions", {},
                                       Exception("table study_directions already exists"))
            made.append("opened")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr("optuna.storages.RDBStorage", Racing)
    storage = studies.open_storage(storage_url(tmp_path), heartbeat_s=10)
    assert made == ["lost", "opened"] and storage.get_all_studies() == []
    storage.engine.dispose()


def test_a_storage_that_cannot_be_opened_is_one_line_naming_the_setting(tmp_path):
    with pytest.raises(UserInputError, match=r"tune.storage='sqlite:///.*nothere.*': cannot open it"):
        studies.open_storage(f"sqlite:///file:{tmp_path / 'nothere.db'}?mode=ro&uri=true", heartbeat_s=10)


# ------------------------------------------------------------------------------------------- refusals
def _fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def stored_study(tmp_path):
    """Study STUDY, searched over a log-range lr for TINY's row, with one finished trial."""
    (tmp_path / "logs").mkdir()
    storage = studies.open_storage(storage_url(tmp_path), heartbeat_s=10)
    existing = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    lr = space.Param("optimizer.lr", "log", 1e-4, 1e-1)
    existing.set_user_attr(studies.SPACE_ATTR, space.describe_space([lr]))
    existing.set_user_attr(studies.ROW_ATTR, studies.row_identity(TINY))
    existing.add_trial(optuna.trial.create_trial(
        params={"optimizer.lr": 1e-3}, distributions={"optimizer.lr": optuna.distributions.FloatDistribution(
            1e-4, 1e-1, log=True)}, value=0.7))
    storage.engine.dispose()
    return tmp_path / "logs" / "optuna.db"


LR = "tune.space.optimizer.lr"
BAD_INPUT = {
    "a range that does not parse": ([f"++{LR}='log:1e-4'", "tune.trials=2"], LR),
    "an unknown kind": ([f"++{LR}='lg:1e-4:1e-1'", "tune.trials=2"], LR),
    "a bound that is no number": ([f"++{LR}='float:a:1'", "tune.trials=2"], LR),
    "unbalanced brackets": (["++tune.space.model.hidden_dims='choice:[64,[128]'"], "tune.space.model.hidden_dims"),
    "an unknown parameter path": (["++tune.space.optimizer.lrr='[1e-3,1e-2]'"], "tune.space.optimizer.lrr"),
    "a group, not a setting": (["++tune.space.optimizer='[1,2]'"], "tune.space.optimizer"),
    "a grid value of the wrong type": (["++tune.space.optimizer.lr='[1e-3,fast]'"], "tune.space.optimizer.lr"),
    "a float grid for an integer": (["++tune.space.trainer.max_epochs='[1,2.5]'"], "tune.space.trainer.max_epochs"),
    "a float range for an integer": (["++tune.space.trainer.max_epochs='float:1:3'", "tune.trials=2"],
                                     "tune.space.trainer.max_epochs"),
    "a range on a grid sampler": (["tune.sampler=grid", f"++{LR}='log:1e-4:1e-1'"], "tune.sampler=grid"),
    "tpe without a budget": (["++tune.space.optimizer.lr='log:1e-4:1e-1'"], "tune.trials=null"),
    "more trials than grid points": (["tune.trials=9"], "tune.trials=9"),
    "a study name that is a path": (["tune.study=../x"], "tune.study='../x'"),
    "the study exists with another space": ([], f"tune.study={STUDY}"),
    "the study exists for another row": (["data.rows=5000", "++tune.space.optimizer.lr='log:1e-4:1e-1'",
                                          "tune.trials=2"], f"tune.study={STUDY}"),
}


@pytest.mark.bad_input
@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_tuning_input_is_one_line_and_leaves_the_study_untouched(case, tmp_path, stored_study, capfd):
    overrides, setting = BAD_INPUT[case]
    before = _fingerprint(stored_study)
    result = run_in_process(tune, [*tune_args(tmp_path), *overrides], capfd, config_name="tune")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("error: ") and setting in line, line
    assert _fingerprint(stored_study) == before
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "logs" / "tune").exists()


# ------------------------------------------------------------------------------------- the pieces
def test_the_space_grammar_reads_every_form_with_its_types():
    parsed = {p.path: p for p in space.parse_space({
        "optimizer": {"lr": "log:1e-4:1e-1", "weight_decay": "float:0:0.1"}, "trainer": {"max_epochs": "int:2:8"},
        "model": {"expert_dims": "choice:[64],[128, 64]", "activation": "choice:relu,gelu"},
        "data": {"batch_size": [256, 512], "eval_batch_size": "[1024,2048]"}})}
    assert parsed["optimizer.lr"] == space.Param("optimizer.lr", "log", 1e-4, 0.1)
    assert parsed["optimizer.weight_decay"] == space.Param("optimizer.weight_decay", "float", 0.0, 0.1)
    assert parsed["trainer.max_epochs"] == space.Param("trainer.max_epochs", "int", 2, 8)
    assert parsed["model.expert_dims"].choices == ([64], [128, 64])
    assert parsed["model.expert_dims"].encoded() == ["[64]", "[128,64]"]  # Optuna stores scalars only
    assert parsed["model.expert_dims"].decode("[128,64]") == [128, 64]
    assert parsed["model.activation"].choices == ("relu", "gelu")
    assert parsed["data.batch_size"].choices == (256, 512) and parsed["data.eval_batch_size"].choices == (1024, 2048)
    assert space.trial_overrides([parsed["model.expert_dims"], parsed["optimizer.lr"]],
                                 {"model.expert_dims": [128, 64], "optimizer.lr": 1e-3}) == [
        "model.expert_dims=[128,64]", "optimizer.lr=0.001"]
    assert space.grid_size([parsed["model.expert_dims"], parsed["data.batch_size"]]) == 4


def test_command_line_specs_reach_the_space_unchanged_through_hydra(tmp_path):
    given = ["tune.space.model.expert_dims=choice:[64],[128]", "tune.space.optimizer.lr=log:1e-4:1e-1",
             "tune.space.data.batch_size=[256,512]", "+tune.space.data.eval_batch_size=choice:1024,2048", "seed=3"]
    quoted = space.quote_space_arguments(given)
    assert quoted[-1] == "seed=3" and all(q.startswith("++tune.space.") for q in quoted[:-1])
    cfg = compose_train([*(o for o in TINY if o != "model=mlp"), *isolated(tmp_path), *quoted], config_name="tune")
    parsed = {p.path: p for p in space.parse_space(cfg.tune.space)}
    assert parsed["model.expert_dims"].choices == ([64], [128])
    assert parsed["optimizer.lr"].kind == "log" and parsed["data.batch_size"].choices == (256, 512)
    assert parsed["data.eval_batch_size"].choices == (1024, 2048)
    space.check_against(list(parsed.values()), cfg)  # every path exists in M3oE's training config, types fit
    with pytest.raises(UserInputError, match="tune.space.model.expert_dims: the training config has no setting"):
        space.check_against(list(parsed.values()), compose_train([*TINY, *quoted], config_name="tune"))  # an MLP


def test_a_users_tabular_data_composes_and_names_its_own_study(tmp_path):
    cfg = compose_train(["data=tabular", "data.path=rows.csv", "model=mmoe", *isolated(tmp_path),
                         "++tune.space.data.batch_size='[512,1024]'"], config_name="tune")
    params = space.parse_space(cfg.tune.space)
    space.check_against(params, cfg)
    assert [p.path for p in params] == ["data.batch_size", "optimizer.lr"]
    assert studies.default_study_name(None, "mmoe", str(cfg.data.name), None) == "mmoe-tabular"
    assert studies.default_study_name("paper/m3oe", "m3oe", "movielens1m", "released") == \
        "paper-m3oe-movielens1m-released"


class _Trainer:
    """What the pruning callback reads of a Lightning trainer."""

    sanity_checking, is_global_zero, world_size = False, True, 1

    def __init__(self) -> None:
        self.callback_metrics: dict[str, float] = {}
        self.current_epoch, self.should_stop = 0, False


def test_the_pruning_callback_reports_each_epoch_and_stops_a_trial_below_the_median(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    median = {"name": "median", "startup_trials": 1, "warmup_epochs": 0, "lower": None}
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    study.set_user_attr(studies.PRUNER_ATTR, median)
    lr = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-2}, distributions=lr, value=0.8,
                                              intermediate_values={1: 0.7, 2: 0.8}))
    running = study.ask(fixed_distributions=lr)
    callback, trainer = OptunaPruning(storage=url, study="s", trial=running.number), _Trainer()

    trainer.callback_metrics["val/auc_mean"] = 0.75  # above the finished trial's 0.7 at epoch 1: keep going
    callback.on_validation_end(trainer, None)
    assert not trainer.should_stop
    trainer.current_epoch, trainer.callback_metrics["val/auc_mean"] = 1, 0.6  # below its 0.8 at epoch 2
    callback.on_validation_end(trainer, None)
    frozen = study.trials[running.number]
    assert trainer.should_stop and frozen.intermediate_values == {1: 0.75, 2: 0.6}
    assert studies.pruned_at(frozen) == 2

    study.tell(running, state=optuna.trial.TrialState.FAIL)  # the tuner gave the trial up: training stops too
    late = OptunaPruning(storage=url, study="s", trial=running.number)
    trainer.should_stop, trainer.current_epoch = False, 2
    late.on_validation_end(trainer, None)
    assert trainer.should_stop


def test_the_budget_counts_ended_trials_and_not_those_queued_again(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", direction="maximize")
    lr = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-2}, distributions=lr, value=0.8))
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions=lr,
                                              state=optuna.trial.TrialState.FAIL))
    assert studies.counted(study.trials) == 2  # a trial that failed for real used its budget
    killed = study.ask(fixed_distributions=lr)
    studies.fail_and_retry(study, killed._trial_id)
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "FAIL", "WAITING"]
    assert trials[3].params == trials[2].params and trials[3].system_attrs[studies.RETRY_OF] == 2
    assert studies.counted(trials) == 2
    assert studies.retried_as(trials) == {2: 3}


def test_the_tuned_config_of_a_preset_includes_the_preset_and_composes(tmp_path):
    lr = space.Param("optimizer.lr", "choice", choices=(1e-3, 1e-2))
    dims = space.Param("model.expert_dims", "choice", choices=([64], [128]))
    chosen = optuna.trial.create_trial(
        params={"optimizer.lr": 1e-3, "model.expert_dims": "[128]"}, value=0.81234567,
        distributions={"optimizer.lr": optuna.distributions.CategoricalDistribution([1e-3, 1e-2]),
                       "model.expert_dims": optuna.distributions.CategoricalDistribution(["[64]", "[128]"])})
    text = outputs.tuned_config(chosen, [dims, lr], study="paper-m3oe", experiment="paper/m3oe",
                                row=["experiment=paper/m3oe", "protocol=released"], command="make tune ROW=paper/m3oe",
                                objective="val/auc_mean_best")
    assert text.startswith("# @package _global_\n") and "# command: make tune ROW=paper/m3oe\n" in text
    assert "val/auc_mean_best 0.812346" in text
    assert "# use: python -m m3oe_lightning.train experiment=tuned/paper-m3oe protocol=released\n" in text
    # as Hydra reads it from conf/experiment/tuned/: the preset first, the chosen values over it
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "experiment" / "tuned").mkdir(exist_ok=True)
    (conf / "experiment" / "tuned" / "paper-m3oe.yaml").write_text(text)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=["experiment=tuned/paper-m3oe"])
    GlobalHydra.instance().clear()
    assert cfg.optimizer.lr == 1e-3 and list(cfg.model.expert_dims) == [128]
    assert cfg.model._target_.endswith("M3oE") and cfg.logger.tags.row == "M3oE"
    assert cfg.logger.tags.tuned == "paper-m3oe"
