"""Local training only: every client trains its own model on its own data; nothing is exchanged.

The lower bound of personalization without collaboration. There is no global model, so no global or
held-out metrics; each client's model starts from the federation's common initial weights.
"""

from __future__ import annotations

from m3oe_lightning.federated.messages import Arrays, Config, FitIns, FitRes, Metrics
from m3oe_lightning.federated.strategies.base import Strategy


class Local(Strategy):
    """No arrays down, none up, no aggregation."""

    name = "local"
    has_global_model = False

    def fit_config(self, server_round: int) -> Config:
        return {**super().fit_config(server_round), "local_only": True}

    def configure_train(self, server_round: int, arrays: Arrays | None, client_ids: list[str]) -> dict[str, FitIns]:
        return super().configure_train(server_round, None, client_ids)

    def aggregate_train(self, server_round: int, replies: dict[str, FitRes]) -> tuple[Arrays | None, Metrics]:
        return None, {}
