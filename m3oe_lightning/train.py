"""Entry point: ``python -m m3oe_lightning.train [hydra overrides]`` (console script ``m3oe-train``).

Thin on purpose (DESIGN.md, property 4): compose the config → build data, model, system, logger,
trainer → fit → test the best checkpoint → log and print the results.
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from m3oe_lightning.config import CONF_DIR, build, report_user_errors
from m3oe_lightning.data.schema import FeatureSchema
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.tracking import artifacts, provenance, runs, sweep
from m3oe_lightning.training.module import count_parameters
from m3oe_lightning.training.system import build_system

RUN_ID_ENV = "M3OE_MLFLOW_RUN_ID"  # hands rank 0's run to DDP worker processes
# settings that do not change what a run computes: left out of its config hash (resume, skip_finished)
NOT_IDENTITY = ("resume", "paths", "logger", "trainer", "callbacks", "skip_finished", "optimized_metric")
# trainer settings that do change it, with their defaults: one enters the hash only when set otherwise (so
# the hashes of runs from before the setting existed stay valid)
TRAINER_IDENTITY = {"precision": "32-true"}


def run_names(cfg: DictConfig) -> tuple[str, str]:
    """(model label, data label) for the run name ``{model}-{data}-s{seed}``."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    model = choices.get("experiment") or choices.get("model") or cfg.model._target_.rsplit(".", 1)[-1].lower()
    return str(model).replace("/", "_"), str(cfg.data.name)


def build_callbacks(cfg: DictConfig, checkpoint_dir: Path) -> list[Callback]:
    callbacks: list[Callback] = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or "_target_" not in node:
            continue
        extra = {"dirpath": str(checkpoint_dir)} if name == "model_checkpoint" else {}
        callbacks.append(build(node, **extra))
    return callbacks


def print_results(metrics: dict[str, float], schema: FeatureSchema, title: str) -> None:
    table = Table(title=title)
    for column in ("domain", "task", "AUC", "logloss"):
        table.add_column(column, justify="right" if column in ("AUC", "logloss") else "left")
    for domain, task, auc, logloss in artifacts.table_rows(metrics, schema.domains, schema.tasks):
        table.add_row(domain, task, f"{auc:.4f}", f"{logloss:.4f}")
    table.add_row("mean", "", f"{metrics.get('test/auc_mean', float('nan')):.4f}",
                  f"{metrics.get('test/logloss_mean', float('nan')):.4f}", style="bold")
    Console().print(table)


def log_run_outputs(run: runs.RunHandle, cfg: DictConfig, metrics: dict[str, float],
                    schema: FeatureSchema, n_params: int) -> None:
    """Artifacts of a finished run: resolved config, results table, AUC bar plot."""
    client = run.client
    client.log_dict(run.run_id, OmegaConf.to_container(cfg, resolve=True), "config/config.yaml")
    client.log_text(run.run_id, artifacts.markdown_table(metrics, schema.domains, schema.tasks),
                    "results/test_table.md")
    figure = artifacts.auc_bar_plot(metrics, schema.domains, schema.tasks, title=run.run_name)
    client.log_figure(run.run_id, figure, "plots/test_auc.png")
    client.log_metric(run.run_id, "model/parameters", n_params)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train, test and log one run; returns the test metrics (and ``val/auc_mean_best``)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # what a resumed run must share with the original (callbacks' state travels in the checkpoint)
    identity = {k: v for k, v in resolved.items() if k not in NOT_IDENTITY}
    identity["max_epochs"] = resolved["trainer"].get("max_epochs")
    for key, default in TRAINER_IDENTITY.items():
        if str(resolved["trainer"].get(key, default)) != default:
            identity[f"trainer.{key}"] = resolved["trainer"][key]
    cfg_hash = provenance.config_hash(identity)
    model_label, data_label = run_names(cfg)
    if cfg.get("skip_finished"):
        finished = runs.find_finished(cfg.logger.tracking_uri, cfg.logger.experiment_name, cfg_hash, cfg.seed)
        if finished is not None:
            row = (cfg.logger.tags or {}).get("row") or model_label
            print(f"skip {row} seed {cfg.seed}: finished run {finished.info.run_id}")
            return dict(finished.data.metrics)

    datamodule, model, system = build_system(cfg)
    schema = datamodule.schema
    tags = {"model": model_label, "data": data_label, "seed": str(cfg.seed), "split": str(cfg.data.get("split")),
            "config_hash": cfg_hash, "git_commit": provenance.git_commit(), **provenance.library_versions(),
            "command": provenance.command_line(HydraConfig.get() if HydraConfig.initialized() else None),
            **{str(k): str(v) for k, v in (cfg.logger.tags or {}).items()}, **sweep.sweep_tags()}
    is_worker = rank_zero_only.rank > 0 and RUN_ID_ENV in os.environ
    run = runs.open_run(
        tracking_uri=cfg.logger.tracking_uri, experiment_name=cfg.logger.experiment_name,
        artifact_location=cfg.logger.artifact_location,
        base_name=cfg.logger.run_name or f"{model_label}-{data_label}-s{cfg.seed}", tags=tags,
        checkpoint_root=Path(cfg.paths.checkpoint_dir), cfg_hash=cfg_hash, resume=bool(cfg.resume),
        run_id=os.environ.get(RUN_ID_ENV) if is_worker else None,
    )
    os.environ[RUN_ID_ENV] = run.run_id
    if not is_worker and run.resumed_from is None:
        run.logger.log_hyperparams(provenance.flatten(resolved))
    if run.resumed_from is not None:
        print(f"resuming run {run.run_name} ({run.run_id}) from {run.resumed_from}")

    is_rank_zero = rank_zero_only.rank == 0
    try:
        trainer: L.Trainer = build(cfg.trainer, callbacks=build_callbacks(cfg, run.checkpoint_dir),
                                   logger=run.logger)
        trainer.fit(system, datamodule=datamodule, ckpt_path=run.resumed_from, weights_only=True)
        metrics: dict[str, float] = {}
        checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        if cfg.test:
            best = "best" if checkpoint is not None and checkpoint.best_model_path else None
            trainer.test(system, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
            metrics = dict(system.test_results)
        # the selection value (val/auc_mean_best) an hparams search optimises (optimized_metric)
        best_val = {f"{checkpoint.monitor}_best": float(checkpoint.best_model_score)} if (
            checkpoint is not None and checkpoint.monitor and checkpoint.best_model_score is not None) else {}
        if is_rank_zero:
            log_run_outputs(run, cfg, metrics, schema, count_parameters(model))
            for name, value in best_val.items():
                run.client.log_metric(run.run_id, name, value)
            run.client.set_terminated(run.run_id, "FINISHED")
            run.mark("FINISHED")
            if metrics:
                print_results(metrics, schema, f"{run.run_name}: test metrics (best checkpoint)")
        return {**metrics, **best_val}
    except BaseException:
        if is_rank_zero:
            run.client.set_terminated(run.run_id, "FAILED")
            run.mark("FAILED")
        raise


def objective(cfg: DictConfig) -> float | None:
    """``train(cfg)[optimized_metric]`` (default ``test/auc_mean``); an hparams search selects on validation."""
    metrics = train(cfg)
    name = cfg.get("optimized_metric") or "test/auc_mean"
    if metrics and name not in metrics:
        raise UserInputError(f"optimized_metric={name!r} is not among the run's metrics: {', '.join(sorted(metrics))}")
    return metrics.get(name) if metrics else None


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry; returns the value an Optuna sweep optimises (``optimized_metric``, default mean test AUC)."""
    return report_user_errors(objective, cfg)


if __name__ == "__main__":
    main()
