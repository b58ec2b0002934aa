"""Config → a ready simulation: data, partition, model, clients, strategy, server evaluation.

Every settings check runs here, before anything trains (and before the entry point opens an MLflow
run): the settings that need no data first, then those that depend on the partition.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import hydra
from omegaconf import DictConfig

from m3oe_lightning.config import build
from m3oe_lightning.data.schema import EncodedSplit
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federated.client import MDMTClient
from m3oe_lightning.federated.evaluation import evaluate_split
from m3oe_lightning.federated.messages import Arrays, Metrics, get_arrays, set_arrays
from m3oe_lightning.federated.partition import (
    Federation,
    check_settings,
    concat_splits,
    partition,
    pooled,
    region_keys,
)
from m3oe_lightning.federated.simulation import Simulation
from m3oe_lightning.federated.strategies.base import Strategy
from m3oe_lightning.federated.strategies.page import PAGE
from m3oe_lightning.models.base import MDMTModel, PersonalSlices
from m3oe_lightning.training.system import build_system, system_factory


class ServerEvaluator:
    """Flower's ``evaluate_fn``: the global model on the pooled global test set and held-out test set."""

    def __init__(self, model: MDMTModel, global_test: EncodedSplit, heldout_test: EncodedSplit | None,
                 batch_size: int = 65536) -> None:
        self.model = model
        self.sets = {"global": global_test, "heldout": heldout_test}
        self.batch_size = batch_size

    def __call__(self, server_round: int, arrays: Arrays) -> Metrics:
        set_arrays(self.model, arrays)
        out: Metrics = {}
        for prefix, split in self.sets.items():
            if split is None:
                continue
            for key, value in evaluate_split(self.model, split, self.batch_size).items():
                if key in ("auc_mean", "logloss_mean", "loss") or prefix == "global":
                    out[f"{prefix}/{key}"] = value
        return out


class SplitEvaluator:
    """One split's evaluator with its own model copy: ``arrays -> metrics`` (PAGE's server validation set)."""

    def __init__(self, model: MDMTModel, split: EncodedSplit, batch_size: int = 65536) -> None:
        self.model, self.split, self.batch_size = model, split, batch_size

    def __call__(self, arrays: Arrays) -> Metrics:
        set_arrays(self.model, arrays)
        return evaluate_split(self.model, self.split, self.batch_size)


def server_validation_set(federation: Federation, paper_parity: bool) -> EncodedSplit:
    """PAGE's server set: the union of the training clients' local validation splits (Decision 1),
    or, under ``paper_parity``, the pooled global test set (the released code's leaky variant)."""
    if paper_parity:
        return federation.global_test
    return concat_splits([c.data.val for c in federation.clients])


@dataclass
class FederatedSetup:
    simulation: Simulation
    federation: Federation
    strategy: Strategy
    model: MDMTModel
    rounds: int


def check_federated(fed: DictConfig) -> None:
    """Settings checks that need no data."""
    rounds = fed.rounds
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise UserInputError(f"federated.rounds={rounds!r}: use a positive integer")
    for key in ("kill_after_round",):
        value = fed.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UserInputError(f"federated.{key}={value!r}: use a positive integer or null")
    timeout = fed.get("client_timeout")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise UserInputError(f"federated.client_timeout={timeout!r}: use a positive number of seconds or null")
    check_settings(partition=fed.partition, num_clients=fed.num_clients, alpha=fed.alpha,
                   heldout_clients=fed.heldout_clients, local_split=list(fed.local_split))


def personal_slices(model: MDMTModel, personal: str | None, model_name: str) -> PersonalSlices | None:
    """The state-dict parts clients keep local under ``federated.personal`` (``none``: nothing)."""
    if personal in (None, "none"):
        return None
    slices = model.personal_slices(str(personal))
    if not slices:
        raise UserInputError(f"federated.personal={personal!r}: model {model_name} has no such part (domain_experts "
                             f"needs model=m3oe with use_domain_experts=true); use federated.personal=none")
    return slices


def build_federated(cfg: DictConfig) -> FederatedSetup:
    """Everything a federated run needs, from the composed ``federate`` config."""
    fed = cfg.federated
    check_federated(fed)
    strategy: Strategy = build(fed.strategy)
    datamodule, model, _ = build_system(cfg)
    dataset = datamodule.load()
    keys = region_keys(datamodule, dataset) if fed.partition == "region" else None
    federation = partition(dataset, partition=fed.partition, num_clients=fed.num_clients, alpha=fed.alpha,
                           heldout_clients=fed.heldout_clients, local_split=list(fed.local_split),
                           seed=fed.partition_seed, region_keys=keys)
    if fed.get("centralized"):  # the reference: one client holding every training client's rows
        federation = pooled(federation)
    strategy.check(len(federation.clients))
    if isinstance(strategy, PAGE):
        if not strategy.paper_parity and any(len(c.data.val) == 0 for c in federation.clients):
            raise UserInputError(f"federated=page scores on each client's validation split, but "
                                 f"federated.local_split={list(fed.local_split)} leaves a client without "
                                 f"validation rows; give val a larger share (or paper_parity=true)")

    trainer_fn = hydra.utils.instantiate(cfg.client_trainer, _partial_=True)
    system_fn = system_factory(cfg)
    template = copy.deepcopy(model)  # the common initial weights of every client and the server
    personal = personal_slices(model, fed.get("personal", "none"), type(model).__name__)
    clients = {
        c.client_id: MDMTClient(c.client_id, c.data, model_fn=functools.partial(copy.deepcopy, template),
                                system_fn=system_fn, trainer_fn=trainer_fn, batch_size=datamodule.batch_size,
                                eval_batch_size=datamodule.eval_batch_size, seed=cfg.seed * 1_009 + k,
                                personal_slices=personal)
        for k, c in enumerate(federation.clients)
    }
    evaluator = ServerEvaluator(model, federation.global_test, federation.heldout_test, datamodule.eval_batch_size)
    if isinstance(strategy, PAGE):
        strategy.bind_server_evaluator(SplitEvaluator(copy.deepcopy(template),
                                                      server_validation_set(federation, strategy.paper_parity),
                                                      datamodule.eval_batch_size))
    simulation = Simulation(strategy, clients, initial_arrays=get_arrays(template), evaluate_fn=evaluator,
                            client_timeout=fed.get("client_timeout"))
    return FederatedSetup(simulation=simulation, federation=federation, strategy=strategy, model=model,
                          rounds=int(fed.rounds))
