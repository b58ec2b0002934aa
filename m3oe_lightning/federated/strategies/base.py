"""The server side of an algorithm, with Flower's Message-API hook names.

A round, as the simulation runner (and later a Flower ServerApp) drives it:

1. ``configure_train(round, arrays, client_ids)`` → one :class:`FitIns` per sampled client;
2. each client's ``fit`` → :class:`FitRes` (failed or late clients are left out);
3. ``aggregate_train(round, replies)`` → the new global arrays (``None``: keep the old ones);
4. ``configure_evaluate`` / ``aggregate_evaluate`` → the personalized-model metrics;
5. the server's ``evaluate_fn(round, arrays)`` → global and held-out test metrics.

Algorithms differ only in these hooks and in the config they send (see ``client.py``). Strategies
never import MLflow: the runner hands the metrics to whoever logs them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federated.evaluation import finite
from m3oe_lightning.federated.messages import Arrays, Config, EvaluateIns, EvaluateRes, FitIns, FitRes, Metrics


class Strategy:
    """Shared settings, client sampling and the personalized-model evaluation.

    Args:
        local_epochs: epochs of each client's local fit per round.
        client_lr: the clients' learning rate.
        fraction_train: share of the training clients sampled each round (seeded by round).
        min_clients: fewer successful replies than this and the round keeps the previous global model.
        seed: sampling seed.
    """

    name = "strategy"
    has_global_model = True  # False: no global model exists (no global/held-out metrics)

    def __init__(self, *, local_epochs: int = 1, client_lr: float = 1e-2, fraction_train: float = 1.0,
                 min_clients: int = 1, seed: int = 0) -> None:
        if not isinstance(local_epochs, int) or isinstance(local_epochs, bool) or local_epochs < 1:
            raise UserInputError(f"federated.local_epochs={local_epochs!r}: use a positive integer")
        if not isinstance(client_lr, (int, float)) or not client_lr > 0:
            raise UserInputError(f"federated.client_lr={client_lr!r}: use a positive number")
        if not isinstance(fraction_train, (int, float)) or not 0 < fraction_train <= 1:
            raise UserInputError(f"federated.fraction_train={fraction_train!r}: use a number in (0, 1]")
        if not isinstance(min_clients, int) or isinstance(min_clients, bool) or min_clients < 1:
            raise UserInputError(f"federated.min_clients={min_clients!r}: use a positive integer")
        self.local_epochs = local_epochs
        self.client_lr = float(client_lr)
        self.fraction_train = float(fraction_train)
        self.min_clients = min_clients
        self.seed = int(seed)

    def check(self, num_clients: int) -> None:
        """Settings that depend on the partition; called before anything trains."""
        if self.min_clients > num_clients:
            raise UserInputError(f"federated.min_clients={self.min_clients} but only {num_clients} client(s) "
                                 f"train; lower min_clients or heldout_clients")

    # ------------------------------------------------------------------------------------ train
    def sample(self, server_round: int, client_ids: list[str]) -> list[str]:
        """The clients of this round: all, or ``fraction_train`` of them (≥ min_clients), seeded."""
        n = len(client_ids)
        k = min(n, max(self.min_clients, math.ceil(self.fraction_train * n)))
        if k == n:
            return list(client_ids)
        chosen = np.random.default_rng([self.seed % 2**32, server_round]).choice(n, size=k, replace=False)
        return [client_ids[i] for i in sorted(chosen)]

    def fit_config(self, server_round: int) -> Config:
        return {"server_round": server_round, "local_epochs": self.local_epochs, "lr": self.client_lr}

    def configure_train(self, server_round: int, arrays: Arrays | None, client_ids: list[str]) -> dict[str, FitIns]:
        config = self.fit_config(server_round)
        return {cid: FitIns(arrays=arrays, config=dict(config)) for cid in self.sample(server_round, client_ids)}

    def aggregate_train(self, server_round: int, replies: dict[str, FitRes]) -> Arrays | None:
        raise NotImplementedError

    # --------------------------------------------------------------------------------- evaluate
    def configure_evaluate(self, server_round: int, arrays: Arrays | None,
                           client_ids: list[str]) -> dict[str, EvaluateIns]:
        """Every client that trained this round evaluates its personalized model (no arrays sent)."""
        return {cid: EvaluateIns(arrays=None, config={"model": "personal", "server_round": server_round})
                for cid in client_ids}

    def aggregate_evaluate(self, server_round: int, replies: dict[str, EvaluateRes]) -> Metrics:
        """``personal/auc_mean`` (plain mean over clients), ``personal/auc_mean_weighted`` (by test rows),
        ``personal/logloss_mean`` and ``client/{id}/auc_mean``; clients without an AUC are left out."""
        out: Metrics = {}
        scored = [(cid, r) for cid, r in replies.items() if finite(r.metrics.get("auc_mean"))]
        for cid, reply in scored:
            out[f"client/{cid}/auc_mean"] = reply.metrics["auc_mean"]
        if scored:
            aucs = np.array([r.metrics["auc_mean"] for _, r in scored])
            rows = np.array([r.num_examples for _, r in scored], dtype=np.float64)
            out["personal/auc_mean"] = float(aucs.mean())
            out["personal/auc_mean_weighted"] = float((aucs * rows).sum() / rows.sum())
        losses = [r.metrics["logloss_mean"] for r in replies.values() if finite(r.metrics.get("logloss_mean"))]
        if losses:
            out["personal/logloss_mean"] = float(np.mean(losses))
        return out

    # ----------------------------------------------------------------------- round metrics, state
    def round_metrics(self, server_round: int) -> Metrics:
        """The strategy's own per-round metrics (merged into the round's; PAGE: its chosen actions)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What the strategy must keep across rounds (saved with the server state; tensors and scalars)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (resume)."""

    def summary(self) -> dict[str, float | int | str]:
        return {"name": self.name, "local_epochs": self.local_epochs, "client_lr": self.client_lr,
                "fraction_train": self.fraction_train, "min_clients": self.min_clients}
