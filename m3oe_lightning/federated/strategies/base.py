"""The server side of an algorithm, with Flower's Message-API hook names.

A round, as the simulation runner drives it (in process or through a Flower Grid):

1. ``configure_train(round, arrays, client_ids)`` → one :class:`FitIns` per sampled client;
2. each client's ``fit`` → :class:`FitRes` (failed or late clients are left out);
3. ``aggregate_train(round, replies)`` → ``(new global arrays or None, the strategy's round metrics)``,
   as Flower's ``Strategy.aggregate_train`` returns ``(ArrayRecord | None, MetricRecord | None)``;
4. ``configure_evaluate`` / ``aggregate_evaluate`` → the personalized-model metrics;
5. the server's ``evaluate_fn(round, arrays)`` → global and held-out test metrics.

Algorithms differ only in these hooks, the config they send (see ``client.py``) and the run-level hooks
the factory and the entry point call instead of asking which algorithm this is: :meth:`Strategy.prepare`
(once the partition is known), :meth:`Strategy.use_privacy` (``federated.dp``), :meth:`Strategy.use_family`
(the model's task family: which metric is the score and which the loss), :meth:`Strategy.run_tags` and
:meth:`Strategy.notices`. Strategies never import MLflow: the runner hands the metrics to whoever logs them.

Differential privacy (:mod:`~m3oe_lightning.federated.privacy`) is one object, :attr:`Strategy.privacy`:
every strategy that aggregates clips the replies with ``privacy.clip_replies`` before using them and
noises its aggregate with ``privacy.noise``; ``configure_train`` adds ``privacy.fit_config()`` to each
round config (client-side clipping). With ``federated.dp.mode=none`` these hand back what they were given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.errors import UserInputError, check_int, check_number
from m3oe_lightning.federated.evaluation import finite
from m3oe_lightning.federated.families import RECOMMENDATION, TaskFamily
from m3oe_lightning.federated.messages import Arrays, Config, EvaluateIns, EvaluateRes, FitIns, FitRes, Metrics
from m3oe_lightning.federated.partition import Roster
from m3oe_lightning.federated.privacy import Privacy
from m3oe_lightning.seeds import derive_seed

SplitScore = Callable[[Arrays], Metrics]                # arrays -> metrics of a model on one split
# ``make(name)``: a scorer on the union of the training clients' local ``name`` split (``val`` | ``test``), wherever
# the rows live (pooled in process; at the sites, :class:`~m3oe_lightning.federated.sites.SiteSplitScore`)
SplitEvaluatorFactory = Callable[[str], SplitScore]


class Strategy:
    """Shared settings, client sampling and the personalized-model evaluation.

    Constructor parameters are named as the ``federated.*`` settings: the factory passes each setting a
    strategy's constructor accepts, so one name runs from the YAML to the constructor to the round config.

    Args:
        local_epochs: epochs of each client's local fit per round.
        client_lr: the clients' learning rate.
        fraction_train: share of the training clients sampled each round (seeded by round).
        min_clients: fewer successful replies than this and the round keeps the previous global model.
        seed: sampling seed.
    """

    name = "strategy"
    has_global_model = True  # False: no global model exists (no global/held-out metrics)
    # settings added after runs were stored: at these values they are left out of a run's identity, so a run
    # that did not have them (and computed the same) keeps its hash
    identity_defaults: dict[str, object] = {}
    # True: the server uses each client's individual model, not only their weighted sum (PAGE scores them);
    # such a strategy cannot run under secure aggregation, and DP does not cover what it learns from them
    uses_individual_updates = False

    def __init__(self, *, local_epochs: int = 1, client_lr: float = 1e-2, fraction_train: float = 1.0,
                 min_clients: int = 1, seed: int = 0) -> None:
        check_int("federated.local_epochs", local_epochs)
        check_number("federated.client_lr", client_lr, low=0, low_open=True)
        check_number("federated.fraction_train", fraction_train, low=0, high=1, low_open=True)
        check_int("federated.min_clients", min_clients)
        self.local_epochs = local_epochs
        self.client_lr = float(client_lr)
        self.fraction_train = float(fraction_train)
        self.min_clients = min_clients
        self.seed = int(seed)
        # the global model this round's clients were sent (configure_train keeps it): row-sparse replies and
        # entries clients keep to themselves are aggregated onto it (federated/aggregation.py)
        self.round_arrays: Arrays | None = None
        self.privacy = Privacy()  # federated.dp: off until use_privacy
        self.family = RECOMMENDATION  # the model's task family: until use_family, AUC and logloss

    # ------------------------------------------------------------------------------ run-level hooks
    def prepare(self, federation: Roster, make_split_evaluator: SplitEvaluatorFactory) -> None:
        """Once the partition is known, before anything trains: check the settings that depend on it and
        bind server-side scoring (``make_split_evaluator("val")`` scores arrays on the training clients' pooled
        validation rows)."""
        num_clients = len(federation.clients)
        if self.min_clients > num_clients:
            raise UserInputError(f"federated.min_clients={self.min_clients} but only {num_clients} client(s) "
                                 f"train; lower min_clients or heldout_clients")

    def use_privacy(self, privacy: Privacy) -> None:
        """Apply ``privacy`` (``federated.dp``) around this strategy's aggregation; refused when the strategy
        releases no global model (there is nothing for central or local DP to protect)."""
        if privacy.enabled and not self.has_global_model:
            raise UserInputError(f"federated.dp.mode={privacy.settings.mode}: federated={self.name} has no global "
                                 f"model (no update leaves a client); use federated.dp.mode=none")
        self.privacy = privacy

    def use_family(self, family: TaskFamily) -> None:
        """Score clients and models with ``family``'s metrics (its ``score`` to rank, its ``loss`` to reward)."""
        self.family = family

    def run_tags(self) -> dict[str, str]:
        """Tags the run's record must carry because of how this strategy runs (e.g. a leaky variant)."""
        return {}

    def notices(self) -> list[str]:
        """Warnings to print when the run starts (one line each)."""
        if self.privacy.enabled and self.uses_individual_updates:
            return [f"federated.dp.mode={self.privacy.settings.mode}: federated={self.name} uses each client's "
                    f"(clipped) model un-noised on the server; the DP guarantee covers the noised global model, "
                    f"not what the server learns from individual models (docs/privacy.md)"]
        return []

    # ------------------------------------------------------------------------------------ train
    def sample(self, server_round: int, client_ids: list[str]) -> list[str]:
        """The clients of this round: all, or ``fraction_train`` of them (≥ min_clients), seeded."""
        n = len(client_ids)
        k = min(n, max(self.min_clients, math.ceil(self.fraction_train * n)))
        if k == n:
            return list(client_ids)
        rng = np.random.default_rng(derive_seed(self.seed, "sample", server_round))
        chosen = rng.choice(n, size=k, replace=False)
        return [client_ids[i] for i in sorted(chosen)]

    def fit_config(self, server_round: int) -> Config:
        return {"server_round": server_round, "local_epochs": self.local_epochs, "lr": self.client_lr}

    def configure_train(self, server_round: int, arrays: Arrays | None, client_ids: list[str]) -> dict[str, FitIns]:
        config = {**self.fit_config(server_round), **self.privacy.fit_config()}
        self.round_arrays = arrays
        return {cid: FitIns(arrays=arrays, config=dict(config)) for cid in self.sample(server_round, client_ids)}

    def aggregate_train(self, server_round: int, replies: dict[str, FitRes]) -> tuple[Arrays | None, Metrics]:
        """The new global arrays (``None``: keep the previous ones) and the strategy's metrics of the round."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------- evaluate
    def configure_evaluate(self, server_round: int, arrays: Arrays | None,
                           client_ids: list[str]) -> dict[str, EvaluateIns]:
        """Every client that trained this round evaluates its personalized model (no arrays sent)."""
        return {cid: EvaluateIns(arrays=None, config={"model": "personal", "server_round": server_round})
                for cid in client_ids}

    def aggregate_evaluate(self, server_round: int, replies: dict[str, EvaluateRes]) -> Metrics:
        """``personal/auc_mean`` (plain mean over clients), ``personal/auc_mean_weighted`` (by test rows),
        ``personal/logloss_mean`` and ``client/{id}/auc_mean``; clients without an AUC are left out. (The
        family's score and loss: ``personal/accuracy`` ... for a classifier.)"""
        score, loss = self.family.score, self.family.loss
        out: Metrics = {}
        scored = [(cid, r) for cid, r in replies.items() if finite(r.metrics.get(score))]
        for cid, reply in scored:
            out[keys.client(cid, score)] = reply.metrics[score]
        if scored:
            values = np.array([r.metrics[score] for _, r in scored])
            rows = np.array([r.num_examples for _, r in scored], dtype=np.float64)
            out[keys.key(keys.PERSONAL, score)] = float(values.mean())
            out[keys.key(keys.PERSONAL, keys.weighted(score))] = float((values * rows).sum() / rows.sum())
        losses = [r.metrics[loss] for r in replies.values() if finite(r.metrics.get(loss))]
        if losses:
            out[keys.key(keys.PERSONAL, loss)] = float(np.mean(losses))
        return out

    # ------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """What the strategy must keep across rounds (saved with the server state; tensors and scalars)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (resume)."""
