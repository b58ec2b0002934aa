"""STAR: Star Topology Adaptive Recommender (Sheng et al., "One Model to Serve All: Star Topology Adaptive
Recommender for Multi-Domain CTR Prediction", CIKM'21).

Three parts (§3 of Sheng et al.):

1. Partitioned Normalization (optional, Eq. 3): ``z' = (γ·γ_p)·(z − E_p)/sqrt(Var_p + ε) + (β + β_p)``
   with shared and domain-specific scale/shift, and statistics kept per domain: in training the mean
   and variance of the domain's rows in the batch (the paper's batches come from one domain at a
   time; ours mix domains, so each domain's rows are normalised together), in evaluation the domain's
   moving averages.
2. Star-topology FCN (Eq. 1): every layer of domain p uses ``W = W_shared ⊙ W_p`` and
   ``b = b_shared + b_p``; ReLU between layers; the last layer outputs one logit per task.
3. Auxiliary network (§3.4): a small MLP on the domain-indicator embedding whose output is added to the
   FCN's logits.

Rows only go through their own domain's weights. STAR is a multi-domain model; in the M3oE paper's
"STAR" row it runs in "-MDL" mode (one model per task, T = 1).
Initialisation: shared weights Xavier-uniform, domain weights ones and all biases zero, so each
domain's network starts as the shared one (a product of two independently initialised matrices
would start with near-zero weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from m3oe_lightning.data.schema import Batch, FeatureSchema
from m3oe_lightning.models.base import RoutedModel, check_domains_tasks
from m3oe_lightning.models.layers import DomainRouting, FeatureEmbedding, mlp_blocks


class PartitionedNorm(nn.Module):
    """STAR's partitioned normalisation over rows grouped by domain (see the module docstring)."""

    def __init__(self, num_domains: int, dim: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.domain_gamma = nn.Parameter(torch.ones(num_domains, dim))
        self.domain_beta = nn.Parameter(torch.zeros(num_domains, dim))
        self.register_buffer("running_mean", torch.zeros(num_domains, dim))
        self.register_buffer("running_var", torch.ones(num_domains, dim))

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        """``x``: the rows of one domain ``[n, dim]``."""
        if self.training:
            mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
            if x.shape[0] > 1:
                with torch.no_grad():
                    unbiased = var * x.shape[0] / (x.shape[0] - 1)
                    self.running_mean[domain].lerp_(mean.detach(), self.momentum)
                    self.running_var[domain].lerp_(unbiased.detach(), self.momentum)
        else:
            mean, var = self.running_mean[domain], self.running_var[domain]
        z = (x - mean) * torch.rsqrt(var + self.eps)
        return z * (self.gamma * self.domain_gamma[domain]) + (self.beta + self.domain_beta[domain])


class STAR(RoutedModel):
    """Partitioned normalisation + star-topology FCN + auxiliary network; one logit per task.

    Args:
        schema: features, domains and tasks of the data.
        hidden_dims: widths of the star-topology FCN's hidden layers (the last layer gives T logits).
        partitioned_norm: normalise the embeddings with partitioned normalisation.
        aux_embed_dim: width of the auxiliary network's domain-indicator embedding.
        aux_dims: hidden widths of the auxiliary network (``Linear + ReLU`` blocks, then ``Linear → T``).
        embedding_init_std: std of the normal initialisation of the embeddings.
        num_domains / num_tasks: optional; when set they must match the data.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        *,
        hidden_dims: Sequence[int] = (512, 256, 64),
        partitioned_norm: bool = True,
        aux_embed_dim: int = 16,
        aux_dims: Sequence[int] = (64,),
        embedding_init_std: float = 1e-4,
        num_domains: int | None = None,
        num_tasks: int | None = None,
    ) -> None:
        super().__init__(schema)
        check_domains_tasks(schema, num_domains, num_tasks, "STAR")
        D, T = self.num_domains, self.num_tasks
        self.embedding = FeatureEmbedding(schema, init_std=embedding_init_std)
        self.norm = PartitionedNorm(D, schema.input_dim) if partitioned_norm else None
        dims = [schema.input_dim, *hidden_dims, T]
        self.shared_weight = nn.ParameterList(
            nn.Parameter(nn.init.xavier_uniform_(torch.empty(a, b))) for a, b in zip(dims[:-1], dims[1:]))
        self.shared_bias = nn.ParameterList(nn.Parameter(torch.zeros(b)) for b in dims[1:])
        self.domain_weight = nn.ParameterList(nn.Parameter(torch.ones(D, a, b)) for a, b in zip(dims[:-1], dims[1:]))
        self.domain_bias = nn.ParameterList(nn.Parameter(torch.zeros(D, b)) for b in dims[1:])
        self.aux_embedding = nn.Embedding(D, aux_embed_dim)
        self.aux = nn.Sequential(mlp_blocks([aux_embed_dim, *aux_dims], layernorm=False),
                                 nn.Linear(aux_dims[-1] if aux_dims else aux_embed_dim, T))

    def routed_forward(self, batch: Batch, route: DomainRouting) -> torch.Tensor:
        x = route.sort(self.embedding(batch))
        aux = self.aux(self.aux_embedding.weight)  # [D, T]: the auxiliary logit of every domain
        last = len(self.shared_weight) - 1
        logits = []
        for d, rows in route.slices():
            h = x[rows]
            if self.norm is not None:
                h = self.norm(h, d)
            for i, (w, b) in enumerate(zip(self.shared_weight, self.shared_bias)):
                h = torch.addmm(b + self.domain_bias[i][d], h, w * self.domain_weight[i][d])
                if i < last:
                    h = F.relu(h)
            logits.append(h + aux[d])
        return route.unsort(route.combine(logits))
