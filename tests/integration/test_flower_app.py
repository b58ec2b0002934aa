"""The Flower adapter: record conversions, node discovery and failures, and a whole run in Flower's
simulation engine that gives the in-process simulation's run.

The engine test: 3 SuperNodes (one per client of the synthetic data's domain partition) × 2 rounds of federated M3oE
under PAGE through ``flwr.simulation.run_simulation`` (Ray backend, one worker: 2-core CI), against
``m3oe-federate``'s in-process run of the same settings. PAGE exercises everything the adapter must
carry: per-node configs (each client agent's lr and epochs), the server agent's aggregation weights
and DDPG update (warm-up 1 round), and persistent client state (``personal=domain_experts``: round 2
starts from each client's own domain experts, which only survive in the node's ``context.state``).
The client fits are seeded per (client, round), so both runs must agree round by round.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.config import get_project_config, validate_config
from flwr.simulation import run_simulation
from mlflow.tracking import MlflowClient

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federate import SERVER_STATE
from m3oe_lightning.federated.factory import build_federated
from m3oe_lightning.federated.flower.records import (
    content_to_fit_ins,
    content_to_fit_res,
    fit_ins_to_content,
    fit_res_to_content,
    load_client_state,
    save_client_state,
)
from m3oe_lightning.federated.flower.runner import FlowerTransport, discover_nodes
from m3oe_lightning.federated.messages import FitIns, FitRes
from m3oe_lightning.flower_app import RUN_CONFIG_DEFAULTS, compose_federate, make_client_app, make_server_app
from m3oe_lightning.tracking.federation import run_federation
from tests.helpers import REPO_ROOT, isolated

EXPERIMENT = "m3oe-federated"
SETTINGS = ["data=synthetic", "data.rows=2000", "data.batch_size=256", "model.star_dim=16", "model.bottom_dim=8",
            "model.expert_dims=[8]", "model.tower_dims=[8]", "seed=7", "threads=1",
            "experiment=federated/page_m3oe", "federated.rounds=2", "federated.warmup=1", "federated.epochs_max=2"]
COMPARED = ["global/auc_mean", "global/logloss_mean", "personal/auc_mean", "personal/auc_mean_weighted",
            "train/loss", "comm/bytes_sent", "page/server/reward", "page/weight/d0", "page/client/d1/lr"]
# the classification family (PAGE's Synthetic setting): 3 clients of their own, PAGE, the same checks
CLASSIFIER_SETTINGS = ["experiment=federated/page_synthetic", "data.clients=3", "data.samples=100",
                       "data.batch_size=10", "seed=7", "threads=1", "federated=page", "federated.rounds=2",
                       "federated.warmup=1", "federated.epochs_max=2"]
CLASSIFIER_COMPARED = ["global/accuracy", "global/cross_entropy", "global/accuracy_client_mean", "personal/accuracy",
                       "personal/accuracy_weighted", "train/loss", "comm/bytes_sent", "page/server/reward",
                       "page/server/val_accuracy", "page/weight/client0", "page/client/client1/lr"]
TINY = ["data=synthetic", "data.rows=1500", "data.num_users=60", "data.num_items=40", "data.batch_size=256",
        "model.star_dim=16", "model.bottom_dim=8", "model.expert_dims=[8]", "model.tower_dims=[8]", "seed=5",
        "threads=1", "federated.rounds=1"]


def store(root: Path) -> list[str]:
    return isolated(root)[:4]  # log dir, sqlite store, cache, hydra dir


def history(root: Path) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    """The single run in ``root``'s store: its id and every metric's (round, value) history."""
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED"
    metrics = {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
               for key in run.data.metrics}
    return run.info.run_id, metrics


def final_global_arrays(root: Path, run_id: str) -> dict[str, torch.Tensor]:
    path = root / "logs" / "checkpoints" / run_id / SERVER_STATE
    return torch.load(path, weights_only=True)["server"]["global_arrays"]


@pytest.mark.slow
@pytest.mark.parametrize(("settings", "compared"), [(SETTINGS, COMPARED), (CLASSIFIER_SETTINGS, CLASSIFIER_COMPARED)],
                         ids=["recommendation", "classification"])
def test_flower_simulation_runs_page_like_the_in_process_simulation(tmp_path, monkeypatch, settings, compared):
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")

    reference = tmp_path / "in_process"
    setup = build_federated(compose_federate([*settings, *store(reference)]))
    initial = {name: t.clone() for name, t in setup.simulation.state.global_arrays.items()}
    run_federation(compose_federate([*settings, *store(reference)]), lambda: setup)

    flower = tmp_path / "flower"
    overrides = [*settings, *store(flower)]
    run_simulation(
        server_app=make_server_app(overrides), client_app=make_client_app(overrides), num_supernodes=3,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 1}})

    ref_id, expected = history(reference)
    run_id, got = history(flower)
    tags = MlflowClient(f"sqlite:///{flower / 'mlflow.db'}").get_run(run_id).data.tags
    assert tags["runtime"].startswith("flower ") and tags["federated"] == "page"
    for key in compared:
        assert [step for step, _ in got[key]] == [1, 2], key  # one point per round, MLflow step = round
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in expected[key]], rel=1e-5, abs=1e-7), key
    assert [v for _, v in got["round/clients_ok"]] == [3.0, 3.0]
    assert [v for _, v in got["round/clients_failed"]] == [0.0, 0.0]
    assert got["page/warmup"] == [(1, 1.0), (2, 0.0)]  # round 2: the agents' actors chose
    assert {k for k in got if not k.startswith("time/")} == {k for k in expected if not k.startswith("time/")}

    final, ref_final = final_global_arrays(flower, run_id), final_global_arrays(reference, ref_id)
    assert final.keys() == initial.keys()
    assert any(not torch.equal(final[name], initial[name]) for name in initial)  # the global model trained
    for name in final:
        torch.testing.assert_close(final[name], ref_final[name], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------- conversions, discovery, failures
def test_records_carry_instructions_replies_and_client_state_exactly():
    arrays = {"w": torch.randn(3, 4), "steps": torch.tensor(7), "half": torch.randn(2).half()}
    ins = content_to_fit_ins(fit_ins_to_content(FitIns(arrays, {"server_round": 2, "lr": 0.01, "local_only": True,
                                                                "score_split": "val"})))
    assert ins.config == {"server_round": 2, "lr": 0.01, "local_only": True, "score_split": "val"}
    assert [type(v) for v in ins.config.values()] == [int, float, bool, str]
    assert all(torch.equal(ins.arrays[k], arrays[k]) and ins.arrays[k].dtype == arrays[k].dtype for k in arrays)
    content = fit_res_to_content(FitRes(arrays=None, num_examples=12, metrics={"train_loss": 0.25}))
    assert dict(content["metrics"]) == {"train_loss": 0.25, "num-examples": 12}  # Flower's weighting key
    assert "arrays" not in content  # "nothing sent" (Local) stays absent, not an empty model
    assert content_to_fit_res(content) == FitRes(arrays=None, num_examples=12, metrics={"train_loss": 0.25})

    state = RecordDict()
    save_client_state(state, {"personal": arrays})
    assert list(load_client_state(state)) == ["personal"]
    save_client_state(state, {})  # the client dropped its personal model: so does context.state
    assert load_client_state(state) == {}


@pytest.fixture
def task_identity(monkeypatch):
    """What a Flower runtime sets for its process before any Message is created (run_simulation does too)."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value)


class InProcessGrid:
    """Delivers messages to a ClientApp in this process, one Context per node, as Flower's engine does;
    ``lost`` nodes never answer a ``train`` message (a site that went down mid-round)."""

    def __init__(self, app: ClientApp, partitions: dict[int, int], lost: frozenset[int] = frozenset()) -> None:
        self.app, self.lost = app, lost
        self.contexts = {node: Context(run_id=1, node_id=node, node_config={"partition-id": pid},
                                       state=RecordDict(), run_config={}) for node, pid in partitions.items()}

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages) -> list[str]:
        """Delivered at once; the replies wait for ``pull_messages`` (Flower's Grid contract)."""
        self.replies = getattr(self, "replies", {})
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # what pushing a message to a SuperLink sets
            for reply in self.send_and_receive([msg]):
                self.replies[msg.object_id] = reply
            ids.append(msg.object_id)
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self.lost and msg.metadata.message_type == MessageType.TRAIN:
                continue
            try:
                replies.append(self.app(msg, self.contexts[node]))
            except Exception as error:  # noqa: BLE001 - what a SuperNode turns an exception into
                replies.append(Message(Error(code=1, reason=f"{type(error).__name__}: {error}"), reply_to=msg))
        return replies


def test_nodes_are_mapped_to_clients_and_a_lost_node_is_dropped_from_the_round(tmp_path, caplog, task_identity):
    overrides = [*TINY, *store(tmp_path)]
    setup = build_federated(compose_federate(overrides))
    # random node ids, partition ids out of order, and one node whose partition-id has no client
    grid = InProcessGrid(make_client_app(overrides), {901: 2, 17: 0, 5555: 1, 42: 3}, lost=frozenset({5555}))
    nodes = discover_nodes(grid, setup.federation, timeout=60)
    assert nodes == {"d0": 17, "d1": 5555, "d2": 901}
    assert "node 42 is left out" in caplog.text and "partition-id=3" in caplog.text

    runner = setup.simulation.with_transport(FlowerTransport(grid, nodes, round_timeout=1.0))  # the lost node: 1 s
    assert runner.client_ids == ["d0", "d1", "d2"] and runner.clients == {}  # the states live on the nodes
    metrics = runner.run_round()
    assert metrics["round/clients_sampled"] == 3 and metrics["round/clients_ok"] == 2
    assert metrics["round/clients_failed"] == 1 and metrics["round/aggregated"] == 1
    (failure,) = runner.state.failures
    assert failure["client"] == "d1" and failure["phase"] == "fit" and "no reply" in failure["error"]
    assert set(k for k in metrics if k.startswith("client/")) == {"client/d0/auc_mean", "client/d2/auc_mean"}
    assert "m3oe.personal" in grid.contexts[17].state and "m3oe.personal" not in grid.contexts[5555].state


def test_nodes_of_a_different_run_are_refused(tmp_path, task_identity):
    setup = build_federated(compose_federate([*TINY, *store(tmp_path)]))
    other = make_client_app([*TINY, *store(tmp_path), "data.rows=1400"])  # another data set: other row counts
    with pytest.raises(UserInputError, match="composed different settings"):
        discover_nodes(InProcessGrid(other, {1: 0}), setup.federation, timeout=60)


def test_pyproject_declares_the_flower_app_as_the_installed_flwr_requires():
    config = get_project_config(REPO_ROOT)  # pyproject.toml, read as Flower reads it
    valid, errors, _ = validate_config(config, check_module=True, project_dir=REPO_ROOT)  # what `flwr run .` checks
    assert valid, errors
    assert config["tool"]["flwr"]["app"]["config"] == RUN_CONFIG_DEFAULTS  # Python-API runs use the copy in code
