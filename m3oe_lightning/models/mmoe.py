"""MMoE: Multi-gate Mixture-of-Experts (Ma et al., "Modeling Task Relationships in Multi-task Learning
with Multi-gate Mixture-of-Experts", KDD'18), as the M3oE paper's MMOE-MDMT baseline.

N shared experts; one softmax gate per (domain, task) objective on the feature embeddings (Eq. 5–6 of
Ma et al.: ``f^k(x) = Σ_i g^k(x)_i f_i(x)``, ``g^k(x) = softmax(W_gk x)``); D×T towers. The structure
follows the M3oE authors' compiled MMOE-MDMT baseline (docs/m3oe.md §1.2): experts are MLP_N
stacks (``Linear + LayerNorm + ReLU`` blocks) on the embedding, gates ``Linear(input_dim → N) +
Softmax`` on the raw embedding, towers ``Linear + LayerNorm + ReLU + Linear``. Only the row's own
domain's T gates and towers are evaluated. "-MTL" (D = 1: T gates) and "-MDL" (T = 1: D gates) wrap it in
:class:`~m3oe_lightning.models.split.SplitByGroup`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from m3oe_lightning.data.schema import Batch, FeatureSchema
from m3oe_lightning.errors import check_int
from m3oe_lightning.models.base import RoutedModel, check_domains_tasks
from m3oe_lightning.models.layers import (
    DomainRouting,
    DomainTaskTowers,
    FeatureEmbedding,
    GroupedLinear,
    GroupedMLP,
)


class MMoE(RoutedModel):
    """N shared experts, D×T gates, D×T towers.

    Args:
        schema: features, domains and tasks of the data.
        num_experts: N shared experts (at least 2: with one expert a softmax gate is constant).
        expert_dims: widths of each expert's ``Linear (+LayerNorm) + ReLU`` blocks.
        expert_layernorm: LayerNorm in the expert blocks.
        tower_dims: hidden widths of each (domain, task) tower before its logit layer.
        tower_layernorm: LayerNorm in the towers.
        embedding_init_std: std of the normal initialisation of the embeddings.
        num_domains / num_tasks: optional; when set they must match the data.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        *,
        num_experts: int = 4,
        expert_dims: Sequence[int] = (256, 128, 64),
        expert_layernorm: bool = True,
        tower_dims: Sequence[int] = (64,),
        tower_layernorm: bool = True,
        embedding_init_std: float = 1e-4,
        num_domains: int | None = None,
        num_tasks: int | None = None,
    ) -> None:
        super().__init__(schema)
        check_domains_tasks(schema, num_domains, num_tasks, "MMoE")
        check_int("model.num_experts", num_experts, minimum=2)  # with one expert the softmax gate is constant
        D, T = self.num_domains, self.num_tasks
        self.num_experts = num_experts
        self.embedding = FeatureEmbedding(schema, init_std=embedding_init_std)
        self.experts = GroupedMLP(num_experts, [schema.input_dim, *expert_dims], layernorm=expert_layernorm)
        # gate (d, t) is columns [t·N, (t+1)·N) of domain d's Linear(input → T·N)
        self.gates = GroupedLinear(D, schema.input_dim, T * num_experts)
        self.towers = DomainTaskTowers(D, T, self.experts.output_dim, tower_dims, tower_layernorm)

    def routed_forward(self, batch: Batch, route: DomainRouting) -> torch.Tensor:
        T, N = self.num_tasks, self.num_experts
        x = route.sort(self.embedding(batch))
        experts = self.experts(x)  # [N, B, k]
        logits = []
        for d, rows in route.slices():
            g = self.gates(x[rows], slice(d, d + 1))[0].view(-1, T, N).softmax(dim=-1)  # [B_d, T, N]
            fused = torch.einsum("btn,nbk->tbk", g, experts[:, rows])  # [T, B_d, k]
            logits.append(self.towers(fused, d))
        return route.unsort(route.combine(logits))
