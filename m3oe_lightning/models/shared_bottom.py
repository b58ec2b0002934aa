"""Shared-Bottom (Caruana, "Multitask Learning", Machine Learning 28, 1997), the M3oE paper's "ShBot".

One bottom network shared by every (domain, task) objective, then D×T towers: tower ``(d, t)`` gives
task ``t`` for rows of domain ``d`` (only the row's own domain's towers are evaluated). The bottom is a
plain ``Linear + ReLU`` stack as in Caruana's hard parameter sharing (``bottom_layernorm`` adds the
released M3oE code's LayerNorm), as wide as the MMoE baseline's experts; the towers are the M3oE
code's ``Linear + LayerNorm + ReLU + Linear``. "-MTL" / "-MDL" rows wrap it in
:class:`~m3oe_lightning.models.split.SplitByGroup`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from m3oe_lightning.data.schema import Batch, FeatureSchema
from m3oe_lightning.models.base import RoutedModel, check_domains_tasks
from m3oe_lightning.models.layers import DomainRouting, DomainTaskTowers, FeatureEmbedding, mlp_blocks


class SharedBottom(RoutedModel):
    """Shared bottom MLP + D×T towers.

    Args:
        schema: features, domains and tasks of the data.
        bottom_dims: widths of the shared bottom's ``Linear (+LayerNorm) + ReLU`` blocks.
        bottom_layernorm: LayerNorm in the bottom blocks.
        tower_dims: hidden widths of each (domain, task) tower before its logit layer.
        tower_layernorm: LayerNorm in the towers.
        embedding_init_std: std of the normal initialisation of the embeddings.
        num_domains / num_tasks: optional; when set they must match the data.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        *,
        bottom_dims: Sequence[int] = (256, 128, 64),
        bottom_layernorm: bool = False,
        tower_dims: Sequence[int] = (64,),
        tower_layernorm: bool = True,
        embedding_init_std: float = 1e-4,
        num_domains: int | None = None,
        num_tasks: int | None = None,
    ) -> None:
        super().__init__(schema)
        check_domains_tasks(schema, num_domains, num_tasks, "SharedBottom")
        self.embedding = FeatureEmbedding(schema, init_std=embedding_init_std)
        self.bottom = mlp_blocks([schema.input_dim, *bottom_dims], layernorm=bottom_layernorm)
        out_dim = bottom_dims[-1] if bottom_dims else schema.input_dim
        self.towers = DomainTaskTowers(self.num_domains, self.num_tasks, out_dim, tower_dims, tower_layernorm)

    def routed_forward(self, batch: Batch, route: DomainRouting) -> torch.Tensor:
        h = self.bottom(route.sort(self.embedding(batch)))
        logits = [self.towers(h[rows], d) for d, rows in route.slices()]
        return route.unsort(route.combine(logits))
