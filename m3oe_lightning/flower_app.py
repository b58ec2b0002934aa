"""The Flower adapter: the same clients and strategies as the in-process simulation, as a Flower app.

docs/design.md, property 5: algorithms live in :class:`~.client.MDMTClient` and the strategies; the
in-process transport and Flower are only two ways of moving their messages. This module converts at the
boundary and nothing else:

* **ClientApp** (:mod:`m3oe_lightning.federated.flower.client_app`, module attribute :data:`clientapp`): a
  node's :class:`~m3oe_lightning.federated.client.MDMTClient` behind Flower messages (its docstring says how).
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
is composed onto ``conf/federate.yaml`` on the server and on every node. Two kinds of federation:

* ``federated.partition=sites`` (:func:`sites_setup`): each site reads only its own file (node config
  ``data-path``, ``client-id``); the server builds the model from the feature specification, finds the
  listed sites by their client ids and evaluates at the sites (:mod:`m3oe_lightning.federated.sites`).
  ``federated.resume`` continues from the server checkpoint and the sites' ``state-dir``.
* any other partition emulates sites: node ``partition-id=k`` is ``federation.clients[k]``; every node
  builds the same partition from the same data and seed and keeps its own part (the server checks the
  client id and the training-row count each node reports). ``federated.resume`` is refused (the client
  states live in the nodes' memory, not in the server's checkpoint).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from dataclasses import replace

import flwr
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federated.factory import FederatedSetup, build_federated
from m3oe_lightning.federated.flower.client_app import make_client_app
from m3oe_lightning.federated.flower.run_config import (
    RUN_CONFIG_DEFAULTS,
    compose_federate,
    overrides_from,
    seconds_setting,
)
from m3oe_lightning.federated.flower.runner import FlowerTransport, discover_nodes, discover_sites
from m3oe_lightning.federated.messages import Metrics
from m3oe_lightning.federated.sites import build_coordinator, coordinator_setup, site_mode
from m3oe_lightning.tracking.federation import run_federation

__all__ = ["RUN_CONFIG_DEFAULTS", "compose_federate", "make_client_app", "make_server_app", "clientapp", "serverapp"]
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- server side
def run_server(grid: Grid, context: Context, base: Sequence[str] = ()) -> Metrics:
    """The ServerApp's main: compose, build, map nodes, then the tracked run delivered through the Grid."""
    overrides = overrides_from(context.run_config, base)
    cfg = compose_federate(overrides)
    node_timeout = seconds_setting(context.run_config, "node-timeout")
    round_timeout = seconds_setting(context.run_config, "round-timeout")
    if site_mode(cfg.federated):
        flower_setup = sites_setup(grid, cfg, node_timeout, round_timeout)
    else:
        if cfg.federated.get("resume"):
            raise UserInputError("federated.resume=true under Flower needs sites that keep their state "
                                 "(federated.partition=sites, node config state-dir=…): the emulated nodes' "
                                 "persistent states live in their memory, not in the server's checkpoint")
        setup = build_federated(cfg)  # every settings error is raised here, before any node is contacted
        nodes = discover_nodes(grid, setup.federation, node_timeout)
        transport = FlowerTransport(grid, nodes, round_timeout=round_timeout)
        flower_setup = replace(setup, simulation=setup.simulation.with_transport(transport))
    tags = {"runtime": f"flower {flwr.__version__}",
            "command": " ".join(["flwr run", f"hydra-overrides={shlex.join(overrides)!r}"])}
    return run_federation(cfg, lambda: flower_setup, extra_tags=tags)


def sites_setup(grid: Grid, cfg: DictConfig, node_timeout: float, round_timeout: float) -> FederatedSetup:
    """A federation of sites holding their own data: the global model from the feature specification, the
    sites found by their client-id, the strategy prepared with their row counts (federated/sites.py)."""
    coordinator = build_coordinator(cfg)  # every settings error here, before any site is contacted
    found = discover_sites(grid, coordinator.training, coordinator.heldout, node_timeout)
    if cfg.federated.get("resume"):
        forgetful = [cid for cid, kept in found.kept_state.items() if not kept]
        if forgetful:
            raise UserInputError(f"federated.resume=true: site(s) {forgetful} keep no state between runs; start "
                                 f"them with state-dir=… in their node config (or run without resume)")
    transport = FlowerTransport(grid, found.nodes, round_timeout=round_timeout, training=coordinator.training)
    return coordinator_setup(coordinator, transport, transport.evaluate_now, found.rows)


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
