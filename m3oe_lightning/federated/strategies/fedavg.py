"""FedAvg (McMahan et al., AISTATS 2017): the replies averaged, weighted by local training rows.

Row-sparse replies (``federated.sparse_embeddings``) are averaged row by row over the clients that updated
each row, with these weights renormalised over them (:func:`~m3oe_lightning.federated.aggregation.aggregate`).
Under ``federated.dp`` the updates are clipped before and the average noised after (:attr:`Strategy.privacy`).
"""

from __future__ import annotations

from m3oe_lightning.federated.aggregation import aggregate
from m3oe_lightning.federated.messages import Arrays, FitRes, Metrics
from m3oe_lightning.federated.strategies.base import Strategy


class FedAvg(Strategy):
    """Sample-weighted averaging (Flower's ``FedAvg`` with ``weighted_by_key="num-examples"``)."""

    name = "fedavg"

    def aggregation_weights(self, server_round: int, replies: dict[str, FitRes]) -> dict[str, float]:
        """Weight of each reply (the hook PAGE's server agent overrides)."""
        return {cid: float(r.num_examples) for cid, r in replies.items()}

    def aggregate_train(self, server_round: int, replies: dict[str, FitRes]) -> tuple[Arrays | None, Metrics]:
        replies = {cid: r for cid, r in replies.items() if r.arrays is not None}
        if len(replies) < self.min_clients:
            return None, {}
        replies, metrics = self.privacy.clip_replies(server_round, replies, self.round_arrays)
        weights = self.aggregation_weights(server_round, replies)
        new, noise_metrics = self.privacy.noise(server_round, aggregate(replies, weights, self.round_arrays),
                                                replies, weights)
        return new, {**metrics, **noise_metrics}
