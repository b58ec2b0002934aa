"""PAGE end to end, per-round server checkpoints, kill -9 + ``federated.resume``, cooperative client timeout."""

from __future__ import annotations

import signal

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from m3oe_lightning.federate import SERVER_STATE, federate
from m3oe_lightning.federated.factory import build_federated
from tests.helpers import REPO_ROOT, compose_train, isolated, run_module, seeded_store

EXPERIMENT = "m3oe-federated"
RUN = ["data=synthetic", "data.rows=3000", "data.batch_size=256", "model.star_dim=16", "model.bottom_dim=8",
       "model.expert_dims=[8]", "model.tower_dims=[8]", "seed=7", "federated=page", "federated.rounds=3",
       "federated.warmup=1", "federated.epochs_max=2", "threads=1"]  # one thread in and out of process: same sums
CLIENTS = ("d0", "d1", "d2")


def store(path):
    return isolated(path)[:4]  # log dir, sqlite store, cache, hydra dir


def runs(path):
    mlflow.set_tracking_uri(f"sqlite:///{path / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")


def timeless(metrics):
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-round PAGE run (in process)."""
    path = tmp_path_factory.mktemp("reference")
    seeded_store(path)
    last = federate(compose_train([*RUN, *store(path)], config_name="federate"))
    return path, last


def test_page_run_logs_its_actions_per_round_and_checkpoints_its_agents(reference):
    path, last = reference
    (run,) = runs(path)
    assert run.info.status == "FINISHED" and run.info.run_name == "page-m3oe-synthetic-s7"
    assert run.data.tags["federated"] == "page" and "page_parity" not in run.data.tags
    client = MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    for cid in CLIENTS:
        lrs = client.get_metric_history(run.info.run_id, f"page/client/{cid}/lr")
        assert sorted(m.step for m in lrs) == [1, 2, 3] and all(1e-3 <= m.value <= 2e-2 for m in lrs)
        epochs = client.get_metric_history(run.info.run_id, f"page/client/{cid}/epochs")
        assert {m.value for m in epochs} <= {1.0, 2.0}
    for step in (1, 2, 3):
        weights = [m.value for cid in CLIENTS for m in client.get_metric_history(run.info.run_id, f"page/weight/{cid}")
                   if m.step == step]
        assert len(weights) == 3 and sum(weights) == pytest.approx(1.0)
    stored = run.data.metrics
    assert {"personal/auc_mean", "global/auc_mean", "page/server/reward", "page/server/critic_loss"} <= set(stored)
    assert stored["page/warmup"] == 0.0 and stored["global/auc_mean"] == pytest.approx(last["global/auc_mean"])
    saved = torch.load(path / "logs" / "checkpoints" / run.info.run_id / SERVER_STATE, weights_only=True)
    strategy_state = saved["server"]["strategy_state"]
    assert saved["server"]["server_round"] == 3 and sorted(strategy_state["client_agents"]) == list(CLIENTS)
    assert len(strategy_state["server_agent"]["buffer"]["actions"]) == 3  # one transition per round
    assert saved["server"]["rng_state"]["torch"].dtype == torch.uint8


def test_kill_after_a_round_then_resume_matches_the_uninterrupted_run(reference, tmp_path):
    ref_path, ref_last = reference
    seeded_store(tmp_path)
    killed = run_module("m3oe_lightning.federate", [*RUN, *store(tmp_path), "federated.kill_after_round=2"],
                        cwd=REPO_ROOT, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (interrupted,) = runs(tmp_path)
    assert interrupted.info.status == "RUNNING"  # a killed process leaves its run open
    assert (tmp_path / "logs" / "checkpoints" / interrupted.info.run_id / SERVER_STATE).is_file()

    last = federate(compose_train([*RUN, *store(tmp_path), "federated.resume=true"], config_name="federate"))
    (final,) = runs(tmp_path)  # the same run, continued
    assert final.info.run_id == interrupted.info.run_id and final.info.status == "FINISHED"
    assert timeless(last) == pytest.approx(timeless(ref_last), abs=1e-6)
    (expected,) = runs(ref_path)
    assert timeless(final.data.metrics) == pytest.approx(timeless(expected.data.metrics), abs=1e-6)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = client.get_metric_history(final.info.run_id, "global/auc_mean")
    assert sorted(m.step for m in history) == [1, 2, 3]  # rounds 1-2 from the killed process, 3 after resume
    ref_history = MlflowClient(f"sqlite:///{ref_path / 'mlflow.db'}").get_metric_history(
        expected.info.run_id, "page/client/d0/lr")
    got = client.get_metric_history(final.info.run_id, "page/client/d0/lr")
    assert [m.step for m in sorted(got, key=lambda m: m.step)] == [1, 2, 3]
    assert [m.value for m in sorted(got, key=lambda m: m.step)] == pytest.approx(
        [m.value for m in sorted(ref_history, key=lambda m: m.step)], abs=1e-9)


def test_resume_with_nothing_to_resume_starts_a_fresh_run(tmp_path):
    fedavg = [o for o in RUN if not o.startswith(("federated.warmup", "federated.epochs_max"))]
    seeded_store(tmp_path)
    last = federate(compose_train([*fedavg, "federated=fedavg", "federated.rounds=1", *store(tmp_path),
                                   "federated.resume=true"], config_name="federate"))
    (run,) = runs(tmp_path)
    assert run.info.status == "FINISHED" and "global/auc_mean" in last


def test_a_client_past_client_timeout_is_stopped_dropped_and_logged(tmp_path):
    setup = build_federated(compose_train([*RUN, *store(tmp_path), "federated.client_timeout=1e-6"],
                                          config_name="federate"))
    sim = setup.simulation
    metrics = sim.run_round()
    assert metrics["round/clients_ok"] == 0 and metrics["round/clients_failed"] == 3
    assert metrics["round/aggregated"] == 0 and not any(k.startswith("page/weight/") for k in metrics)
    assert all("stopped at the deadline" in f["error"] for f in sim.state.failures)
    assert all(c.personal is None for c in sim.clients.values())  # a stopped fit leaves the client as it was
