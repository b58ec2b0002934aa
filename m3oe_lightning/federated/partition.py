"""Split one encoded dataset into federated clients.

All rows of the dataset (its train, val and test splits, concatenated in that order: the *pool*) are
assigned to clients, each row to exactly one client (``federated.partition``):

* ``domain``: one client per domain (client id = the domain name).
* ``region``: one client per region of the row's user (client ids ``region0`` … ``region9``), as the
  reader recorded it in :attr:`EncodedDataset.regions`: on MovieLens the first character of the user's
  zip code (ML-100K's 18 Canadian postcodes, which start with a letter, form ``region_other``); on
  synthetic data ``user_id mod 10``.
* ``dirichlet``: users → ``num_clients`` clients. For each domain, client shares are drawn from
  Dirichlet(α·1); the users of that domain (a user's domain = the domain of most of its rows) are
  shuffled and cut by those shares (the usual label-Dirichlet split with the domain as the label).
  Draws that leave a client without rows are redrawn (up to 100 times, seeded).

Each client then splits its rows into local train/val/test (``federated.local_split``, seeded).
``federated.heldout_clients`` clients (chosen at random, seeded) never train; the server's global test
set is the union of the training clients' local test splits, and the held-out clients' local test
splits form the held-out test set (generalization to new sites).

The encoding (vocabularies, dense scaling) is the dataset's own, fitted on its global train split: a
held-out client's users may have embedding rows, but nothing ever trains them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from m3oe_lightning.data.registry import region_datasets
from m3oe_lightning.data.schema import EncodedDataset, EncodedSplit, FeatureSchema, NaturalClients, concat_splits
from m3oe_lightning.data.splits import check_fractions, split_indices
from m3oe_lightning.errors import UserInputError, check_int, check_number
from m3oe_lightning.seeds import derive_seed

# sites: see federated/sites.py; natural: the data's own clients (data=page_synthetic)
PARTITIONS: tuple[str, ...] = ("domain", "region", "dirichlet", "sites", "natural")
MAX_DIRICHLET_DRAWS = 100


@dataclass
class ClientData:
    """One client's local data; ``rows`` are its pool row indices (train, val, test order)."""

    client_id: str
    data: EncodedDataset
    rows: np.ndarray

    @property
    def num_train(self) -> int:
        return len(self.data.train)

    @property
    def num_val(self) -> int:
        return len(self.data.val)

    @property
    def num_test(self) -> int:
        return len(self.data.test)


class ClientView(Protocol):
    """What a strategy may know of a client before training: its id and row counts (a partitioned client's,
    or what a site that holds its own data reported)."""

    @property
    def client_id(self) -> str: ...
    @property
    def num_train(self) -> int: ...
    @property
    def num_val(self) -> int: ...
    @property
    def num_test(self) -> int: ...


class Roster(Protocol):
    """The training and held-out clients a strategy is prepared with: a :class:`Federation` in process, a
    coordinator's :class:`~m3oe_lightning.federated.sites.SiteRoster` when sites hold their own data."""

    @property
    def clients(self) -> Sequence[ClientView]: ...
    @property
    def heldout(self) -> Sequence[ClientView]: ...


@dataclass
class Federation:
    """The partitioned dataset: training clients, held-out clients and the server's test sets."""

    schema: FeatureSchema
    clients: list[ClientData]
    heldout: list[ClientData]
    global_test: EncodedSplit
    heldout_test: EncodedSplit | None
    pool_size: int
    # rows of ``global_test`` per training client, in order, when it is a set of its own (PAGE's Synthetic
    # setting pools 75 rows per client apart from their local tests); None: the clients' test splits
    global_test_parts: list[int] | None = None

    def global_test_rows(self) -> list[int]:
        """Rows of the global test set that belong to each training client, one after another."""
        return list(self.global_test_parts) if self.global_test_parts is not None else [
            len(c.data.test) for c in self.clients]

    def summary(self) -> list[tuple[str, int, int, int, bool]]:
        """``(client id, train rows, val rows, test rows, held out)`` per client."""
        return [(c.client_id, len(c.data.train), len(c.data.val), len(c.data.test), held)
                for group, held in ((self.clients, False), (self.heldout, True)) for c in group]


# ------------------------------------------------------------------------------------------ settings
def check_settings(*, partition: str, num_clients: int, alpha: float, heldout_clients: int,
                   local_split: Sequence[float]) -> None:
    """Checks that need no data: fail before anything is read."""
    if partition not in PARTITIONS:
        raise UserInputError(f"federated.partition={partition!r}: use one of {', '.join(PARTITIONS)}")
    if partition == "dirichlet":
        check_int("federated.num_clients", num_clients)
        try:
            check_number("federated.alpha", alpha, low=0, low_open=True)
        except UserInputError as error:
            raise UserInputError(f"{error} (the Dirichlet concentration: small = each client sees few domains, "
                                 f"large = every client sees all)") from None
    check_int("federated.heldout_clients", heldout_clients, minimum=0)
    check_fractions("federated.local_split", local_split, nonempty=("train", "test"))


# --------------------------------------------------------------------------------------- assignment
def pool_of(dataset: EncodedDataset) -> EncodedSplit:
    """The dataset's train, val and test rows as one split (the rows every partition assigns)."""
    parts = (dataset.train, dataset.val, dataset.test)
    if not all(isinstance(p, EncodedSplit) for p in parts):  # e.g. memory-mapped tables
        raise UserInputError("federated runs partition an in-memory table: use data.storage=memory")
    return EncodedSplit(**{key: torch.cat([getattr(p, key) for p in parts]) for key in
                           ("sparse", "dense", "domain", "labels")})


def assign_by_key(keys: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """One client per distinct key (sorted): client index per row and the keys as strings."""
    uniques, assignment = np.unique(keys, return_inverse=True)
    return assignment.astype(np.int64), [str(u) for u in uniques]


def assign_domains(domain: np.ndarray, domains: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """One client per domain of the schema; a domain without rows is a client without rows."""
    counts = np.bincount(domain, minlength=len(domains))
    empty = [domains[d] for d in np.flatnonzero(counts == 0)]
    if empty:
        raise UserInputError(f"federated.partition=domain leaves client(s) {empty} without rows: the data has "
                             f"no rows in those domains; use partition=dirichlet or region")
    return domain.astype(np.int64), list(domains)


def user_units(user: np.ndarray) -> np.ndarray:
    """Unit of assignment per row: the user id; rows of an unseen user (id 0) are units of their own."""
    key = np.where(user > 0, user, -np.arange(1, len(user) + 1, dtype=np.int64))
    return np.unique(key, return_inverse=True)[1].astype(np.int64)


def assign_dirichlet(unit: np.ndarray, domain: np.ndarray, num_domains: int, num_clients: int,
                     alpha: float, seed: int) -> np.ndarray:
    """Client index per row: units (users) follow per-domain Dirichlet(α) client shares (module doc)."""
    n_units = int(unit.max()) + 1 if len(unit) else 0
    per_unit_domain = np.bincount(unit * num_domains + domain, minlength=n_units * num_domains)
    unit_domain = per_unit_domain.reshape(n_units, num_domains).argmax(axis=1)
    unit_rows = np.bincount(unit, minlength=n_units)
    rng = np.random.default_rng(seed)
    for _ in range(MAX_DIRICHLET_DRAWS):
        unit_client = np.empty(n_units, dtype=np.int64)
        for d in range(num_domains):
            members = rng.permutation(np.flatnonzero(unit_domain == d))
            shares = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = np.floor(np.cumsum(shares)[:-1] * len(members) + 1e-9).astype(np.int64)
            for client, part in enumerate(np.split(members, cuts)):
                unit_client[part] = client
        rows = np.bincount(unit_client, weights=unit_rows, minlength=num_clients)
        if (rows > 0).all():
            return unit_client[unit]
    raise UserInputError(
        f"federated.partition=dirichlet with num_clients={num_clients}, alpha={alpha} leaves a client without "
        f"rows in {MAX_DIRICHLET_DRAWS} seeded draws ({n_units} users); use fewer clients or a larger alpha")


def sparse_column(schema: FeatureSchema, name: str) -> int:
    names = [f.name for f in schema.sparse]
    if name not in names:
        raise UserInputError(f"federated.partition=dirichlet assigns users, but the data has no {name!r} "
                             f"feature (features: {names}); use partition=domain")
    return names.index(name)


# ------------------------------------------------------------------------------------ local splits
def local_datasets(pool: EncodedSplit, schema: FeatureSchema, assignment: np.ndarray, names: list[str],
                   local_split: Sequence[float], seed: int) -> list[ClientData]:
    """Each client's rows, split seeded into local train/val/test (empty train or test: an error)."""
    order = np.argsort(assignment, kind="stable")
    bounds = np.cumsum(np.bincount(assignment, minlength=len(names)))[:-1]
    clients = []
    for k, (name, rows) in enumerate(zip(names, np.split(order, bounds))):
        if len(rows) == 0:
            raise UserInputError(f"federated partition leaves client {name!r} without rows")
        parts = split_indices(len(rows), "random", derive_seed(seed, "local-split", k), tuple(local_split))
        if len(parts[0]) == 0 or len(parts[2]) == 0:
            raise UserInputError(f"client {name!r} has {len(rows)} rows: too few for federated.local_split="
                                 f"{list(local_split)} (its local train or test split would be empty); use "
                                 f"fewer clients or another partition")
        local = [rows[p] for p in parts]
        splits = [pool.rows(torch.from_numpy(idx)) for idx in local]
        clients.append(ClientData(name, EncodedDataset(schema, *(EncodedSplit(**s) for s in splits)),
                                  np.concatenate(local)))
    return clients


def partition(dataset: EncodedDataset, *, partition: str, num_clients: int = 10, alpha: float = 0.5,
              heldout_clients: int = 0, local_split: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0,
              region_keys: np.ndarray | None = None) -> Federation:
    """Partition ``dataset`` into a :class:`Federation` (module doc); ``region_keys``: one per pool row."""
    check_settings(partition=partition, num_clients=num_clients, alpha=alpha, heldout_clients=heldout_clients,
                   local_split=local_split)
    seed = int(seed) % 2**32  # numpy seeds must be non-negative
    schema = dataset.schema
    pool = pool_of(dataset)
    domain = pool.domain.numpy()
    if partition == "domain":
        assignment, names = assign_domains(domain, schema.domains)
    elif partition == "region":
        if region_keys is None or len(region_keys) != len(pool):
            raise ValueError("partition=region needs one region key per pool row")
        assignment, names = assign_by_key(np.asarray(region_keys))
        names = [f"region{n}" for n in names]
    else:
        user = pool.sparse[:, sparse_column(schema, "user_id")].numpy()
        assignment = assign_dirichlet(user_units(user), domain, schema.num_domains, num_clients, alpha, seed)
        names = [f"client{k}" for k in range(num_clients)]
    if heldout_clients >= len(names):
        raise UserInputError(f"federated.heldout_clients={heldout_clients} but partition={partition} gives "
                             f"{len(names)} client(s): at least one client must train")
    clients = local_datasets(pool, schema, assignment, names, local_split, seed)
    rng = np.random.default_rng(derive_seed(seed, "heldout"))
    held = set(rng.choice(len(clients), size=heldout_clients, replace=False).tolist())
    training = [c for k, c in enumerate(clients) if k not in held]
    heldout = [c for k, c in enumerate(clients) if k in held]
    return Federation(
        schema=schema, clients=training, heldout=heldout,
        global_test=concat_splits([c.data.test for c in training]),
        heldout_test=concat_splits([c.data.test for c in heldout]) if heldout else None,
        pool_size=len(pool),
    )


def natural(drawn: NaturalClients, *, heldout_clients: int = 0) -> Federation:
    """The data's own clients as a federation (``federated.partition=natural``): the last ``heldout_clients``
    only evaluate; the global test set is the data's own, cut to the training clients' parts of it."""
    count = len(drawn.clients)
    if not 0 <= heldout_clients < count:
        raise UserInputError(f"federated.heldout_clients={heldout_clients}: the data has {count} clients of its "
                             f"own; hold out fewer")
    clients, start = [], 0
    for client_id, data in drawn.clients:
        size = len(data.train) + len(data.val) + len(data.test)
        clients.append(ClientData(client_id, data, np.arange(start, start + size)))
        start += size
    cut = count - heldout_clients
    training, heldout = clients[:cut], clients[cut:]
    kept = int(sum(drawn.global_test_parts[:cut]))
    global_test = EncodedSplit(**{key: getattr(drawn.global_test, key)[:kept]
                                  for key in ("sparse", "dense", "domain", "labels")})
    return Federation(schema=drawn.schema, clients=training, heldout=heldout, global_test=global_test,
                      heldout_test=concat_splits([c.data.test for c in heldout]) if heldout else None,
                      pool_size=start + len(drawn.global_test), global_test_parts=list(drawn.global_test_parts[:cut]))


def pooled(federation: Federation) -> Federation:
    """The centralized reference: the training clients' local splits pooled into one client ``pooled``.

    Its train/val/test are the unions of theirs, so the global test set is the same rows and the
    held-out clients stay held out: the same data as the federated runs, minus the federation.
    """
    clients = federation.clients
    data = EncodedDataset(federation.schema, *(concat_splits([getattr(c.data, part) for c in clients])
                                               for part in ("train", "val", "test")))
    one = ClientData("pooled", data, np.concatenate([c.rows for c in clients]))
    return Federation(schema=federation.schema, clients=[one], heldout=federation.heldout,
                      global_test=federation.global_test, heldout_test=federation.heldout_test,
                      pool_size=federation.pool_size, global_test_parts=federation.global_test_parts)


# ------------------------------------------------------------------------------------ region keys
def region_keys(datamodule: Any, dataset: EncodedDataset) -> np.ndarray:
    """One region key per pool row of ``dataset`` (loaded by ``datamodule``, named in the error).

    The reader recorded the regions while it held the raw rows (:attr:`EncodedDataset.regions`); a
    dataset without them cannot be partitioned by region.
    """
    if dataset.regions is None:
        raise UserInputError(f"federated.partition=region needs a region per row; data {datamodule.name!r} has "
                             f"none (regions: {region_datasets()}); use partition=domain or dirichlet")
    return np.concatenate([dataset.regions.of(split) for split in ("train", "val", "test")])


def pooled_split(federation: Federation, name: str) -> EncodedSplit:
    """The union of the training clients' local ``name`` split (``val`` or ``test``; the latter is the global
    test set): what a server-side scorer scores on (PAGE's server validation set)."""
    if name == "test":
        return federation.global_test
    if name != "val":
        raise ValueError(f"pooled split {name!r}: use val or test")
    return concat_splits([c.data.val for c in federation.clients])
