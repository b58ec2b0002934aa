"""Ditto (Li et al., ICML 2021): FedAvg for the global model, plus a persistent personal model per
client trained on ``F_i(v) + λ/2·‖v − w_global‖²``; the personal model is what "personal" reports."""

from __future__ import annotations

from typing import Any

from m3oe_lightning.errors import check_int, check_number
from m3oe_lightning.federated.messages import Config
from m3oe_lightning.federated.strategies.fedavg import FedAvg


class Ditto(FedAvg):
    """FedAvg aggregation; the round config asks clients for Ditto's personal step (``lam`` = λ)."""

    name = "ditto"

    def __init__(self, *, lam: float = 1e-3, personal_epochs: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_number("federated.lam", lam, low=0)
        check_int("federated.personal_epochs", personal_epochs, optional=True)
        self.lam = float(lam)
        self.personal_epochs = personal_epochs or self.local_epochs

    def fit_config(self, server_round: int) -> Config:
        return {**super().fit_config(server_round), "lam": self.lam, "personal_epochs": self.personal_epochs}
