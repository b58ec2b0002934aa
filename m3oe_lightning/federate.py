"""Entry point: ``python -m m3oe_lightning.federate [hydra overrides]`` (console script ``m3oe-federate``).

Thin on purpose (DESIGN.md, property 4): compose the ``federate`` config → build the simulation
(data, partition, clients, strategy; every settings check) → one MLflow run whose metrics are the
per-round federated metrics (MLflow step = round) → run the rounds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from mlflow.entities import Metric
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from m3oe_lightning import tracking
from m3oe_lightning.cli import report_user_errors
from m3oe_lightning.federated.factory import FederatedSetup, build_federated
from m3oe_lightning.federated.messages import Metrics
from m3oe_lightning.train import CONF_DIR, run_names

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


def federate(cfg: DictConfig) -> Metrics:
    """Build, run and log one federated run; returns the last round's metrics."""
    setup = build_federated(cfg)  # every settings error is raised here, before the run exists
    fed = cfg.federated
    resolved = OmegaConf.to_container(cfg, resolve=True)
    model_label, data_label = run_names(cfg)
    tags = {"task": "federate", "federated": str(fed.name), "partition": str(fed.partition),
            "model": model_label, "data": data_label, "seed": str(cfg.seed),
            "config_hash": tracking.config_hash(resolved), "git_commit": tracking.git_commit(),
            **tracking.library_versions(), "command": command_line(),
            **{str(k): str(v) for k, v in (cfg.logger.tags or {}).items()}}
    run = tracking.open_run(
        tracking_uri=cfg.logger.tracking_uri, experiment_name=cfg.logger.experiment_name,
        artifact_location=cfg.logger.artifact_location,
        base_name=cfg.logger.run_name or f"{fed.name}-{model_label}-{data_label}-s{cfg.seed}", tags=tags,
        checkpoint_root=Path(cfg.paths.checkpoint_dir), cfg_hash=tags["config_hash"], resume=False,
    )
    client, run_id = run.client, run.run_id
    try:
        run.logger.log_hyperparams(tracking.flatten(resolved))
        print_partition(setup, f"{run.run_name}: {fed.partition} partition")

        def on_round_end(server_round: int, metrics: Metrics) -> None:
            now = int(time.time() * 1000)
            batch = [Metric(key, float(value), now, server_round) for key, value in sorted(metrics.items())]
            for start in range(0, len(batch), 1000):
                client.log_batch(run_id, metrics=batch[start:start + 1000])
            print(round_line(server_round, setup.rounds, metrics), flush=True)

        state = setup.simulation.run(setup.rounds, on_round_end=on_round_end)
        last = state.history[-1] if state.history else {}
        state.save(run.checkpoint_dir / SERVER_STATE, setup.simulation.clients)
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
