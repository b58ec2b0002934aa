"""The contract between data and models.

A :class:`FeatureSchema` says which sparse (embedded) and dense features a table has, and which domains
and tasks it is labelled with. Every model is built from a schema; every batch follows
:data:`Batch`'s layout. Everything here is plain Python so it can be stored in checkpoints and the
cache with ``weights_only=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

if TYPE_CHECKING:  # torch only in annotations: what imports the schema alone (scoring's checks) skips it
    import torch

    from m3oe_lightning.data.encoders import Encoders


@dataclass(frozen=True)
class SparseFeature:
    """A categorical column; ids are in ``[0, vocab_size)`` and 0 is reserved for unseen values."""

    name: str
    vocab_size: int
    embed_dim: int = 16


@dataclass(frozen=True)
class DenseFeature:
    """A numeric column, already scaled by the reader."""

    name: str


@dataclass(frozen=True)
class FeatureSchema:
    """Feature columns plus the domain and task names of a dataset (order = column order)."""

    sparse: tuple[SparseFeature, ...]
    dense: tuple[DenseFeature, ...]
    domains: tuple[str, ...]
    tasks: tuple[str, ...]
    extras: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def input_dim(self) -> int:
        """Width of the concatenated embeddings + dense values (113 on MovieLens-1M)."""
        return sum(f.embed_dim for f in self.sparse) + len(self.dense)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sparse": [asdict(f) for f in self.sparse],
            "dense": [asdict(f) for f in self.dense],
            "domains": list(self.domains),
            "tasks": list(self.tasks),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSchema:
        return cls(
            sparse=tuple(SparseFeature(**f) for f in d["sparse"]),
            dense=tuple(DenseFeature(**f) for f in d["dense"]),
            domains=tuple(d["domains"]),
            tasks=tuple(d["tasks"]),
        )


class Batch(TypedDict):
    """One mini-batch: ``sparse`` int64 [B, n_sparse], ``dense`` float32 [B, n_dense],
    ``domain`` int64 [B] (index into ``schema.domains``), ``labels`` float32 [B, T]."""

    sparse: torch.Tensor
    dense: torch.Tensor
    domain: torch.Tensor
    labels: torch.Tensor


@dataclass
class EncodedSplit:
    """One split of an encoded table, as whole tensors (rows aligned across the four)."""

    sparse: torch.Tensor
    dense: torch.Tensor
    domain: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.domain.shape[0])

    def rows(self, index: torch.Tensor | slice) -> Batch:
        """Gather rows by index (the hot path: one ``index_select`` per tensor, no per-row collate)."""
        if isinstance(index, slice):
            return Batch(sparse=self.sparse[index], dense=self.dense[index], domain=self.domain[index],
                         labels=self.labels[index])
        return Batch(
            sparse=self.sparse.index_select(0, index),
            dense=self.dense.index_select(0, index),
            domain=self.domain.index_select(0, index),
            labels=self.labels.index_select(0, index),
        )

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {"sparse": self.sparse, "dense": self.dense, "domain": self.domain, "labels": self.labels}


@dataclass(frozen=True)
class RowKeys:
    """A string key for every row of each split, e.g. the region of the row's user.

    The reader computes it while it still holds the raw frame (the encoded table keeps no zip codes),
    and the cache stores it with the table, so grouping rows by it (``federated.partition=region``)
    never re-reads raw files or needs to know which dataset it is looking at.
    """

    names: tuple[str, ...]
    codes: dict[str, torch.Tensor]  # split name -> int64 [rows], an index into ``names``

    def of(self, split: str) -> np.ndarray:
        """The keys of one split's rows, as strings in row order."""
        return np.asarray(self.names, dtype=str)[self.codes[split].numpy()]

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "codes": dict(self.codes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RowKeys:
        return cls(names=tuple(d["names"]), codes=dict(d["codes"]))


@dataclass
class EncodedDataset:
    """What every reader produces: the schema and the train/val/test splits as tensors.

    With ``data.storage=memmap`` the splits are :class:`~m3oe_lightning.data.memmap.MemmapSplit` objects
    instead: the same ``len(split)`` / ``split.rows(index)`` interface over memory-mapped files (no whole
    tensors; code that needs ``split.sparse`` & co. must use ``split.rows`` or ``MemmapSplit.column``).
    ``regions`` is the region of each row where the reader knows one (MovieLens, synthetic), else ``None``.
    ``encoders`` are the fitted vocabularies and scalers (what scoring raw rows needs); ``None`` for a table
    written encoded (``data.storage=memmap``) or cut from another (a federated client's part).
    """

    schema: FeatureSchema
    train: EncodedSplit
    val: EncodedSplit
    test: EncodedSplit
    regions: RowKeys | None = None
    encoders: Encoders | None = None

    def split(self, name: str) -> EncodedSplit:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


NUM_CLASSES = "num_classes"  # the schema extra a classification dataset sets (its labels hold class indices)


def concat_splits(splits: Sequence[EncodedSplit]) -> EncodedSplit:
    """In-memory splits one after another (the same columns)."""
    import torch

    return EncodedSplit(**{key: torch.cat([getattr(s, key) for s in splits]) for key in
                           ("sparse", "dense", "domain", "labels")})


@dataclass
class NaturalClients:
    """Data generated per client (``federated.partition=natural``): each client's own splits, in order, and a
    global test set of its own, ``global_test_parts[k]`` rows of it drawn beside client ``k``'s."""

    schema: FeatureSchema
    clients: list[tuple[str, EncodedDataset]]
    global_test: EncodedSplit
    global_test_parts: list[int]
