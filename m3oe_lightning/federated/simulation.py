"""The federated runner: drives a Strategy round by round over a Transport that delivers its messages.

Everything the server knows lives in one :class:`ServerState` (round, global arrays, metric history,
failures, the strategy's own state such as PAGE's agents, RNG states), which saves and loads with
``torch.save`` / ``torch.load(weights_only=True)``. :meth:`Simulation.run` can write it atomically after
every round (``checkpoint``) and :meth:`Simulation.restore` continues from it. A client that raises is
dropped from that round (logged, counted in ``round/clients_failed``). ``client_timeout`` is
cooperative: the runner sends it as ``deadline_s``, the client's local training stops at the first
batch boundary past it (it cannot preempt a batch, an evaluation or a hung call: in-process there is no
safe way to kill a running fit), and a stopped fit, or any reply that took longer, is discarded as
late. With fewer than the strategy's ``min_clients`` replies the round keeps the previous global model.

Delivering instructions to clients is the one step that differs between running in this process and
running on Flower nodes, so it is a :class:`Transport`: :class:`InProcessTransport` calls the clients
here, one after another; the Flower transport (:mod:`.flower.runner`) sends Messages through a Flower
``Grid``. Sampling, aggregation, evaluation, failure accounting, checkpointing and every metric below
are :class:`Simulation`'s code, the same for both.

Per-round metrics (MLflow step = round): ``personal/auc_mean``, ``personal/auc_mean_weighted``,
``personal/logloss_mean``, ``client/{id}/auc_mean``, ``global/auc_mean`` (+ ``global/logloss_mean``
and ``global/auc/{domain}/{task}``), ``global/auc_client_mean`` (the global model on each training client's
test split, mean over clients: like-for-like with ``personal/auc_mean``), ``heldout/auc_mean``
(+ logloss), ``global_val/auc_mean`` (the global model on the training clients' validation union: what a
report may choose a round by), ``train/loss``, ``comm/bytes_down``, ``comm/bytes_up`` (row-sparse replies: the rows sent
and their int64 ids), ``comm/bytes_sent``, ``round/clients_*``, ``round/evaluated`` and
``time/{round,fit,evaluate,other}_s``,
plus the metrics the strategy's ``aggregate_train`` returns (PAGE: ``page/*``; ``federated.dp``:
``dp/clipped_fraction``, ``dp/noise_std``, see :mod:`.privacy`).

Evaluation (the personal, global, held-out and validation-union metrics above) runs every
``evaluate_every``-th round and on the last one; the other rounds log training, communication and time
only. Scoring every model on every split costs about a sixth of a 100-client MovieLens round (``make
bench``), so a long study that reads only its last round, or a curve at every 5th round, saves that.
No strategy learns from these metrics (PAGE scores its own signals inside ``aggregate_train``), so the
training is the same whichever rounds are evaluated.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.federated.client import ClientTimeout
from m3oe_lightning.federated.evaluation import finite
from m3oe_lightning.federated.messages import (
    TRAIN_LOSS,
    Arrays,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Metrics,
    nbytes,
)
from m3oe_lightning.federated.strategies.base import Strategy
from m3oe_lightning.training.checkpoint_io import write_whole

log = logging.getLogger(__name__)

EvaluateFn = Callable[[int, Arrays], Metrics]          # Flower's evaluate_fn(server_round, arrays)
RoundCallback = Callable[[int, Metrics], None]
FailureCallback = Callable[[int, str, str, str], None]  # (server_round, phase, client id, reason)
Ins = TypeVar("Ins", FitIns, EvaluateIns)
Res = TypeVar("Res", FitRes, EvaluateRes)


class Client(Protocol):
    """What the in-process transport needs from a client (``MDMTClient`` implements it)."""

    def fit(self, ins: FitIns) -> FitRes: ...
    def evaluate(self, ins: EvaluateIns) -> EvaluateRes: ...
    def state_dict(self) -> dict[str, Arrays]: ...
    def load_state_dict(self, state: Mapping[str, Arrays]) -> None: ...


class Transport(Protocol):
    """Delivers one phase of a round to the clients and brings back their replies.

    ``fit`` / ``evaluate`` return the replies by client id in ``instructions`` order, leaving out every
    client that failed or replied later than ``timeout`` seconds (``None``: no limit of the run's own);
    each such client is reported once through ``fail(server_round, phase, client id, reason)``.
    """

    @property
    def client_ids(self) -> list[str]:
        """The training clients, in the federation's order."""
        ...

    @property
    def local_clients(self) -> Mapping[str, Client]:
        """The clients whose persistent state lives in this process (saved with the server state);
        empty when it lives elsewhere (Flower nodes keep it in their ``context.state``)."""
        ...

    def round_metrics(self, server_round: int) -> Metrics:
        """What the delivery itself measured in this round (e.g. the sites' own compute time), logged with it."""
        ...

    def fit(self, server_round: int, instructions: Mapping[str, FitIns], *, timeout: float | None,
            fail: FailureCallback) -> dict[str, FitRes]: ...

    def evaluate(self, server_round: int, instructions: Mapping[str, EvaluateIns], *, timeout: float | None,
                 fail: FailureCallback) -> dict[str, EvaluateRes]: ...


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
        # atomic: a kill leaves the previous state or this one; the previous one stays as a fallback
        write_whole(Path(path), lambda handle: torch.save(payload, handle), keep_previous=True)

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


class InProcessTransport:
    """The clients in this process, called one after another; a raising or late client is reported and
    left out (a late reply is judged by its wall time against ``timeout``)."""

    def __init__(self, clients: Mapping[str, Client]) -> None:
        self.clients = dict(clients)

    @property
    def client_ids(self) -> list[str]:
        return list(self.clients)

    @property
    def local_clients(self) -> Mapping[str, Client]:
        return self.clients

    def round_metrics(self, server_round: int) -> Metrics:
        return {}

    def fit(self, server_round: int, instructions: Mapping[str, FitIns], *, timeout: float | None,
            fail: FailureCallback) -> dict[str, FitRes]:
        return self._deliver(server_round, "fit", instructions, lambda client, ins: client.fit(ins), timeout, fail)

    def evaluate(self, server_round: int, instructions: Mapping[str, EvaluateIns], *, timeout: float | None,
                 fail: FailureCallback) -> dict[str, EvaluateRes]:
        return self._deliver(server_round, "evaluate", instructions, lambda client, ins: client.evaluate(ins),
                             timeout, fail)

    def _deliver(self, server_round: int, phase: str, instructions: Mapping[str, Ins],
                 call: Callable[[Client, Ins], Res], timeout: float | None, fail: FailureCallback) -> dict[str, Res]:
        replies: dict[str, Res] = {}
        for cid, ins in instructions.items():
            start = time.perf_counter()
            try:
                reply = call(self.clients[cid], ins)
            except ClientTimeout:
                seconds = time.perf_counter() - start
                fail(server_round, phase, cid, f"late reply (stopped at the deadline after {seconds:.1f} s; "
                                               f"client_timeout {timeout} s)")
                continue
            except Exception as error:  # noqa: BLE001 - any client failure drops the client, not the round
                fail(server_round, phase, cid, f"{type(error).__name__}: {error}")
                continue
            seconds = time.perf_counter() - start
            if timeout is not None and seconds > timeout:
                fail(server_round, phase, cid, f"late reply ({seconds:.1f} s > client_timeout {timeout} s)")
                continue
            replies[cid] = reply
        return replies


def _mean_weighted(values: list[tuple[float, int]]) -> float | None:
    values = [(v, n) for v, n in values if finite(v)]
    if not values:
        return None
    v = np.array([x for x, _ in values])
    n = np.array([m for _, m in values], dtype=np.float64)
    return float((v * n).sum() / n.sum())


class Simulation:
    """Runs ``strategy`` over the clients ``transport`` reaches.

    Args:
        strategy: the server-side algorithm.
        transport: delivers each phase of a round (:class:`InProcessTransport` or the Flower transport);
            its clients are the training clients (held-out clients never train).
        initial_arrays: the global model's initial weights.
        evaluate_fn: server-side evaluation of the global model (global and held-out test sets).
        client_timeout: seconds after which a client's reply counts as late and is discarded (``None``: off).
        evaluate_every: :meth:`run` evaluates every ``evaluate_every``-th round and the last one.
    """

    def __init__(self, strategy: Strategy, transport: Transport, *, initial_arrays: Arrays | None,
                 evaluate_fn: EvaluateFn | None = None, client_timeout: float | None = None,
                 evaluate_every: int = 1) -> None:
        if evaluate_every < 1:
            raise ValueError(f"evaluate_every must be at least 1, got {evaluate_every}")
        self.strategy = strategy
        self.transport = transport
        self.evaluate_fn = evaluate_fn
        self.client_timeout = client_timeout
        self.evaluate_every = evaluate_every
        self.state = ServerState(global_arrays=initial_arrays if strategy.has_global_model else None)

    def with_transport(self, transport: Transport) -> Simulation:
        """This run (strategy, server state, server evaluation, timeout) delivered through ``transport``."""
        other = copy.copy(self)
        other.transport = transport
        return other

    @property
    def client_ids(self) -> list[str]:
        """The training clients, in the federation's order."""
        return self.transport.client_ids

    @property
    def clients(self) -> Mapping[str, Client]:
        """The clients living in this process (empty when the transport reaches them elsewhere)."""
        return self.transport.local_clients

    def record_failure(self, server_round: int, phase: str, cid: str, reason: str) -> None:
        """A client dropped from a phase of a round: logged and kept in the server state (``failures``)."""
        log.warning("round %d: client %s failed in %s (%s); dropped from this round", server_round, cid, phase,
                    reason)
        self.state.failures.append({"round": server_round, "client": cid, "phase": phase, "error": reason})

    def evaluates(self, server_round: int, num_rounds: int) -> bool:
        """Whether :meth:`run` evaluates round ``server_round`` of ``num_rounds``."""
        return server_round % self.evaluate_every == 0 or server_round >= num_rounds

    def run_round(self, evaluate: bool = True) -> Metrics:
        """One round: configure → fit → aggregate → evaluate (``evaluate=False``: no evaluation, its
        metrics are absent); returns (and records) its metrics."""
        strategy, state, transport = self.strategy, self.state, self.transport
        server_round = state.server_round + 1
        round_start = time.perf_counter()
        failures_before = len(state.failures)

        instructions = strategy.configure_train(server_round, state.global_arrays, list(self.client_ids))
        bytes_down = sum(nbytes(ins.arrays) for ins in instructions.values())
        if self.client_timeout is not None:
            for ins in instructions.values():
                ins.config["deadline_s"] = float(self.client_timeout)
        fit_start = time.perf_counter()
        replies = transport.fit(server_round, instructions, timeout=self.client_timeout, fail=self.record_failure)
        fit_seconds = time.perf_counter() - fit_start
        bytes_up = sum(nbytes(reply.arrays) + nbytes(reply.embedding_rows) for reply in replies.values())

        new_arrays, strategy_metrics = strategy.aggregate_train(server_round, replies)
        aggregated = 0
        if new_arrays is not None:
            state.global_arrays, aggregated = new_arrays, 1
        elif strategy.has_global_model:
            log.warning("round %d: %d of %d clients replied (min_clients=%d); the global model is unchanged",
                        server_round, len(replies), len(instructions), strategy.min_clients)

        eval_start = time.perf_counter()
        metrics: Metrics = {}
        if evaluate:
            eval_ins = strategy.configure_evaluate(server_round, state.global_arrays, list(replies))
            bytes_down += sum(nbytes(ins.arrays) for ins in eval_ins.values())
            evaluations = transport.evaluate(server_round, eval_ins, timeout=self.client_timeout,
                                             fail=self.record_failure)
            metrics.update(strategy.aggregate_evaluate(server_round, evaluations))
            if strategy.has_global_model and self.evaluate_fn is not None and state.global_arrays is not None:
                metrics.update(self.evaluate_fn(server_round, state.global_arrays))
        eval_seconds = time.perf_counter() - eval_start

        metrics.update(strategy_metrics)
        train_loss = _mean_weighted([(r.metrics.get(TRAIN_LOSS, float("nan")), r.num_examples)
                                     for r in replies.values()])
        if train_loss is not None:
            metrics[keys.key("train", keys.LOSS)] = train_loss
        round_seconds = time.perf_counter() - round_start
        metrics.update({
            "comm/bytes_down": float(bytes_down), "comm/bytes_up": float(bytes_up),
            "comm/bytes_sent": float(bytes_down + bytes_up),
            "round/clients_sampled": float(len(instructions)), "round/clients_ok": float(len(replies)),
            "round/clients_failed": float(len(state.failures) - failures_before),
            "round/aggregated": float(aggregated), "round/evaluated": float(evaluate),
            "time/round_s": round_seconds, "time/fit_s": fit_seconds, "time/evaluate_s": eval_seconds,
            "time/other_s": max(0.0, round_seconds - fit_seconds - eval_seconds),
        })
        metrics.update(transport.round_metrics(server_round))
        state.server_round = server_round
        state.history.append(metrics)
        return metrics

    def save(self, path: Path) -> None:
        """Checkpoint the whole server (with the strategy's state and the RNG states) and the clients
        living in this process."""
        self.state.strategy_state = self.strategy.state_dict()
        self.state.rng_state = rng_states()
        self.state.save(path, self.clients)

    def restore(self, path: Path) -> ServerState:
        """Continue from a checkpoint written by :meth:`save` (the in-process clients' states are loaded too)."""
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
            metrics = self.run_round(evaluate=self.evaluates(self.state.server_round + 1, num_rounds))
            if checkpoint is not None:
                self.save(checkpoint)
            if on_round_end is not None:
                on_round_end(self.state.server_round, metrics)
        return self.state
