"""Entry point: ``python -m m3oe_lightning.federate [hydra overrides]`` (console script ``m3oe-federate``).

Thin on purpose (DESIGN.md, property 4): compose the ``federate`` config → build the simulation
(data, partition, clients, strategy; every settings check) → one MLflow run whose metrics are the
per-round federated metrics (MLflow step = round) → run the rounds.

The server state (global model, clients' persistent states, the strategy's state such as PAGE's
agents, RNG states) is written atomically to ``<checkpoint_dir>/<run_id>/server_state.pt`` after
every round. ``federated.resume=true`` continues the newest unfinished run of the same settings from
its last completed round, in the same MLflow run. ``federated.kill_after_round=N`` is a test hook:
the process SIGKILLs itself right after round N is checkpointed and logged (a ``kill -9`` at a known
point, as ``KillAtEpoch`` for ``m3oe-train``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from mlflow.entities import Metric
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from m3oe_lightning.config import CONF_DIR, report_user_errors
from m3oe_lightning.federated.factory import FederatedSetup, build_federated
from m3oe_lightning.federated.messages import Metrics
from m3oe_lightning.tracking import provenance, runs, sweep
from m3oe_lightning.train import run_names

SERVER_STATE = "server_state.pt"


def command_line() -> str:
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return " ".join(["python -m m3oe_lightning.federate", *overrides])


def round_line(server_round: int, rounds: int, m: Metrics) -> str:
    def fmt(key: str) -> str:
        return f"{m[key]:.4f}" if key in m else "—"
    return (f"round {server_round}/{rounds}: personal {fmt('personal/auc_mean')} "
            f"(weighted {fmt('personal/auc_mean_weighted')}) · global {fmt('global/auc_mean')} · "
            f"heldout {fmt('heldout/auc_mean')} · clients {int(m['round/clients_ok'])}/"
            f"{int(m['round/clients_sampled'])} · {m['comm/bytes_sent'] / 2**20:.1f} MiB · "
            f"{m['time/round_s']:.1f} s (local fits {m['time/fit_s']:.1f} s)")


def partition_table(setup: FederatedSetup, last: Metrics) -> str:
    lines = ["| client | train | val | test | held out | personal AUC (last round) |", "|---|---:|---:|---:|:-:|---:|"]
    for cid, n_train, n_val, n_test, held in setup.federation.summary():
        auc = last.get(f"client/{cid}/auc_mean")
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


def algorithm_label(fed: DictConfig) -> str:
    """What a report calls the run: ``centralized``, the strategy, or ``{strategy}+{personal}``."""
    if fed.get("centralized"):
        return "centralized"
    personal = str(fed.get("personal", "none"))
    return str(fed.name) if personal == "none" else f"{fed.name}+{personal}"


def identity_of(resolved: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed run must share with the original (not where it logs, not the hooks)."""
    identity = {k: v for k, v in resolved.items() if k not in ("paths", "logger", "skip_finished")}
    identity["federated"] = {k: v for k, v in resolved["federated"].items() if k not in ("resume", "kill_after_round")}
    identity["client_trainer"] = {k: v for k, v in resolved.get("client_trainer", {}).items()
                                  if k != "default_root_dir"}
    return identity


def log_round(client: Any, run_id: str, server_round: int, metrics: Metrics) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, server_round) for key, value in sorted(metrics.items())]
    for start in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[start:start + 1000])


def federate(cfg: DictConfig, setup: FederatedSetup | None = None,
             extra_tags: Mapping[str, str] | None = None) -> Metrics:
    """Build, run and log one federated run; returns the last round's metrics.

    ``setup``: a run already built whose runner delivers the instructions elsewhere: the Flower ServerApp
    passes one whose clients are Flower nodes, so a Flower run is logged by this same code.
    ``extra_tags``: merged over the run's tags (a Flower run's ``runtime`` and ``command``).
    """
    fed = cfg.federated
    resolved = OmegaConf.to_container(cfg, resolve=True)
    cfg_hash = provenance.config_hash(identity_of(resolved))
    if cfg.get("skip_finished"):
        finished = runs.find_finished(cfg.logger.tracking_uri, cfg.logger.experiment_name, cfg_hash, cfg.seed)
        if finished is not None:
            print(f"skip {algorithm_label(fed)} seed {cfg.seed}: finished run {finished.info.run_id}")
            return dict(finished.data.metrics)
    if setup is None:
        setup = build_federated(cfg)  # every settings error is raised here, before the run exists
    base_model_label, data_label = run_names(cfg)
    personal = str(fed.get("personal", "none"))
    # federated M3oE: the personal parts are part of what the model is (the run name has them via the algorithm)
    model_label = base_model_label if personal == "none" else f"{base_model_label}+{personal}"
    tags = {"task": "federate", "federated": str(fed.name), "algorithm": algorithm_label(fed),
            "partition": str(fed.partition), "personal": personal, "model": model_label, "data": data_label,
            "seed": str(cfg.seed),
            "config_hash": cfg_hash, "git_commit": provenance.git_commit(),
            **provenance.library_versions(), "command": command_line(),
            **{str(k): str(v) for k, v in (cfg.logger.tags or {}).items()}, **sweep.sweep_tags(),
            **(extra_tags or {})}
    parity = bool(getattr(setup.strategy, "paper_parity", False))
    if parity:  # page-reference.md, Decision 1: reports from such runs must say so
        tags["page_parity"] = "true: PAGE's states and rewards come from the TEST splits (leaky, as the released code)"
    checkpoint_root = Path(cfg.paths.checkpoint_dir)
    found = runs.find_resumable(checkpoint_root, cfg_hash, SERVER_STATE) if fed.get("resume") else None
    resume_id = found[0] if found else None
    run = runs.open_run(
        tracking_uri=cfg.logger.tracking_uri, experiment_name=cfg.logger.experiment_name,
        artifact_location=cfg.logger.artifact_location,
        base_name=cfg.logger.run_name or f"{algorithm_label(fed)}-{base_model_label}-{data_label}-s{cfg.seed}",
        tags=tags,
        checkpoint_root=checkpoint_root, cfg_hash=cfg_hash, resume=False, run_id=resume_id,
    )
    client, run_id = run.client, run.run_id
    checkpoint = run.checkpoint_dir / SERVER_STATE
    kill_after = fed.get("kill_after_round")
    try:
        if resume_id is None:
            run.logger.log_hyperparams(provenance.flatten(resolved))
        else:
            state = setup.simulation.restore(checkpoint)
            logged = {m.step for m in client.get_metric_history(run_id, "round/clients_sampled")}
            for server_round, metrics in enumerate(state.history, start=1):  # killed between save and log
                if server_round not in logged:
                    log_round(client, run_id, server_round, metrics)
            print(f"resuming run {run.run_name} ({run_id}) after round {state.server_round}/{setup.rounds}")
        if parity:
            print("warning: federated.paper_parity=true: PAGE's states and rewards use the TEST splits "
                  "(the released code's leaky variant); say so in any report of this run")
        print_partition(setup, f"{run.run_name}: {fed.partition} partition")

        def on_round_end(server_round: int, metrics: Metrics) -> None:
            log_round(client, run_id, server_round, metrics)
            print(round_line(server_round, setup.rounds, metrics), flush=True)
            if kill_after is not None and server_round == int(kill_after):
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: kill -9 after a checkpointed round

        state = setup.simulation.run(setup.rounds, on_round_end=on_round_end, checkpoint=checkpoint)
        last = state.history[-1] if state.history else {}
        setup.simulation.save(checkpoint)
        client.log_dict(run_id, resolved, "config/config.yaml")
        client.log_text(run_id, partition_table(setup, last), "federated/partition.md")
        if state.failures:
            client.log_text(run_id, json.dumps(state.failures, indent=2), "federated/failures.json")
        client.set_terminated(run_id, "FINISHED")
        run.mark("FINISHED")
        return last
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        run.mark("FAILED")
        raise


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="federate")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry; returns the last round's global AUC (personal AUC for ``local``)."""
    metrics = report_user_errors(federate, cfg)
    return metrics.get("global/auc_mean", metrics.get("personal/auc_mean"))


if __name__ == "__main__":
    main()
