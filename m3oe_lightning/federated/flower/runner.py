"""The server side of the Flower transport: node discovery and a round's delivery through a ``Grid``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federated.flower.records import (
    CONFIG,
    INFO,
    PARTITION_ID,
    content_to_evaluate_res,
    content_to_fit_res,
    evaluate_ins_to_content,
    fit_ins_to_content,
    site_seconds,
)
from m3oe_lightning.federated.messages import EvaluateIns, EvaluateRes, FitIns, FitRes, Metrics
from m3oe_lightning.federated.partition import Federation
from m3oe_lightning.federated.simulation import Client, FailureCallback

log = logging.getLogger(__name__)
Reply = TypeVar("Reply", FitRes, EvaluateRes)
ROUND_TIMEOUT_S = 3600.0  # seconds to wait for a round's replies when federated.client_timeout is null


class FlowerTransport:
    """A :class:`~m3oe_lightning.federated.simulation.Transport` whose clients are Flower nodes: each phase
    of a round is one ``Grid.send_and_receive`` (all sampled nodes work in parallel).

    Args:
        grid: the ServerApp's grid.
        nodes: client id → Flower node id, in the federation's client order (:func:`discover_nodes`).
        round_timeout: seconds to wait for the replies of one phase when the run has no ``client_timeout``
            (with one, replies later than it are dropped: it is also sent as ``deadline_s`` so a client
            stops its local training in time).
    """

    def __init__(self, grid: Grid, nodes: Mapping[str, int], *, round_timeout: float = ROUND_TIMEOUT_S) -> None:
        self.grid = grid
        self.nodes = dict(nodes)
        self.round_timeout = float(round_timeout)
        self.compute_s: dict[int, dict[str, float]] = {}  # round -> client -> the node's own seconds (fit + evaluate)

    @property
    def client_ids(self) -> list[str]:
        return list(self.nodes)

    @property
    def local_clients(self) -> Mapping[str, Client]:
        return {}  # the clients' persistent states live in the nodes' context.state

    def round_metrics(self, server_round: int) -> Metrics:
        """``time/site_compute_max_s``: the slowest node's own compute in this round (fit + evaluate), so that
        ``time/round_s`` minus it is what the deployment itself cost."""
        seconds = self.compute_s.pop(server_round, {})
        return {"time/site_compute_max_s": max(seconds.values())} if seconds else {}

    def fit(self, server_round: int, instructions: Mapping[str, FitIns], *, timeout: float | None,
            fail: FailureCallback) -> dict[str, FitRes]:
        contents = {cid: fit_ins_to_content(ins) for cid, ins in instructions.items()}
        replies = self._round_trip(server_round, "fit", MessageType.TRAIN, contents, timeout, fail)
        return self._convert(server_round, "fit", replies, content_to_fit_res, fail)

    def evaluate(self, server_round: int, instructions: Mapping[str, EvaluateIns], *, timeout: float | None,
                 fail: FailureCallback) -> dict[str, EvaluateRes]:
        contents = {cid: evaluate_ins_to_content(ins) for cid, ins in instructions.items()}
        replies = self._round_trip(server_round, "evaluate", MessageType.EVALUATE, contents, timeout, fail)
        return self._convert(server_round, "evaluate", replies, content_to_evaluate_res, fail)

    def _round_trip(self, server_round: int, phase: str, message_type: str, contents: Mapping[str, RecordDict],
                    timeout: float | None, fail: FailureCallback) -> dict[str, RecordDict]:
        """Send each client its content; the replies' contents by client id (failures reported)."""
        wait = float(timeout) if timeout is not None else self.round_timeout
        messages = [Message(content, dst_node_id=self.nodes[cid], message_type=message_type,
                            group_id=str(server_round)) for cid, content in contents.items()]
        client_of = {node: cid for cid, node in self.nodes.items()}
        received: dict[str, RecordDict] = {}
        failed: set[str] = set()
        for reply in self.grid.send_and_receive(messages, timeout=wait):
            cid = client_of.get(reply.metadata.src_node_id)
            if cid is None or cid not in contents:
                continue
            if reply.has_error():
                fail(server_round, phase, cid, f"node {self.nodes[cid]}: {reply.error.reason}")
                failed.add(cid)
            else:
                received[cid] = reply.content
                spent = self.compute_s.setdefault(server_round, {})
                spent[cid] = spent.get(cid, 0.0) + site_seconds(reply.content)
        for cid in contents:
            if cid not in received and cid not in failed:
                fail(server_round, phase, cid, f"no reply within {wait:g} s")
        return {cid: received[cid] for cid in contents if cid in received}  # instruction order, as in-process

    @staticmethod
    def _convert(server_round: int, phase: str, contents: Mapping[str, RecordDict],
                 convert: Callable[[RecordDict], Reply], fail: FailureCallback) -> dict[str, Reply]:
        out: dict[str, Reply] = {}
        for cid, content in contents.items():
            try:
                out[cid] = convert(content)
            except Exception as error:  # noqa: BLE001 - a malformed reply drops that client, not the round
                fail(server_round, phase, cid, f"malformed reply ({type(error).__name__}: {error})")
        return out


def discover_nodes(grid: Grid, federation: Federation, timeout: float) -> dict[str, int]:
    """Client id → node id for every training client, asking each node which client it is.

    Node ids are random; only a node knows its ``partition-id``. Nodes that join late are asked when
    they appear (cross-silo sites start at different times). A node whose client id or training-row
    count differs from the server's federation composed a different run (other data, seed or
    partition settings): that is an error, not something to train on.
    """
    client_ids = [c.client_id for c in federation.clients]
    rows = {c.client_id: len(c.data.train) for c in federation.clients}
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
