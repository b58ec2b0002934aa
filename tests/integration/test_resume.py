"""kill -9 mid-training, then resume=true: same MLflow run, same final metrics as an uninterrupted run."""

from __future__ import annotations

import signal
from pathlib import Path

import mlflow
import pytest

from tests.helpers import REPO_ROOT, isolated, run_module, seeded_store

# small widths: what is compared is the resumed run against the uninterrupted one, not their accuracy
RUN = ["data=synthetic", "data.rows=4000", "data.batch_size=256", "trainer.max_epochs=3", "seed=5",
       "callbacks.early_stopping.patience=10", "model.star_dim=16", "model.bottom_dim=8", "model.expert_dims=[8]",
       "model.tower_dims=[8]"]
KILL = ["+callbacks.kill._target_=m3oe_lightning.training.callbacks.KillAtEpoch", "+callbacks.kill.epoch=1"]


def runs(store):
    mlflow.set_tracking_uri(f"sqlite:///{store}")
    return mlflow.search_runs(experiment_names=["m3oe-lightning"], output_format="list")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run, started with resume=true on a store without any run of its config: it must
    start fresh (and, compared below, train exactly as a run without resume would)."""
    root = tmp_path_factory.mktemp("reference")
    seeded_store(root)
    result = run_module("m3oe_lightning.train", [*RUN, *isolated(root), "resume=true"], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming run" not in result.stdout
    return root


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, reference):
    work = isolated(tmp_path / "work")
    seeded_store(tmp_path / "work")
    killed = run_module("m3oe_lightning.train", [*RUN, *work, *KILL], cwd=REPO_ROOT)
    assert killed.returncode == -signal.SIGKILL
    (interrupted,) = runs(tmp_path / "work" / "mlflow.db")
    assert interrupted.info.status == "RUNNING"  # a killed process leaves its run open

    resumed = run_module("m3oe_lightning.train", [*RUN, *work, "resume=true"], cwd=REPO_ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming run" in resumed.stdout

    (final,) = runs(tmp_path / "work" / "mlflow.db")  # the same run, continued
    assert final.info.run_id == interrupted.info.run_id and final.info.status == "FINISHED"
    (expected,) = runs(reference / "mlflow.db")
    compared = [key for key in expected.data.metrics if key.startswith("test/")]
    assert compared
    for key in compared:
        assert final.data.metrics[key] == pytest.approx(expected.data.metrics[key], abs=1e-6), key


@pytest.mark.slow
def test_resume_with_nothing_to_resume_starts_fresh(reference):
    (run,) = runs(reference / "mlflow.db")
    assert run.info.status == "FINISHED"
