"""AdaTT: Adaptive Task-to-Task Fusion Network (Li et al., "AdaTT: Adaptive Task-to-Task Fusion Network
for Multitask Learning in Recommendations", KDD'23; reference code facebookresearch/AdaTT ``mtl_lib.py``).

Every objective has a task-specific fusion unit of ``num_task_experts`` experts; an optional shared
unit has ``num_shared_experts``. At each fusion level, each unit's experts read that unit's input, and
each unit's output is

    gate_u(x_u) · [all experts of all units]  +  Σ_{native experts j of u} v_{u,j} · E_j(x_u)

a softmax gate over *every* expert (task-to-task fusion) plus a residual linear combination of the
unit's own (native) experts (unit weights v = 1 when every unit has one expert). The shared unit has
no gate at the last level (its experts are still mixed by the task gates). Towers sit on top.

``num_shared_experts: 0`` is AdaTT-sp (the paper's "AdaTT without its shared module").
Here the objectives are the D×T (domain, task) pairs; in the M3oE paper's rows AdaTT runs in "-MTL"
mode (one model per domain, D = 1), so they are the tasks. Every level runs all experts on every
row (each gate mixes every unit's experts); only the last level's gates and the towers are routed to
the row's own domain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from m3oe_lightning.data.schema import Batch, FeatureSchema
from m3oe_lightning.errors import UserInputError, check_int
from m3oe_lightning.models.base import RoutedModel, check_domains_tasks
from m3oe_lightning.models.layers import (
    DomainRouting,
    DomainTaskTowers,
    FeatureEmbedding,
    GroupedLinear,
    GroupedMLP,
    check_level_dims,
)


class _FusionLevel(nn.Module):
    """Grouped experts ``[task units (objective-major) | shared unit]``, one gate per active unit, and
    the native-expert residual weights (absent when every unit has one expert: weights are then 1)."""

    def __init__(self, objectives: int, task_experts: int, shared_experts: int, in_dim: int, dims: Sequence[int],
                 layernorm: bool, last: bool, residual: bool, learned_residual: bool) -> None:
        super().__init__()
        total = objectives * task_experts + shared_experts
        self.active_units = objectives + (1 if shared_experts and not last else 0)
        self.experts = GroupedMLP(total, [in_dim, *dims], layernorm=layernorm)
        self.gates = GroupedLinear(self.active_units, in_dim, total)
        self.task_residual = self.shared_residual = None
        if residual and learned_residual:  # uniform(±sqrt(1/K)) as the reference code
            bound = math.sqrt(1.0 / task_experts)
            self.task_residual = nn.Parameter(torch.empty(objectives, task_experts).uniform_(-bound, bound))
            if self.active_units > objectives:
                bound = math.sqrt(1.0 / shared_experts)
                self.shared_residual = nn.Parameter(torch.empty(shared_experts).uniform_(-bound, bound))
        self.objectives, self.task_experts, self.shared_experts = objectives, task_experts, shared_experts
        self.residual = residual
        self.output_dim = self.experts.output_dim

    def residual_matrix(self) -> torch.Tensor | None:
        """``[active units, experts]``: each unit's weights on its native experts, 0 elsewhere."""
        if not self.residual:
            return None
        G, Kt, Ks = self.objectives, self.task_experts, self.shared_experts
        weight = self.gates.weight
        v = self.task_residual if self.task_residual is not None else weight.new_ones(G, Kt)
        task = (torch.eye(G, dtype=v.dtype, device=v.device).unsqueeze(-1) * v.unsqueeze(0)).reshape(G, G * Kt)
        rows = [torch.cat([task, weight.new_zeros(G, Ks)], dim=1)]
        if self.active_units > G:
            s = self.shared_residual if self.shared_residual is not None else weight.new_ones(Ks)
            rows.append(torch.cat([weight.new_zeros(G * Kt), s]).unsqueeze(0))
        return torch.cat(rows)


class AdaTT(RoutedModel):
    """AdaTT (with a shared unit) or AdaTT-sp (``num_shared_experts=0``) over the D×T objectives.

    Args:
        schema: features, domains and tasks of the data.
        expert_dims: one list of widths per fusion level; each expert of level l is
            ``[Linear (+LayerNorm) + ReLU]`` blocks of these widths.
        num_task_experts: experts of each objective's unit, per level.
        num_shared_experts: experts of the shared unit, per level; 0 = AdaTT-sp.
        expert_layernorm: LayerNorm in the expert blocks (the reference code's experts are Linear + ReLU).
        self_exp_res_connect: the native-expert residual (the reference code: "crucial", keep it on).
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
        num_task_experts: int = 2,
        num_shared_experts: int = 1,
        expert_layernorm: bool = False,
        self_exp_res_connect: bool = True,
        tower_dims: Sequence[int] = (64,),
        tower_layernorm: bool = True,
        embedding_init_std: float = 1e-4,
        num_domains: int | None = None,
        num_tasks: int | None = None,
    ) -> None:
        super().__init__(schema)
        check_domains_tasks(schema, num_domains, num_tasks, "AdaTT")
        check_level_dims(expert_dims)
        check_int("model.num_task_experts", num_task_experts)
        check_int("model.num_shared_experts", num_shared_experts, minimum=0)  # 0 = AdaTT-sp
        D, T = self.num_domains, self.num_tasks
        self.num_objectives = G = D * T
        self.num_task_experts, self.num_shared_experts = num_task_experts, num_shared_experts
        if G * num_task_experts + num_shared_experts < 2:
            raise UserInputError("AdaTT needs at least 2 experts in all to gate: raise model.num_task_experts")
        learned = any(k != 1 for k in [num_task_experts] + ([num_shared_experts] if num_shared_experts else []))
        self.embedding = FeatureEmbedding(schema, init_std=embedding_init_std)
        levels, in_dim = [], schema.input_dim
        for i, dims in enumerate(expert_dims):
            level = _FusionLevel(G, num_task_experts, num_shared_experts, in_dim, dims, expert_layernorm,
                                 last=i == len(expert_dims) - 1, residual=self_exp_res_connect,
                                 learned_residual=learned)
            levels.append(level)
            in_dim = level.output_dim
        self.levels = nn.ModuleList(levels)
        unit_of_expert = [o for o in range(G) for _ in range(num_task_experts)] + [G] * num_shared_experts
        self.register_buffer("unit_of_expert", torch.tensor(unit_of_expert), persistent=False)
        self.towers = DomainTaskTowers(D, T, in_dim, tower_dims, tower_layernorm)

    def _experts(self, level: _FusionLevel, inputs: torch.Tensor) -> torch.Tensor:
        """Every expert on every row, each on its unit's input → ``[E, B, k]``."""
        if inputs.dim() == 2:  # level 1: every unit reads the embeddings
            return level.experts(inputs)
        return level.experts(inputs.index_select(0, self.unit_of_expert))

    def routed_forward(self, batch: Batch, route: DomainRouting) -> torch.Tensor:
        T = self.num_tasks
        inputs = route.sort(self.embedding(batch))  # [B, k]: level 1, shared by all units
        for level in self.levels[:-1]:
            experts = self._experts(level, inputs)
            gate_in = inputs if inputs.dim() == 2 else inputs[:level.active_units]
            gates = level.gates(gate_in).softmax(dim=-1)  # [U, B, E]
            residual = level.residual_matrix()
            if residual is not None:
                gates = gates + residual.unsqueeze(1)
            inputs = torch.einsum("ube,ebk->ubk", gates, experts)  # [U, B, k]: each unit's next input
        last = self.levels[-1]
        experts = self._experts(last, inputs)
        residual = last.residual_matrix()
        logits = []
        for d, rows in route.slices():
            objectives = slice(d * T, (d + 1) * T)
            gate_in = inputs[rows] if inputs.dim() == 2 else inputs[objectives, rows]
            gates = last.gates(gate_in, objectives).softmax(dim=-1)  # [T, n, E]
            if residual is not None:
                gates = gates + residual[objectives].unsqueeze(1)
            logits.append(self.towers(torch.einsum("tbe,ebk->tbk", gates, experts[:, rows]), d))
        return route.unsort(route.combine(logits))
