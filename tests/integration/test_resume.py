"""kill -9 mid-training, then resume=true: same MLflow run, same final metrics as an uninterrupted run."""

from __future__ import annotations

import signal

import mlflow
import pytest

from tests.helpers import REPO_ROOT, isolated, run_module

RUN = ["data=synthetic", "data.rows=4000", "data.batch_size=256", "trainer.max_epochs=3", "seed=5",
       "callbacks.early_stopping.patience=10"]
KILL = ["+callbacks.kill._target_=m3oe_lightning.training.callbacks.KillAtEpoch", "+callbacks.kill.epoch=1"]


def runs(store):
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    return mlflow.search_runs(experiment_names=["m3oe-lightning"], output_format="list")


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    reference = run_module("m3oe_lightning.train", [*RUN, *isolated(tmp_path / "ref")], cwd=REPO_ROOT)
    assert reference.returncode == 0, reference.stderr[-2000:]

    work = isolated(tmp_path / "work")
    killed = run_module("m3oe_lightning.train", [*RUN, *work, *KILL], cwd=REPO_ROOT)
    assert killed.returncode == -signal.SIGKILL
    (interrupted,) = runs(tmp_path / "work" / "mlflow.db")
    assert interrupted.info.status == "RUNNING"  # a killed process leaves its run open

    resumed = run_module("m3oe_lightning.train", [*RUN, *work, "resume=true"], cwd=REPO_ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming run" in resumed.stdout

    (final,) = runs(tmp_path / "work" / "mlflow.db")  # the same run, continued
    assert final.info.run_id == interrupted.info.run_id and final.info.status == "FINISHED"
    (expected,) = runs(tmp_path / "ref" / "mlflow.db")
    for key, value in expected.data.metrics.items():
        if key.startswith("test/"):
            assert final.data.metrics[key] == pytest.approx(value, abs=1e-6), key


def test_resume_with_nothing_to_resume_starts_fresh(tmp_path):
    result = run_module("m3oe_lightning.train", [*RUN, "trainer.max_epochs=1", *isolated(tmp_path), "resume=true"],
                        cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = runs(tmp_path / "mlflow.db")
    assert run.info.status == "FINISHED"
