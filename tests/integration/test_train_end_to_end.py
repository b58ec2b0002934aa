"""End to end through the entry point: training, MLflow records, determinism."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from m3oe_lightning.train import train
from tests.helpers import REPO_ROOT, compose_train, isolated, run_module, seeded_store

SYNTHETIC = ["data=synthetic", "data.batch_size=512", "trainer.max_epochs=2", "seed=7"]


def finished_runs(tmp_path: Path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["m3oe-lightning"], output_format="list")


def test_train_on_synthetic_logs_everything_to_sqlite(tmp_path):
    seeded_store(tmp_path)
    metrics = train(compose_train([*SYNTHETIC, *isolated(tmp_path)]))
    assert metrics["test/auc_mean"] > 0.6  # learns the planted structure (a constant predictor is 0.5)

    (run,) = finished_runs(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "m3oe-synthetic-s7"
    stored = run.data.metrics
    assert stored["test/auc_mean"] == pytest.approx(metrics["test/auc_mean"])
    for domain in ("d0", "d1", "d2"):
        for task in ("t0", "t1"):
            assert f"test/auc/{domain}/{task}" in stored
            assert f"val/auc/{domain}/{task}" in stored
    assert {"arch/alpha_d", "arch/beta_t", "train/loss", "val/auc_mean"} <= set(stored)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(client.get_metric_history(run.info.run_id, "val/auc_mean")) == 2  # one per epoch
    params = run.data.params
    assert params["model.num_shared_experts"] == "1" and params["automl.mode"] == "alternate"
    tags = run.data.tags
    assert tags["seed"] == "7" and "git_commit" in tags and tags["version.torch"].startswith("2.")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/test_auc.png" in artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "config")} == {"config/config.yaml"}


def test_same_seed_twice_gives_identical_metrics_and_unique_run_names(tmp_path):
    overrides = [*SYNTHETIC, "trainer.max_epochs=1", *isolated(tmp_path)]
    seeded_store(tmp_path)
    first = train(compose_train(overrides))
    second = train(compose_train(overrides))
    assert first == second
    names = sorted(r.info.run_name for r in finished_runs(tmp_path))
    assert names == ["m3oe-synthetic-s7", "m3oe-synthetic-s7-2"]


@pytest.mark.slow
def test_cli_trains_movielens100k_one_epoch(tmp_path):
    db = seeded_store(tmp_path, "x.db")
    result = run_module("m3oe_lightning.train", [
        "data=movielens100k", "model=m3oe", "seed=3", "trainer.max_epochs=1", f"logger.tracking_uri=sqlite:///{db}",
        f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'hydra'}", "trainer.enable_progress_bar=false",
    ], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test metrics" in result.stdout and "age_35plus" in result.stdout
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    (run,) = mlflow.search_runs(experiment_names=["m3oe-lightning"], output_format="list")
    assert run.info.run_name == "m3oe-movielens100k-s3"
    assert 0.6 < run.data.metrics["test/auc_mean"] < 0.9
