"""Config → datamodule, model and training system: the one place ``MDMTModule``'s settings are read.

``m3oe-train`` and every federated client build their systems here, so a setting (the optimiser's, the
AutoML fusion's) reaches the LightningModule by one path whatever runs it.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.config import build
from m3oe_lightning.data.datamodule import MDMTDataModule
from m3oe_lightning.data.schema import NUM_CLASSES, FeatureSchema
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.models.base import MDMTModel
from m3oe_lightning.training.allocator import DEFAULT_ALLOCATOR, apply_allocator
from m3oe_lightning.training.callbacks import EpochLine, ModelLine, ProgressBar
from m3oe_lightning.training.checkpoint_io import AtomicCheckpointIO
from m3oe_lightning.training.module import MDMTModule
from m3oe_lightning.training.precision import trainer_precision
from m3oe_lightning.training.quiet import silence_noise
from m3oe_lightning.training.settings import validate


def system_factory(cfg: DictConfig):
    """``(model, lr) -> MDMTModule`` with the run's optimiser and AutoML settings (clients pass their lr)."""
    def make(model: MDMTModel, lr: float) -> MDMTModule:
        return MDMTModule(model, lr=lr, weight_decay=cfg.optimizer.weight_decay, automl_mode=cfg.automl.mode,
                          automl_every=cfg.automl.every, automl_source=cfg.automl.source,
                          automl_lr=cfg.automl.lr, automl_weight_decay=cfg.automl.weight_decay)
    return make


def check_task(model: MDMTModel, schema: FeatureSchema, data_name: str) -> None:
    """A recommender needs binary task labels: data of class labels (``num_classes``) is a classifier's."""
    classes = schema.extras.get(NUM_CLASSES)
    if classes is not None and model.task_family == "recommendation":
        raise UserInputError(f"data={data_name} holds class labels ({classes} classes), but model "
                             f"{type(model).__name__} is a recommender of binary tasks; use model=linear")


def build_data_and_model(cfg: DictConfig) -> tuple[MDMTDataModule, MDMTModel]:
    """Settings checks, threads, allocator and seed, then the datamodule and model of ``cfg`` (any task family:
    the federated clients build the family's own training system)."""
    validate(cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    apply_allocator(cfg.get("allocator", DEFAULT_ALLOCATOR))  # before the data and the model: later allocations only
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: MDMTDataModule = build(cfg.data)
    schema = datamodule.load().schema
    model = build(cfg.model, schema=schema)
    check_task(model, schema, str(cfg.data.name))
    model.set_eval_chunk_rows(cfg.get("eval_chunk_rows"))  # speed only: the same numbers at any chunk size
    return datamodule, model


def build_system(cfg: DictConfig) -> tuple[MDMTDataModule, MDMTModel, MDMTModule]:
    """:func:`build_data_and_model`, then the recommendation training system ``m3oe-train`` fits."""
    datamodule, model = build_data_and_model(cfg)
    return datamodule, model, system_factory(cfg)(model, cfg.optimizer.lr)


def build_callbacks(cfg: DictConfig, checkpoint_dir: Path) -> list[Callback]:
    """The configured callbacks; the checkpoint callback writes into the run's own folder."""
    callbacks: list[Callback] = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or "_target_" not in node:
            continue
        extra = {"dirpath": str(checkpoint_dir)} if name == "model_checkpoint" else {}
        callbacks.append(build(node, **extra))
    return callbacks


def build_trainer(cfg: DictConfig, checkpoint_dir: Path, logger: Logger | bool) -> L.Trainer:
    """``cfg.trainer`` with the configured callbacks (checkpoints into ``checkpoint_dir``) and ``logger``."""
    silence_noise()
    shown = [ProgressBar() if cfg.trainer.get("enable_progress_bar", True) else EpochLine()]
    if cfg.trainer.get("enable_model_summary", True):
        shown.append(ModelLine())
    precision = trainer_precision(cfg.trainer)
    return build(cfg.trainer, callbacks=[*build_callbacks(cfg, checkpoint_dir), *shown], logger=logger,
                 **{**precision, "plugins": [AtomicCheckpointIO(), *precision.get("plugins", [])]})


def fit_and_test(trainer: L.Trainer, system: MDMTModule, datamodule: MDMTDataModule, *,
                 resume_from: Path | None, test: bool) -> dict[str, float]:
    """Fit (continuing ``resume_from``), then test the best-validation checkpoint.

    Returns the test metrics and the selection value: the checkpoint callback's best monitored value
    (``val/auc_mean_best``), which a search optimises; test metrics are for reporting only.
    """
    trainer.fit(system, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    metrics: dict[str, float] = {}
    if test:
        best = "best" if checkpoint is not None and checkpoint.best_model_path else None
        trainer.test(system, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
        metrics = dict(system.test_results)
    if checkpoint is not None and checkpoint.monitor and checkpoint.best_model_score is not None:
        metrics[keys.best(checkpoint.monitor)] = float(checkpoint.best_model_score)
    return metrics
