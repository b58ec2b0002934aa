"""Evaluate a model on one encoded split with the training system's own metrics.

Two task families (:mod:`~m3oe_lightning.federated.families` chooses): :func:`evaluate_split` /
:func:`part_metrics` for recommendation (per-(domain, task) AUC and logloss), :func:`evaluate_classes` /
:func:`part_classes` for classification (accuracy and cross-entropy).

The same :class:`~m3oe_lightning.training.metrics.DomainTaskMetrics` and loss as
``MDMTModule.test_step``, without building a Trainer for a forward pass: the server evaluates the
global model on the pooled global and held-out test sets every round, and clients evaluate their
personalized model on their local test split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.data.datamodule import TensorBatchLoader
from m3oe_lightning.data.schema import EncodedSplit
from m3oe_lightning.models.base import MDMTModel, forward_in_chunks
from m3oe_lightning.training.metrics import DomainTaskMetrics, grouped_bce_loss


@torch.inference_mode()
def evaluate_split(model: MDMTModel, split: EncodedSplit, batch_size: int = 65536,
                   keep_logits: list[torch.Tensor] | None = None) -> dict[str, float]:
    """``auc_mean``, ``logloss_mean``, ``loss``, ``auc/{domain}/{task}``, ``logloss/{domain}/{task}`` and the
    pooled ``auc_pooled/{task}``, ``logloss_pooled/{task}``, ``auc_pooled_mean``, ``logloss_pooled_mean``.

    A split without rows gives ``{}``; groups with one label class have no AUC (left out of the mean).
    ``keep_logits``: each batch's logits are appended to it (for :func:`part_metrics`, without a second pass).
    """
    if len(split) == 0:
        return {}
    was_training = model.training
    model.eval()
    metrics = DomainTaskMetrics(model.schema.domains, model.schema.tasks)
    loss_sum, rows = 0.0, 0
    for batch in TensorBatchLoader(split=split, batch_size=batch_size, shuffle=False):
        logits = forward_in_chunks(model, batch)
        if keep_logits is not None:
            keep_logits.append(logits)
        metrics.update(logits, batch["labels"], batch["domain"])
        n = int(batch["domain"].shape[0])
        loss_sum += float(grouped_bce_loss(logits, batch["labels"], batch["domain"], model.num_domains)) * n
        rows += n
    model.train(was_training)
    out = {key: float(value) for key, value in metrics.compute().items()}
    out[keys.LOSS] = loss_sum / rows
    return out


def part_metrics(model: MDMTModel, split: EncodedSplit, logits: torch.Tensor,
                 part_rows: Sequence[int]) -> list[dict[str, float]]:
    """The metrics (without ``loss``) of each consecutive part of ``split`` (``part_rows`` rows each, e.g. each
    client's rows of the pooled test set) from the split's ``logits`` (``evaluate_split(keep_logits=...)``)."""
    if sum(part_rows) != len(split) or logits.shape[0] != len(split):
        raise ValueError(f"parts of {sum(part_rows)} rows and {logits.shape[0]} logits for a split of {len(split)}")
    out: list[dict[str, float]] = []
    start = 0
    for size in part_rows:
        end = start + int(size)
        metrics = DomainTaskMetrics(model.schema.domains, model.schema.tasks)
        if end > start:
            metrics.update(logits[start:end], split.labels[start:end], split.domain[start:end])
            out.append({key: float(value) for key, value in metrics.compute().items()})
        else:
            out.append({})
        start = end
    return out


def _class_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    classes = labels.reshape(-1).long()
    cross_entropy = float(F.cross_entropy(logits, classes))
    return {keys.ACCURACY: float((logits.argmax(1) == classes).double().mean()), keys.CROSS_ENTROPY: cross_entropy}


@torch.inference_mode()
def evaluate_classes(model: MDMTModel, split: EncodedSplit, batch_size: int = 65536,
                     keep_logits: list[torch.Tensor] | None = None) -> dict[str, float]:
    """``accuracy``, ``cross_entropy`` and ``loss`` (= the cross-entropy) of a classifier on ``split``; ``{}``
    for a split without rows. ``keep_logits`` as :func:`evaluate_split`'s."""
    if len(split) == 0:
        return {}
    was_training = model.training
    model.eval()
    logits = torch.cat([model(batch) for batch in TensorBatchLoader(split=split, batch_size=batch_size,
                                                                    shuffle=False)])
    model.train(was_training)
    if keep_logits is not None:
        keep_logits.append(logits)
    out = _class_metrics(logits, split.labels)
    out[keys.LOSS] = out[keys.CROSS_ENTROPY]
    return out


def part_classes(model: MDMTModel, split: EncodedSplit, logits: torch.Tensor,
                 part_rows: Sequence[int]) -> list[dict[str, float]]:
    """:func:`part_metrics` for a classifier: each consecutive part's accuracy and cross-entropy."""
    if sum(part_rows) != len(split) or logits.shape[0] != len(split):
        raise ValueError(f"parts of {sum(part_rows)} rows and {logits.shape[0]} logits for a split of {len(split)}")
    bounds = np.cumsum([0, *part_rows])
    return [_class_metrics(logits[a:b], split.labels[a:b]) if b > a else {} for a, b in zip(bounds, bounds[1:])]


def finite(value: float | None) -> bool:
    """A metric value that exists and is a real number (a group without an AUC gives NaN)."""
    return value is not None and not math.isnan(value) and not math.isinf(value)
