"""The Flower ClientApp: a node's :class:`~m3oe_lightning.federated.client.MDMTClient` behind Flower messages.

A ``train`` message's ``ArrayRecord``/``ConfigRecord`` become a :class:`~.messages.FitIns`, the node's
client runs ``fit`` and the :class:`~.messages.FitRes` goes back as ``{"arrays": ArrayRecord, "metrics":
MetricRecord}`` with the training rows under ``num-examples`` (the key Flower's own aggregation weights by);
``evaluate`` likewise. The client's persistent state (:meth:`~.client.MDMTClient.state_dict`: the
personalized model, which Ditto, Local and ``federated.personal`` build on) lives in ``context.state``
between rounds, because Flower may create a fresh ClientApp (and a fresh process) for every message. A
``query`` message answers which client the node is, so the server can address clients by id.

Which client a node is:

* a **site** holding its own data (node config ``data-path``, ``client-id``, optionally ``heldout=true`` and
  ``state-dir``; run with ``federated.partition=sites``): the client built from that file alone
  (:func:`m3oe_lightning.federated.sites.build_site`); with ``state-dir`` its persistent state is also kept
  on the site's disk after every fit (:class:`~m3oe_lightning.federated.sites.SiteStateStore`), so a run the
  coordinator resumes (``federated.resume=true``, a new Flower run) continues from it;
* otherwise ``federation.clients[partition-id]`` (``context.node_config["partition-id"]``): every node
  builds the same partition from the same data and seed and keeps its own part (an emulation of sites on
  shared data; the server checks the client id and the training-row count each node reports).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

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
    with_site_seconds,
)
from m3oe_lightning.federated.flower.run_config import compose_federate, overrides_from
from m3oe_lightning.federated.sites import SiteConfig, SiteSetup, SiteStateStore, build_site, data_override


@functools.lru_cache(maxsize=2)
def _federation_for(overrides: tuple[str, ...]) -> FederatedSetup:
    """The run as a node builds it, once per process: Flower's simulation workers and the site worker
    (:mod:`.worker`) keep their process between messages, so only a run's first message pays for loading
    and partitioning the data."""
    return build_federated(compose_federate(overrides))


@functools.lru_cache(maxsize=4)
def _site_for(overrides: tuple[str, ...], site: SiteConfig) -> tuple[SiteSetup, SiteStateStore | None]:
    """A site's client from its own file, once per process (the site worker keeps it between messages)."""
    cfg = compose_federate(overrides)
    cfg = compose_federate([*overrides, data_override(cfg.data, site.data_path)])
    store = SiteStateStore.for_run(site, cfg) if site.state_dir else None
    if store is not None and not cfg.federated.get("resume"):
        store.clear()  # a fresh run: an older run's rounds must never be mistaken for this one's
    return build_site(cfg, site), store


def node_client(context: Context, base: Sequence[str] = (), server_round: int | None = None
                ) -> tuple[MDMTClient, SiteStateStore | None]:
    """This node's client, its persistent state loaded from ``context.state`` (the cached object may have
    served another node or be stale), or on a site's first message of a run from its ``state-dir``; and the
    site's on-disk state store (``None``: an emulated node, or a site without ``state-dir``)."""
    overrides = tuple(overrides_from(context.run_config, base))
    site = SiteConfig.from_node_config(context.node_config)
    if site is not None:
        setup, store = _site_for(overrides, site)
        state = load_client_state(context.state)
        if not state and store is not None:
            state = store.load(before_round=server_round)
        setup.client.load_state_dict(state)
        return setup.client, store
    setup = _federation_for(overrides)
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
    return client, None


def make_client_app(overrides: Sequence[str] = ()) -> ClientApp:
    """A ClientApp running :class:`MDMTClient` on this node's partition.

    ``overrides``: Hydra overrides applied before the run config's ``hydra-overrides`` (for
    ``flwr.simulation.run_simulation``, whose run config is empty).
    """
    base = tuple(overrides)
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        start = time.perf_counter()
        ins = content_to_fit_ins(msg.content)
        server_round = int(ins.config.get("server_round", 0))
        client, store = node_client(context, base, server_round)
        reply = client.fit(ins)
        save_client_state(context.state, client.state_dict())  # not reached on failure: state stays as it was
        if store is not None:
            store.save(server_round, client.state_dict())
        return Message(with_site_seconds(fit_res_to_content(reply), time.perf_counter() - start), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        start = time.perf_counter()
        client, _ = node_client(context, base)
        reply = client.evaluate(content_to_evaluate_ins(msg.content))
        return Message(with_site_seconds(evaluate_res_to_content(reply), time.perf_counter() - start), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """Which client this node is (the server maps node ids to client ids with it)."""
        client, store = node_client(context, base)
        info = ConfigRecord({"client-id": client.client_id, "train-rows": len(client.data.train),
                             "val-rows": len(client.data.val), "test-rows": len(client.data.test),
                             "state-kept": store is not None})
        if PARTITION_ID in context.node_config:
            info[PARTITION_ID] = int(context.node_config[PARTITION_ID])
        return Message(RecordDict({INFO: info}), reply_to=msg)

    return app
