"""Evaluate a model on one encoded split with the training system's own metrics.

The same :class:`~m3oe_lightning.training.metrics.DomainTaskMetrics` and loss as
``MDMTModule.test_step``, without building a Trainer for a forward pass: the server evaluates the
global model on the pooled global and held-out test sets every round, and clients evaluate their
personalized model on their local test split.
"""

from __future__ import annotations

import math

import torch

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.data.datamodule import TensorBatchLoader
from m3oe_lightning.data.schema import EncodedSplit
from m3oe_lightning.models.base import MDMTModel, forward_in_chunks
from m3oe_lightning.training.metrics import DomainTaskMetrics, grouped_bce_loss


@torch.inference_mode()
def evaluate_split(model: MDMTModel, split: EncodedSplit, batch_size: int = 65536) -> dict[str, float]:
    """``auc_mean``, ``logloss_mean``, ``loss`` and ``auc/{domain}/{task}``, ``logloss/{domain}/{task}``.

    A split without rows gives ``{}``; groups with one label class have no AUC (left out of the mean).
    """
    if len(split) == 0:
        return {}
    was_training = model.training
    model.eval()
    metrics = DomainTaskMetrics(model.schema.domains, model.schema.tasks)
    loss_sum, rows = 0.0, 0
    for batch in TensorBatchLoader(split=split, batch_size=batch_size, shuffle=False):
        logits = forward_in_chunks(model, batch)
        metrics.update(logits, batch["labels"], batch["domain"])
        n = int(batch["domain"].shape[0])
        loss_sum += float(grouped_bce_loss(logits, batch["labels"], batch["domain"], model.num_domains)) * n
        rows += n
    model.train(was_training)
    out = {key: float(value) for key, value in metrics.compute().items()}
    out[keys.LOSS] = loss_sum / rows
    return out


def finite(value: float | None) -> bool:
    """A metric value that exists and is a real number (a group without an AUC gives NaN)."""
    return value is not None and not math.isnan(value) and not math.isinf(value)
