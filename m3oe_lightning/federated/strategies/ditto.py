"""Ditto (Li et al., ICML 2021): FedAvg for the global model, plus a persistent personal model per
client trained on ``F_i(v) + λ/2·‖v − w_global‖²``; the personal model is what "personal" reports."""

from __future__ import annotations

from typing import Any

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federated.messages import Config
from m3oe_lightning.federated.strategies.fedavg import FedAvg


class Ditto(FedAvg):
    """FedAvg aggregation; the round config asks clients for Ditto's personal step."""

    name = "ditto"

    def __init__(self, *, ditto_lambda: float = 1e-3, personal_epochs: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(ditto_lambda, (int, float)) or ditto_lambda < 0:
            raise UserInputError(f"federated.lam={ditto_lambda!r}: Ditto's λ must be ≥ 0")
        if personal_epochs is not None and (not isinstance(personal_epochs, int) or personal_epochs < 1):
            raise UserInputError(f"federated.personal_epochs={personal_epochs!r}: use a positive integer or null")
        self.ditto_lambda = float(ditto_lambda)
        self.personal_epochs = personal_epochs or self.local_epochs

    def fit_config(self, server_round: int) -> Config:
        return {**super().fit_config(server_round), "ditto_lambda": self.ditto_lambda,
                "personal_epochs": self.personal_epochs}

    def summary(self) -> dict[str, float | int | str]:
        return {**super().summary(), "ditto_lambda": self.ditto_lambda, "personal_epochs": self.personal_epochs}
