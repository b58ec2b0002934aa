"""Entry point: ``python -m m3oe_lightning.train [hydra overrides]`` (console script ``m3oe-train``).

Thin on purpose (docs/design.md, property 4): compose (Hydra) → build data, model and system → one
tracked MLflow run: fit, test the best checkpoint, log and print the results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.config import CONF_DIR, exits_on_interrupt, report_user_errors
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.tracking import preflight, provenance
from m3oe_lightning.training.settings import validate

# torch, Lightning and MLflow are imported inside train(): `--help` and settings errors answer without them

RUN_ID_ENV = "M3OE_MLFLOW_RUN_ID"  # hands rank 0's run to DDP worker processes
# What a run's config hash leaves out (it does not change what the run computes), what it copies in from
# there, and the trainer settings that enter only when set otherwise (so older runs keep their hash).
NOT_IDENTITY = ("resume", "paths", "logger", "trainer", "callbacks", "skip_finished", "optimized_metric",
                "eval_chunk_rows", "allocator")
COPIED_IN = {"max_epochs": "trainer.max_epochs"}
UNLESS_DEFAULT = {"trainer.precision": "32-true"}


def training_identity(resolved: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed or skipped run must share with this one."""
    return provenance.identity(resolved, drop=NOT_IDENTITY, copy_in=COPIED_IN, unless_default=UNLESS_DEFAULT)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train, test and log one run; returns the test metrics and the selection value (``val/auc_mean_best``)."""
    validate(cfg)  # settings, the store and the checkpoint folder: refused in about a second, nothing built
    preflight.check_store(cfg.logger.tracking_uri)
    preflight.check_writable(Path(cfg.paths.checkpoint_dir), "paths.checkpoint_dir")
    from lightning.pytorch.utilities import rank_zero_only

    from m3oe_lightning.serving import bundle
    from m3oe_lightning.tracking import artifacts, models, runs
    from m3oe_lightning.training.module import count_parameters
    from m3oe_lightning.training.system import build_system, build_trainer, fit_and_test

    cfg_hash = provenance.config_hash(training_identity(OmegaConf.to_container(cfg, resolve=True)))
    model_label, data_label = provenance.run_labels(cfg)
    finished = runs.finished_run(cfg, cfg_hash, label=(cfg.logger.tags or {}).get("row") or model_label)
    if finished is not None:
        return dict(finished.data.metrics)
    datamodule, model, system = build_system(cfg)
    tags = {"model": model_label, "data": data_label, "split": str(cfg.data.get("split")),
            **provenance.run_tags(cfg, cfg_hash, "train")}
    primary = rank_zero_only.rank == 0
    with runs.tracked_run(cfg, cfg_hash=cfg_hash, base_name=f"{model_label}-{data_label}-s{cfg.seed}", tags=tags,
                          resume_artifact="last.ckpt" if cfg.resume else None, primary=primary,
                          run_id=None if primary else os.environ.get(RUN_ID_ENV)) as run:
        os.environ[RUN_ID_ENV] = run.run_id
        encoders = datamodule.load().encoders
        if primary and run.resumed_from is None:
            data_settings = OmegaConf.to_container(cfg.data, resolve=True)
            runs.log_dataset(run, datamodule.name, datamodule.source_uri(), data_settings)
            if encoders is not None:  # before training: a killed run's checkpoints can score raw rows too
                models.save_bundle(run.run_id, run.client, run.checkpoint_dir, encoders,
                                   OmegaConf.to_container(cfg.model, resolve=True), label=model_label)
        trainer = build_trainer(cfg, run.checkpoint_dir, logger=run.logger)
        metrics = fit_and_test(trainer, system, datamodule, resume_from=run.resumed_from, test=bool(cfg.test))
        if primary:
            artifacts.log_run_outputs(run, cfg, metrics, datamodule.schema, count_parameters(model))
            weights = bundle.best_checkpoint(run.checkpoint_dir)
            if cfg.logger.get("log_model", True) and encoders is not None and weights is not None:
                models.log_model(run.run_id, run.client, run.checkpoint_dir, weights,
                                 register_as=cfg.logger.get("register_model"))
            if keys.TEST_AUC_MEAN in metrics:
                artifacts.print_results(metrics, datamodule.schema, f"{run.run_name}: test metrics (best checkpoint)")
    return metrics


def objective(cfg: DictConfig) -> float | None:
    """``train(cfg)[optimized_metric]``: what any Hydra sweeper optimises. The default is the validation
    selection value (``val/auc_mean_best``), never a test metric, so no search can select on test."""
    metrics = train(cfg)
    name = cfg.get("optimized_metric") or keys.VAL_AUC_MEAN_BEST
    if metrics and name not in metrics:
        raise UserInputError(f"optimized_metric={name!r} is not among the run's metrics: {', '.join(sorted(metrics))}")
    return metrics.get(name) if metrics else None


@exits_on_interrupt
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry; returns the value a sweeper optimises (``optimized_metric``, default ``val/auc_mean_best``)."""
    return report_user_errors(objective, cfg)


if __name__ == "__main__":
    main()
