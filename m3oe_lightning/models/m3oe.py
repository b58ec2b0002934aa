"""M3oE: Multi-Domain Multi-Task Mixture-of-Experts (Zhang et al., SIGIR'24, arXiv 2404.18465).

Layers, bottom to top (equation numbers from the paper; see docs/m3oe.md):

1. Domain representation (STAR-style, Eq. 1–2): ``f_DR(x) = x (W_d ⊙ W_sh) + b_d + b_sh`` for the
   row's own domain d, then ``h = W_c f_DR(x) + b_c + f_DA(x)`` with a skip path ``f_DA``.
2. Experts: N shared experts mixed per (domain, task) by a softmax gate (Eq. 4); D domain experts and
   T task experts, every row through all of them.
3. Two-level fusion: level 1 (Eq. 5–6) ``β·own + (1-β)/(K-1)·Σ others`` inside the domain and the task
   module; level 2 (Eq. 7, with the pairing the paper's text and code use) ``h̄ = S + α_d·D + α_t·T``.
   Each weight is ``sigmoid(e)`` of a trainable logit (Eq. 10), tuned by the AutoML step.
4. D×T towers (Eq. 8); only the row's own domain's T towers are evaluated.

Differences of the released code (Applied-Machine-Learning-Lab/M3oE @1b30217) are switches:
``num_shared_experts`` (code: 4), ``tower_layernorm`` (code: True), ``gate_detach`` (code: True),
``bottom_layernorm`` (code: LayerNorm+ReLU after ``W_c``), and the ``joint`` AutoML mode (training
system). Rows are routed to their own domain's STAR weights and towers instead of computing every
domain on every row: the same maths, a fraction of the work.

Table 3 ablations are switches: ``use_domain_experts`` / ``use_task_experts`` ("w/o domain / task
module"), ``fusion=concat`` ("concat modules": the tower input is ``[S; D; T]``, no α weights) and
``fusion=gated`` ("fully gated modules": each (d, t) gate is a softmax over the N shared experts, the
level-1 domain vector and the level-1 task vector, replacing α; the authors' compiled
``Ablation_full_gate``); "w/o AutoML" is the training system's ``automl.mode=off``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from m3oe_lightning.data.schema import Batch, FeatureSchema
from m3oe_lightning.errors import UserInputError, check_int
from m3oe_lightning.models.base import PersonalSlices, RoutedModel, check_domains_tasks
from m3oe_lightning.models.layers import DomainRouting, FeatureEmbedding, GroupedLinear, GroupedMLP, mlp_blocks

Granularity = Literal["scalar", "per_domain", "per_task"]
Fusion = Literal["add", "concat", "gated"]
FUSION_WEIGHTS = ("alpha_d", "alpha_t", "beta_d", "beta_t")


class M3oE(RoutedModel):
    """M3oE with the paper's equations as defaults and the released code's choices as switches.

    Args:
        schema: features, domains and tasks of the data.
        star_dim: width of the STAR layer ``f_DR`` (code: 512).
        bottom_dim: width of ``h`` after ``W_c`` and of the skip path (code: 256).
        bottom_layernorm: LayerNorm + ReLU after ``W_c`` (code) instead of the paper's linear map.
        expert_dims: widths of each expert's ``Linear + LayerNorm + ReLU`` blocks after ``h``.
        num_shared_experts: N (paper: 1 on MovieLens, 4 on KuaiRand; code: 4).
        tower_dims: hidden widths of each tower before its logit layer.
        tower_layernorm: LayerNorm in the towers (code) or not (paper, Eq. 8).
        gate_detach: gates see ``h.detach()`` (code) or ``h`` (paper).
        fusion_granularity: one value per fusion weight (``scalar``, paper and code), or one per
            domain / per task of the (domain, task) objective.
        fusion_init: initial raw logit of every fusion weight (code: 1.0 → sigmoid 0.731).
        use_domain_experts / use_task_experts: keep the domain / task module (ablations).
        use_star_layer: keep the domain-specific STAR layer and ``W_c`` (Eq. 1–2); when false ``h`` is the
            skip path ``f_DA(x)`` alone. Not a paper ablation: it tests whether the gain over MMoE comes
            from this bottom rather than from the expert modules (see experiments/movielens/README.md).
        fusion: level-2 fusion: ``add`` (Eq. 7, ``S + α_d·D + α_t·T``), ``concat`` (towers read
            ``[S; D; T]``, no α) or ``gated`` (a softmax gate over ``[S_1..S_N, D, T]`` per (d, t), no α).
        embedding_init_std: std of the normal initialisation of the embeddings (code: 1e-4).
        num_domains / num_tasks: optional; when set they must match the data.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        *,
        star_dim: int = 512,
        bottom_dim: int = 256,
        bottom_layernorm: bool = False,
        expert_dims: Sequence[int] = (64,),
        num_shared_experts: int = 1,
        tower_dims: Sequence[int] = (64,),
        tower_layernorm: bool = False,
        gate_detach: bool = False,
        fusion_granularity: Granularity = "scalar",
        fusion_init: float = 1.0,
        use_domain_experts: bool = True,
        use_task_experts: bool = True,
        use_star_layer: bool = True,
        fusion: Fusion = "add",
        embedding_init_std: float = 1e-4,
        num_domains: int | None = None,
        num_tasks: int | None = None,
    ) -> None:
        super().__init__(schema)
        check_domains_tasks(schema, num_domains, num_tasks, "M3oE")
        check_int("model.num_shared_experts", num_shared_experts)
        if fusion_granularity not in ("scalar", "per_domain", "per_task"):
            raise UserInputError(
                f"model.fusion_granularity={fusion_granularity!r}: use scalar, per_domain or per_task")
        if fusion not in ("add", "concat", "gated"):
            raise UserInputError(f"model.fusion={fusion!r}: use add, concat or gated")
        D, T, N = self.num_domains, self.num_tasks, num_shared_experts
        in_dim = schema.input_dim
        self.num_shared = N
        self.use_domain = use_domain_experts
        self.use_task = use_task_experts
        self.gate_detach = gate_detach
        self.granularity = fusion_granularity
        self.fusion = fusion
        self.use_star = use_star_layer

        self.embedding = FeatureEmbedding(schema, init_std=embedding_init_std)
        if use_star_layer:
            # Eq. 1: per-domain and shared STAR weights (Xavier-uniform, zero biases, as the code)
            self.star_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(D, in_dim, star_dim)))
            self.star_shared_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(in_dim, star_dim)))
            self.star_bias = nn.Parameter(torch.zeros(D, star_dim))
            self.star_shared_bias = nn.Parameter(torch.zeros(star_dim))
            # Eq. 2: W_c
            self.w_c = mlp_blocks([star_dim, bottom_dim]) if bottom_layernorm else nn.Linear(star_dim, bottom_dim)
        # Eq. 2: the domain-agnostic skip path f_DA
        self.skip = mlp_blocks([in_dim, bottom_dim])

        # shared, domain and task experts stacked into one grouped MLP: [N | D | T]
        self.num_experts = N + (D if use_domain_experts else 0) + (T if use_task_experts else 0)
        self.experts = GroupedMLP(self.num_experts, [bottom_dim, *expert_dims], layernorm=True)
        expert_out = self.experts.output_dim
        modules = int(use_domain_experts) + int(use_task_experts)
        # one gate per (d, t), stored per domain as Linear(bottom → T·G) over G candidates: the N shared
        # experts (+ the level-1 domain and task vectors when gated); with G = 1 the softmax is
        # constantly 1, so no gate parameters exist.
        self.gate_size = N + (modules if fusion == "gated" else 0)
        self.gates = GroupedLinear(D, bottom_dim, T * self.gate_size) if self.gate_size > 1 else None
        tower_in = expert_out * (1 + modules) if fusion == "concat" else expert_out
        self.towers = GroupedMLP(D * T, [tower_in, *tower_dims], layernorm=tower_layernorm, final_dim=1)

        groups = {"scalar": 1, "per_domain": D, "per_task": T}[fusion_granularity]
        used = [name for name in FUSION_WEIGHTS
                if ((name.endswith("_d") and use_domain_experts) or (name.endswith("_t") and use_task_experts))
                and (fusion == "add" or name.startswith("beta"))]
        self.fusion_logits = nn.ParameterDict(
            {name: nn.Parameter(torch.full((groups,), float(fusion_init))) for name in used})

    # ----------------------------------------------------------------------------------- interface
    def architecture_parameters(self) -> list[nn.Parameter]:
        return list(self.fusion_logits.values())

    def architecture_weights(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, logit in self.fusion_logits.items():
            values = torch.sigmoid(logit.detach()).tolist()
            if len(values) == 1:
                out[name] = values[0]
            else:
                labels = self.schema.domains if self.granularity == "per_domain" else self.schema.tasks
                out.update({f"{name}/{label}": v for label, v in zip(labels, values)})
        return out

    def personal_slices(self, kind: str) -> PersonalSlices | None:
        """Federated M3oE (``federated.personal=domain_experts``): the D domain experts (rows N..N+D of
        the stacked experts), the per-domain gates and the D×T towers stay on the client; the
        embeddings, STAR layer, shared and task experts and fusion weights are aggregated."""
        if kind != "domain_experts" or not self.use_domain:
            return None
        domain_rows = slice(self.num_shared, self.num_shared + self.num_domains)
        out: PersonalSlices = {}
        for key in self.state_dict():
            if key.startswith("experts."):
                out[key] = domain_rows
            elif key.startswith(("gates.", "towers.")):
                out[key] = None
        return out

    # ------------------------------------------------------------------------------------ forward
    def _fusion(self, name: str, domain: int) -> torch.Tensor:
        """Weight ``name`` for the T objectives (domain, t) as ``[T, 1, 1]``."""
        w = torch.sigmoid(self.fusion_logits[name])
        if self.granularity == "scalar":
            w = w.expand(self.num_tasks)
        elif self.granularity == "per_domain":
            w = w[domain].expand(self.num_tasks)
        return w.view(-1, 1, 1)

    @staticmethod
    def _level1(own: torch.Tensor, total: torch.Tensor, beta: torch.Tensor, k: int) -> torch.Tensor:
        """Eq. 5/6: ``β·own + (1-β)/(K-1)·(Σ all − own)``; with K = 1 only ``β·own`` remains."""
        if k == 1:
            return beta * own
        return beta * own + (1.0 - beta) / (k - 1) * (total - own)

    def _level2(self, parts: list[torch.Tensor], gates: torch.Tensor | None, domain: int) -> torch.Tensor:
        """Fuse ``[S, D-level1?, T-level1?]`` (each ``[T, B_d, k]``) into the towers' input."""
        if self.fusion == "concat":
            return torch.cat(parts, dim=-1)
        fused = parts[0]
        if self.fusion == "gated":  # the gate's last columns weigh the domain and task vectors
            for i, part in enumerate(parts[1:]):  # (parts[1:] is empty when there is no gate)
                weight = gates[..., self.num_shared + i]  # type: ignore[index]
                fused = fused + weight.transpose(0, 1).unsqueeze(-1) * part
            return fused
        names = [name for name, used in (("alpha_d", self.use_domain), ("alpha_t", self.use_task)) if used]
        for name, part in zip(names, parts[1:]):  # Eq. 7
            fused = fused + self._fusion(name, domain) * part
        return fused

    def routed_forward(self, batch: Batch, route: DomainRouting) -> torch.Tensor:
        D, T, N = self.num_domains, self.num_tasks, self.num_shared
        x = route.sort(self.embedding(batch))  # [B, in], grouped by domain

        h = self.skip(x)  # Eq. 2's f_DA, [B, bottom]
        if self.use_star:
            # Eq. 1: each row through its own domain's STAR weights only
            star_parts = []
            for d, rows in route.slices():
                w = self.star_weight[d] * self.star_shared_weight
                star_parts.append(torch.addmm(self.star_bias[d] + self.star_shared_bias, x[rows], w))
            h = self.w_c(route.combine(star_parts)) + h  # Eq. 2

        experts = self.experts(h)  # [E, B, k]
        shared = experts[:N]
        pos = N
        domain_out = experts[pos:pos + D] if self.use_domain else None
        pos += D if self.use_domain else 0
        task_out = experts[pos:pos + T] if self.use_task else None
        gate_in = h.detach() if self.gate_detach else h

        logits = []
        for d, rows in route.slices():
            g = None
            if self.gates is not None:  # Eq. 4: per-(d, t) softmax over the N shared experts (+ D, T if gated)
                g = self.gates(gate_in[rows], slice(d, d + 1))[0].view(-1, T, self.gate_size).softmax(dim=-1)
                fused = torch.einsum("btn,nbk->tbk", g[..., :N], shared[:, rows])  # [T, B_d, k]
            else:
                fused = shared[:, rows].expand(T, -1, -1)
            parts = [fused]  # level-2 inputs: S, then the level-1 domain and task vectors
            if domain_out is not None:  # Eq. 5 for domain d
                dom = domain_out[:, rows]
                parts.append(self._level1(dom[d], dom.sum(0), self._fusion("beta_d", d), D).expand(T, -1, -1))
            if task_out is not None:  # Eq. 6 for every task t
                tsk = task_out[:, rows]
                parts.append(self._level1(tsk, tsk.sum(0, keepdim=True), self._fusion("beta_t", d), T))
            fused = self._level2(parts, g, d)
            tower = self.towers(fused, slice(d * T, (d + 1) * T))  # Eq. 8, [T, B_d, 1]
            logits.append(tower.squeeze(-1).transpose(0, 1))  # [B_d, T]
        return route.unsort(route.combine(logits))

