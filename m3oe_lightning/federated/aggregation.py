"""The server's averaging of fit replies, whole or row-sparse (``federated.sparse_embeddings``).

Every averaging strategy (FedAvg, FedProx, PAGE, Ditto's global model) decides only the weights; this
module turns weighted replies into the next global model:

* **whole replies** (the classic path): :func:`~.messages.weighted_average` of the replies, unchanged
  (a run without the switch computes exactly what it computed before the switch existed);
* **row-sparse replies** (:attr:`~.messages.FitRes.embedding_rows`): each row of an embedding table is
  averaged over the clients that updated it, with their weights renormalised over those clients; a row
  nobody updated keeps the previous global value. Without this, a user's row, trained by the one client
  holding that user, is averaged with the untouched copies of every other client and shrinks towards its
  initial value each round;
* **entries no reply carries** (a client keeps its user embeddings, ``federated.personal=user_embeddings``):
  the previous global value.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from m3oe_lightning.federated.messages import Arrays, FitRes, weighted_average


def is_whole(reply: FitRes, reference: Mapping[str, torch.Tensor] | None) -> bool:
    """The reply carries every entry whole (``reference``: the global model's entries; ``None``: unknown)."""
    if reply.embedding_rows:
        return False
    return reference is None or reply.arrays is None or reply.arrays.keys() == reference.keys()


def expand(previous: Arrays | None, reply: FitRes) -> Arrays:
    """The client's full model as the server sees it: ``previous`` with the reply's entries and rows in place
    (a whole reply is returned as it is). PAGE scores each client's model on the server set with this."""
    assert reply.arrays is not None
    if previous is None or is_whole(reply, previous):
        return reply.arrays
    out = dict(previous)
    rows = reply.embedding_rows or {}
    for name, value in reply.arrays.items():
        if name in rows:
            merged = previous[name].clone()
            merged[rows[name]] = value
            out[name] = merged
        else:
            out[name] = value
    return out


def rowwise_average(base: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor, float]]) -> torch.Tensor:
    """``base`` with each row that some part updated replaced by the weighted mean of those parts' values.

    ``parts``: ``(row ids, values [len(ids), ...], weight)``. Weights are renormalised per row before the sum,
    so a row one client updated comes back exactly as that client sent it (weight/weight is exactly 1).
    """
    weight_sum = torch.zeros(base.shape[0], dtype=torch.float64)
    for ids, _, weight in parts:
        weight_sum.index_add_(0, ids, torch.full((ids.numel(),), float(weight), dtype=torch.float64))
    acc = torch.zeros(base.shape, dtype=torch.float64)
    trailing = (1,) * (base.dim() - 1)
    for ids, values, weight in parts:
        share = (float(weight) / weight_sum[ids]).view(-1, *trailing)
        acc.index_add_(0, ids, values.to(torch.float64) * share)
    out = base.clone()
    touched = weight_sum > 0
    out[touched] = acc[touched].to(base.dtype)
    return out


def aggregate(replies: Mapping[str, FitRes], weights: Mapping[str, float], previous: Arrays | None) -> Arrays:
    """The next global model from ``replies`` (each with ``arrays``) weighted by ``weights``.

    ``previous``: the global model the replies started from (needed only when some reply is row-sparse or
    leaves an entry out). Replies are taken in client-id order, as the classic path always did.
    """
    order = sorted(replies)
    if all(is_whole(replies[cid], previous) for cid in order):
        return weighted_average((replies[cid].arrays, weights[cid]) for cid in order)
    if previous is None:
        raise ValueError("row-sparse or partial replies need the previous global model to aggregate onto")
    out: Arrays = {}
    for name, base in previous.items():
        carrying = [cid for cid in order if name in (replies[cid].arrays or {})]
        if not carrying:
            out[name] = base.clone()
            continue
        sparse = [cid for cid in carrying if name in (replies[cid].embedding_rows or {})]
        if not sparse:
            out[name] = weighted_average(({name: replies[cid].arrays[name]}, weights[cid]) for cid in carrying)[name]
            continue
        every_row = torch.arange(base.shape[0])
        parts = [((replies[cid].embedding_rows or {}).get(name, every_row), replies[cid].arrays[name],
                  float(weights[cid])) for cid in carrying]
        out[name] = rowwise_average(base, parts)
    return out
