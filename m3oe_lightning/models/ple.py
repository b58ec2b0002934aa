"""PLE: Progressive Layered Extraction (Tang et al., "Progressive Layered Extraction (PLE): A Novel
Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys'20).

Each extraction level is a CGC (Customized Gate Control, §4.1 of Tang et al.): every objective has
``num_specific_experts`` experts of its own and shares ``num_shared_experts`` experts; the objective's
gate (a softmax over its own + the shared experts, on the objective's own input) mixes them (Eq. 2–4).
Below the last level a shared gate mixes *all* experts into the shared module's next input, and each
objective's mixture is its next input (§4.2, multi-level extraction, Eq. 5–6). With one level PLE is
CGC. Here the objectives are the D×T (domain, task) pairs, each with its tower; in "-MTL" mode
(D = 1) they are the tasks, in "-MDL" mode (T = 1) the domains.

Levels below the last run on every row (the shared gate needs every objective's experts); the last
level and the towers only run the row's own domain's objectives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from m3oe_lightning.data.schema import Batch, FeatureSchema
from m3oe_lightning.errors import check_int
from m3oe_lightning.models.base import RoutedModel, check_domains_tasks
from m3oe_lightning.models.layers import (
    DomainRouting,
    DomainTaskTowers,
    FeatureEmbedding,
    GroupedLinear,
    GroupedMLP,
    check_level_dims,
)


class _ExtractionLevel(nn.Module):
    """One CGC level: grouped experts ``[objective-specific (objective-major) | shared]`` and gates."""

    def __init__(self, objectives: int, specific: int, shared: int, in_dim: int, dims: Sequence[int],
                 layernorm: bool, last: bool) -> None:
        super().__init__()
        total = objectives * specific + shared
        self.experts = GroupedMLP(total, [in_dim, *dims], layernorm=layernorm)
        self.gates = GroupedLinear(objectives, in_dim, specific + shared)
        self.shared_gate = None if last else nn.Linear(in_dim, total)
        self.output_dim = self.experts.output_dim


class PLE(RoutedModel):
    """Multi-level CGC over the D×T objectives, D×T towers.

    Args:
        schema: features, domains and tasks of the data.
        expert_dims: one list of widths per extraction level: each expert of level l is
            ``[Linear (+LayerNorm) + ReLU]`` blocks of these widths; the number of lists is the
            number of levels (1 = CGC).
        num_specific_experts: experts of each objective, per level.
        num_shared_experts: shared experts, per level.
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
        expert_dims: Sequence[Sequence[int]] = ((256, 128), (64,)),
        num_specific_experts: int = 1,
        num_shared_experts: int = 1,
        expert_layernorm: bool = False,
        tower_dims: Sequence[int] = (64,),
        tower_layernorm: bool = True,
        embedding_init_std: float = 1e-4,
        num_domains: int | None = None,
        num_tasks: int | None = None,
    ) -> None:
        super().__init__(schema)
        check_domains_tasks(schema, num_domains, num_tasks, "PLE")
        check_level_dims(expert_dims)
        check_int("model.num_specific_experts", num_specific_experts)
        check_int("model.num_shared_experts", num_shared_experts)
        D, T = self.num_domains, self.num_tasks
        self.num_objectives = G = D * T
        self.num_specific, self.num_shared = num_specific_experts, num_shared_experts
        self.embedding = FeatureEmbedding(schema, init_std=embedding_init_std)
        levels, in_dim = [], schema.input_dim
        for i, dims in enumerate(expert_dims):
            level = _ExtractionLevel(G, num_specific_experts, num_shared_experts, in_dim, dims, expert_layernorm,
                                     last=i == len(expert_dims) - 1)
            levels.append(level)
            in_dim = level.output_dim
        self.levels = nn.ModuleList(levels)
        # which module's input each expert reads: objective o for its experts, G = D·T (the shared module) after
        module_of_expert = [o for o in range(G) for _ in range(num_specific_experts)] + [G] * num_shared_experts
        self.register_buffer("module_of_expert", torch.tensor(module_of_expert), persistent=False)
        self.towers = DomainTaskTowers(D, T, in_dim, tower_dims, tower_layernorm)

    def _mix(self, gates: torch.Tensor, specific: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """Gates ``[G, B, Ks+Ksh]`` over ``specific [G, Ks, B, k]`` and ``shared [Ksh, B, k]`` → ``[G, B, k]``."""
        Ks = self.num_specific
        return (torch.einsum("gbs,gsbk->gbk", gates[..., :Ks], specific)
                + torch.einsum("gbs,sbk->gbk", gates[..., Ks:], shared))

    def _extract(self, level: _ExtractionLevel, inputs: torch.Tensor) -> torch.Tensor:
        """A level below the last, on every row: ``[B, k]`` (level 1) or ``[G+1, B, k]`` → ``[G+1, B, k']``."""
        G, Ks = self.num_objectives, self.num_specific
        if inputs.dim() == 2:  # every module reads the embeddings
            experts, gates, shared_in = level.experts(inputs), level.gates(inputs), inputs
        else:
            experts = level.experts(inputs.index_select(0, self.module_of_expert))
            gates, shared_in = level.gates(inputs[:G]), inputs[G]
        B, k = experts.shape[1:]
        mixed = self._mix(gates.softmax(dim=-1), experts[:G * Ks].view(G, Ks, B, k), experts[G * Ks:])
        shared_gate = level.shared_gate(shared_in).softmax(dim=-1)  # [B, E]: over every expert
        shared = torch.einsum("be,ebk->bk", shared_gate, experts)
        return torch.cat([mixed, shared.unsqueeze(0)])

    def routed_forward(self, batch: Batch, route: DomainRouting) -> torch.Tensor:
        T, G, Ks = self.num_tasks, self.num_objectives, self.num_specific
        inputs = route.sort(self.embedding(batch))
        for level in self.levels[:-1]:
            inputs = self._extract(level, inputs)
        last = self.levels[-1]
        shared = last.experts(inputs if inputs.dim() == 2 else inputs[G], slice(G * Ks, None))  # [Ksh, B, k]
        logits = []
        for d, rows in route.slices():
            objectives = slice(d * T, (d + 1) * T)
            own = inputs[rows] if inputs.dim() == 2 else inputs[objectives, rows]  # [n, k] or [T, n, k]
            expert_in = own if own.dim() == 2 else own.repeat_interleave(Ks, dim=0)
            specific = last.experts(expert_in, slice(d * T * Ks, (d + 1) * T * Ks))  # [T·Ks, n, k]
            specific = specific.view(T, Ks, *specific.shape[1:])
            gates = last.gates(own, objectives).softmax(dim=-1)  # [T, n, Ks+Ksh]
            logits.append(self.towers(self._mix(gates, specific, shared[:, rows]), d))
        return route.unsort(route.combine(logits))
