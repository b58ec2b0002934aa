"""M2M (Zhang et al., "Leaving No One Behind: A Multi-Scenario Multi-Task Meta Learning Approach for
Advertiser Modeling", WSDM'22): a faithful but compact version.

Parts (§3 of Zhang et al.):

* **Backbone / expert view**: K MLP experts on the feature embeddings. (The paper first encodes the
  user's behaviour sequence with a Transformer; our tables have no sequence features, so the experts
  read the concatenated embeddings directly.)
* **Scenario knowledge** ``S_d``: an embedding of the scenario (domain) indicator through
  ``Linear + LeakyReLU``; **task knowledge** ``T_t``: a learned task embedding through ``Linear +
  LeakyReLU``, of the experts' width.
* **Meta unit**: a layer whose weights are generated from the scenario knowledge,
  ``MetaUnit(x; S) = LeakyReLU(x · reshape(W_g S) + b_g S)``.
* **Meta attention**: for task t and expert e, ``a_{t,e} = vᵀ MetaUnit([E_e; T_t]; S_d)``, softmax over
  the experts, ``R_t = Σ_e a_{t,e} E_e``.
* **Meta tower**: per task, ``L`` residual meta layers ``h ← MetaUnit(h; S_d) + h`` conditioned on the
  scenario, then an output MLP to the task's logit.

The scenario knowledge depends only on the row's domain, so the generated weights are computed once
per domain (D small generations instead of one per row) and each domain's rows are multiplied by
their own domain's weights: the same maths as per-row generation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from m3oe_lightning.data.schema import Batch, FeatureSchema
from m3oe_lightning.errors import UserInputError, check_int
from m3oe_lightning.models.base import RoutedModel, check_domains_tasks
from m3oe_lightning.models.layers import DomainRouting, FeatureEmbedding, GroupedMLP

LEAK = 0.1  # LeakyReLU slope of the meta units


class M2M(RoutedModel):
    """Experts + scenario/task knowledge + meta attention + meta towers.

    Args:
        schema: features, domains and tasks of the data.
        num_experts: K experts (at least 2: attention over one expert is constant).
        expert_dims: widths of each expert's ``Linear (+LayerNorm) + ReLU`` blocks; the last is the
            width k of expert outputs, task knowledge and meta towers.
        expert_layernorm: LayerNorm in the expert blocks.
        scenario_embed_dim / scenario_dim: width of the domain-indicator embedding / of ``S_d``.
        task_embed_dim: width of each learned task embedding.
        attention_dim: width of the meta attention unit's output (scored by ``v``).
        meta_tower_layers: residual meta layers per task tower.
        tower_dims: hidden widths of each task's output MLP before its logit layer.
        embedding_init_std: std of the normal initialisation of the feature embeddings.
        num_domains / num_tasks: optional; when set they must match the data.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        *,
        num_experts: int = 4,
        expert_dims: Sequence[int] = (256, 64),
        expert_layernorm: bool = True,
        scenario_embed_dim: int = 16,
        scenario_dim: int = 32,
        task_embed_dim: int = 16,
        attention_dim: int = 64,
        meta_tower_layers: int = 2,
        tower_dims: Sequence[int] = (64,),
        embedding_init_std: float = 1e-4,
        num_domains: int | None = None,
        num_tasks: int | None = None,
    ) -> None:
        super().__init__(schema)
        check_domains_tasks(schema, num_domains, num_tasks, "M2M")
        check_int("model.num_experts", num_experts, minimum=2)  # the meta attention weighs at least 2 experts
        if not expert_dims:
            raise UserInputError("model.expert_dims is empty: give at least one expert width")
        D, T = self.num_domains, self.num_tasks
        k = expert_dims[-1]
        self.k, self.attention_dim, self.meta_tower_layers = k, attention_dim, meta_tower_layers
        self.embedding = FeatureEmbedding(schema, init_std=embedding_init_std)
        self.experts = GroupedMLP(num_experts, [schema.input_dim, *expert_dims], layernorm=expert_layernorm)
        self.scenario_embedding = nn.Embedding(D, scenario_embed_dim)
        self.scenario_mlp = nn.Linear(scenario_embed_dim, scenario_dim)
        self.task_embedding = nn.Embedding(T, task_embed_dim)
        self.task_mlp = nn.Linear(task_embed_dim, k)
        # meta attention: generated W [2k, a] and b [a] from S, then the scoring vector v [a]
        self.attention_weight = nn.Linear(scenario_dim, 2 * k * attention_dim)
        self.attention_bias = nn.Linear(scenario_dim, attention_dim)
        self.attention_v = nn.Parameter(torch.empty(attention_dim).uniform_(-attention_dim ** -0.5,
                                                                            attention_dim ** -0.5))
        # meta towers: per layer, every task's generated W [k, k] and b [k]
        self.tower_weight = nn.ModuleList(nn.Linear(scenario_dim, T * k * k) for _ in range(meta_tower_layers))
        self.tower_bias = nn.ModuleList(nn.Linear(scenario_dim, T * k) for _ in range(meta_tower_layers))
        self.output = GroupedMLP(T, [k, *tower_dims], layernorm=False, final_dim=1)
        # generated weights start at the scale of a default Linear(fan_in) layer
        for gen, fan_in in [(self.attention_weight, 2 * k)] + [(g, k) for g in self.tower_weight]:
            nn.init.uniform_(gen.weight, -fan_in ** -0.5 / scenario_dim ** 0.5, fan_in ** -0.5 / scenario_dim ** 0.5)
            nn.init.uniform_(gen.bias, -fan_in ** -0.5, fan_in ** -0.5)

    def routed_forward(self, batch: Batch, route: DomainRouting) -> torch.Tensor:
        T, k, a = self.num_tasks, self.k, self.attention_dim
        x = route.sort(self.embedding(batch))
        experts = self.experts(x)  # [K, B, k]
        scenario = F.leaky_relu(self.scenario_mlp(self.scenario_embedding.weight), LEAK)  # [D, s]: S_d
        task = F.leaky_relu(self.task_mlp(self.task_embedding.weight), LEAK)  # [T, k]: T_t
        att_w = self.attention_weight(scenario).view(-1, 2 * k, a)  # [D, 2k, a]
        att_b = self.attention_bias(scenario)  # [D, a]
        logits = []
        for d, rows in route.slices():
            e = experts[:, rows]  # [K, n, k]
            # MetaUnit([E_e; T_t]) = E_e·W[:k] + T_t·W[k:] + b, for every (t, e) pair
            z = (e @ att_w[d, :k]).unsqueeze(0) + (task @ att_w[d, k:] + att_b[d]).view(T, 1, 1, a)
            scores = F.leaky_relu(z, LEAK) @ self.attention_v  # [T, K, n]
            h = torch.einsum("ten,enk->tnk", scores.softmax(dim=1), e)  # [T, n, k]: R_t
            for weight, bias in zip(self.tower_weight, self.tower_bias):
                w = weight(scenario[d]).view(T, k, k)
                b = bias(scenario[d]).view(T, 1, k)
                h = F.leaky_relu(torch.baddbmm(b, h, w), LEAK) + h  # residual meta layer
            logits.append(self.output(h).squeeze(-1).transpose(0, 1))  # [n, T]
        return route.unsort(route.combine(logits))
