"""Building blocks shared by the models.

``GroupedMLP`` holds G independent MLPs (experts or towers) as stacked weights, so G experts cost one
matmul (shared input) or one ``bmm`` (per-group input) instead of a Python loop over G modules. It is
mathematically identical to G separate ``Linear (+LayerNorm) + ReLU`` stacks with PyTorch's default
initialisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from m3oe_lightning.data.schema import Batch, FeatureSchema
from m3oe_lightning.errors import UserInputError


class FeatureEmbedding(nn.Module):
    """Embeds every sparse feature and concatenates the dense values: ``[B, schema.input_dim]``.

    The looked-up rows take the dense features' dtype, so in a bf16 forward the tables themselves can stay fp32
    (``computes_in_master_dtype``, read by :class:`~m3oe_lightning.training.precision.CastForward`): a batch
    gathers a few rows of each table, and casting every row each step, then scattering the gradient in bf16,
    cost more than the lookup saves (measured: bf16 ``embedding_dense_backward`` ~2.5x slower than fp32's).
    Casting after the gather gives the same values as casting before it; the gradient accumulates in fp32.
    """

    computes_in_master_dtype = True

    def __init__(self, schema: FeatureSchema, init_std: float = 1e-4) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(f.vocab_size, f.embed_dim) for f in schema.sparse)
        for table in self.tables:
            nn.init.normal_(table.weight, mean=0.0, std=init_std)
        self.output_dim = schema.input_dim

    def forward(self, batch: Batch) -> torch.Tensor:
        sparse = batch["sparse"]
        dense = batch["dense"]
        parts = [table(sparse[:, i]).to(dense.dtype) for i, table in enumerate(self.tables)]
        parts.append(dense)
        return torch.cat(parts, dim=1)


def mlp_blocks(dims: Sequence[int], layernorm: bool = True) -> nn.Sequential:
    """``[Linear (+LayerNorm) + ReLU]`` for each consecutive pair in ``dims``."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers.append(nn.Linear(d_in, d_out))
        if layernorm:
            layers.append(nn.LayerNorm(d_out))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class GroupedLinear(nn.Module):
    """G independent ``Linear(d_in, d_out)`` layers with stacked weights ``[G, d_in, d_out]``."""

    def __init__(self, groups: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.groups, self.d_in, self.d_out = groups, d_in, d_out
        bound = 1.0 / math.sqrt(d_in)  # nn.Linear's default init (kaiming_uniform with a=sqrt(5))
        self.weight = nn.Parameter(torch.empty(groups, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, groups: slice = slice(None)) -> torch.Tensor:
        """``x``: ``[B, d_in]`` (the same input for every group) or ``[g, B, d_in]`` → ``[g, B, d_out]``.

        ``groups`` selects a contiguous range of the G layers (e.g. one domain's towers).
        """
        weight, bias = self.weight[groups], self.bias[groups]
        if x.dim() == 2:
            # one GEMM for all groups: [B, d_in] @ [d_in, g*d_out]
            g = weight.shape[0]
            flat = weight.permute(1, 0, 2).reshape(self.d_in, g * self.d_out)
            y = (x @ flat).view(x.shape[0], g, self.d_out).transpose(0, 1)
            return y + bias
        return torch.baddbmm(bias, x, weight)


class GroupedLayerNorm(nn.Module):
    """G independent ``LayerNorm(d)`` with affine parameters ``[G, 1, d]``, over ``[G, B, d]``."""

    def __init__(self, groups: int, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(groups, 1, d))
        self.bias = nn.Parameter(torch.zeros(groups, 1, d))

    def forward(self, x: torch.Tensor, groups: slice = slice(None)) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight[groups] + self.bias[groups]


class GroupedMLP(nn.Module):
    """G independent MLPs ``[Linear (+LayerNorm) + ReLU] * len(dims)-1`` (+ an optional final Linear).

    ``final_dim`` adds a plain ``Linear`` at the end (a tower's logit layer);
    ``norm_after_activation`` puts each LayerNorm after the ReLU instead of before it.
    """

    def __init__(self, groups: int, dims: Sequence[int], layernorm: bool = True,
                 final_dim: int | None = None, norm_after_activation: bool = False) -> None:
        super().__init__()
        self.groups = groups
        self.norm_after_activation = norm_after_activation  # Linear + ReLU + LayerNorm (the paper's MLP)
        self.linears = nn.ModuleList(GroupedLinear(groups, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(GroupedLayerNorm(groups, b) for b in dims[1:]) if layernorm else None
        self.final = GroupedLinear(groups, dims[-1], final_dim) if final_dim is not None else None
        self.output_dim = final_dim if final_dim is not None else dims[-1]

    def forward(self, x: torch.Tensor, groups: slice = slice(None)) -> torch.Tensor:
        """``[B, d_in]`` or ``[g, B, d_in]`` → ``[g, B, output_dim]`` for the selected ``groups``."""
        if x.dim() == 2 and not self.linears:
            x = x.unsqueeze(0).expand(len(range(self.groups)[groups]), *x.shape)
        for i, linear in enumerate(self.linears):
            x = linear(x, groups)
            if self.norms is not None and not self.norm_after_activation:
                x = self.norms[i](x, groups)
            x = F.relu(x)
            if self.norms is not None and self.norm_after_activation:
                x = self.norms[i](x, groups)
        if self.final is not None:
            x = self.final(x, groups)
        return x


def sort_by_domain(domain: torch.Tensor, num_domains: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Permutation that groups the batch by domain, its inverse, and the rows per domain.

    Models permute the batch once, work on contiguous per-domain slices (views, no gathers), and
    un-permute the logits at the end.
    """
    order = torch.argsort(domain, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    counts = torch.bincount(domain, minlength=num_domains).tolist()
    return order, inverse, counts


def domain_slices(counts: Sequence[int]) -> list[tuple[int, slice]]:
    """``(domain, rows)`` for every domain with rows, in a batch sorted by :func:`sort_by_domain`."""
    out, start = [], 0
    for d, n in enumerate(counts):
        if n:
            out.append((d, slice(start, start + n)))
        start += n
    return out


class DomainRouting:
    """How a routed model sends each row through its own domain's parameters; two ways, the same logits.

    * :meth:`grouped` (training and evaluation): the batch is sorted by domain once, each domain works on
      its contiguous rows only, and the results are concatenated and un-sorted. Cheapest, but the rows
      per domain are Python ints read from the batch, so a traced graph would keep one batch's counts.
    * :meth:`for_export` (eval mode only): no sorting; each domain's parameters run on every
      row and each row's result is gathered from its own domain's. D times the per-domain work, but
      no value of the batch decides the graph's shape, so one exported graph serves any batch size and
      any mix of domains.

    A model written against this interface (``sort``, ``slices``, ``combine``, ``unsort``) gets both.
    """

    def __init__(self, domain: torch.Tensor, num_domains: int, *, every_domain: bool) -> None:
        self.domain = domain
        self.num_domains = num_domains
        self.every_domain = every_domain
        if every_domain:
            self._order = self._inverse = None
            self._slices = [(d, slice(None)) for d in range(num_domains)]
        else:
            self._order, self._inverse, counts = sort_by_domain(domain, num_domains)
            self._slices = domain_slices(counts)

    @classmethod
    def grouped(cls, domain: torch.Tensor, num_domains: int) -> DomainRouting:
        return cls(domain, num_domains, every_domain=False)

    @classmethod
    def for_export(cls, domain: torch.Tensor, num_domains: int) -> DomainRouting:
        return cls(domain, num_domains, every_domain=True)

    def sort(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``x`` (batch order) in the order the domains' slices refer to."""
        return x if self._order is None else x.index_select(0, self._order)

    def slices(self) -> list[tuple[int, slice]]:
        """``(domain, rows)`` to compute: the domains present (grouped) or all of them on all rows."""
        return self._slices

    def combine(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """One result per entry of :meth:`slices` → one tensor, each row from its own domain's part."""
        if self._order is not None:
            return torch.cat(list(parts))
        stacked = torch.stack(list(parts))  # [D, B, ...]
        index = self.domain.view(1, -1, *([1] * (stacked.dim() - 2))).expand(1, *stacked.shape[1:])
        return stacked.gather(0, index).squeeze(0)

    def unsort(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``x`` (sorted order) back in batch order."""
        return x if self._inverse is None else x.index_select(0, self._inverse)


class DomainTaskTowers(nn.Module):
    """D×T towers ``[Linear (+LayerNorm) + ReLU]* + Linear → 1``, stored as one :class:`GroupedMLP`.

    Tower ``(d, t)`` is group ``d·T + t``; :meth:`forward` runs only domain ``d``'s T towers, on domain
    ``d``'s rows, so a model never computes the towers of the other domains.
    """

    def __init__(self, num_domains: int, num_tasks: int, in_dim: int, hidden_dims: Sequence[int],
                 layernorm: bool = True) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.mlp = GroupedMLP(num_domains * num_tasks, [in_dim, *hidden_dims], layernorm=layernorm, final_dim=1)

    def forward(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        """``x``: ``[n, k]`` (one input for every task) or ``[T, n, k]`` (one per task) → logits ``[n, T]``."""
        T = self.num_tasks
        return self.mlp(x, slice(domain * T, (domain + 1) * T)).squeeze(-1).transpose(0, 1)


def check_level_dims(expert_dims: Sequence[Sequence[int]]) -> None:
    """Multi-level models (PLE, AdaTT) take one non-empty list of expert widths per level."""
    if not expert_dims or any(len(dims) == 0 for dims in expert_dims):
        raise UserInputError(f"model.expert_dims={list(expert_dims)}: give one non-empty list of widths per level")
