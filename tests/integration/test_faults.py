"""Faults that used to lose or hide results (issue #16): signals, concurrent starts, double resume, zero steps,
a split without any AUC, stores that cannot work."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.tracking.runs import run_lock
from tests.helpers import REPO_ROOT, isolated, run_module, seeded_store

TINY = ["data=synthetic", "data.rows=600", "data.batch_size=128", "model.star_dim=8", "model.bottom_dim=8",
        "model.expert_dims=[8]", "model.tower_dims=[8]", "threads=1"]


def runs_in(tmp_path: Path, experiment: str = "m3oe-lightning") -> list:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def start(module: str, args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_run(tmp_path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until the process has opened its run (its lock file exists under the checkpoint root)."""
    deadline = time.monotonic() + timeout
    while not list((tmp_path / "logs" / "checkpoints").glob("*.lock")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.2)
    time.sleep(1.0)  # inside fit by now on most machines; earlier is fine too (the run is open)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_exits_non_zero_and_marks_the_run_killed(tmp_path, signum):
    seeded_store(tmp_path)
    proc = start("m3oe_lightning.train", [*isolated(tmp_path), *TINY, "data.rows=200000", "trainer.max_epochs=50"])
    wait_for_run(tmp_path, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and "KILLED" in stderr
    (run,) = runs_in(tmp_path)
    assert run.info.status == "KILLED"


@pytest.mark.slow
def test_sigterm_in_a_multirun_fails_the_sweep(tmp_path):
    seeded_store(tmp_path)
    proc = start("m3oe_lightning.train", ["-m", *isolated(tmp_path), *TINY, "data.rows=200000",
                                          "trainer.max_epochs=50", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    wait_for_run(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    statuses = {r.info.run_name.startswith("sweep"): r.info.status for r in runs_in(tmp_path)}
    assert statuses == {False: "KILLED", True: "FAILED"}  # the job and its parent run; the second job never ran


@pytest.mark.slow
def test_eight_processes_on_a_fresh_store_all_finish(tmp_path):
    # a fresh store on purpose (never seeded_store): its creation is what the processes race for
    procs = [start("m3oe_lightning.train", [*isolated(tmp_path), *TINY, "trainer.max_epochs=1", f"seed={k}"])
             for k in range(8)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
    runs = runs_in(tmp_path)
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    assert all("test/auc_mean" in r.data.metrics and "val/auc_mean_best" in r.data.metrics for r in runs)


def test_a_run_in_use_cannot_be_continued_by_a_second_process(tmp_path):
    held = run_lock(tmp_path, "abc123")
    with pytest.raises(UserInputError, match="in use by another process"):
        run_lock(tmp_path, "abc123")
    held.close()
    run_lock(tmp_path, "abc123").close()  # free again once the holder is gone


def train_cli(tmp_path, *overrides: str):
    return run_module("m3oe_lightning.train", [*isolated(tmp_path), *TINY, *overrides], cwd=REPO_ROOT, timeout=180)


@pytest.mark.bad_input
@pytest.mark.parametrize("overrides, expected", [
    (["trainer.max_epochs=0"], "zero steps"),
    (["+trainer.limit_train_batches=0"], "zero steps"),
    (["optimizer.lr=-1"], "optimizer.lr=-1"),
    (["optimizer.lr=abc"], "optimizer.lr='abc'"),
    (["optimizer.weight_decay=-1"], "optimizer.weight_decay=-1"),
    (["automl.lr=-1"], "automl.lr=-1"),
    (["task_name=../../x"], "task_name='../../x'"),
    (["logger.run_name=a/b"], "logger.run_name='a/b'"),
    (["logger.tracking_uri=foo://bar"], "logger.tracking_uri='foo://bar'"),
    (["logger.tracking_uri=http://127.0.0.1:9"], "no MLflow server answers"),
], ids=["max_epochs=0", "limit_train_batches=0", "lr<0", "lr=abc", "wd<0", "automl.lr<0", "task_name", "run_name",
        "scheme", "closed-port"])
def test_settings_refused_before_a_run_is_opened(tmp_path, overrides, expected):
    started = time.monotonic()
    result = train_cli(tmp_path, *overrides)
    assert result.returncode == 2, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert expected in line and "Traceback" not in result.stderr
    assert time.monotonic() - started < 60  # a closed port answers within seconds, not MLflow's minutes
    assert not (tmp_path / "mlflow.db").exists() or not runs_in(tmp_path)
    assert not (tmp_path.parent / "x").exists()


def test_an_apostrophe_or_a_wildcard_in_the_run_name_is_fine(tmp_path):
    """MLflow's filter language breaks on a quote; LIKE treats ``%`` and ``_`` as wildcards."""
    from mlflow.tracking import MlflowClient

    from m3oe_lightning.tracking.runs import ensure_experiment, unique_run_name

    uri = f"sqlite:///{seeded_store(tmp_path)}"
    experiment = ensure_experiment(uri, "names", None)
    client = MlflowClient(uri)
    names = []
    for base in ("o'brien_50%", "o'brien_50%", "oXbrien_50", "o'brien_50%"):
        names.append(unique_run_name(client, experiment, base))
        client.create_run(experiment, run_name=names[-1])
    assert names == ["o'brien_50%", "o'brien_50%-2", "oXbrien_50", "o'brien_50%-3"]


@pytest.mark.bad_input
def test_a_split_without_any_auc_stops_with_one_line(tmp_path):
    seeded_store(tmp_path)
    rows = [{"user": u % 7, "item": u % 5, "dom": u % 2, "click": 0} for u in range(400)]
    path = tmp_path / "events.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = run_module("m3oe_lightning.train", [
        *isolated(tmp_path), "data=tabular", f"data.path={path}", "data.domain_column=dom", "data.tasks={click: click}",
        "data.sparse_features=[user,item]", "model=mlp", "trainer.max_epochs=1"], cwd=REPO_ROOT, timeout=180)
    assert result.returncode == 2, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "val split" in line and "both label classes" in line
    (run,) = runs_in(tmp_path)
    assert run.info.status == "FAILED" and "val/auc_mean_best" not in run.data.metrics
