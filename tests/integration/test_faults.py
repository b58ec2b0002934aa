"""Faults that used to lose or hide results (issue #16): signals, concurrent starts, double resume, zero steps,
a split without any AUC, stores that cannot work."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.tracking.runs import mark_orphans_killed, open_run, run_lock, running_runs
from tests.helpers import REPO_ROOT, isolated, run_module, seeded_store

TINY = ["data=synthetic", "data.rows=600", "data.batch_size=128", "model.star_dim=8", "model.bottom_dim=8",
        "model.expert_dims=[8]", "model.tower_dims=[8]", "threads=1"]


def runs_in(tmp_path: Path, experiment: str = "m3oe-lightning") -> list:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def start(module: str, args: list[str], new_session: bool = False) -> subprocess.Popen[str]:
    """``python -m module args``; ``new_session``: in a process group of its own (a terminal's Ctrl-C signals
    the whole group)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=new_session)


def wait_for_run(tmp_path: Path, proc: subprocess.Popen[str], timeout: float = 120, runs: int = 1) -> None:
    """Until the process has opened ``runs`` runs (their lock files exist under the checkpoint root)."""
    deadline = time.monotonic() + timeout
    while len(list((tmp_path / "logs" / "checkpoints").glob("*.lock"))) < runs:
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
def test_sigterm_in_a_multirun_kills_the_sweep(tmp_path):
    seeded_store(tmp_path)
    proc = start("m3oe_lightning.train", ["-m", *isolated(tmp_path), *TINY, "data.rows=200000",
                                          "trainer.max_epochs=50", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    wait_for_run(tmp_path, proc, runs=2)  # the sweep's lock and its first job's
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    statuses = {r.info.run_name.startswith("sweep"): r.info.status for r in runs_in(tmp_path)}
    assert statuses == {False: "KILLED", True: "KILLED"}  # the job and its parent run; the second job never ran


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_stopping_a_parallel_sweep_leaves_no_run_running(tmp_path, stop):
    # Ctrl-C reaches the launcher and its joblib workers (one process group); SIGTERM the launcher alone,
    # whose joblib then kills the workers outright: either way no job may stay RUNNING
    seeded_store(tmp_path)
    proc = start("m3oe_lightning.train", ["-m", *isolated(tmp_path), *TINY, "data.rows=200000",
                                          "trainer.max_epochs=50", "seed=1,2", "hydra/launcher=joblib",
                                          "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                 new_session=True)
    wait_for_run(tmp_path, proc, runs=3)  # the sweep's lock and both jobs'
    signum = signal.SIGINT if stop == "ctrl-c" else signal.SIGTERM
    os.killpg(proc.pid, signum) if stop == "ctrl-c" else proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and "the sweep stopped" in stderr
    statuses = sorted((r.info.run_name.startswith("sweep"), r.info.status) for r in runs_in(tmp_path))
    assert statuses == [(False, "KILLED"), (False, "KILLED"), (True, "KILLED")]
    states = [json.loads(f.read_text())["status"] for f in (tmp_path / "logs" / "checkpoints").glob("*.run.json")]
    assert states == ["KILLED", "KILLED"]  # resume and skip_finished read these


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


@pytest.mark.slow
def test_a_sweep_killed_outright_is_marked_killed_by_the_next_run(tmp_path):
    # kill -9 of a basic-launcher sweep: no handler runs, the job and its parent run stay RUNNING ...
    seeded_store(tmp_path)
    proc = start("m3oe_lightning.train", ["-m", *isolated(tmp_path), *TINY, "data.rows=200000",
                                          "trainer.max_epochs=50", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    wait_for_run(tmp_path, proc, runs=2)  # the parent's lock and the first job's
    proc.kill()
    proc.communicate(timeout=60)
    assert {r.info.status for r in runs_in(tmp_path)} == {"RUNNING"}
    # ... until the next run in that store and checkpoint folder starts
    result = train_cli(tmp_path, "trainer.max_epochs=1", "seed=3")
    assert result.returncode == 0, result.stderr
    statuses = sorted((r.data.params.get("seed", "sweep"), r.info.status) for r in runs_in(tmp_path))
    assert statuses == [("1", "KILLED"), ("3", "FINISHED"), ("sweep", "KILLED")]


def test_a_running_run_whose_process_is_gone_is_marked_killed(tmp_path):
    # the runs' lock files: held by a live process (its own), free (its process was killed outright), absent
    # (opened on another machine); a FINISHED run with a free lock stays as it is
    root = tmp_path / "checkpoints"
    root.mkdir()
    client = MlflowClient(f"sqlite:///{seeded_store(tmp_path)}")
    experiment_id = client.create_experiment("orphans")
    alive, dead, elsewhere, finished = (client.create_run(experiment_id).info.run_id for _ in range(4))
    client.set_terminated(finished, "FINISHED")
    for run_id in (dead, finished):
        (root / f"{run_id}.lock").touch()
        (root / f"{run_id}.run.json").write_text(json.dumps({"run_id": run_id, "status": "RUNNING"}))
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)",
                               str(root / f"{alive}.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        marked = mark_orphans_killed(client, running_runs(client, experiment_id), root)
        status = {run_id: client.get_run(run_id).info.status for run_id in (alive, dead, elsewhere, finished)}
    finally:
        holder.kill()
        holder.wait()
    assert marked == [dead]
    assert status == {alive: "RUNNING", dead: "KILLED", elsewhere: "RUNNING", finished: "FINISHED"}
    assert json.loads((root / f"{dead}.run.json").read_text())["status"] == "KILLED"
    assert json.loads((root / f"{finished}.run.json").read_text())["status"] == "RUNNING"  # untouched
    # the next run opened in that experiment does the same for a process that died since
    open_run(tracking_uri=client.tracking_uri, experiment_name="orphans", artifact_location=None, base_name="next",
             tags={}, checkpoint_root=root, cfg_hash="h").release()
    assert client.get_run(alive).info.status == "KILLED"


def test_lightning_leaves_the_run_status_to_the_job(tmp_path):
    """Lightning ends its logger's run when a fit ends: FINISHED before the test split is scored, FAILED when a
    signal stops the fit. The run stays RUNNING until the job marks it, so a job killed after its fit is never
    FINISHED and one stopped by a signal ends KILLED."""
    from lightning import Callback, Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    from m3oe_lightning.errors import Interrupted

    class SignalMidFit(Callback):
        def on_train_batch_end(self, *args) -> None:
            raise Interrupted(signal.SIGTERM)

    root = tmp_path / "checkpoints"
    root.mkdir()
    client = MlflowClient(f"sqlite:///{seeded_store(tmp_path)}")
    run = open_run(tracking_uri=client.tracking_uri, experiment_name="owner", artifact_location=None,
                   base_name="fit", tags={}, checkpoint_root=root, cfg_hash="h")
    quiet = {"logger": run.logger, "enable_checkpointing": False, "enable_progress_bar": False,
             "enable_model_summary": False, "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1}
    Trainer(**quiet).fit(BoringModel())
    assert client.get_run(run.run_id).info.status == "RUNNING"
    with pytest.raises(Interrupted):
        Trainer(**quiet, callbacks=[SignalMidFit()]).fit(BoringModel())
    assert client.get_run(run.run_id).info.status == "RUNNING"
    run.finish("KILLED")
    run.release()
    assert client.get_run(run.run_id).info.status == "KILLED"
    assert json.loads((root / f"{run.run_id}.run.json").read_text())["status"] == "KILLED"


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
