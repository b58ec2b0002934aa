"""The server side of the Flower transport: node discovery and a round's delivery through a ``Grid``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
REPLY_POLL_S = 0.1  # between the server's polls for replies (Grid.send_and_receive waits a fixed 3 s)


def exchange(grid: Grid, messages: Sequence[Message], timeout: float, poll_s: float = REPLY_POLL_S
             ) -> list[Message | None]:
    """Push ``messages`` and collect their replies until all came or ``timeout`` seconds passed; the reply to
    each message in order (``None``: none came). What ``Grid.send_and_receive`` does, polling every ``poll_s``
    instead of every 3 s (Flower 1.41's fixed wait, up to 3 s per exchange, several exchanges a round), and
    matching replies by the message they answer (the SuperLink itself answers for a node that went offline)."""
    start = time.monotonic()
    ids = list(grid.push_messages(messages))
    waiting, replies = set(ids), {}
    deadline = start + timeout
    while waiting:
        for reply in grid.pull_messages(waiting):
            replies[reply.metadata.reply_to_message_id] = reply
            waiting.discard(reply.metadata.reply_to_message_id)
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    log.debug("%d message(s), %d repl(ies) in %.2f s", len(ids), len(replies), time.monotonic() - start)
    return [replies.get(i) for i in ids]


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

    def __init__(self, grid: Grid, nodes: Mapping[str, int], *, round_timeout: float = ROUND_TIMEOUT_S,
                 training: Sequence[str] | None = None) -> None:
        self.grid = grid
        self.nodes = dict(nodes)  # every client this run reaches (training and held-out sites)
        self.training = list(training) if training is not None else list(self.nodes)
        self.round_timeout = float(round_timeout)
        self.server_round = 0
        self.compute_s: dict[int, dict[str, float]] = {}  # round -> client -> the node's own seconds (fit + evaluate)

    @property
    def client_ids(self) -> list[str]:
        return list(self.training)

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
        self.server_round = server_round
        self.rejoin()
        contents = {cid: fit_ins_to_content(ins) for cid, ins in instructions.items()}
        replies = self._round_trip(server_round, "fit", MessageType.TRAIN, contents, timeout, fail)
        return self._convert(server_round, "fit", replies, content_to_fit_res, fail)

    def evaluate(self, server_round: int, instructions: Mapping[str, EvaluateIns], *, timeout: float | None,
                 fail: FailureCallback) -> dict[str, EvaluateRes]:
        contents = {cid: evaluate_ins_to_content(ins) for cid, ins in instructions.items()}
        replies = self._round_trip(server_round, "evaluate", MessageType.EVALUATE, contents, timeout, fail)
        return self._convert(server_round, "evaluate", replies, content_to_evaluate_res, fail)

    def evaluate_now(self, instructions: Mapping[str, EvaluateIns], *,
                     timeout: float | None = None) -> dict[str, EvaluateRes]:
        """An evaluation outside the round's own phases (scoring at the sites: the server's evaluation of the
        global model, PAGE's server validation set); a site that fails is logged and left out."""
        def fail(server_round: int, phase: str, cid: str, reason: str) -> None:
            log.warning("round %d: site %s failed to score (%s); left out of this score", server_round, cid, reason)

        return self.evaluate(self.server_round, instructions, timeout=timeout, fail=fail)

    def rejoin(self) -> None:
        """Nodes that connected since the last round answer which client they are; a client whose site came
        back (a restarted SuperNode gets a new node id) is reached at its new node from now on."""
        known = set(self.nodes.values())
        new = [node for node in self.grid.get_node_ids() if node not in known]
        if not new:
            return
        for node, info in query_nodes(self.grid, new, timeout=30.0).items():
            if isinstance(info, str):
                continue
            cid = str(info["client-id"])
            if cid in self.nodes:
                log.info("client %s rejoined at node %d (was node %d)", cid, node, self.nodes[cid])
                self.nodes[cid] = node

    def _round_trip(self, server_round: int, phase: str, message_type: str, contents: Mapping[str, RecordDict],
                    timeout: float | None, fail: FailureCallback) -> dict[str, RecordDict]:
        """Send each client its content; the replies' contents by client id (failures reported)."""
        wait = float(timeout) if timeout is not None else self.round_timeout
        messages = [Message(content, dst_node_id=self.nodes[cid], message_type=message_type,
                            group_id=str(server_round)) for cid, content in contents.items()]
        received: dict[str, RecordDict] = {}
        failed: set[str] = set()
        for cid, reply in zip(contents, exchange(self.grid, messages, wait)):
            if reply is None:
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


def query_nodes(grid: Grid, node_ids: Sequence[int], timeout: float) -> dict[int, ConfigRecord | str]:
    """Ask each node which client it is: node id → its answer (``INFO`` record), or the error it replied."""
    queries = [Message(RecordDict({CONFIG: ConfigRecord({})}), dst_node_id=node, message_type=MessageType.QUERY,
                       group_id="discover") for node in node_ids]
    answers: dict[int, ConfigRecord | str] = {}
    for node, reply in zip(node_ids, exchange(grid, queries, max(1.0, timeout))):
        if reply is not None:
            answers[node] = reply.error.reason if reply.has_error() else reply.content.config_records[INFO]
    return answers


def _discover(grid: Grid, expected: Sequence[str], timeout: float,
              accept: Callable[[int, ConfigRecord], str | None]) -> dict[str, int]:
    """Client id → node id for every ``expected`` client, asking nodes as they connect (cross-silo sites start
    at different times); ``accept(node, answer)`` checks an answer and gives its client id (``None``: left out)."""
    deadline = time.monotonic() + timeout
    nodes: dict[str, int] = {}
    asked: set[int] = set()
    while len(nodes) < len(expected):
        new = [node for node in grid.get_node_ids() if node not in asked]
        if new:
            asked.update(new)
            for node, info in query_nodes(grid, new, deadline - time.monotonic()).items():
                if isinstance(info, str):
                    log.warning("node %d is left out: %s", node, info)
                    continue
                cid = accept(node, info)
                if cid is None:
                    continue
                if cid in nodes:
                    raise UserInputError(f"nodes {nodes[cid]} and {node} both say they are client {cid}: give each "
                                         f"node its own {PARTITION_ID} (or client-id)")
                nodes[cid] = node
                log.info("node %d is client %s", node, cid)
        if len(nodes) < len(expected):
            if time.monotonic() > deadline:
                missing = [cid for cid in expected if cid not in nodes]
                raise TimeoutError(f"after {timeout:g} s no node answered for client(s) {missing}; "
                                   f"{len(asked)} node(s) connected")
            time.sleep(0.5)
    return {cid: nodes[cid] for cid in expected}


def discover_nodes(grid: Grid, federation: Federation, timeout: float) -> dict[str, int]:
    """Client id → node id for every training client of a partitioned federation.

    Node ids are random; only a node knows its ``partition-id``. A node whose client id or training-row
    count differs from the server's federation composed a different run (other data, seed or partition
    settings): that is an error, not something to train on.
    """
    rows = {c.client_id: c.num_train for c in federation.clients}

    def accept(node: int, info: ConfigRecord) -> str | None:
        cid, n = str(info["client-id"]), int(info["train-rows"])
        if cid not in rows or rows[cid] != n:
            raise UserInputError(
                f"node {node} ({PARTITION_ID}={info.get(PARTITION_ID)}) is client {cid} with {n} training rows, but "
                f"the server's federation has {rows}: the node composed different settings (pass the same "
                f"hydra-overrides and data to every node)")
        return cid

    return _discover(grid, list(rows), timeout, accept)


@dataclass
class DiscoveredSites:
    """What the listed sites answered: client id → node id, their (train, val, test) row counts, and whether
    each keeps its client state on its own disk (node config ``state-dir``)."""

    nodes: dict[str, int]
    rows: dict[str, tuple[int, int, int]]
    kept_state: dict[str, bool]


def discover_sites(grid: Grid, training: Sequence[str], heldout: Sequence[str], timeout: float) -> DiscoveredSites:
    """Every listed site (training and held-out) found by the client-id it reports; a node that is no listed
    site is left out with a warning."""
    listed = [*training, *heldout]
    rows: dict[str, tuple[int, int, int]] = {}
    kept: dict[str, bool] = {}

    def accept(node: int, info: ConfigRecord) -> str | None:
        cid = str(info["client-id"])
        if cid not in listed:
            log.warning("node %d says it is site %s, which federated.sites / heldout_sites do not list: left out",
                        node, cid)
            return None
        rows[cid] = (int(info["train-rows"]), int(info.get("val-rows", 0)), int(info.get("test-rows", 0)))
        kept[cid] = bool(info.get("state-kept", False))
        return cid

    nodes = _discover(grid, listed, timeout, accept)
    return DiscoveredSites(nodes=nodes, rows=rows, kept_state=kept)
