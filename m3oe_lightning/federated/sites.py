"""Sites that hold their own data (``federated.partition=sites``): a site's client, and the coordinator's view.

In a real federation nothing is partitioned: each site (a Flower SuperNode) reads its own file, named in
its node config (``data-path``, ``client-id``, optionally ``heldout=true`` and ``state-dir``), with the
project's readers; the coordinator never opens client data. The run config lists the sites
(``federated.sites``: the training sites, in the order the strategy sees them; ``federated.heldout_sites``:
sites that only evaluate) and carries the feature specification (``data.*``: a vocabulary policy that
needs no pooled data, ``data.domains``, the tasks), so that every site encodes alike and the coordinator
builds the global model from the specification alone (:func:`m3oe_lightning.data.spec.spec_schema`).

* A site (:func:`build_site`) loads its file — all its rows are its client's, split into train / val /
  test by the reader's own split settings — checks that its schema is the specification's, and builds
  the same :class:`~m3oe_lightning.federated.client.MDMTClient` as an in-process client
  (:func:`~m3oe_lightning.federated.factory.client_builder`).
* The coordinator (:func:`build_coordinator`) builds the strategy and the global model, and learns the
  sites' row counts when they answer discovery (:class:`SiteRoster`); the strategy is prepared then. Its
  evaluation of the global model runs at the sites (:class:`SiteEvaluator`): the metrics a coordinator
  without data can have are means over sites (``global/auc_client_mean``, ``heldout/auc_client_mean``, and
  row-weighted loglosses), not the pooled ``global/auc_mean`` of an in-process run, which needs every row.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812
import numpy as np
from omegaconf import DictConfig, OmegaConf

from m3oe_lightning import metric_keys as keys
from m3oe_lightning.config import build
from m3oe_lightning.data.schema import FeatureSchema
from m3oe_lightning.data.spec import spec_schema
from m3oe_lightning.errors import UserInputError
from m3oe_lightning.federated.client import MDMTClient
from m3oe_lightning.federated.evaluation import finite
from m3oe_lightning.federated.factory import (
    FederatedSetup,
    check_federated,
    client_builder,
    federated_identity,
    strategy_for,
)
from m3oe_lightning.federated.families import family_of
from m3oe_lightning.federated.messages import Arrays, EvaluateIns, EvaluateRes, Metrics, get_arrays
from m3oe_lightning.federated.simulation import Simulation, Transport
from m3oe_lightning.federated.strategies.base import Strategy
from m3oe_lightning.models.base import MDMTModel
from m3oe_lightning.training.checkpoint_io import write_whole
from m3oe_lightning.training.system import build_data_and_model

log = logging.getLogger(__name__)
LOGLOSS_CLIENT_MEAN = "logloss_client_mean"  # the row-weighted logloss over sites (as AUC_CLIENT_MEAN for AUC)
SITES = "sites"  # federated.partition of a federation whose sites hold their own data
DATA_PATH, CLIENT_ID, HELDOUT, STATE_DIR = "data-path", "client-id", "heldout", "state-dir"  # node-config keys


# ------------------------------------------------------------------------------------------ settings
def site_mode(fed: Mapping[str, Any]) -> bool:
    return str(fed.get("partition")) == SITES


def site_lists(fed: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``federated.sites`` and ``federated.heldout_sites``, checked (distinct, non-empty names)."""
    training = [str(s) for s in (fed.get("sites") or [])]
    heldout = [str(s) for s in (fed.get("heldout_sites") or [])]
    if not training:
        raise UserInputError("federated.partition=sites needs federated.sites=[<client-id of each training site>, …] "
                             "(the client-id each site gives in its node config)")
    every = training + heldout
    repeated = sorted({s for s in every if every.count(s) > 1})
    if repeated or any(not s.strip() for s in every):
        raise UserInputError(f"federated.sites / federated.heldout_sites: each site once, by a non-empty client-id "
                             f"(repeated: {repeated})")
    return training, heldout


@dataclass(frozen=True)
class SiteConfig:
    """What a site's node config says about it."""

    client_id: str
    data_path: str
    heldout: bool = False
    state_dir: str | None = None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> SiteConfig | None:
        """``None`` for a node of a partitioned (emulated) federation: it has no ``data-path``."""
        if DATA_PATH not in node_config:
            return None
        client_id = str(node_config.get(CLIENT_ID, "")).strip()
        if not client_id:
            raise UserInputError(f"node config: {DATA_PATH} is given but {CLIENT_ID} is not; start the site with "
                                 f"--node-config \"{DATA_PATH}='…' {CLIENT_ID}='<its name in federated.sites>'\"")
        heldout = node_config.get(HELDOUT, False)
        if isinstance(heldout, str):
            heldout = heldout.strip().lower() in ("1", "true", "yes")
        state_dir = node_config.get(STATE_DIR)
        return cls(client_id, str(node_config[DATA_PATH]), bool(heldout), str(state_dir) if state_dir else None)


def data_override(data_cfg: Mapping[str, Any], path: str) -> str:
    """The Hydra override pointing the run's reader at a site's own data: ``data.path`` for readers of a
    table path (``data=tabular``), ``data.root`` (the folder holding the dataset) for the others."""
    key = "path" if "path" in data_cfg else "root"
    return f"data.{key}={Path(path).expanduser().resolve()}"


# ------------------------------------------------------------------------------------------ a site
@dataclass
class SiteSetup:
    site: SiteConfig
    client: MDMTClient


def build_site(cfg: DictConfig, site: SiteConfig) -> SiteSetup:
    """The site's client from its own file (``cfg`` composed with :func:`data_override`)."""
    fed = cfg.federated
    if not site_mode(fed):
        raise UserInputError(f"node config {DATA_PATH}={site.data_path!r}: a site with its own data needs the run "
                             f"to say federated.partition=sites (it says {fed.partition!r})")
    training, heldout = site_lists(fed)
    if site.client_id not in training + heldout:
        raise UserInputError(f"node config {CLIENT_ID}={site.client_id!r} is not among federated.sites {training} "
                             f"or federated.heldout_sites {heldout}")
    if (site.client_id in heldout) != site.heldout:
        raise UserInputError(f"site {site.client_id}: its node config says {HELDOUT}={str(site.heldout).lower()}, "
                             f"the run's federated.heldout_sites says otherwise")
    expected = spec_schema(cfg.data)
    datamodule, model = build_data_and_model(cfg)  # reads this site's file only
    dataset = datamodule.load()
    if dataset.schema != expected:
        raise UserInputError(f"site {site.client_id}: its data ({site.data_path}) gives the schema "
                             f"{dataset.schema.to_dict()}, the run's feature specification {expected.to_dict()}: "
                             f"use the same data.* settings at every site")
    make_client = client_builder(cfg, copy.deepcopy(model), batch_size=datamodule.batch_size,
                                 eval_batch_size=datamodule.eval_batch_size)
    return SiteSetup(site=site, client=make_client(site.client_id, dataset))


class SiteStateStore:
    """A site's client state (:meth:`MDMTClient.state_dict`: the personalized model …) on its own disk,
    ``<state-dir>/<client-id>/<run identity>/round-<r>.pt`` after the fit of round ``r``.

    Why: Flower keeps a node's state in ``context.state`` for one run only; when the coordinator dies and the
    run is resumed (``federated.resume=true``) it is a new Flower run. The run identity (the hash of the
    settings that define the computation, as resuming matches runs) keeps runs of other settings apart. The
    newest two rounds are kept: a coordinator killed after a site's fit but before its own checkpoint
    resumes that round, and the site must start it from the round before.
    """

    KEEP = 2

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def for_run(cls, site: SiteConfig, cfg: DictConfig) -> SiteStateStore:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        text = json.dumps(federated_identity(resolved), sort_keys=True, default=str)
        identity = hashlib.sha256(text.encode()).hexdigest()[:16]
        return cls(Path(site.state_dir or ".").expanduser() / site.client_id / identity)

    def clear(self) -> None:
        for path in self.folder.glob("round-*.pt"):
            path.unlink(missing_ok=True)

    def rounds(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("round-*.pt"))

    def save(self, server_round: int, state: Mapping[str, Arrays]) -> None:
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"round-{server_round:06d}.pt"
        write_whole(path, lambda handle: torch.save({"round": server_round, "state": dict(state)}, handle))
        for old in self.rounds()[:-self.KEEP]:
            (self.folder / f"round-{old:06d}.pt").unlink(missing_ok=True)

    def load(self, before_round: int | None = None) -> dict[str, Arrays]:
        """The newest state saved before ``before_round`` (``None``: the newest); ``{}`` when there is none."""
        import torch

        candidates = [r for r in self.rounds() if before_round is None or r < before_round]
        if not candidates:
            return {}
        payload = torch.load(self.folder / f"round-{candidates[-1]:06d}.pt", weights_only=True)
        return dict(payload["state"])


# ----------------------------------------------------------------------------------- the coordinator
@dataclass(frozen=True)
class SiteInfo:
    """A site as the coordinator knows it: its name and row counts (what it answered at discovery)."""

    client_id: str
    num_train: int
    num_val: int
    num_test: int


@dataclass
class SiteRoster:
    """The coordinator's view of a federation of sites: what strategies and the run's reports read of a
    partitioned :class:`~m3oe_lightning.federated.partition.Federation`, without any rows."""

    schema: FeatureSchema
    clients: list[SiteInfo]
    heldout: list[SiteInfo] = field(default_factory=list)

    @property
    def pool_size(self) -> int:
        return sum(s.num_train + s.num_val + s.num_test for s in [*self.clients, *self.heldout])

    def summary(self) -> list[tuple[str, int, int, int, bool]]:
        return [(s.client_id, s.num_train, s.num_val, s.num_test, held)
                for group, held in ((self.clients, False), (self.heldout, True)) for s in group]


@dataclass
class Coordinator:
    """The coordinator's parts before the sites are known: the strategy and the global model's template."""

    cfg: DictConfig
    schema: FeatureSchema
    template: MDMTModel
    strategy: Strategy  # prepared once the sites' row counts are known (coordinator_setup)
    training: list[str]
    heldout: list[str]

    @property
    def initial_arrays(self) -> Arrays:
        return get_arrays(self.template)


def build_coordinator(cfg: DictConfig) -> Coordinator:
    """The global model from the feature specification alone (no data file is opened)."""
    check_federated(cfg.federated)
    training, heldout = site_lists(cfg.federated)
    strategy = strategy_for(cfg)  # its settings errors now, before any site is contacted
    schema = spec_schema(cfg.data)
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the same initial weights as build_data_and_model's
    model = build(cfg.model, schema=schema)
    model.set_eval_chunk_rows(cfg.get("eval_chunk_rows"))
    strategy.use_family(family_of(model))
    return Coordinator(cfg=cfg, schema=schema, template=model, strategy=strategy, training=training,
                       heldout=heldout)


def coordinator_setup(coordinator: Coordinator, transport: Transport, evaluate_at: EvaluateAt,
                      site_rows: Mapping[str, tuple[int, int, int]]) -> FederatedSetup:
    """The run once the sites answered (``site_rows``: each site's train, val and test rows): the strategy
    prepared with the sites' row counts, its server-side scoring and the server's evaluation at the sites
    (``evaluate_at``), all delivered through ``transport``."""
    cfg = coordinator.cfg
    roster = SiteRoster(coordinator.schema, clients=[SiteInfo(cid, *site_rows[cid]) for cid in coordinator.training],
                        heldout=[SiteInfo(cid, *site_rows[cid]) for cid in coordinator.heldout])
    strategy = coordinator.strategy
    strategy.prepare(roster, lambda name: SiteSplitScore(evaluate_at, coordinator.training, name))
    simulation = Simulation(strategy, transport, initial_arrays=coordinator.initial_arrays,
                            evaluate_fn=SiteEvaluator(evaluate_at, coordinator.training, coordinator.heldout),
                            client_timeout=cfg.federated.get("client_timeout"),
                            evaluate_every=int(cfg.federated.get("evaluate_every", 1)))
    return FederatedSetup(simulation=simulation, federation=roster, strategy=strategy, model=coordinator.template,
                          rounds=int(cfg.federated.rounds))


# --------------------------------------------------------------------------------- evaluation at sites
EvaluateAt = Callable[[Mapping[str, EvaluateIns]], dict[str, EvaluateRes]]  # deliver, and the replies that came


def row_weighted(replies: Mapping[str, EvaluateRes], name: str) -> float | None:
    """The replies' ``name`` averaged with each site's row count as its weight (``None``: no site has it)."""
    values = [(r.metrics[name], r.num_examples) for r in replies.values()
              if finite(r.metrics.get(name)) and r.num_examples > 0]
    return float(sum(v * n for v, n in values) / sum(n for _, n in values)) if values else None


def site_means(replies: Mapping[str, EvaluateRes]) -> dict[str, float]:
    """Means over sites: AUC (each site counts once, as ``personal/auc_mean`` does) and the row-weighted
    logloss (what the pooled logloss would be if every (domain, task) group were equally split)."""
    aucs = [r.metrics[keys.AUC_MEAN] for r in replies.values() if finite(r.metrics.get(keys.AUC_MEAN))]
    logloss = row_weighted(replies, keys.LOGLOSS_MEAN)
    out: dict[str, float] = {}
    if aucs:
        out[keys.AUC_CLIENT_MEAN] = float(np.mean(aucs))
    if logloss is not None:
        out[LOGLOSS_CLIENT_MEAN] = logloss
    return out


class SiteEvaluator:
    """The server's ``evaluate_fn`` for sites: the global model on every training site's and held-out site's
    test split, at the sites (``evaluate_at`` delivers the instructions and returns the replies)."""

    def __init__(self, evaluate_at: EvaluateAt, training: Sequence[str], heldout: Sequence[str]) -> None:
        self.evaluate_at, self.training, self.heldout = evaluate_at, list(training), list(heldout)

    def __call__(self, server_round: int, arrays: Arrays) -> Metrics:
        instructions = {cid: EvaluateIns(arrays=arrays, config={"model": "global", "split": "test"})
                        for cid in [*self.training, *self.heldout]}
        replies = self.evaluate_at(instructions)
        out: Metrics = {}
        for prefix, group in ((keys.GLOBAL, self.training), (keys.HELDOUT, self.heldout)):
            for name, value in site_means({cid: replies[cid] for cid in group if cid in replies}).items():
                out[keys.key(prefix, name)] = value
        for cid, reply in replies.items():
            if finite(reply.metrics.get(keys.AUC_MEAN)):
                out[keys.key(keys.GLOBAL if cid in self.training else keys.HELDOUT, "site", cid, keys.AUC_MEAN)] = \
                    float(reply.metrics[keys.AUC_MEAN])
        return out


class SiteSplitScore:
    """A scorer of arrays on the union of the training sites' ``split`` (PAGE's server validation set), at the
    sites: the same metric names as scoring the pooled rows, from the per-site replies (AUC: the row-weighted
    mean of the sites' AUCs — AUC does not decompose over sites; logloss: row-weighted, as pooling gives)."""

    def __init__(self, evaluate_at: EvaluateAt, training: Sequence[str], split: str) -> None:
        self.evaluate_at, self.training, self.split = evaluate_at, list(training), split

    def __call__(self, arrays: Arrays) -> Metrics:
        instructions = {cid: EvaluateIns(arrays=arrays, config={"model": "global", "split": self.split})
                        for cid in self.training}
        replies = self.evaluate_at(instructions)
        means = {name: row_weighted(replies, name) for name in (keys.AUC_MEAN, keys.LOGLOSS_MEAN)}
        return {name: value for name, value in means.items() if value is not None}
