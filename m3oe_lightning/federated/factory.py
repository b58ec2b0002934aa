"""Config → a ready simulation: data, partition, model, clients, strategy, server evaluation.

Every settings check runs here, before anything trains (and before the entry point opens an MLflow
run): the settings that need no data first, then those that depend on the partition.

A strategy's settings are declared once, as ``federated.*`` keys (``conf/federated/*.yaml``); the
``federated.strategy`` node only names the class. :func:`build_strategy` passes the class each
``federated.*`` setting its constructor accepts (by name), plus the run's seed.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.config import build
from m3oe_lightning.data.encoders import Encoders
from m3oe_lightning.data.schema import EncodedDataset, EncodedSplit
from m3oe_lightning.errors import UserInputError, check_int, check_number
from m3oe_lightning.federated.client import MDMTClient
from m3oe_lightning.federated.cohort import CohortTransport
from m3oe_lightning.federated.evaluation import finite
from m3oe_lightning.federated.families import RECOMMENDATION, TaskFamily, family_of
from m3oe_lightning.federated.messages import Arrays, Metrics, get_arrays, set_arrays
from m3oe_lightning.federated.partition import (
    Federation,
    check_settings,
    natural,
    partition,
    pooled,
    pooled_split,
    region_keys,
)
from m3oe_lightning.federated.privacy import DP_DEFAULTS, build_privacy
from m3oe_lightning.federated.simulation import InProcessTransport, Simulation
from m3oe_lightning.federated.strategies.base import Strategy
from m3oe_lightning.models.base import USER_COLUMN, USER_EMBEDDINGS, MDMTModel, PersonalSlices
from m3oe_lightning.seeds import derive_seed
from m3oe_lightning.training.entry_points import cache_callback_entry_points
from m3oe_lightning.training.system import build_data_and_model

if TYPE_CHECKING:  # sites.py builds on this module
    from m3oe_lightning.federated.sites import SiteRoster

# Settings whose name changed when the strategy node stopped repeating them: new name → the name the
# old strategy node had (the config hash of runs already in a store is computed with the old names).
LEGACY_STRATEGY_NAMES = {"mu": "proximal_mu", "lam": "ditto_lambda"}
# What is not part of a federated run's identity: where it logs and the run hooks.
NOT_IDENTITY = ("paths", "logger", "skip_finished", "allocator")
# cohort: how the fits run, not what they compute; label: what reports call the run
NOT_FEDERATED_IDENTITY = ("resume", "kill_after_round", "cohort", "label")
# ``federated.*`` settings of no strategy added after runs were stored: at these values they are left out of a
# run's identity (as a strategy's ``identity_defaults``), so a run that did not have them keeps its hash
FEDERATED_IDENTITY_DEFAULTS: dict[str, object] = {"sparse_embeddings": False, "dp": DP_DEFAULTS, "sites": None,
                                                  "heldout_sites": None, "evaluate_every": 1}


class ServerEvaluator:
    """Flower's ``evaluate_fn``: the global model on the pooled global test set and held-out test set, and
    (``global_val``) on the union of the training clients' validation splits: ``global_val/auc_mean``, the one
    signal a report may pick a round by (test never chooses; reports/federated.py's validation table).

    ``client_test_rows``: the global test set is the training clients' test splits one after another, of
    these sizes; then ``global/auc_client_mean`` is the plain mean over clients of the global model's AUC on
    each client's rows, the basis ``personal/auc_mean`` uses (AUC does not decompose over clients, so the
    pooled ``global/auc_mean`` is not comparable with it). Both come from one forward pass; the pooled
    metrics are computed exactly as without it. (``family``: a classifier's are ``global/accuracy``, ...,
    ``global/accuracy_client_mean``.)
    """

    def __init__(self, model: MDMTModel, global_test: EncodedSplit, heldout_test: EncodedSplit | None,
                 batch_size: int = 65536, client_test_rows: Sequence[int] = (),
                 family: TaskFamily = RECOMMENDATION, global_val: EncodedSplit | None = None) -> None:
        if client_test_rows and sum(client_test_rows) != len(global_test):
            raise ValueError(f"client test splits of {sum(client_test_rows)} rows in all, but the global test set "
                             f"has {len(global_test)}")
        self.model = model
        self.sets = {keys.GLOBAL: global_test, keys.HELDOUT: heldout_test,
                     keys.GLOBAL_VAL: global_val if global_val is not None and len(global_val) else None}
        self.batch_size = batch_size
        self.client_test_rows = [int(n) for n in client_test_rows]
        self.family = family

    def __call__(self, server_round: int, arrays: Arrays) -> Metrics:
        set_arrays(self.model, arrays)
        family, out = self.family, {}
        for prefix, split in self.sets.items():
            if split is None:
                continue
            logits: list[torch.Tensor] | None = [] if prefix == keys.GLOBAL and self.client_test_rows else None
            for name, value in family.evaluate(self.model, split, self.batch_size, keep_logits=logits).items():
                if name in family.summary or prefix == keys.GLOBAL:
                    out[keys.key(prefix, name)] = value
            if logits:
                per_client = family.part_metrics(self.model, split, torch.cat(logits), self.client_test_rows)
                scored = [m[family.score] for m in per_client if finite(m.get(family.score))]
                if scored:
                    out[family.client_mean_key] = float(np.mean(scored))
        return out


class SplitEvaluator:
    """One split's evaluator with its own model copy: ``arrays -> metrics`` (e.g. PAGE's server validation set)."""

    def __init__(self, model: MDMTModel, split: EncodedSplit, batch_size: int = 65536,
                 family: TaskFamily = RECOMMENDATION) -> None:
        self.model, self.split, self.batch_size, self.family = model, split, batch_size, family

    def __call__(self, arrays: Arrays) -> Metrics:
        set_arrays(self.model, arrays)
        return self.family.evaluate(self.model, self.split, self.batch_size)


@dataclass
class FederatedSetup:
    simulation: Simulation
    federation: Federation | SiteRoster  # partitioned rows in process; a coordinator's view of sites holding theirs
    strategy: Strategy
    model: MDMTModel
    rounds: int
    encoders: Encoders | None = None  # the whole dataset's (what scoring the global model's raw rows needs)


def check_federated(fed: DictConfig) -> None:
    """Settings checks that need no data."""
    check_int("federated.rounds", fed.rounds)
    check_int("federated.kill_after_round", fed.get("kill_after_round"), optional=True)
    check_int("federated.evaluate_every", fed.get("evaluate_every", 1))
    check_number("federated.client_timeout", fed.get("client_timeout"), low=0, low_open=True, optional=True)
    check_settings(partition=fed.partition, num_clients=fed.num_clients, alpha=fed.alpha,
                   heldout_clients=fed.heldout_clients, local_split=list(fed.local_split))


def personal_kinds(personal: str | None) -> list[str]:
    """``federated.personal`` as a list of kinds (``a+b`` keeps both; ``none``: no kind)."""
    if personal in (None, "none"):
        return []
    return [kind.strip() for kind in str(personal).split("+")]


def personal_slices(model: MDMTModel, personal: str | None, model_name: str) -> PersonalSlices | None:
    """The state-dict parts clients keep local under ``federated.personal`` (``none``: nothing; several kinds
    joined by ``+``, e.g. ``domain_experts+user_embeddings``, keep the union)."""
    kinds = personal_kinds(personal)
    out: PersonalSlices = {}
    for kind in kinds:
        slices = model.federated_personal_slices(kind)
        if not slices:
            raise UserInputError(f"federated.personal={personal!r}: model {model_name} has no such part ({kind}; "
                                 f"domain_experts needs model=m3oe with use_domain_experts=true, "
                                 f"{USER_EMBEDDINGS} a {USER_COLUMN} column embedded by the model); "
                                 f"use federated.personal=none")
        for name, rows in slices.items():
            if name in out and out[name] != rows:
                raise UserInputError(f"federated.personal={personal!r}: {name} is kept in two different ways")
            out[name] = rows
    return out or None


def private_entries(model: MDMTModel, personal: str | None) -> list[str]:
    """The state-dict entries that never leave a client: the user-id embedding table under
    ``federated.personal=user_embeddings`` (other personal parts are kept local but still sent)."""
    if USER_EMBEDDINGS not in personal_kinds(personal):
        return []
    return sorted(model.federated_personal_slices(USER_EMBEDDINGS) or {})


def sparse_tables(model: MDMTModel, sparse_embeddings: object, model_name: str) -> dict[str, int] | None:
    """The embedding tables clients reply row-sparse under ``federated.sparse_embeddings=true`` (else ``None``)."""
    if not isinstance(sparse_embeddings, bool):
        raise UserInputError(f"federated.sparse_embeddings={sparse_embeddings!r}: use true or false")
    if not sparse_embeddings:
        return None
    tables = model.embedding_tables()
    if not tables:
        raise UserInputError(f"federated.sparse_embeddings=true: model {model_name} names no embedding tables "
                             f"(MDMTModel.embedding_tables); use federated.sparse_embeddings=false")
    return tables


# ---------------------------------------------------------------------------------------- strategy
def constructor_settings(cls: type) -> list[str]:
    """The keyword parameters ``cls(...)`` accepts, following ``**kwargs`` up the class hierarchy."""
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]
        names += [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def strategy_arguments(fed: Mapping[str, Any], seed: int) -> tuple[str, dict[str, Any]]:
    """The strategy's class path and constructor arguments from the resolved ``federated`` node."""
    target = str(fed["strategy"]["_target_"])
    accepted = constructor_settings(hydra.utils.get_class(target))
    arguments = {name: fed[name] for name in accepted if name in fed and name != "seed"}
    if "seed" in accepted:
        arguments["seed"] = seed
    return target, arguments


def build_strategy(fed: DictConfig, seed: int) -> Strategy:
    """The strategy ``federated.strategy`` names, built from the ``federated.*`` settings it accepts."""
    resolved = OmegaConf.to_container(fed, resolve=True)
    assert isinstance(resolved, dict)
    _, arguments = strategy_arguments(resolved, int(seed))
    return build(fed.strategy, **arguments)


def federated_identity(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a resumed (or skipped) run must share with the original: the resolved ``federate``
    config without where it logs and the run hooks.

    Runs already in users' stores were hashed when ``federated.strategy`` repeated every strategy
    setting under the constructor's old names; that node is rebuilt here from the one declaration of
    each setting, so the same settings keep the same hash.
    """
    identity = {k: v for k, v in resolved.items() if k not in NOT_IDENTITY}
    fed = {k: v for k, v in resolved["federated"].items() if k not in NOT_FEDERATED_IDENTITY}
    defaults = hydra.utils.get_class(str(fed["strategy"]["_target_"])).identity_defaults
    defaults = {**FEDERATED_IDENTITY_DEFAULTS, **defaults}
    fed = {k: v for k, v in fed.items() if not (k in defaults and v == defaults[k])}
    target, arguments = strategy_arguments(fed, resolved["seed"])
    fed["strategy"] = {"_target_": target, **{LEGACY_STRATEGY_NAMES.get(k, k): v for k, v in arguments.items()}}
    identity["federated"] = fed
    identity["client_trainer"] = {k: v for k, v in resolved.get("client_trainer", {}).items()
                                  if k != "default_root_dir"}
    return identity


# -------------------------------------------------------------------------------------------- build
ClientBuilder = Callable[[str, EncodedDataset], MDMTClient]


def client_builder(cfg: DictConfig, template: MDMTModel, *, batch_size: int, eval_batch_size: int) -> ClientBuilder:
    """``(client id, its local data) -> MDMTClient`` with the run's local training settings: what every client
    of the in-process simulation is, and what a site holding its own data builds for itself
    (:mod:`m3oe_lightning.federated.sites`). ``template`` gives the common initial weights."""
    fed = cfg.federated
    cache_callback_entry_points()  # a fresh Trainer per local fit: Lightning's entry-point lookup once, not each
    trainer_fn = hydra.utils.instantiate(cfg.client_trainer, _partial_=True)
    family = family_of(template)
    system_fn = family.systems(cfg)
    model_name = type(template).__name__
    personal = personal_slices(template, fed.get("personal", "none"), model_name)
    private = private_entries(template, fed.get("personal", "none"))
    tables = sparse_tables(template, fed.get("sparse_embeddings", False), model_name)

    def make(client_id: str, data: EncodedDataset) -> MDMTClient:
        return MDMTClient(client_id, data, model_fn=functools.partial(copy.deepcopy, template), system_fn=system_fn,
                          trainer_fn=trainer_fn, batch_size=batch_size, eval_batch_size=eval_batch_size,
                          seed=derive_seed(cfg.seed, "client", client_id), personal_slices=personal, private=private,
                          embedding_tables=tables, family=family)

    return make


def strategy_for(cfg: DictConfig) -> Strategy:
    """The run's strategy with its privacy settings (``federated.dp``) applied; bad settings fail here."""
    fed = cfg.federated
    strategy = build_strategy(fed, cfg.seed)
    strategy.use_privacy(build_privacy(fed.get("dp"), seed=cfg.seed,
                                       sparse_embeddings=fed.get("sparse_embeddings", False)))
    return strategy


def in_process_transport(cfg: DictConfig, family: TaskFamily, template: MDMTModel, clients: dict[str, MDMTClient],
                         batch_size: int) -> InProcessTransport:
    """The clients one at a time, or (``federated.cohort=true``) the round's local fits run side by side by the
    family's cohort trainer (:mod:`.cohort`): same replies, a fraction of the cost for many small clients."""
    fed = cfg.federated
    if not fed.get("cohort", False):
        return InProcessTransport(clients)
    if family.cohort is None:
        raise UserInputError(f"federated.cohort=true: model {type(template).__name__} ({family.name} family) has no "
                             f"cohort fit; use federated.cohort=false")
    if fed.get("client_timeout") is not None:
        raise UserInputError("federated.cohort=true runs every client's fit together, so federated.client_timeout "
                             "cannot discard a late one; set federated.client_timeout=null or federated.cohort=false")
    return CohortTransport(clients, family.cohort(cfg, template, batch_size))


def build_federated(cfg: DictConfig) -> FederatedSetup:
    """Everything a federated run needs, from the composed ``federate`` config (clients in this process:
    :meth:`Simulation.with_transport` delivers the same run elsewhere)."""
    fed = cfg.federated
    check_federated(fed)
    if fed.partition == "sites":
        raise UserInputError("federated.partition=sites: the sites hold their own data, so this run needs a Flower "
                             "deployment (each site runs m3oe-site; README, \"Federated across sites\"); in one "
                             "process use federated.partition=domain, region or dirichlet")
    strategy = strategy_for(cfg)
    datamodule, model = build_data_and_model(cfg)
    family = family_of(model)
    strategy.use_family(family)
    dataset = datamodule.load()
    if fed.partition == "natural":  # the data's own clients (PAGE's Synthetic setting)
        federation = natural(datamodule.natural_clients(), heldout_clients=fed.heldout_clients)
    else:
        region = region_keys(datamodule, dataset) if fed.partition == "region" else None
        federation = partition(dataset, partition=fed.partition, num_clients=fed.num_clients, alpha=fed.alpha,
                               heldout_clients=fed.heldout_clients, local_split=list(fed.local_split),
                               seed=fed.partition_seed, region_keys=region)
    if fed.get("centralized"):  # the reference: one client holding every training client's rows
        federation = pooled(federation)
    template = copy.deepcopy(model)  # the common initial weights of every client and the server
    strategy.prepare(federation, lambda name: SplitEvaluator(copy.deepcopy(template), pooled_split(federation, name),
                                                             datamodule.eval_batch_size, family))

    make_client = client_builder(cfg, template, batch_size=datamodule.batch_size,
                                 eval_batch_size=datamodule.eval_batch_size)
    clients = {c.client_id: make_client(c.client_id, c.data) for c in federation.clients}
    evaluator = ServerEvaluator(model, federation.global_test, federation.heldout_test, datamodule.eval_batch_size,
                                client_test_rows=federation.global_test_rows(), family=family,
                                global_val=pooled_split(federation, "val"))
    simulation = Simulation(strategy, in_process_transport(cfg, family, template, clients, datamodule.batch_size),
                            initial_arrays=get_arrays(template),
                            evaluate_fn=evaluator, client_timeout=fed.get("client_timeout"),
                            evaluate_every=int(fed.get("evaluate_every", 1)))
    return FederatedSetup(simulation=simulation, federation=federation, strategy=strategy, model=model,
                          rounds=int(fed.rounds), encoders=dataset.encoders)
