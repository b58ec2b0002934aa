"""M3oE's forward computed literally, as the equations read: the reference the optimized forward is tested
and benchmarked against.

Every domain's STAR layer, bottom, experts, gates and towers run on every row, each expert and each
(domain, task) objective in its own Python loop iteration, and each row finally picks its own domain's
logits. :class:`~m3oe_lightning.models.m3oe.M3oE` instead sorts rows by domain, sends each row through its
own domain's STAR weights and towers only, and runs all experts as one grouped matmul; the two must agree
within float tolerance in value and gradient (``tests/unit/test_m3oe.py``), and ``make bench``'s
``paper-reference`` preset measures what the optimized path gains. Covers the paper's fusion (``add``,
``scalar`` weights, both expert modules); other switches raise.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from m3oe_lightning.data.schema import Batch
from m3oe_lightning.models.layers import GroupedMLP
from m3oe_lightning.models.m3oe import M3oE


def group_mlp(x: torch.Tensor, grouped: GroupedMLP, g: int) -> torch.Tensor:
    """Member ``g`` of a :class:`GroupedMLP` as plain ``x @ W + b`` (+ LayerNorm) + ReLU layers."""
    for i, linear in enumerate(grouped.linears):
        x = x @ linear.weight[g] + linear.bias[g, 0]
        if grouped.norms is not None:
            norm = grouped.norms[i]
            x = F.layer_norm(x, x.shape[-1:], eps=norm.eps) * norm.weight[g, 0] + norm.bias[g, 0]
        x = torch.relu(x)
    if grouped.final is not None:
        x = x @ grouped.final.weight[g] + grouped.final.bias[g, 0]
    return x


def reference_forward(model: M3oE, batch: Batch) -> torch.Tensor:
    """The logits ``[B, T]`` of ``model`` on ``batch``, computed the straightforward way (module doc)."""
    if model.fusion != "add" or model.granularity != "scalar" or not (model.use_domain and model.use_task):
        raise NotImplementedError("the reference forward covers fusion=add, scalar weights, both expert modules")
    D, T, N = model.num_domains, model.num_tasks, model.num_shared
    x = model.embedding(batch)
    weight = {name: torch.sigmoid(logit) for name, logit in model.fusion_logits.items()}
    logits = torch.zeros(x.shape[0], T, dtype=x.dtype, device=x.device)
    for d in range(D):
        star = x @ (model.star_weight[d] * model.star_shared_weight) + model.star_bias[d] + model.star_shared_bias
        h = model.w_c(star) + model.skip(x)  # Eq. 1-2 with domain d's weights, for every row
        experts = [group_mlp(h, model.experts, e) for e in range(model.num_experts)]
        shared, domain_experts, task_experts = experts[:N], experts[N:N + D], experts[N + D:N + D + T]
        others = sum(domain_experts[j] for j in range(D) if j != d)
        domain_vec = weight["beta_d"] * domain_experts[d] + (1 - weight["beta_d"]) / (D - 1) * others  # Eq. 5
        gate_in = h.detach() if model.gate_detach else h
        for t in range(T):
            if model.gates is not None:  # Eq. 4
                gate = (gate_in @ model.gates.weight[d] + model.gates.bias[d, 0]).view(-1, T, N)[:, t].softmax(-1)
                s = sum(gate[:, n:n + 1] * shared[n] for n in range(N))
            else:
                s = shared[0]
            others = sum(task_experts[j] for j in range(T) if j != t)
            task_vec = weight["beta_t"] * task_experts[t] + (1 - weight["beta_t"]) / (T - 1) * others  # Eq. 6
            fused = s + weight["alpha_d"] * domain_vec + weight["alpha_t"] * task_vec  # Eq. 7
            out = group_mlp(fused, model.towers, d * T + t)[:, 0]  # Eq. 8
            logits[:, t] = torch.where(batch["domain"] == d, out, logits[:, t])
    return logits

