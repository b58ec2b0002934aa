"""FedProx (Li et al., MLSys 2020): FedAvg whose clients add ``μ/2·‖w − w_global‖²`` to their loss."""

from __future__ import annotations

from typing import Any

from m3oe_lightning.errors import check_number
from m3oe_lightning.federated.messages import Config
from m3oe_lightning.federated.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg plus the proximal coefficient ``mu`` in every round's config (μ = 0 is FedAvg exactly)."""

    name = "fedprox"

    def __init__(self, *, mu: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_number("federated.mu", mu, low=0)
        self.mu = float(mu)

    def fit_config(self, server_round: int) -> Config:
        return {**super().fit_config(server_round), "mu": self.mu}
