"""Delivering a round's fits to in-process clients as one cohort: their local fits run side by side.

:class:`CohortTransport` is an :class:`~.simulation.InProcessTransport` whose fit phase asks every client for
its plan (:meth:`~.client.MDMTClient.plan_fit`: the received model's score, the local fits the round's config
asks for), runs all plans' fits as one vectorised run of the family's cohort trainer
(:class:`~m3oe_lightning.training.cohort.CohortSGD`), and hands each client its results to reply
(:meth:`~.client.MDMTClient.finish_fit`). Clients, strategies and ``Simulation`` are the same as one client at a
time; only how the local fits are executed changes (``federated.cohort=true``). The evaluate phase is the
in-process one. A client whose plan or reply raises is reported and dropped from the round, as there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from m3oe_lightning.federated.client import FitPlan
from m3oe_lightning.federated.messages import FitIns, FitRes
from m3oe_lightning.federated.simulation import Client, FailureCallback, InProcessTransport
from m3oe_lightning.training.cohort import CohortSGD, LocalResult


class PlannedClient(Client, Protocol):
    """A client whose fit splits into a plan and a reply (``MDMTClient``)."""

    def plan_fit(self, ins: FitIns) -> FitPlan: ...
    def finish_fit(self, plan: FitPlan, results: Sequence[LocalResult]) -> FitRes: ...


class CohortTransport(InProcessTransport):
    """The in-process clients, their round's local fits run together by ``trainer``."""

    def __init__(self, clients: Mapping[str, PlannedClient], trainer: CohortSGD) -> None:
        super().__init__(clients)
        self.planned: dict[str, PlannedClient] = dict(clients)
        self.trainer = trainer

    def fit(self, server_round: int, instructions: Mapping[str, FitIns], *, timeout: float | None,
            fail: FailureCallback) -> dict[str, FitRes]:
        plans: dict[str, FitPlan] = {}
        for cid, ins in instructions.items():
            try:
                plans[cid] = self.planned[cid].plan_fit(ins)
            except Exception as error:  # noqa: BLE001 - as one client at a time: the client is dropped
                fail(server_round, "fit", cid, f"{type(error).__name__}: {error}")
        results = iter(self.trainer.train([job for plan in plans.values() for job in plan.jobs]))
        replies: dict[str, FitRes] = {}
        for cid, plan in plans.items():
            own = [next(results) for _ in plan.jobs]
            try:
                replies[cid] = self.planned[cid].finish_fit(plan, own)
            except Exception as error:  # noqa: BLE001
                fail(server_round, "fit", cid, f"{type(error).__name__}: {error}")
        return replies
