"""MLP baseline of the M3oE paper (Zhang et al., SIGIR'24, §3.2: "Linear + ReLU + LayerNorm").

One independent tower per task on the concatenated feature embeddings:
``[Linear + ReLU + LayerNorm] * len(hidden_dims)`` then ``Linear → 1``. It does not look at the domain
except through the embedded domain feature. The paper's "MLP" row trains one such network per
(domain, task): ``SplitByGroup(split="domain_task", base=MLP)`` (``experiment=paper/mlp``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from m3oe_lightning.data.schema import Batch, FeatureSchema
from m3oe_lightning.models.base import MDMTModel, check_domains_tasks
from m3oe_lightning.models.layers import FeatureEmbedding, GroupedMLP


class MLP(MDMTModel):
    """T task towers over the shared feature embeddings.

    Args:
        schema: features, domains and tasks of the data.
        hidden_dims: widths of each tower's ``Linear + ReLU + LayerNorm`` blocks.
        layernorm: keep the LayerNorm of each block.
        embedding_init_std: std of the normal initialisation of the embeddings.
        num_domains / num_tasks: optional; when set they must match the data.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        *,
        hidden_dims: Sequence[int] = (256, 128, 64),
        layernorm: bool = True,
        embedding_init_std: float = 1e-4,
        num_domains: int | None = None,
        num_tasks: int | None = None,
    ) -> None:
        super().__init__(schema)
        check_domains_tasks(schema, num_domains, num_tasks, "MLP")
        self.embedding = FeatureEmbedding(schema, init_std=embedding_init_std)
        self.towers = GroupedMLP(self.num_tasks, [schema.input_dim, *hidden_dims], layernorm=layernorm,
                                 final_dim=1, norm_after_activation=True)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.embedding(batch)
        return self.towers(x).squeeze(-1).transpose(0, 1)  # [T, B, 1] → [B, T]
