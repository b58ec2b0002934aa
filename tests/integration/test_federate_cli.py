"""Federated runs end to end through the entry point: rounds in MLflow, determinism, bad settings."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from m3oe_lightning.config import report_user_errors
from m3oe_lightning.federate import SERVER_STATE, federate
from m3oe_lightning.federated.factory import build_federated
from tests.helpers import REPO_ROOT, compose_train, isolated, run_in_process, run_module, seeded_store

EXPERIMENT = "m3oe-federated"
SYNTHETIC = ["data=synthetic", "data.rows=4000", "data.batch_size=256", "model.star_dim=32", "model.bottom_dim=16",
             "model.expert_dims=[16]", "model.tower_dims=[16]", "seed=7"]


def store(tmp_path: Path) -> list[str]:
    return isolated(tmp_path)[:4]  # log dir, sqlite store, cache, hydra dir (the trainer keys are train's)


def runs(tmp_path: Path, db: str = "mlflow.db"):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / db}")
    return mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")


def test_federate_on_synthetic_logs_every_round_to_sqlite(tmp_path):
    overrides = [*SYNTHETIC, "federated=fedavg", "federated.partition=dirichlet", "federated.num_clients=4",
                 "federated.alpha=1.0", "federated.heldout_clients=1", "federated.rounds=2",
                 "federated.local_epochs=2", *store(tmp_path)]
    seeded_store(tmp_path)
    last = federate(compose_train(overrides, config_name="federate"))

    (run,) = runs(tmp_path)
    assert run.info.status == "FINISHED" and run.info.run_name == "fedavg-m3oe-synthetic-s7"
    tags = run.data.tags
    assert tags["federated"] == "fedavg" and tags["partition"] == "dirichlet" and tags["seed"] == "7"
    assert tags["command"].startswith("python -m m3oe_lightning.federate")
    stored = run.data.metrics
    for key in ("personal/auc_mean", "personal/auc_mean_weighted", "global/auc_mean", "heldout/auc_mean",
                "global_val/auc_mean", "comm/bytes_sent", "train/loss", "time/fit_s"):
        assert stored[key] == pytest.approx(last[key]), key
    assert len([k for k in stored if k.startswith("client/") and k.endswith("/auc_mean")]) == 3  # 4 - 1 held out
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = client.get_metric_history(run.info.run_id, "global/auc_mean")
    assert sorted(m.step for m in history) == [1, 2]  # MLflow step = round
    sent = client.get_metric_history(run.info.run_id, "comm/bytes_sent")
    assert len({m.value for m in sent}) == 1 and sent[0].value > 0
    assert run.data.params["federated.partition"] == "dirichlet"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "federated")}
    assert artifacts == {"federated/partition.md"}  # no failures.json: nobody failed
    assert (tmp_path / "logs" / "checkpoints" / run.info.run_id / SERVER_STATE).is_file()


def test_same_seed_gives_identical_round_metrics(tmp_path):
    overrides = [*SYNTHETIC, "federated=ditto", "federated.rounds=1", *store(tmp_path)]
    seeded_store(tmp_path)
    first = federate(compose_train(overrides, config_name="federate"))
    second = federate(compose_train(overrides, config_name="federate"))
    timeless = {k: v for k, v in first.items() if not k.startswith("time/")}
    assert timeless == {k: v for k, v in second.items() if not k.startswith("time/")}
    assert sorted(r.info.run_name for r in runs(tmp_path)) == ["ditto-m3oe-synthetic-s7", "ditto-m3oe-synthetic-s7-2"]


def test_bad_settings_fail_with_one_line_before_any_run(tmp_path, capfd):
    # in process (what main runs once Hydra composed): the refusal comes after torch loads, ~10 s in a subprocess
    result = run_in_process(federate, [*SYNTHETIC, *store(tmp_path), "federated.partition=dirichlet",
                                       "federated.alpha=0"], capfd, config_name="federate")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "federated.alpha=0" in line
    assert not (tmp_path / "mlflow.db").exists()  # failed before the MLflow run was opened


def test_too_many_heldout_clients_fail_after_partitioning_but_before_the_run(tmp_path, capsys):
    cfg = compose_train([*SYNTHETIC, *store(tmp_path), "federated.heldout_clients=3"], config_name="federate")
    with pytest.raises(SystemExit) as exit_info:
        report_user_errors(federate, cfg)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == ("error: federated.heldout_clients=3 but partition=domain gives 3 client(s): at least one "
                    "client must train")
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_cli_federates_movielens100k_by_region(tmp_path):
    seeded_store(tmp_path, "x.db")
    result = run_module("m3oe_lightning.federate", [
        "data=movielens100k", "model=m3oe", "federated=fedprox", "federated.partition=region",
        "federated.heldout_clients=2", "federated.rounds=2", "federated.local_epochs=1", "seed=3",
        f"logger.tracking_uri=sqlite:///{tmp_path / 'x.db'}", *store(tmp_path)[:1], *store(tmp_path)[2:],
    ], cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "round 2/2" in result.stdout and "region_other" in result.stdout

    (run,) = runs(tmp_path, "x.db")
    assert run.info.status == "FINISHED" and run.info.run_name == "fedprox-m3oe-movielens100k-s3"
    metrics = run.data.metrics
    assert 0.6 < metrics["global/auc_mean"] < 0.9 and 0.5 < metrics["heldout/auc_mean"] < 0.9  # unseen users
    assert 0.5 < metrics["personal/auc_mean"] < 0.9 and 0.5 < metrics["personal/auc_mean_weighted"] < 0.9
    assert len([k for k in metrics if k.startswith("client/region")]) == 9  # 11 regions, 2 held out
    assert {"global/auc/age_25/click", "global/auc/age_35plus/like"} <= set(metrics)
    client = MlflowClient(f"sqlite:///{tmp_path / 'x.db'}")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "personal/auc_mean")] == [1, 2]


def test_centralized_reference_pools_the_training_clients_and_skip_finished_skips_it(tmp_path, capsys):
    common = [*SYNTHETIC, "federated.heldout_clients=1", "federated.rounds=1", *store(tmp_path)]
    seeded_store(tmp_path)
    overrides = ["experiment=federated/centralized", *common]
    cfg = compose_train(overrides, config_name="federate")
    federated = build_federated(cfg).federation
    separate = build_federated(compose_train(["federated=fedavg", *common], config_name="federate")).federation
    (pooled,) = federated.clients
    assert pooled.client_id == "pooled" and len(separate.clients) == 2
    assert len(pooled.data.train) == sum(len(c.data.train) for c in separate.clients)
    assert torch.equal(federated.global_test.labels, separate.global_test.labels)  # the same test rows
    assert torch.equal(federated.heldout_test.labels, separate.heldout_test.labels)

    last = federate(cfg)
    assert last["personal/auc_mean"] == pytest.approx(last["global/auc_mean"])  # one client: its test = global
    (run,) = runs(tmp_path)
    assert run.info.run_name == "centralized-m3oe-synthetic-s7" and run.data.tags["algorithm"] == "centralized"
    again = federate(compose_train([*overrides, "skip_finished=true"], config_name="federate"))
    assert "skip centralized seed 7: finished run" in capsys.readouterr().out
    assert len(runs(tmp_path)) == 1 and again["global/auc_mean"] == pytest.approx(last["global/auc_mean"])
