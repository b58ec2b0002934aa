"""The datamodule: one encoded table held as tensors, batches by slicing a shuffled index.

There is no per-row ``Dataset.__getitem__`` and no collate: a batch is one ``index_select`` per tensor
(docs/design.md, Property 3). The training order depends only on ``(seed, epoch)``, so a run resumed from a
checkpoint sees exactly the batches an uninterrupted run would. Under DDP each rank takes every
``world_size``-th row of the permutation (training: truncated to equal length so ranks step in lock
step; evaluation: no padding or duplication, so gathered metrics are exact).

With ``storage: memmap`` the splits are :class:`~m3oe_lightning.data.memmap.MemmapSplit` objects (tables
larger than RAM): the same loader reads them block by block in a block-shuffled order
(:class:`~m3oe_lightning.data.memmap.BlockPlan`), since a global permutation of every row would cost 8
bytes a row and random I/O. The in-memory path is unchanged, batch for batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from m3oe_lightning.data.duplicates import DEFAULT_POLICY, check_policy
from m3oe_lightning.data.memmap import DEFAULT_BLOCK_ROWS, BlockPlan, MemmapSplit, iter_batches
from m3oe_lightning.data.registry import STORAGES, load_dataset, source_uri
from m3oe_lightning.data.schema import Batch, EncodedDataset, EncodedSplit, FeatureSchema
from m3oe_lightning.errors import UserInputError, check_int
from m3oe_lightning.seeds import derive_seed

if TYPE_CHECKING:
    from m3oe_lightning.data.schema import NaturalClients


def epoch_permutation(n_rows: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of one epoch: a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch))
    return torch.randperm(n_rows, generator=generator)


@dataclass
class TensorBatchLoader:
    """An iterable of :data:`Batch` over one split; Lightning accepts it as a dataloader.

    ``epoch_fn`` is read at the start of each pass (the trainer's current epoch) to derive the order.
    ``split`` is in memory (a permutation of all rows, sliced) or memory-mapped (a :class:`BlockPlan`).
    """

    split: EncodedSplit | MemmapSplit
    batch_size: int
    shuffle: bool
    seed: int = 0
    epoch_fn: Callable[[], int] = lambda: 0
    rank: int = 0
    world_size: int = 1
    drop_uneven: bool = False

    def _indices(self) -> torch.Tensor | None:
        """Row order of this pass for this rank (``None`` = all rows in order, sliced as views)."""
        n = len(self.split)
        if not self.shuffle and self.world_size == 1:
            return None
        index = epoch_permutation(n, self.seed, self.epoch_fn()) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            if self.drop_uneven:
                index = index[: n - n % self.world_size]
            index = index[self.rank :: self.world_size]
        return index

    def _plan(self) -> BlockPlan:
        assert isinstance(self.split, MemmapSplit)
        return BlockPlan(n_rows=len(self.split), block_rows=self.split.block_rows, seed=self.seed,
                         epoch=self.epoch_fn(), shuffle=self.shuffle, rank=self.rank, world_size=self.world_size,
                         drop_uneven=self.drop_uneven)

    def _num_rows(self) -> int:
        if isinstance(self.split, MemmapSplit):
            return self._plan().num_rows()
        n = len(self.split)
        if self.world_size == 1:
            return n
        if self.drop_uneven:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return -(-self._num_rows() // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if isinstance(self.split, MemmapSplit):
            yield from iter_batches(self.split, self._plan(), self.batch_size)
            return
        index = self._indices()
        total = self._num_rows()
        for start in range(0, total, self.batch_size):
            stop = min(start + self.batch_size, total)
            yield self.split.rows(slice(start, stop) if index is None else index[start:stop])


class MDMTDataModule(L.LightningDataModule):
    """Serves a dataset from :mod:`m3oe_lightning.data.registry` as preloaded tensors.

    Args:
        name: dataset name (``movielens1m``, ``movielens100k``, ``synthetic``).
        root: data folder (default: env ``M3OE_DATA_DIR``, then ``./data``, then ``../shared/data``).
        split: ``random`` (seeded 80/10/10) or ``ordered`` (80/10/10 in file order).
        split_seed: seed of the random split (fixed by default so every run compares on one split).
        download: fetch the dataset when it is absent (MovieLens-1M).
        batch_size / eval_batch_size: rows per training / evaluation batch.
        cache_dir: where encoded tables are cached (``null`` disables the cache).
        seed: run seed; with the epoch it sets the training order.
        storage: ``memory`` (whole tensors, the default) or ``memmap`` (memory-mapped files written chunk
            by chunk under ``memmap_dir``, for tables larger than RAM; ``data=synthetic`` only).
        chunk_rows: rows generated and encoded at a time when writing a memmap table.
        block_rows: rows per shuffle block of a memmap table.
        memmap_dir: where memmap tables live (default: ``cache_dir``).
        duplicates: rows repeating an earlier row's (user, item) key: ``drop`` (default, one warning line),
            ``error`` or ``keep`` (:mod:`m3oe_lightning.data.duplicates`). Not in the presets (their config
            hashes stay unchanged): set it with ``+data.duplicates=error``.
        options: dataset-specific settings (e.g. the synthetic generator's).
    """

    def __init__(
        self,
        name: str,
        root: str | None = None,
        split: str = "random",
        split_seed: int = 2022,
        download: bool = False,
        batch_size: int = 4096,
        eval_batch_size: int = 65536,
        cache_dir: str | None = None,
        seed: int = 0,
        storage: str = "memory",
        chunk_rows: int = 262_144,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        memmap_dir: str | None = None,
        duplicates: str = DEFAULT_POLICY,
        **options: Any,
    ) -> None:
        super().__init__()
        for setting, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size),
                               ("chunk_rows", chunk_rows), ("block_rows", block_rows)):
            check_int(f"data.{setting}", value)
        self.name = name
        self.root = root
        self.split = split
        self.split_seed = int(split_seed)
        self.download = bool(download)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.seed = int(seed)
        if storage not in STORAGES:
            raise UserInputError(f"data.storage={storage!r}: use one of {', '.join(STORAGES)}")
        self.storage = storage
        self.chunk_rows = int(chunk_rows)
        self.block_rows = int(block_rows)
        self.memmap_dir = Path(memmap_dir) if memmap_dir else self.cache_dir
        self.duplicates = check_policy(duplicates)
        self.options = dict(options)  # the generator's/reader's own settings only (storage keys kept apart)
        self.dataset: EncodedDataset | None = None

    @classmethod
    def from_dataset(cls, dataset: EncodedDataset, *, batch_size: int = 4096, eval_batch_size: int = 65536,
                     seed: int = 0) -> MDMTDataModule:
        """Serve an already encoded dataset (a federated client's partition, a test's table)."""
        module = cls(name="in-memory", batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)
        module.dataset = dataset
        return module

    def load(self) -> EncodedDataset:
        """Read (or fetch from the cache) the encoded dataset; idempotent."""
        if self.dataset is None:
            self.dataset = load_dataset(
                self.name, root=self.root, split=self.split, split_seed=self.split_seed,
                download=self.download, cache_dir=self.cache_dir, duplicates=self.duplicates,
                **self._storage_options(), **self.options,
            )
        return self.dataset

    def natural_clients(self) -> NaturalClients:
        """The data's own clients (``federated.partition=natural``): only data generated per client has them
        (``data=page_synthetic``); every other dataset is partitioned by the federated settings."""
        raise UserInputError(f"federated.partition=natural: data {self.name!r} has no clients of its own "
                             f"(only data=page_synthetic does); use domain, region or dirichlet")

    def source_uri(self) -> str:
        """Where the rows come from (a folder, a file, ``generated:<name>``): the run's dataset input."""
        return source_uri(self.name, self.root, **self.options)

    def _storage_options(self) -> dict[str, Any]:
        """Storage settings for :func:`load_dataset`; empty for ``memory`` so that path is untouched."""
        if self.storage == "memory":
            return {}
        return {"storage": self.storage, "chunk_rows": self.chunk_rows, "block_rows": self.block_rows,
                "memmap_dir": self.memmap_dir}

    @property
    def schema(self) -> FeatureSchema:
        return self.load().schema

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def loader(self, split: str, *, train: bool = False) -> TensorBatchLoader:
        rank, world = self._rank()
        return TensorBatchLoader(
            split=self.load().split(split),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train, seed=self.seed, epoch_fn=self._epoch,
            rank=rank, world_size=world, drop_uneven=train,
        )

    def train_dataloader(self) -> TensorBatchLoader:
        return self.loader("train", train=True)

    def val_dataloader(self) -> TensorBatchLoader:
        return self.loader("val")

    def test_dataloader(self) -> TensorBatchLoader:
        return self.loader("test")

    def automl_batch(self, source: str, *, epoch: int, offset: int = 0) -> Batch:
        """One training-size batch for the AutoML step, drawn from (seed, epoch, offset) only."""
        split = self.load().split(source)
        rank, world = self._rank()
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "automl", epoch, offset, rank))
        size = min(self.batch_size, len(split))
        if isinstance(split, MemmapSplit):  # no O(rows) permutation: draws with replacement (rows ≫ size)
            return split.rows(torch.randint(len(split), (size,), generator=generator))
        return split.rows(torch.randperm(len(split), generator=generator)[:size])
