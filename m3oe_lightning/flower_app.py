"""The Flower adapter: the same clients and strategies as the in-process simulation, as a Flower app.

docs/design.md, property 5: algorithms live in :class:`~.client.MDMTClient` and the strategies; the
in-process transport and Flower are only two ways of moving their messages. This module converts at the
boundary and nothing else:

* **ClientApp** (:func:`make_client_app`, module attribute :data:`clientapp`): a ``train`` message's
  ``ArrayRecord``/``ConfigRecord`` become a :class:`~.messages.FitIns`, the node's
  :class:`~.client.MDMTClient` runs ``fit`` and the :class:`~.messages.FitRes` goes back as
  ``{"arrays": ArrayRecord, "metrics": MetricRecord}`` with the training rows under ``num-examples``
  (the key Flower's own aggregation weights by). ``evaluate`` likewise. The client's persistent state
  (:meth:`~.client.MDMTClient.state_dict`: the personalized model, which Ditto, Local and
  ``federated.personal`` build on) lives in ``context.state`` between rounds, because Flower may
  create a fresh ClientApp (and a fresh process) for every message. A ``query`` message answers
  which client the node is, so the server can address clients by id.
* **ServerApp** (:func:`make_server_app`, module attribute :data:`serverapp`): builds the run exactly
  as ``m3oe-federate`` does (:func:`~m3oe_lightning.federated.factory.build_federated`), maps Flower
  node ids to client ids, and runs the tracked run of ``m3oe-federate``
  (:func:`m3oe_lightning.tracking.federation.run_federation`) with the simulation's transport swapped
  for a :class:`~m3oe_lightning.federated.flower.runner.FlowerTransport`: each phase of a round is one
  ``Grid.send_and_receive``. Sampling, PAGE's agents, aggregation, server evaluation, failure
  accounting, per-round metrics, checkpoints and MLflow logging are therefore the simulation's code,
  not a copy. (Flower's Message-API
  ``Strategy.start`` was not used: its loop evaluates round 0, has no per-round callback to log
  from, and splits metrics into three histories; our strategies also need client ids, not node ids.)

Both apps are built from the ``federate`` Hydra config: the run config key ``hydra-overrides`` (a
shell-quoted string of Hydra overrides, e.g. ``"data=synthetic federated=page federated.rounds=5"``)
is composed onto ``conf/federate.yaml`` on the server and on every node. A node is the training
client ``federation.clients[partition-id]`` (``context.node_config["partition-id"]``): every node
builds the same partition from the same data and seed and keeps its own part (the server checks the
client id and the training-row count each node reports). Not supported here: ``federated.resume``
(client states live on the nodes, not in the server's checkpoint).
"""

from __future__ import annotations

import functools
import logging
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import flwr
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig

from m3oe_lightning.config import compose
from m3oe_lightning.errors import UserInputError, check_number
from m3oe_lightning.federated.client import MDMTClient
from m3oe_lightning.federated.factory import FederatedSetup, build_federated
from m3oe_lightning.federated.flower.records import (
    INFO,
    PARTITION_ID,
    content_to_evaluate_ins,
    content_to_fit_ins,
    evaluate_res_to_content,
    fit_res_to_content,
    load_client_state,
    save_client_state,
)
from m3oe_lightning.federated.flower.runner import FlowerTransport, discover_nodes
from m3oe_lightning.federated.messages import Metrics
from m3oe_lightning.tracking.federation import run_federation

log = logging.getLogger(__name__)


# The run config (pyproject.toml [tool.flwr.app.config] holds the same defaults; `flwr run` only accepts
# overrides of keys listed there, and Python-API simulations get an empty run config, hence the copy here).
RUN_CONFIG_DEFAULTS: dict[str, str | float] = {
    "hydra-overrides": "",   # Hydra overrides for conf/federate.yaml, shell-quoted, space-separated
    "node-timeout": 600.0,   # seconds the server waits for a node per training client (and their answers)
    "round-timeout": 3600.0,  # seconds to wait for replies in a round when federated.client_timeout is null
}


# ------------------------------------------------------------------------------------------ config
def overrides_from(run_config: Mapping[str, Any], base: Sequence[str] = ()) -> list[str]:
    """``base`` (given when the app was made) followed by the run config's ``hydra-overrides`` (later wins)."""
    extra = run_config.get("hydra-overrides", RUN_CONFIG_DEFAULTS["hydra-overrides"])
    if not isinstance(extra, str):
        raise UserInputError(f"run config hydra-overrides={extra!r}: use a string of Hydra overrides")
    return [*base, *shlex.split(extra)]


def compose_federate(overrides: Sequence[str]) -> DictConfig:
    """The ``federate`` config as ``python -m m3oe_lightning.federate <overrides>`` would compose it.

    The Hydra runtime is set too, because the config interpolates ``${hydra:...}`` (the output dir).
    """
    return compose("federate", overrides, runtime=True)


def _setting(run_config: Mapping[str, Any], key: str) -> float:
    """A run-config timeout in seconds (``flwr run --run-config``), checked."""
    value = run_config.get(key, RUN_CONFIG_DEFAULTS[key])
    check_number(f"run config {key}", value, low=0, low_open=True)
    return float(value)


# ------------------------------------------------------------------------------------- client side
@functools.lru_cache(maxsize=2)
def _federation_for(overrides: tuple[str, ...]) -> FederatedSetup:
    """The run as a node builds it, once per process: the Ray backend keeps its worker processes
    between messages, so only the first message of a run pays for loading and partitioning the data."""
    return build_federated(compose_federate(overrides))


def node_client(context: Context, base: Sequence[str] = ()) -> MDMTClient:
    """This node's client (``federation.clients[partition-id]``), its persistent state loaded from
    ``context.state`` (the cached object may have served another node or be stale)."""
    setup = _federation_for(tuple(overrides_from(context.run_config, base)))
    client_ids = list(setup.simulation.clients)
    if PARTITION_ID not in context.node_config:
        raise ValueError(f"node config has no {PARTITION_ID!r}: start the SuperNode with "
                         f"--node-config \"{PARTITION_ID}=<0..{len(client_ids) - 1}>\"")
    partition_id = int(context.node_config[PARTITION_ID])
    if not 0 <= partition_id < len(client_ids):
        raise ValueError(f"{PARTITION_ID}={partition_id}, but this federation has {len(client_ids)} training "
                         f"client(s) {client_ids}: use 0..{len(client_ids) - 1}")
    client = setup.simulation.clients[client_ids[partition_id]]
    assert isinstance(client, MDMTClient)
    client.load_state_dict(load_client_state(context.state))
    return client


def make_client_app(overrides: Sequence[str] = ()) -> ClientApp:
    """A ClientApp running :class:`MDMTClient` on this node's partition.

    ``overrides``: Hydra overrides applied before the run config's ``hydra-overrides`` (for
    ``flwr.simulation.run_simulation``, whose run config is empty).
    """
    base = tuple(overrides)
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        client = node_client(context, base)
        reply = client.fit(content_to_fit_ins(msg.content))
        save_client_state(context.state, client.state_dict())  # not reached on failure: state stays as it was
        return Message(fit_res_to_content(reply), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        client = node_client(context, base)
        reply = client.evaluate(content_to_evaluate_ins(msg.content))
        return Message(evaluate_res_to_content(reply), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Which client this node is (the server maps node ids to client ids with it)."""
        client = node_client(context, base)
        info = ConfigRecord({"client-id": client.client_id, PARTITION_ID: int(context.node_config[PARTITION_ID]),
                             "train-rows": len(client.data.train)})
        return Message(RecordDict({INFO: info}), reply_to=msg)

    return app


# ------------------------------------------------------------------------------------- server side
def run_server(grid: Grid, context: Context, base: Sequence[str] = ()) -> Metrics:
    """The ServerApp's main: compose, build, map nodes, then the tracked run delivered through the Grid."""
    overrides = overrides_from(context.run_config, base)
    cfg = compose_federate(overrides)
    if cfg.federated.get("resume"):
        raise UserInputError("federated.resume=true is not supported under Flower: the clients' persistent "
                             "states live on the nodes, not in the server's checkpoint")
    setup = build_federated(cfg)  # every settings error is raised here, before any node is contacted
    nodes = discover_nodes(grid, setup.federation, _setting(context.run_config, "node-timeout"))
    transport = FlowerTransport(grid, nodes, round_timeout=_setting(context.run_config, "round-timeout"))
    flower_setup = replace(setup, simulation=setup.simulation.with_transport(transport))
    tags = {"runtime": f"flower {flwr.__version__}",
            "command": " ".join(["flwr run", f"hydra-overrides={shlex.join(overrides)!r}"])}
    return run_federation(cfg, lambda: flower_setup, extra_tags=tags)


def make_server_app(overrides: Sequence[str] = ()) -> ServerApp:
    """A ServerApp running ``m3oe-federate``'s tracked run over Flower nodes (see :func:`run_server`)."""
    base = tuple(overrides)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, context, base)

    return app


clientapp = make_client_app()  # pyproject.toml [tool.flwr.app.components]
serverapp = make_server_app()
