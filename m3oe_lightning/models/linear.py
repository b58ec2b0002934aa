"""A linear softmax classifier over the dense features: the model of PAGE's Synthetic setting.

PAGE's released code trains ``nn.Linear(30, 30)`` from zero weights on its Synthetic data (docs/page.md,
"The Synthetic generator"); this is that model inside the framework, so the project's own strategies,
clients and ``Simulation`` federate it. It belongs to the ``classification`` task family
(:mod:`m3oe_lightning.federated.families`): one logit per class, scored by accuracy and cross-entropy, not
one logit per task scored by AUC.
"""

from __future__ import annotations

import torch
from torch import nn

from m3oe_lightning.data.schema import NUM_CLASSES, Batch, FeatureSchema
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.models.base import MDMTModel


class LinearClassifier(MDMTModel):
    """``logits = x W^T + b`` over ``batch["dense"]``; zero-initialised (as PAGE's code) unless told otherwise.

    Args:
        schema: the data's schema; its ``extras["num_classes"]`` gives the output width.
        zero_init: start from all-zero weights and bias (PAGE's Synthetic runs) instead of PyTorch's default.
    """

    task_family = "classification"

    def __init__(self, schema: FeatureSchema, zero_init: bool = True) -> None:
        super().__init__(schema)
        num_classes = schema.extras.get(NUM_CLASSES)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise UserInputError(f"model=linear needs class labels: data {', '.join(schema.tasks)} declares no "
                                 f"num_classes ≥ 2; use a classification dataset (data=page_synthetic)")
        if schema.sparse:
            raise UserInputError("model=linear reads dense features only; this data has sparse ids "
                                 f"({', '.join(f.name for f in schema.sparse)}): use a recommendation model")
        self.num_classes = num_classes
        self.linear = nn.Linear(len(schema.dense), num_classes)
        if zero_init:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.linear(batch["dense"])
