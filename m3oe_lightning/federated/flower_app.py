"""The Flower adapter: the same clients and strategies as the in-process simulation, as a Flower app.

DESIGN.md, property 5: algorithms live in :class:`~.client.MDMTClient` and the strategies; the
simulation runner and Flower are only two ways of moving their messages. This module converts at the
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
  node ids to client ids, and runs :func:`m3oe_lightning.federate.federate` with a
  :class:`FlowerRunner`: a :class:`~.simulation.Simulation` whose only difference is that
  ``fit_clients`` / ``evaluate_clients`` are one ``Grid.send_and_receive`` each. Sampling, PAGE's
  agents, aggregation, server evaluation, failure accounting, per-round metrics, checkpoints and
  MLflow logging are therefore the simulation's code, not a copy. (Flower's Message-API
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
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import flwr
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federate import federate
from m3oe_lightning.federated.client import MDMTClient
from m3oe_lightning.federated.factory import FederatedSetup, build_federated
from m3oe_lightning.federated.messages import Arrays, EvaluateIns, EvaluateRes, FitIns, FitRes, Metrics
from m3oe_lightning.federated.simulation import EvaluateFn, Simulation
from m3oe_lightning.federated.strategies.base import Strategy
from m3oe_lightning.train import CONF_DIR

log = logging.getLogger(__name__)
Reply = TypeVar("Reply", FitRes, EvaluateRes)

# Record keys: Flower's conventions (its FedAvg reads "arrays", "config", and weights by "num-examples").
ARRAYS, CONFIG, METRICS, INFO = "arrays", "config", "metrics", "info"
NUM_EXAMPLES = "num-examples"
PARTITION_ID = "partition-id"
STATE_PREFIX = "m3oe."  # context.state keys holding MDMTClient.state_dict() entries

# The run config (pyproject.toml [tool.flwr.app.config] holds the same defaults; `flwr run` only accepts
# overrides of keys listed there, and Python-API simulations get an empty run config, hence the copy here).
RUN_CONFIG_DEFAULTS: dict[str, str | float] = {
    "hydra-overrides": "",   # Hydra overrides for conf/federate.yaml, shell-quoted, space-separated
    "node-timeout": 600.0,   # seconds the server waits for a node per training client (and their answers)
    "round-timeout": 3600.0,  # seconds to wait for replies in a round when federated.client_timeout is null
}


# ------------------------------------------------------------------------------------ conversions
def arrays_to_record(arrays: Mapping[str, Any]) -> ArrayRecord:
    """A state dict → ``ArrayRecord`` (dtypes, shapes and values kept exactly)."""
    return ArrayRecord(torch_state_dict=dict(arrays))


def record_to_arrays(record: ArrayRecord) -> Arrays:
    """``ArrayRecord`` → a plain state dict of tensors."""
    return dict(record.to_torch_state_dict())


def _metric_record(metrics: Mapping[str, float], num_examples: int) -> MetricRecord:
    return MetricRecord({**{key: float(value) for key, value in metrics.items()}, NUM_EXAMPLES: int(num_examples)})


def _split_metrics(record: MetricRecord) -> tuple[int, Metrics]:
    values = dict(record)
    if NUM_EXAMPLES not in values:
        raise ValueError(f"reply metrics lack {NUM_EXAMPLES!r}")
    num_examples = int(values.pop(NUM_EXAMPLES))
    return num_examples, {key: float(value) for key, value in values.items()}


def _instruction_content(arrays: Arrays | None, config: Mapping[str, Any]) -> RecordDict:
    content = RecordDict({CONFIG: ConfigRecord(dict(config))})
    if arrays is not None:  # "no model sent" (Local, personal evaluation) is an absent record, not an empty one
        content[ARRAYS] = arrays_to_record(arrays)
    return content


def _instruction_parts(content: RecordDict) -> tuple[Arrays | None, dict[str, Any]]:
    arrays = record_to_arrays(content.array_records[ARRAYS]) if ARRAYS in content.array_records else None
    config = dict(content.config_records[CONFIG]) if CONFIG in content.config_records else {}
    return arrays, config


def fit_ins_to_content(ins: FitIns) -> RecordDict:
    return _instruction_content(ins.arrays, ins.config)


def content_to_fit_ins(content: RecordDict) -> FitIns:
    arrays, config = _instruction_parts(content)
    return FitIns(arrays=arrays, config=config)


def evaluate_ins_to_content(ins: EvaluateIns) -> RecordDict:
    return _instruction_content(ins.arrays, ins.config)


def content_to_evaluate_ins(content: RecordDict) -> EvaluateIns:
    arrays, config = _instruction_parts(content)
    return EvaluateIns(arrays=arrays, config=config)


def fit_res_to_content(res: FitRes) -> RecordDict:
    content = RecordDict({METRICS: _metric_record(res.metrics, res.num_examples)})
    if res.arrays is not None:
        content[ARRAYS] = arrays_to_record(res.arrays)
    return content


def content_to_fit_res(content: RecordDict) -> FitRes:
    num_examples, metrics = _split_metrics(content.metric_records[METRICS])
    arrays = record_to_arrays(content.array_records[ARRAYS]) if ARRAYS in content.array_records else None
    return FitRes(arrays=arrays, num_examples=num_examples, metrics=metrics)


def evaluate_res_to_content(res: EvaluateRes) -> RecordDict:
    return RecordDict({METRICS: _metric_record(res.metrics, res.num_examples)})


def content_to_evaluate_res(content: RecordDict) -> EvaluateRes:
    num_examples, metrics = _split_metrics(content.metric_records[METRICS])
    return EvaluateRes(num_examples=num_examples, metrics=metrics)


def save_client_state(state: RecordDict, client_state: Mapping[str, Arrays]) -> None:
    """Write ``MDMTClient.state_dict()`` into ``context.state`` (entries it no longer has are removed)."""
    for key in [k for k in state.array_records if k.startswith(STATE_PREFIX)]:
        if key[len(STATE_PREFIX):] not in client_state:
            del state[key]
    for name, arrays in client_state.items():
        state[STATE_PREFIX + name] = arrays_to_record(arrays)


def load_client_state(state: RecordDict) -> dict[str, Arrays]:
    """``context.state`` → the ``MDMTClient.load_state_dict`` argument (``{}`` on a node's first message)."""
    return {key[len(STATE_PREFIX):]: record_to_arrays(record)
            for key, record in state.array_records.items() if key.startswith(STATE_PREFIX)}


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
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="federate", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _setting(run_config: Mapping[str, Any], key: str) -> float:
    value = run_config.get(key, RUN_CONFIG_DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UserInputError(f"run config {key}={value!r}: use a positive number of seconds")
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
class FlowerRunner(Simulation):
    """A :class:`Simulation` whose clients are Flower nodes: each phase of a round is one
    ``Grid.send_and_receive`` (all sampled nodes work in parallel); the rest is the simulation's code.

    Args:
        grid: the ServerApp's grid.
        nodes: client id → Flower node id, in the federation's client order (:func:`discover_nodes`).
        round_timeout: seconds to wait for the replies of one phase when ``client_timeout`` is ``None``.
        Others: :class:`Simulation` (``client_timeout``: replies later than this are dropped; it is also
        sent as ``deadline_s`` so a client stops its local training in time).
    """

    def __init__(self, grid: Grid, nodes: Mapping[str, int], strategy: Strategy, *, initial_arrays: Arrays | None,
                 evaluate_fn: EvaluateFn | None = None, client_timeout: float | None = None,
                 round_timeout: float = float(RUN_CONFIG_DEFAULTS["round-timeout"])) -> None:
        super().__init__(strategy, {}, initial_arrays=initial_arrays, evaluate_fn=evaluate_fn,
                         client_timeout=client_timeout)
        self.grid = grid
        self.nodes = dict(nodes)
        self.client_ids = list(self.nodes)
        self.timeout = float(client_timeout) if client_timeout is not None else float(round_timeout)

    def _round_trip(self, server_round: int, phase: str, message_type: str,
                    contents: Mapping[str, RecordDict]) -> dict[str, RecordDict]:
        """Send each client its content; the replies' contents by client id (failures recorded)."""
        messages = [Message(content, dst_node_id=self.nodes[cid], message_type=message_type,
                            group_id=str(server_round)) for cid, content in contents.items()]
        client_of = {node: cid for cid, node in self.nodes.items()}
        received: dict[str, RecordDict] = {}
        failed: set[str] = set()
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout):
            cid = client_of.get(reply.metadata.src_node_id)
            if cid is None or cid not in contents:
                continue
            if reply.has_error():
                self._fail(server_round, phase, cid, f"node {self.nodes[cid]}: {reply.error.reason}")
                failed.add(cid)
            else:
                received[cid] = reply.content
        for cid in contents:
            if cid not in received and cid not in failed:
                self._fail(server_round, phase, cid, f"no reply within {self.timeout:g} s")
        return {cid: received[cid] for cid in contents if cid in received}  # instruction order, as in-process

    def _convert(self, server_round: int, phase: str, contents: Mapping[str, RecordDict],
                 convert: Callable[[RecordDict], Reply]) -> dict[str, Reply]:
        out: dict[str, Reply] = {}
        for cid, content in contents.items():
            try:
                out[cid] = convert(content)
            except Exception as error:  # noqa: BLE001 - a malformed reply drops that client, not the round
                self._fail(server_round, phase, cid, f"malformed reply ({type(error).__name__}: {error})")
        return out

    def fit_clients(self, server_round: int, instructions: dict[str, FitIns]) -> dict[str, FitRes]:
        contents = {cid: fit_ins_to_content(ins) for cid, ins in instructions.items()}
        replies = self._round_trip(server_round, "fit", MessageType.TRAIN, contents)
        return self._convert(server_round, "fit", replies, content_to_fit_res)

    def evaluate_clients(self, server_round: int, instructions: dict[str, EvaluateIns]) -> dict[str, EvaluateRes]:
        contents = {cid: evaluate_ins_to_content(ins) for cid, ins in instructions.items()}
        replies = self._round_trip(server_round, "evaluate", MessageType.EVALUATE, contents)
        return self._convert(server_round, "evaluate", replies, content_to_evaluate_res)


def discover_nodes(grid: Grid, setup: FederatedSetup, timeout: float) -> dict[str, int]:
    """Client id → node id for every training client, asking each node which client it is.

    Node ids are random; only a node knows its ``partition-id``. Nodes that join late are asked when
    they appear (cross-silo sites start at different times). A node whose client id or training-row
    count differs from the server's federation composed a different run (other data, seed or
    partition settings): that is an error, not something to train on.
    """
    client_ids = list(setup.simulation.clients)
    rows = {c.client_id: len(c.data.train) for c in setup.federation.clients}
    deadline = time.monotonic() + timeout
    nodes: dict[str, int] = {}
    asked: set[int] = set()
    while len(nodes) < len(client_ids):
        new = [node for node in grid.get_node_ids() if node not in asked]
        if new:
            asked.update(new)
            queries = [Message(RecordDict({CONFIG: ConfigRecord({})}), dst_node_id=node,
                               message_type=MessageType.QUERY, group_id="discover") for node in new]
            for reply in grid.send_and_receive(queries, timeout=max(1.0, deadline - time.monotonic())):
                node = reply.metadata.src_node_id
                if reply.has_error():
                    log.warning("node %d is left out: %s", node, reply.error.reason)
                    continue
                info = reply.content.config_records[INFO]
                cid, n = str(info["client-id"]), int(info["train-rows"])
                if cid not in rows or rows[cid] != n:
                    raise UserInputError(
                        f"node {node} ({PARTITION_ID}={info[PARTITION_ID]}) is client {cid} with {n} training rows, "
                        f"but the server's federation has {rows}: the node composed different settings (pass the "
                        f"same hydra-overrides and data to every node)")
                if cid in nodes:
                    raise UserInputError(f"nodes {nodes[cid]} and {node} both are client {cid} ({PARTITION_ID}="
                                         f"{info[PARTITION_ID]}): give each node its own {PARTITION_ID}")
                nodes[cid] = node
                log.info("node %d is client %s (%s=%s)", node, cid, PARTITION_ID, info[PARTITION_ID])
        if len(nodes) < len(client_ids):
            if time.monotonic() > deadline:
                missing = [cid for cid in client_ids if cid not in nodes]
                raise TimeoutError(f"after {timeout:g} s no node answered for client(s) {missing} "
                                   f"({PARTITION_ID} {[client_ids.index(c) for c in missing]}); "
                                   f"{len(asked)} node(s) connected")
            time.sleep(0.5)
    return {cid: nodes[cid] for cid in client_ids}


def run_server(grid: Grid, context: Context, base: Sequence[str] = ()) -> Metrics:
    """The ServerApp's main: compose, build, map nodes, then the entry point's run with a FlowerRunner."""
    overrides = overrides_from(context.run_config, base)
    cfg = compose_federate(overrides)
    if cfg.federated.get("resume"):
        raise UserInputError("federated.resume=true is not supported under Flower: the clients' persistent "
                             "states live on the nodes, not in the server's checkpoint")
    setup = build_federated(cfg)  # every settings error is raised here, before any node is contacted
    nodes = discover_nodes(grid, setup, _setting(context.run_config, "node-timeout"))
    sim = setup.simulation
    runner = FlowerRunner(grid, nodes, sim.strategy, initial_arrays=sim.state.global_arrays,
                          evaluate_fn=sim.evaluate_fn, client_timeout=sim.client_timeout,
                          round_timeout=_setting(context.run_config, "round-timeout"))
    tags = {"runtime": f"flower {flwr.__version__}",
            "command": " ".join(["flwr run", f"hydra-overrides={shlex.join(overrides)!r}"])}
    return federate(cfg, setup=replace(setup, simulation=runner), extra_tags=tags)


def make_server_app(overrides: Sequence[str] = ()) -> ServerApp:
    """A ServerApp running the ``federate`` entry point's run over Flower nodes (see :func:`run_server`)."""
    base = tuple(overrides)
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, context, base)

    return app


clientapp = make_client_app()  # pyproject.toml [tool.flwr.app.components]
serverapp = make_server_app()
