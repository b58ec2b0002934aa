"""A federated run, tracked: the one body ``m3oe-federate`` and the Flower ServerApp share.

The server state (global model, clients' persistent states, the strategy's state such as PAGE's
agents, RNG states) is written atomically to ``<checkpoint_dir>/<run_id>/server_state.pt`` after every
round. ``federated.resume=true`` continues the newest unfinished run of the same settings from its last
completed round, in the same MLflow run. ``federated.kill_after_round=N`` is a test hook: the process
SIGKILLs itself right after round N is checkpointed and logged (a ``kill -9`` at a known point).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

from mlflow.entities import Metric
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.data.encoders import Encoders
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federated.factory import FederatedSetup, federated_identity
from m3oe_lightning.federated.families import RECOMMENDATION, TaskFamily
from m3oe_lightning.federated.labels import SERVER_STATE, algorithm_label
from m3oe_lightning.federated.messages import Metrics
from m3oe_lightning.serving.bundle import NETWORK_FILE
from m3oe_lightning.tracking import models, provenance, runs

GLOBAL_WEIGHTS = "global_weights.pt"  # the final global model's state dict, beside server_state.pt
CLIENT_MODEL_ARTIFACT = "client_model"  # logger.client_model's personalized model: runs:/<id>/client_model


def round_line(server_round: int, rounds: int, m: Metrics, family: TaskFamily = RECOMMENDATION) -> str:
    """One console line per round (the family's score: AUC, or a classifier's accuracy)."""
    def fmt(key: str) -> str:
        return f"{m[key]:.4f}" if key in m else "—"
    personal, global_, heldout = (keys.key(scope, family.score) for scope in (keys.PERSONAL, keys.GLOBAL,
                                                                              keys.HELDOUT))
    if global_ not in m:  # sites holding their own data: the coordinator has only the means over sites
        global_ = family.client_mean_key
        heldout = keys.key(keys.HELDOUT, global_.split("/", 1)[1])
    return (f"round {server_round}/{rounds}: personal {fmt(personal)} "
            f"(weighted {fmt(keys.key(keys.PERSONAL, keys.weighted(family.score)))}) · global {fmt(global_)} · "
            f"heldout {fmt(heldout)} · clients {int(m['round/clients_ok'])}/"
            f"{int(m['round/clients_sampled'])} · {m['comm/bytes_sent'] / 2**20:.1f} MiB · "
            f"{m['time/round_s']:.1f} s (local fits {m['time/fit_s']:.1f} s)")


def partition_table(setup: FederatedSetup, last: Metrics) -> str:
    """The clients and their row counts (and last personal score) as Markdown, a run artifact."""
    family = setup.strategy.family
    lines = [f"| client | train | val | test | held out | personal {family.score} (last round) |",
             "|---|---:|---:|---:|:-:|---:|"]
    for cid, n_train, n_val, n_test, held in setup.federation.summary():
        auc = last.get(keys.client(cid, family.score))
        lines.append(f"| {cid} | {n_train} | {n_val} | {n_test} | {'yes' if held else ''} | "
                     f"{'' if auc is None else f'{auc:.4f}'} |")
    return "\n".join(lines) + "\n"


def print_partition(setup: FederatedSetup, title: str) -> None:
    table = Table(title=title)
    for column in ("client", "train", "val", "test", "held out"):
        table.add_column(column, justify="left" if column == "client" else "right")
    for cid, n_train, n_val, n_test, held in setup.federation.summary():
        table.add_row(cid, str(n_train), str(n_val), str(n_test), "yes" if held else "")
    Console().print(table)


def log_round(client: Any, run_id: str, server_round: int, metrics: Metrics) -> None:
    """A round's metrics at MLflow step = round, in batches of MLflow's 1,000-metric limit."""
    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, server_round) for key, value in sorted(metrics.items())]
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start:start + 1000])


def run_federation(cfg: DictConfig, build_setup: Callable[[], FederatedSetup],
                   extra_tags: Mapping[str, str] | None = None) -> Metrics:
    """Skip if finished, build (every settings error before the run exists), run and log the rounds.

    ``build_setup``: the factory call; the Flower ServerApp passes one whose transport is its Grid.
    ``extra_tags``: merged over the run's tags (a Flower run's ``runtime`` and ``command``).
    """
    fed = cfg.federated
    resolved = OmegaConf.to_container(cfg, resolve=True)
    cfg_hash = provenance.config_hash(federated_identity(resolved))
    if (finished := runs.finished_run(cfg, cfg_hash, label=algorithm_label(fed))) is not None:
        return dict(finished.data.metrics)
    setup = build_setup()
    client_model = requested_client(cfg, setup)  # refused before the run exists
    model_label, data_label = provenance.run_labels(cfg, from_experiment=False)  # presets name variants
    personal = str(fed.get("personal", "none"))
    tags = {"task": "federate", "federated": str(fed.name), "algorithm": algorithm_label(fed),
            "partition": str(fed.partition), "personal": personal,
            # federated M3oE: the personal parts are part of what the model is
            "model": model_label if personal == "none" else f"{model_label}+{personal}", "data": data_label,
            **provenance.run_tags(cfg, cfg_hash, "federate"), **setup.strategy.run_tags(), **(extra_tags or {})}
    base_name = f"{algorithm_label(fed)}-{model_label}-{data_label}-s{cfg.seed}"
    with runs.tracked_run(cfg, cfg_hash=cfg_hash, base_name=base_name, tags=tags,
                          resume_artifact=SERVER_STATE if fed.get("resume") else None) as run:
        checkpoint = run.checkpoint_dir / SERVER_STATE
        if run.resumed_from is not None:
            state = setup.simulation.restore(run.resumed_from)  # the server state, or its kept previous one
            logged = {m.step for m in run.client.get_metric_history(run.run_id, "round/clients_sampled")}
            for server_round, metrics in enumerate(state.history, start=1):  # killed between save and log
                if server_round not in logged:
                    log_round(run.client, run.run_id, server_round, metrics)
        for notice in setup.strategy.notices():
            print(f"warning: {notice}")
        print_partition(setup, f"{run.run_name}: {fed.partition} partition")
        kill_after = fed.get("kill_after_round")

        def on_round_end(server_round: int, metrics: Metrics) -> None:
            log_round(run.client, run.run_id, server_round, metrics)
            print(round_line(server_round, setup.rounds, metrics, setup.strategy.family), flush=True)
            if kill_after is not None and server_round == int(kill_after):
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: kill -9 after a checkpointed round

        state = setup.simulation.run(setup.rounds, on_round_end=on_round_end, checkpoint=checkpoint)
        last = state.history[-1] if state.history else {}
        setup.simulation.save(checkpoint)
        run.client.log_dict(run.run_id, resolved, "config/config.yaml")
        run.client.log_text(run.run_id, partition_table(setup, last), "federated/partition.md")
        if state.failures:
            run.client.log_text(run.run_id, json.dumps(state.failures, indent=2), "federated/failures.json")
        if cfg.logger.get("log_model", True) and setup.encoders is not None and state.global_arrays is not None:
            log_global_model(cfg, run, setup.encoders, state.global_arrays, label=tags["model"])
        if client_model is not None and setup.encoders is not None:
            log_client_model(cfg, run, setup, client_model, label=tags["model"])
    return last


def requested_client(cfg: DictConfig, setup: FederatedSetup) -> str | None:
    """``logger.client_model``: a client of this run whose personalized model lives in this process."""
    wanted = cfg.logger.get("client_model")
    if wanted in (None, ""):
        return None
    clients = setup.simulation.clients
    if str(wanted) not in clients:
        where = ("in this process (a Flower run's clients live on their nodes)" if not clients
                 else f"among {', '.join(sorted(clients))}")
        raise UserInputError(f"logger.client_model={wanted!r} is not a client {where}")
    return str(wanted)


def log_client_model(cfg: DictConfig, run: runs.RunHandle, setup: FederatedSetup, client_id: str,
                     label: str) -> None:
    """A client's personalized model (the one scored as ``personal/*``) as ``runs:/<id>/client_model``."""
    import torch

    personal = setup.simulation.clients[client_id].state_dict().get("personal")
    if personal is None:
        print(f"warning: logger.client_model={client_id}: the client kept no personalized model; nothing logged")
        return
    weights = run.checkpoint_dir / f"client_{client_id}_weights.pt"
    torch.save(dict(personal), weights)
    if not (run.checkpoint_dir / NETWORK_FILE).is_file():  # log_model=false: the global model wrote none
        models.save_bundle(run.run_id, run.client, run.checkpoint_dir, setup.encoders,
                           OmegaConf.to_container(cfg.model, resolve=True), label=label)
    models.log_model(run.run_id, run.client, run.checkpoint_dir, weights, artifact=CLIENT_MODEL_ARTIFACT)


def log_global_model(cfg: DictConfig, run: runs.RunHandle, encoders: Encoders, global_arrays: Mapping[str, Any],
                     label: str) -> None:
    """The final global model as the run's MLflow model (``runs:/<id>/model``), scored like a trained one."""
    import torch

    models.save_bundle(run.run_id, run.client, run.checkpoint_dir, encoders,
                       OmegaConf.to_container(cfg.model, resolve=True), label=label)
    weights = run.checkpoint_dir / GLOBAL_WEIGHTS
    torch.save(dict(global_arrays), weights)
    models.log_model(run.run_id, run.client, run.checkpoint_dir, weights, register_as=cfg.logger.get("register_model"))
