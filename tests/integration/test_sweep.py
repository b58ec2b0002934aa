"""Sweeps: finished runs are skipped (resumable), jobs nest under one parent run, parallel jobs lose nothing."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from m3oe_lightning.train import train
from tests.helpers import REPO_ROOT, compose_train, isolated, run_module, seeded_store

TINY = ["data=synthetic", "data.rows=2000", "data.batch_size=500", "trainer.max_epochs=1",
        "model.star_dim=32", "model.bottom_dim=16", "model.expert_dims=[8]", "model.tower_dims=[8]"]


def runs(uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["m3oe-lightning"], output_format="list")


def test_skip_finished_skips_a_finished_config_and_seed(tmp_path, capsys):
    base = [*TINY, "seed=5", "+logger.tags.row=tiny", *isolated(tmp_path)]
    seeded_store(tmp_path)
    first = train(compose_train(base))  # skip_finished=false (default) trains; the hash ignores the switch
    (run,) = runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    capsys.readouterr()

    again = train(compose_train([*base, "skip_finished=true"]))
    assert f"skip tiny seed 5: finished run {run.info.run_id}\n" in capsys.readouterr().out
    assert again["test/auc_mean"] == pytest.approx(first["test/auc_mean"])
    assert again["val/auc_mean_best"] == pytest.approx(first["val/auc_mean_best"])
    assert len(runs(f"sqlite:///{tmp_path / 'mlflow.db'}")) == 1

    train(compose_train([*base, "skip_finished=true", "trainer.max_epochs=2"]))  # another config: trains
    assert len(runs(f"sqlite:///{tmp_path / 'mlflow.db'}")) == 2
    train(compose_train([*base, "skip_finished=true", "trainer.precision=bf16-mixed"]))  # bf16 computes otherwise
    assert len(runs(f"sqlite:///{tmp_path / 'mlflow.db'}")) == 3
    capsys.readouterr()
    train(compose_train([*base, "skip_finished=true", "trainer.precision=32-true"]))  # the default: as the first
    assert f"skip tiny seed 5: finished run {run.info.run_id}\n" in capsys.readouterr().out


@pytest.mark.slow
def test_parallel_sweep_nests_four_runs_under_one_parent(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a fresh store: the callback creates it before the jobs
    sweep_dir = tmp_path / "sweep"
    # seed varies slowest: jobs 0 and 1 share a run name and start together (the name must stay unique)
    sweep = ["-m", *TINY, "seed=1,2", "optimizer.lr=0.01,0.02", *isolated(tmp_path), f"hydra.sweep.dir={sweep_dir}",
             "hydra.callbacks.mlflow_sweep.name=tiny-sweep"]
    parallel = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    result = run_module("m3oe_lightning.train", [*sweep, *parallel], cwd=REPO_ROOT, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]

    by_name = {r.info.run_name: r for r in runs(uri)}
    parent = by_name.pop("tiny-sweep")
    assert parent.info.status == "FINISHED" and parent.data.tags["runs"] == "4 finished / 4"
    assert sorted(by_name) == ["m3oe-synthetic-s1", "m3oe-synthetic-s1-2", "m3oe-synthetic-s2", "m3oe-synthetic-s2-2"]
    client = MlflowClient(uri)
    for child in by_name.values():
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.data.tags["sweep"] == "tiny-sweep"
        assert {"test/auc_mean", "val/auc_mean_best", "arch/alpha_d"} <= set(child.data.metrics)
        assert len(client.get_metric_history(child.info.run_id, "val/auc_mean")) == 1
    assert len({(c.data.params["seed"], c.data.params["optimizer.lr"]) for c in by_name.values()}) == 4
    assert len({frozenset(c.data.metrics) for c in by_name.values()}) == 1  # every job logged the same metrics

    # the same sweep again (basic launcher: quicker), resumable: every job finds its finished run, trains nothing
    rerun = run_module("m3oe_lightning.train", [*sweep, "skip_finished=true"], cwd=REPO_ROOT, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.count("skip m3oe seed ") == 4 and "test metrics" not in rerun.stdout
    after = {r.info.run_name: r for r in runs(uri)}
    assert set(after) == {*by_name, "tiny-sweep", "tiny-sweep-2"}
    assert after["tiny-sweep-2"].data.tags["runs"] == "0 finished / 0"


