"""``ClassifierModule``: the LightningModule of the classification task family (PAGE's Synthetic setting).

One logit per class, cross-entropy loss, accuracy. It offers what the federated client asks of a training
system (``extra_loss`` for FedProx's and Ditto's proximal terms), so a classifier federates through the same
client, strategies and ``Simulation`` as a recommender. Its optimiser is PAGE's (SGD with weight decay and a
gradient-norm clip; docs/page.md) or Adam, as ``optimizer.name`` says. Optimisation is manual, as in
``MDMTModule``, so the clip is applied here and does not depend on the Trainer's settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.data.schema import Batch
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.models.base import MDMTModel

OPTIMIZERS = ("sgd", "adam")


def class_labels(batch: Batch) -> torch.Tensor:
    """The batch's class indices (stored as one float label column, as every dataset's labels are)."""
    return batch["labels"].reshape(-1).long()


def row_cross_entropy(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per-row cross-entropy of logits ``[..., C]`` against the batch's class labels (any leading shape): the
    loss this module takes the mean of, per row, for the cohort fits (:mod:`.cohort`)."""
    labels = batch["labels"].reshape(logits.shape[:-1]).long()
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="none").view(labels.shape)


class ClassifierModule(L.LightningModule):
    """Training system around a classifier (a model of ``task_family = "classification"``).

    Args:
        model: the network; ``forward(batch)`` gives ``[B, num_classes]`` logits.
        lr / weight_decay: the optimiser's.
        optimizer: ``sgd`` (PAGE's) or ``adam``.
        clip_grad_norm: clip the gradients' total L2 norm to this before each step (``None``: no clip).
    """

    def __init__(self, model: MDMTModel, *, lr: float = 1e-2, weight_decay: float = 0.0, optimizer: str = "sgd",
                 clip_grad_norm: float | None = None) -> None:
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise UserInputError(f"optimizer.name={optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        self.save_hyperparameters(ignore=["model"], logger=False)
        self.automatic_optimization = False
        self.model = model
        # as MDMTModule's: FedProx's / Ditto's term, a plain callable of the model (not a submodule)
        self.extra_loss: Callable[[nn.Module], torch.Tensor] | None = None

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(batch)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        loss = F.cross_entropy(self.model(batch), class_labels(batch))
        objective = loss if self.extra_loss is None else loss + self.extra_loss(self.model)
        optimizer.zero_grad()
        self.manual_backward(objective)
        if self.hparams.clip_grad_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=float(self.hparams.clip_grad_norm),
                                gradient_clip_algorithm="norm")
        optimizer.step()
        self.log(keys.key("train", keys.LOSS), loss.detach(), on_step=False, on_epoch=True,
                 batch_size=batch["labels"].shape[0])
        return loss.detach()

    def _eval_step(self, batch: Batch, stage: str) -> None:
        logits, labels = self.model(batch), class_labels(batch)
        n = labels.shape[0]
        self.log(keys.key(stage, keys.LOSS), F.cross_entropy(logits, labels), on_epoch=True, batch_size=n)
        self.log(keys.key(stage, keys.ACCURACY), (logits.argmax(1) == labels).float().mean(), on_epoch=True,
                 batch_size=n)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return torch.optim.SGD(self.model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
