"""One trial: a ``python -m m3oe_lightning.train`` process with the row's overrides and the trial's values.

Why a process and not a call: a trial is then exactly the training run a user would start (its own MLflow
run, checkpoints, config hash and seed), the library never imports the training entry point, and a trial
that crashes, leaks memory or is killed cannot take the study down with it. The tuner adds what makes it a
trial: validation only (``test=false``), nesting under the study's parent MLflow run, tags that find it
again, and the pruning callback. Its output goes to ``<study dir>/trials/<n>/train.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from m3oe_lightning.tracking import provenance

PRUNING_TARGET = "m3oe_lightning.tuning.pruning.OptunaPruning"
STUDY_TAG, TRIAL_TAG = "tune_study", "tune_trial"
STOP_WAIT_S = 30  # a trial asked to stop gets this long to close its MLflow run before it is killed


@dataclass(frozen=True)
class TrialCommand:
    """What one trial runs, where it writes, and the environment that nests it under the study's run."""

    argv: list[str]
    env: dict[str, str]
    folder: Path

    @property
    def log_file(self) -> Path:
        return self.folder / "train.log"


def trial_command(*, row: Sequence[str], values: Sequence[str], tuned_paths: Sequence[str], study: str,
                  number: int, storage: str, monitor: str, folder: Path, parent_run_id: str) -> TrialCommand:
    """The training command of trial ``number``: the row (minus the searched settings), the trial's values,
    then what the tuner imposes — it comes last, so a row cannot turn the test split back on."""
    kept = [o for o in row if o.lstrip("+~").split("=", 1)[0] not in set(tuned_paths)]
    imposed = [
        "test=false", "skip_finished=false", "resume=false", "logger.log_model=false",
        "trainer.enable_progress_bar=false", f"hydra.run.dir={quoted(str(folder))}",
        f"logger.run_name={study}-t{number}",
        f"++logger.tags.{STUDY_TAG}={quoted(study)}", f"++logger.tags.{TRIAL_TAG}={number}",
        f"++callbacks.optuna_pruning._target_={PRUNING_TARGET}",
        f"++callbacks.optuna_pruning.storage={quoted(storage)}", f"++callbacks.optuna_pruning.study={quoted(study)}",
        f"++callbacks.optuna_pruning.trial={number}", f"++callbacks.optuna_pruning.monitor={monitor}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", provenance.PARENT_RUN_ENV: parent_run_id,
           provenance.SWEEP_NAME_ENV: study}
    env.pop("HYDRA_FULL_ERROR", None)
    return TrialCommand([sys.executable, "-m", "m3oe_lightning.train", *kept, *values, *imposed], env, folder)


def quoted(text: str) -> str:
    """``text`` as a Hydra string value whatever it holds (a study named ``123`` stays a string)."""
    return "'" + text.replace("'", "\\'") + "'"


def run(command: TrialCommand) -> int:
    """Run the trial to its end; its exit code.

    If this process is interrupted the trial is asked to stop (SIGTERM: it closes its MLflow run as
    KILLED); on Linux it also gets SIGTERM should this process die without asking (``kill -9``).
    """
    command.folder.mkdir(parents=True, exist_ok=True)
    with open(command.log_file, "a") as log:
        log.write("$ " + " ".join(command.argv[1:]) + "\n")
        log.flush()
        process = subprocess.Popen(command.argv, stdout=log, stderr=subprocess.STDOUT, env=command.env,
                                   preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        try:
            return process.wait()
        except BaseException:
            _stop(process)
            raise


def _die_with_parent() -> None:
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def error_line(log_file: Path) -> str:
    """The trial's own one-line error (``error: …``), else its last line: why it failed, for the table."""
    try:
        lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:300]
