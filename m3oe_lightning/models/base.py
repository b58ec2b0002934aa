"""The one interface every model implements (DESIGN.md, property 1).

A model is built from a :class:`FeatureSchema`; ``forward(batch)`` returns logits of shape ``[B, T]``:
one logit per task for the row's own domain. Nothing outside a model branches on its type: the
training system only asks for :meth:`architecture_parameters` (possibly empty), which the AutoML
step optimises separately, and :meth:`architecture_weights` for logging.
"""

from __future__ import annotations

import torch
from torch import nn

from m3oe_lightning.data.schema import Batch, FeatureSchema


class MDMTModel(nn.Module):
    """Base class: holds the schema, exposes the architecture (fusion) parameters."""

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__()
        self.schema = schema
        self.num_domains = schema.num_domains
        self.num_tasks = schema.num_tasks

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def architecture_parameters(self) -> list[nn.Parameter]:
        """Logits of the AutoML-tuned weights (each weight is ``sigmoid(logit)``); empty by default.

        Setting them to 0 fixes every weight at 0.5 (the paper's "w/o AutoML" ablation).
        """
        return []

    def model_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not an architecture parameter."""
        arch = {id(p) for p in self.architecture_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def architecture_weights(self) -> dict[str, float]:
        """Current fusion weights (after the sigmoid) by name, for logging."""
        return {}
