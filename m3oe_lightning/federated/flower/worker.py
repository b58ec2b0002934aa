"""A site's long-lived ClientApp worker: Flower's task runner, minus a process per message.

Why: under a SuperNode's default ``--isolation subprocess`` every message (each round's ``train`` and
``evaluate``, and the discovery ``query``) starts a fresh ``flwr-clientapp`` process, which imports
torch, Lightning and this package and loads and encodes the site's data before it trains for a second:
tens of seconds per round on a small machine (``experiments/bench/deployment.md``). With the SuperNode
started with ``--isolation process`` Flower expects *some* other process to take its tasks; Flower's own
``flower-superexec`` again spawns one process per task. This worker takes them itself and runs each in
this process: the imports are paid once per site, and the node's encoded data and built client stay
cached between messages (``flower_app``'s per-process cache), so a round costs its training plus the
message transfers.

What it does per task is what Flower's ``flwr-clientapp`` does (pull the task's message and context
from the SuperNode's runtime API, call the ClientApp, push the reply and the updated context, send task
heartbeats meanwhile), with three differences, all deliberate: the ClientApp is the one installed at
the site (the run's FAB is not installed: a site runs the code it audited, the same commit as the
coordinator's); a failing task becomes an error reply and the worker keeps serving (Flower's process
would exit); a heartbeat refused by the SuperNode ends that task, not the worker (Flower's sender raises
SIGINT in its process). It relies on Flower's runtime-API client and task helpers, which are internal:
pinned with ``flwr==1.41.0`` in pyproject.toml, and exercised end to end by
tests/integration/test_flower_sites.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
    SendTaskHeartbeatRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

log = logging.getLogger(__name__)
POLL_INTERVAL_S = 0.05  # between task polls of the local SuperNode (Flower's own SuperExec polls every 1 s)
# A task is handed out when its message's header has arrived, possibly before its arrays have: the pull of
# its parts is retried. Flower's ClientApp backs off from 1 s up to 10 s (1 + 2 + 4 s lost on a model of a
# few hundred kB); these bounds keep the wait near the transfer time.
PULL_BACKOFF_S, PULL_BACKOFF_CAP_S = 0.02, 0.5


@dataclass
class WorkerStats:
    """What the worker did (the site's log and the latency bench read it)."""

    tasks: int = 0
    failed: int = 0
    seconds_in_tasks: float = 0.0


def _runtime_client(address: str, *, insecure: bool, root_certificates: bytes | None, component: str,
                    token: str | None = None) -> RuntimeHttpClient:
    interceptors: list = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=insecure,
                                                 root_certificates=root_certificates, interceptors=interceptors,
                                                 retry_invoker=make_simple_http_retry_invoker())


def _heartbeat(client: RuntimeHttpClient, refused: threading.Event) -> Callable[[], bool]:
    """Flower's task heartbeat without its SIGINT: a refusal (the run was stopped) marks this task only."""
    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            reply = client.SendTaskHeartbeat(request)
        except httpx.HTTPError:
            return False  # retried with back-off by the sender
        if not reply.success:
            refused.set()
        return True

    return beat


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context]:
    """The task's message and node context from the SuperNode (the message's parts pulled with short back-off)."""
    task = client.PullTaskInput(PullTaskInputRequest())
    # who this process is working for, as Flower's ClientApp process records it before creating any Message
    TaskIdentity.task_id, TaskIdentity.run_id = task.task_id, task.run.run_id
    TaskIdentity.node_id = task.context.node_id
    context = context_from_proto(task.context)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode handed out a task without a message")
    tree = pulled.message_object_trees[0]
    node = Node(node_id=context.node_id)
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=PULL_BACKOFF_S, backoff_cap=PULL_BACKOFF_CAP_S)
    message.metadata.__dict__["_message_id"] = tree.object_id  # a deflated message does not carry its own id
    return message, context


def run_task(address: str, token: str, app: ClientApp, *, insecure: bool = True,
             root_certificates: bytes | None = None) -> bool:
    """Run one acquired task (its ``token``) through ``app`` in this process; True when it completed."""
    client = _runtime_client(address, insecure=insecure, root_certificates=root_certificates,
                             component="flwr-clientapp", token=token)
    refused = threading.Event()
    heartbeat = HeartbeatSender(_heartbeat(client, refused))
    heartbeat.start()
    context = message = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    try:
        message, context = pull_task_input(client)
        reply = app(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as error:  # noqa: BLE001 - a failing task is the server's failed client, not a dead site
        log.exception("task failed")
        details = f"{type(error)}:<'{error}'>"
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None and not refused.is_set():
                push_message(client, reply, context)
            push_task_output(client=client, context=context, sub_status=status, details=details)
        except httpx.HTTPError as error:
            log.error("could not hand the reply back to the SuperNode: %s", error)
            status = SubStatus.FAILED
        heartbeat.stop()
        client.close()
    return status == SubStatus.COMPLETED


def serve(address: str, app: ClientApp, *, stop: threading.Event, insecure: bool = True,
          root_certificates: bytes | None = None, poll_interval: float = POLL_INTERVAL_S,
          stats: WorkerStats | None = None) -> WorkerStats:
    """Take the SuperNode's ClientApp tasks (runtime API at ``address``) one at a time until ``stop`` is set."""
    stats = stats if stats is not None else WorkerStats()
    acquirer = _runtime_client(address, insecure=insecure, root_certificates=root_certificates,
                               component="SuperExec")
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[])
    try:
        while not stop.is_set():
            try:
                acquired = acquirer.AcquireTask(request)
            except httpx.HTTPError as error:  # the SuperNode restarting: wait for it
                log.warning("SuperNode runtime API at %s: %s; retrying", address, error)
                stop.wait(1.0)
                continue
            if not (acquired.HasField("task") and acquired.token):
                stop.wait(poll_interval)
                continue
            start = time.perf_counter()
            completed = run_task(address, acquired.token, app, insecure=insecure,
                                 root_certificates=root_certificates)
            seconds = time.perf_counter() - start
            stats.tasks += 1
            stats.failed += 0 if completed else 1
            stats.seconds_in_tasks += seconds
            log.info("task %d %s in %.2f s", acquired.task.task_id, "done" if completed else "FAILED", seconds)
    finally:
        acquirer.close()
    return stats
