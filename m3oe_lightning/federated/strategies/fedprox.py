"""FedProx (Li et al., MLSys 2020): FedAvg whose clients add ``μ/2·‖w − w_global‖²`` to their loss."""

from __future__ import annotations

from typing import Any

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federated.messages import Config
from m3oe_lightning.federated.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg plus the proximal coefficient in every round's config (μ = 0 is FedAvg exactly)."""

    name = "fedprox"

    def __init__(self, *, proximal_mu: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(proximal_mu, (int, float)) or proximal_mu < 0:
            raise UserInputError(f"federated.mu={proximal_mu!r}: the proximal coefficient must be ≥ 0")
        self.proximal_mu = float(proximal_mu)

    def fit_config(self, server_round: int) -> Config:
        return {**super().fit_config(server_round), "proximal_mu": self.proximal_mu}

    def summary(self) -> dict[str, float | int | str]:
        return {**super().summary(), "proximal_mu": self.proximal_mu}
