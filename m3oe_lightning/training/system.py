"""Config → datamodule, model and training system: the one place ``MDMTModule``'s settings are read.

``m3oe-train`` and every federated client build their systems here, so a setting (the optimiser's, the
AutoML fusion's) reaches the LightningModule by one path whatever runs it.
"""

from __future__ import annotations

import lightning as L
import torch
from omegaconf import DictConfig

from m3oe_lightning.config import build
from m3oe_lightning.data.datamodule import MDMTDataModule
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.models.base import MDMTModel
from m3oe_lightning.training.module import MDMTModule


def validate(cfg: DictConfig) -> None:
    """Settings checks that must fail before anything is read or trained."""
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise UserInputError(f"seed={cfg.seed!r} is not an integer; pass e.g. seed=2022")
    if cfg.threads is not None and (not isinstance(cfg.threads, int) or cfg.threads < 1):
        raise UserInputError(f"threads={cfg.threads!r}: use a positive integer or null")


def system_factory(cfg: DictConfig):
    """``(model, lr) -> MDMTModule`` with the run's optimiser and AutoML settings (clients pass their lr)."""
    def make(model: MDMTModel, lr: float) -> MDMTModule:
        return MDMTModule(model, lr=lr, weight_decay=cfg.optimizer.weight_decay, automl_mode=cfg.automl.mode,
                          automl_every=cfg.automl.every, automl_source=cfg.automl.source,
                          automl_lr=cfg.automl.lr, automl_weight_decay=cfg.automl.weight_decay)
    return make


def build_system(cfg: DictConfig) -> tuple[MDMTDataModule, MDMTModel, MDMTModule]:
    """Settings checks, threads and seed, then the datamodule, model and training system of ``cfg``."""
    validate(cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: MDMTDataModule = build(cfg.data)
    model = build(cfg.model, schema=datamodule.load().schema)
    return datamodule, model, system_factory(cfg)(model, cfg.optimizer.lr)
