"""The in-process simulation runner: drives a Strategy and its Clients round by round.

Everything the server knows lives in one :class:`ServerState` (round, global arrays, metric history,
failures, the strategy's own state such as PAGE's agents, RNG states), which saves and loads with
``torch.save`` / ``torch.load(weights_only=True)``. :meth:`Simulation.run` can write it atomically after
every round (``checkpoint``) and :meth:`Simulation.restore` continues from it. Clients run one after
another in this process. A client that raises is dropped from that round (logged, counted in
``round/clients_failed``). ``client_timeout`` is cooperative: the runner sends it as ``deadline_s``,
the client's local training stops at the first batch boundary past it (it cannot preempt a batch, an
evaluation or a hung call: in-process there is no safe way to kill a running fit), and a stopped
fit, or any reply that took longer, is discarded as late. With fewer than the strategy's
``min_clients`` replies the round keeps the previous global model.

Delivering instructions to clients is the one step a transport replaces: :meth:`Simulation.fit_clients`
and :meth:`Simulation.evaluate_clients` call the clients here, one after another; the Flower ServerApp
(:mod:`.flower_app`) overrides just these two to send Messages through a Flower ``Grid``, so sampling,
aggregation, evaluation, failure accounting, checkpointing and every metric below stay the same code.

Per-round metrics (MLflow step = round): ``personal/auc_mean``, ``personal/auc_mean_weighted``,
``personal/logloss_mean``, ``client/{id}/auc_mean``, ``global/auc_mean`` (+ ``global/logloss_mean``
and ``global/auc/{domain}/{task}``), ``heldout/auc_mean`` (+ logloss), ``train/loss``,
``comm/bytes_down``, ``comm/bytes_up``, ``comm/bytes_sent``, ``round/clients_*`` and
``time/{round,fit,evaluate,other}_s``, plus the strategy's own ``round_metrics`` (PAGE: ``page/*``).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from m3oe_lightning.federated.client import ClientTimeout
from m3oe_lightning.federated.evaluation import finite
from m3oe_lightning.federated.messages import (
    Arrays,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Metrics,
    nbytes,
)
from m3oe_lightning.federated.strategies.base import Strategy

log = logging.getLogger(__name__)

EvaluateFn = Callable[[int, Arrays], Metrics]          # Flower's evaluate_fn(server_round, arrays)
RoundCallback = Callable[[int, Metrics], None]


class Client(Protocol):
    """What the runner needs from a client (``MDMTClient`` implements it)."""

    def fit(self, ins: FitIns) -> FitRes: ...
    def evaluate(self, ins: EvaluateIns) -> EvaluateRes: ...
    def state_dict(self) -> dict[str, Arrays]: ...
    def load_state_dict(self, state: Mapping[str, Arrays]) -> None: ...


@dataclass
class ServerState:
    """The server's whole state: enough to continue a run (``federated.resume``)."""

    server_round: int = 0
    global_arrays: Arrays | None = None
    history: list[Metrics] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    strategy_state: dict[str, Any] = field(default_factory=dict)
    rng_state: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {"server_round": self.server_round, "global_arrays": self.global_arrays,
                "history": self.history, "failures": self.failures, "strategy_state": self.strategy_state,
                "rng_state": self.rng_state}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ServerState:
        return cls(**dict(state))

    def save(self, path: Path, clients: Mapping[str, Client] | None = None) -> None:
        """Write the state (and, in simulation, the clients' persistent states) atomically."""
        payload = {"server": self.state_dict(),
                   "clients": {cid: c.state_dict() for cid, c in (clients or {}).items()}}
        tmp = Path(path).with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)  # atomic: a kill leaves either the previous state or this one

    @classmethod
    def load(cls, path: Path, clients: Mapping[str, Client] | None = None) -> ServerState:
        payload = torch.load(path, weights_only=True)
        for cid, state in payload.get("clients", {}).items():
            if clients is not None and cid in clients:
                clients[cid].load_state_dict(state)
        return cls.from_state_dict(payload["server"])


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch global RNG states, as tensors and scalars (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "numpy_pos": int(pos), "numpy_gauss": (int(has_gauss), float(cached)),
            "python": (int(version), torch.tensor(internal, dtype=torch.int64), gauss)}


def set_rng_states(state: Mapping[str, Any]) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    has_gauss, cached = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in internal.tolist()), gauss))


def _mean_weighted(values: list[tuple[float, int]]) -> float | None:
    values = [(v, n) for v, n in values if finite(v)]
    if not values:
        return None
    v = np.array([x for x, _ in values])
    n = np.array([m for _, m in values], dtype=np.float64)
    return float((v * n).sum() / n.sum())


class Simulation:
    """Runs ``strategy`` over ``clients`` in this process.

    Args:
        strategy: the server-side algorithm.
        clients: the training clients by id (held-out clients are not here: they never train).
        initial_arrays: the global model's initial weights.
        evaluate_fn: server-side evaluation of the global model (global and held-out test sets).
        client_timeout: seconds after which a client's reply counts as late and is discarded (``None``: off).
    """

    def __init__(self, strategy: Strategy, clients: Mapping[str, Client], *, initial_arrays: Arrays | None,
                 evaluate_fn: EvaluateFn | None = None, client_timeout: float | None = None) -> None:
        self.strategy = strategy
        self.clients = dict(clients)
        self.client_ids: list[str] = list(self.clients)  # the training clients, in partition order
        self.evaluate_fn = evaluate_fn
        self.client_timeout = client_timeout
        self.state = ServerState(global_arrays=initial_arrays if strategy.has_global_model else None)

    def _call(self, server_round: int, phase: str, cid: str, fn: Callable[[], Any]) -> tuple[Any, float]:
        """Run one client call; a failure or a late reply is recorded and returns ``None``."""
        start = time.perf_counter()
        try:
            reply = fn()
        except ClientTimeout:
            seconds = time.perf_counter() - start
            self._fail(server_round, phase, cid, f"late reply (stopped at the deadline after {seconds:.1f} s; "
                                                 f"client_timeout {self.client_timeout} s)")
            return None, seconds
        except Exception as error:  # noqa: BLE001 - any client failure drops the client, not the round
            seconds = time.perf_counter() - start
            self._fail(server_round, phase, cid, f"{type(error).__name__}: {error}")
            return None, seconds
        seconds = time.perf_counter() - start
        if self.client_timeout is not None and seconds > self.client_timeout:
            self._fail(server_round, phase, cid, f"late reply ({seconds:.1f} s > client_timeout "
                                                 f"{self.client_timeout} s)")
            return None, seconds
        return reply, seconds

    def _fail(self, server_round: int, phase: str, cid: str, reason: str) -> None:
        log.warning("round %d: client %s failed in %s (%s); dropped from this round", server_round, cid, phase,
                    reason)
        self.state.failures.append({"round": server_round, "client": cid, "phase": phase, "error": reason})

    # ------------------------------------------------------------------------------- transport
    def _deliver(self, server_round: int, phase: str, instructions: Mapping[str, Any],
                 call: Callable[[Client, Any], Any]) -> dict[str, Any]:
        """``call(client, ins)`` for each instruction, in order; failed or late clients are recorded and left out."""
        replies: dict[str, Any] = {}
        for cid, ins in instructions.items():
            reply, _ = self._call(server_round, phase, cid, lambda c=cid, i=ins: call(self.clients[c], i))
            if reply is not None:
                replies[cid] = reply
        return replies

    def fit_clients(self, server_round: int, instructions: dict[str, FitIns]) -> dict[str, FitRes]:
        """Deliver each client its :class:`FitIns` and collect the replies (in ``instructions`` order).

        A client that fails or replies late is recorded (:meth:`_fail`) and left out. Here: the clients
        in this process, one after another; a Flower ServerApp overrides this with one ``Grid`` round trip.
        """
        return self._deliver(server_round, "fit", instructions, lambda client, ins: client.fit(ins))

    def evaluate_clients(self, server_round: int, instructions: dict[str, EvaluateIns]) -> dict[str, EvaluateRes]:
        """As :meth:`fit_clients`, for the evaluation instructions."""
        return self._deliver(server_round, "evaluate", instructions, lambda client, ins: client.evaluate(ins))

    def run_round(self) -> Metrics:
        """One round: configure → fit → aggregate → evaluate; returns (and records) its metrics."""
        strategy, state = self.strategy, self.state
        server_round = state.server_round + 1
        round_start = time.perf_counter()
        failures_before = len(state.failures)

        instructions = strategy.configure_train(server_round, state.global_arrays, list(self.client_ids))
        bytes_down = sum(nbytes(ins.arrays) for ins in instructions.values())
        if self.client_timeout is not None:
            for ins in instructions.values():
                ins.config["deadline_s"] = float(self.client_timeout)
        fit_start = time.perf_counter()
        replies = self.fit_clients(server_round, instructions)
        fit_seconds = time.perf_counter() - fit_start
        bytes_up = sum(nbytes(reply.arrays) for reply in replies.values())

        aggregated = 0
        if strategy.has_global_model:
            new_arrays = strategy.aggregate_train(server_round, replies)
            if new_arrays is None:
                log.warning("round %d: %d of %d clients replied (min_clients=%d); the global model is unchanged",
                            server_round, len(replies), len(instructions), strategy.min_clients)
            else:
                state.global_arrays, aggregated = new_arrays, 1

        eval_start = time.perf_counter()
        eval_ins = strategy.configure_evaluate(server_round, state.global_arrays, list(replies))
        bytes_down += sum(nbytes(ins.arrays) for ins in eval_ins.values())
        evaluations = self.evaluate_clients(server_round, eval_ins)
        metrics: Metrics = dict(strategy.aggregate_evaluate(server_round, evaluations))
        if strategy.has_global_model and self.evaluate_fn is not None and state.global_arrays is not None:
            metrics.update(self.evaluate_fn(server_round, state.global_arrays))
        eval_seconds = time.perf_counter() - eval_start

        metrics.update(strategy.round_metrics(server_round))
        train_loss = _mean_weighted([(r.metrics.get("train_loss", float("nan")), r.num_examples)
                                     for r in replies.values()])
        if train_loss is not None:
            metrics["train/loss"] = train_loss
        round_seconds = time.perf_counter() - round_start
        metrics.update({
            "comm/bytes_down": float(bytes_down), "comm/bytes_up": float(bytes_up),
            "comm/bytes_sent": float(bytes_down + bytes_up),
            "round/clients_sampled": float(len(instructions)), "round/clients_ok": float(len(replies)),
            "round/clients_failed": float(len(state.failures) - failures_before),
            "round/aggregated": float(aggregated),
            "time/round_s": round_seconds, "time/fit_s": fit_seconds, "time/evaluate_s": eval_seconds,
            "time/other_s": max(0.0, round_seconds - fit_seconds - eval_seconds),
        })
        state.server_round = server_round
        state.history.append(metrics)
        return metrics

    def save(self, path: Path) -> None:
        """Checkpoint the whole server (with the strategy's state and the RNG states) and the clients."""
        self.state.strategy_state = self.strategy.state_dict()
        self.state.rng_state = rng_states()
        self.state.save(path, self.clients)

    def restore(self, path: Path) -> ServerState:
        """Continue from a checkpoint written by :meth:`save` (the clients' states are loaded too)."""
        self.state = ServerState.load(path, self.clients)
        self.strategy.load_state_dict(self.state.strategy_state)
        set_rng_states(self.state.rng_state)
        return self.state

    def run(self, num_rounds: int, on_round_end: RoundCallback | None = None,
            checkpoint: Path | None = None) -> ServerState:
        """Run rounds until ``num_rounds`` have been done (counting rounds already in the state).

        ``checkpoint``: written (atomically) after each round, before ``on_round_end`` is called.
        """
        while self.state.server_round < num_rounds:
            metrics = self.run_round()
            if checkpoint is not None:
                self.save(checkpoint)
            if on_round_end is not None:
                on_round_end(self.state.server_round, metrics)
        return self.state
