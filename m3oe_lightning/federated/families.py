"""Task families: what the federated loop asks of a model's task, so it never asks which task it is.

A model names its family (:attr:`~m3oe_lightning.models.base.MDMTModel.task_family`); the client, the server's
evaluators and the strategies then take from the :class:`TaskFamily` how to score a model on a split, which of
those metrics is the score (higher is better: the personalized and global means, PAGE's states) and which
the loss (PAGE's rewards), and how to build the local training system. Two families exist:

* ``recommendation``: ``MDMTModule`` (grouped BCE); per-(domain, task) AUC and logloss. Score ``auc_mean``,
  loss ``logloss_mean``: every key the project logged before families existed keeps its name.
* ``classification``: ``ClassifierModule`` (cross-entropy; SGD or Adam, gradient-norm clip); accuracy and
  cross-entropy. Score ``accuracy``, loss ``cross_entropy`` (PAGE's Synthetic setting, docs/page.md).

A family may also offer ``cohort``: many clients' local fits run side by side as one vectorised run
(``federated.cohort=true``, :mod:`m3oe_lightning.training.cohort`); the classifier's does (SGD only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import lightning as L
import torch
from omegaconf import DictConfig

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.data.schema import EncodedSplit
from m3oe_lightning.errors import UserInputError, check_number
from m3oe_lightning.federated.evaluation import evaluate_classes, evaluate_split, part_classes, part_metrics
from m3oe_lightning.models.base import MDMTModel

if TYPE_CHECKING:
    from m3oe_lightning.training.cohort import CohortSGD

Evaluate = Callable[..., dict[str, float]]          # (model, split, batch_size, keep_logits=None) -> metrics
PartMetrics = Callable[[MDMTModel, EncodedSplit, torch.Tensor, Sequence[int]], list[dict[str, float]]]
SystemFactory = Callable[[MDMTModel, float], L.LightningModule]  # (model, lr) -> its training system
CohortFactory = Callable[[DictConfig, MDMTModel, int], "CohortSGD"]  # (cfg, template, batch size) -> cohort fits


def _recommendation_systems(cfg: DictConfig) -> SystemFactory:
    from m3oe_lightning.training.system import system_factory

    return system_factory(cfg)


def _classification_systems(cfg: DictConfig) -> SystemFactory:
    from m3oe_lightning.training.classifier import OPTIMIZERS, ClassifierModule

    optimizer = cfg.optimizer
    name, clip = optimizer.get("name", "adam"), optimizer.get("clip_grad_norm")
    if name not in OPTIMIZERS:  # before any client trains (a client's failure would only drop it from rounds)
        raise UserInputError(f"optimizer.name={name!r}: use one of {', '.join(OPTIMIZERS)}")
    check_number("optimizer.clip_grad_norm", clip, low=0, low_open=True, optional=True)

    def make(model: MDMTModel, lr: float) -> L.LightningModule:
        return ClassifierModule(model, lr=lr, weight_decay=float(optimizer.weight_decay),
                                optimizer=str(optimizer.get("name", "adam")),
                                clip_grad_norm=optimizer.get("clip_grad_norm"))

    return make


def _classification_cohort(cfg: DictConfig, template: MDMTModel, batch_size: int) -> CohortSGD:
    from m3oe_lightning.training.classifier import row_cross_entropy
    from m3oe_lightning.training.cohort import CohortSGD

    optimizer = cfg.optimizer
    if optimizer.get("name", "adam") != "sgd":
        raise UserInputError(f"federated.cohort=true trains with SGD only (optimizer.name={optimizer.get('name')!r}): "
                             f"use optimizer.name=sgd or federated.cohort=false")
    return CohortSGD(template, row_cross_entropy, batch_size=batch_size, weight_decay=float(optimizer.weight_decay),
                     clip_grad_norm=optimizer.get("clip_grad_norm"))


@dataclass(frozen=True)
class TaskFamily:
    """One family's metrics and training system.

    ``score`` / ``loss``: metric names in :attr:`evaluate`'s output (higher / lower is better);
    ``score_label`` / ``loss_label``: their short names in composed keys (``score/received_{score_label}``,
    ``global/{score_label}_client_mean``, ``page/server/val_{score_label}``).
    """

    name: str
    score: str
    loss: str
    score_label: str
    loss_label: str
    evaluate: Evaluate
    part_metrics: PartMetrics
    systems: Callable[[DictConfig], SystemFactory]
    cohort: CohortFactory | None = None

    def reply_key(self, model: str, metric: str) -> str:
        """What a client reports to PAGE about the model it ``received`` or ``trained`` (its agent's state and
        reward): ``metric`` ``score`` or ``loss``, e.g. ``score/received_auc``, ``score/trained_logloss``."""
        if model not in ("received", "trained") or metric not in ("score", "loss"):
            raise ValueError(f"reply_key({model!r}, {metric!r}): model received|trained, metric score|loss")
        return keys.key("score", f"{model}_{self.score_label if metric == 'score' else self.loss_label}")

    @property
    def client_mean_key(self) -> str:
        """The global model's score on each client's rows, averaged over clients (``global/auc_client_mean``)."""
        return keys.key(keys.GLOBAL, f"{self.score_label}_client_mean")

    @property
    def summary(self) -> tuple[str, ...]:
        """What the held-out set reports (the global set reports every metric)."""
        return (self.score, self.loss, keys.LOSS)


RECOMMENDATION = TaskFamily(name="recommendation", score=keys.AUC_MEAN, loss=keys.LOGLOSS_MEAN, score_label=keys.AUC,
                            loss_label=keys.LOGLOSS, evaluate=evaluate_split, part_metrics=part_metrics,
                            systems=_recommendation_systems)
CLASSIFICATION = TaskFamily(name="classification", score=keys.ACCURACY, loss=keys.CROSS_ENTROPY,
                            score_label=keys.ACCURACY, loss_label=keys.CROSS_ENTROPY, evaluate=evaluate_classes,
                            part_metrics=part_classes, systems=_classification_systems,
                            cohort=_classification_cohort)
FAMILIES = {family.name: family for family in (RECOMMENDATION, CLASSIFICATION)}


def family_of(model: MDMTModel) -> TaskFamily:
    """The family a model declares (``task_family``); an unknown name is refused with the known ones."""
    name = getattr(model, "task_family", RECOMMENDATION.name)
    if name not in FAMILIES:
        raise UserInputError(f"model {type(model).__name__} declares task_family={name!r}; known: "
                             f"{', '.join(FAMILIES)}")
    return FAMILIES[name]
