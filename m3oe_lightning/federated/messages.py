"""What server and clients exchange, in Flower's vocabulary but without depending on ``flwr``.

Each type maps one-to-one onto a Flower Message-API record, so the Flower transport
(:mod:`.flower.records`) only converts at the boundary:

=================  =====================================================================
here               Flower (``flwr`` Message API)
=================  =====================================================================
:data:`Arrays`     ``ArrayRecord`` (``ArrayRecord(state_dict)`` / ``.to_torch_state_dict()``)
:data:`Config`     ``ConfigRecord`` (scalars and strings only)
:data:`Metrics`    ``MetricRecord`` (floats; ``num-examples`` travels as :attr:`FitRes.num_examples`)
:class:`FitIns`    a ``TRAIN`` message's content ``{"arrays", "config"}``
:class:`FitRes`    its reply ``{"arrays", "metrics"}`` (+ ``"embedding-rows"``, an ``ArrayRecord``, when
                   the reply is row-sparse)
:class:`EvaluateIns` / :class:`EvaluateRes`   the ``EVALUATE`` pair
=================  =====================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

Arrays = dict[str, torch.Tensor]
Config = dict[str, int | float | str | bool]
Metrics = dict[str, float]

TRAIN_LOSS = "train_loss"  # a fit reply's mean training loss (the runner's ``train/loss`` weights it by rows)

# PAGE's scores in a fit reply (``score_split`` in the round config) are named by the task family:
# ``score/received_auc`` ... (TaskFamily.reply_key, federated/families.py).


@dataclass
class FitIns:
    """Server → client, one local training round: the model to start from (``None`` = none sent)."""

    arrays: Arrays | None
    config: Config = field(default_factory=dict)


@dataclass
class FitRes:
    """Client → server: the trained model (``None`` = nothing sent), its training rows and metrics.

    ``embedding_rows`` (row-sparse replies, ``federated.sparse_embeddings``): for each embedding table it
    names, the sorted int64 ids of the rows the client updated; ``arrays`` then holds only those rows of
    that table (``[len(ids), dim]``, in id order). ``None``: every entry of ``arrays`` is whole. Entries a
    client keeps to itself (``federated.personal=user_embeddings``) are absent from ``arrays``.
    """

    arrays: Arrays | None
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    embedding_rows: Arrays | None = None


@dataclass
class EvaluateIns:
    """Server → client: evaluate a model on the local test split (``arrays`` or the client's own)."""

    arrays: Arrays | None
    config: Config = field(default_factory=dict)


@dataclass
class EvaluateRes:
    """Client → server: evaluation rows and metrics (``auc_mean``, ``logloss_mean``, per group)."""

    num_examples: int
    metrics: Metrics = field(default_factory=dict)


def get_arrays(model: nn.Module) -> Arrays:
    """A detached copy of ``model``'s state dict (what goes on the wire)."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def set_arrays(model: nn.Module, arrays: Mapping[str, torch.Tensor]) -> None:
    """Load ``arrays`` into ``model`` (every key must match)."""
    model.load_state_dict(dict(arrays), strict=True)


def overlay(received: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
            slices: Mapping[str, slice | None]) -> Arrays:
    """``received`` with the client's own values in the parts ``slices`` names (federated
    personalisation: ``None`` = the whole tensor, a slice = those rows of dim 0); the rest as received."""
    out = dict(received)
    for name, rows in slices.items():
        if rows is None:
            out[name] = own[name].clone()
        else:
            merged = received[name].clone()
            merged[rows] = own[name][rows]
            out[name] = merged
    return out


def nbytes(arrays: Mapping[str, torch.Tensor] | None) -> int:
    """Payload size of ``arrays`` in bytes (0 for ``None``)."""
    if arrays is None:
        return 0
    return sum(t.numel() * t.element_size() for t in arrays.values())


def weighted_average(items: Iterable[tuple[Mapping[str, torch.Tensor], float]]) -> Arrays:
    """Σ wᵢ·arraysᵢ / Σ wᵢ, accumulated in float64 (identical inputs come back bit-identical).

    Floating tensors are averaged; any other dtype (counters) is taken from the heaviest item.
    """
    items = list(items)
    if not items:
        raise ValueError("weighted_average of no arrays")
    total = float(sum(w for _, w in items))
    if total <= 0:
        raise ValueError(f"aggregation weights sum to {total}; they must be positive")
    heaviest = max(items, key=lambda item: item[1])[0]
    out: Arrays = {}
    for name, reference in items[0][0].items():
        if not reference.is_floating_point():
            out[name] = heaviest[name].clone()
            continue
        acc = torch.zeros_like(reference, dtype=torch.float64)
        for arrays, weight in items:
            acc.add_(arrays[name].to(torch.float64), alpha=float(weight) / total)
        out[name] = acc.to(reference.dtype)
    return out
