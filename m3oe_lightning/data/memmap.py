"""Encoded tables in memory-mapped ``.npy`` files: larger-than-memory data with the tensor batch path.

Why: :class:`~m3oe_lightning.data.schema.EncodedSplit` holds whole tensors, so a table must fit in RAM
(and, while it is encoded, several times over). Here each split is four ``.npy`` files (``sparse``
int32/int64 ``[N, F]``, ``dense`` float32 ``[N, Dn]``, ``domain`` int8/16/64 ``[N]``, ``labels`` uint8 or
float32 ``[N, T]``), small dtypes on disk, widened to the :data:`~m3oe_lightning.data.schema.Batch` dtypes
per batch only.

* **Writing** (:class:`TableWriter`): rows are appended chunk by chunk with plain sequential writes
  (not through a writable mapping, whose dirty pages would count as this process's RSS) into a hidden
  temp folder; ``meta.json`` (schema, row counts, dtypes) is written last and the folder is renamed into
  place. A crash leaves only the temp folder (deleted on the way out when Python can), never a folder
  that :func:`open_table` accepts: it requires ``meta.json`` and file sizes that match it.
* **Reading** (:class:`MemmapSplit`): each file is mapped read-only. A batch copies only its rows out of
  the mapping; after a block is copied its pages are dropped from this process (``MADV_DONTNEED``; the
  kernel's page cache keeps them), so the RSS stays about one block, not the part of the table touched
  so far.
* **Order** (:class:`BlockPlan`): shuffling a table that does not fit in RAM by a global permutation
  would cost 8 bytes a row and random I/O. Instead the blocks (``block_rows`` consecutive rows) are
  permuted with the ``(seed, epoch)`` generator, and the rows inside each block with a per-block
  generator; a block is read contiguously and shuffled in memory. Under DDP the permuted blocks are dealt
  round-robin to ranks (each rank reads only its blocks); training truncates every rank to the shortest
  rank's row count so ranks step in lock step (at most ``(world_size - 1) * block_rows`` rows a epoch are
  skipped, different ones each epoch); evaluation keeps every row exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m3oe_lightning.data.schema import Batch, EncodedDataset, FeatureSchema
from m3oe_lightning.seeds import derive_seed

FORMAT_VERSION = 1
META_NAME = "meta.json"
SPLITS = ("train", "val", "test")
GROUPS = ("sparse", "dense", "domain", "labels")
DEFAULT_BLOCK_ROWS = 1 << 16
_PAGE = mmap.PAGESIZE
# A page fault on a file mapping also maps the neighbouring cached pages ("fault-around", 64 KiB by
# default), so releases reach this far past the rows read; random gathers go in sorted chunks of
# GATHER_CHUNK rows, each released before the next, so their RSS stays bounded too.
_FAULT_AROUND = 256 * 1024
GATHER_CHUNK = 256
_BATCH_DTYPE = {"sparse": np.int64, "dense": np.float32, "domain": np.int64, "labels": np.float32}


def smallest_int_dtype(max_value: int) -> np.dtype:
    """The narrowest signed integer dtype holding ``[0, max_value]`` (ids are widened per batch)."""
    for dtype in (np.int8, np.int16, np.int32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


# ------------------------------------------------------------------------------------------ writing
class TableWriter:
    """Writes an encoded table chunk by chunk; the folder appears complete or not at all.

    ``sizes`` are the rows of (train, val, test), known up front so the ``.npy`` headers can be written
    first. Use as a context manager: on a clean exit the counts are checked, ``meta.json`` is written and
    the temp folder is renamed to ``folder``; on an exception the temp folder is deleted.
    """

    def __init__(self, folder: Path, schema: FeatureSchema, sizes: tuple[int, int, int], *,
                 sparse_dtype: Any = np.int64, labels_dtype: Any = np.uint8) -> None:
        self.folder = Path(folder)
        self.schema = schema
        self.sizes = dict(zip(SPLITS, (int(s) for s in sizes)))
        self.dtypes = {"sparse": np.dtype(sparse_dtype), "dense": np.dtype(np.float32),
                       "domain": smallest_int_dtype(max(schema.num_domains - 1, 0)),
                       "labels": np.dtype(labels_dtype)}
        self.widths = {"sparse": len(schema.sparse), "dense": len(schema.dense), "domain": None,
                       "labels": schema.num_tasks}
        self.written = dict.fromkeys(SPLITS, 0)
        self.tmp: Path | None = None
        self._files: dict[tuple[str, str], Any] = {}

    def __enter__(self) -> TableWriter:
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.folder.parent, prefix=f".{self.folder.name}.tmp-"))
        for split in SPLITS:
            (self.tmp / split).mkdir()
            for group in GROUPS:
                width = self.widths[group]
                shape = (self.sizes[split],) if width is None else (self.sizes[split], width)
                fh = (self.tmp / split / f"{group}.npy").open("wb")
                np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(self.dtypes[group]),
                                                          "fortran_order": False, "shape": shape})
                self._files[(split, group)] = fh
        return self

    def append(self, split_ids: np.ndarray, **groups: np.ndarray) -> None:
        """Append rows; ``split_ids`` (0 train, 1 val, 2 test) says where each row goes, order kept."""
        for s, split in enumerate(SPLITS):
            mask = split_ids == s
            n = int(mask.sum())
            if n == 0:
                continue
            if self.written[split] + n > self.sizes[split]:
                raise ValueError(f"{split}: more rows than the {self.sizes[split]} announced")
            for group in GROUPS:
                part = np.ascontiguousarray(groups[group][mask], dtype=self.dtypes[group])
                self._files[(split, group)].write(memoryview(part).cast("B"))
            self.written[split] += n

    def _close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.tmp is not None
        try:
            if exc_type is None:
                for fh in self._files.values():
                    fh.flush()
                    os.fsync(fh.fileno())
                self._close()
                if self.written != self.sizes:
                    raise ValueError(f"table incomplete: wrote {self.written}, announced {self.sizes}")
                meta = {"format": FORMAT_VERSION, "schema": self.schema.to_dict(),
                        "extras_json": json.dumps(self.schema.extras, default=str), "sizes": self.sizes,
                        "dtypes": {g: np.lib.format.dtype_to_descr(d) for g, d in self.dtypes.items()}}
                (self.tmp / META_NAME).write_text(json.dumps(meta, indent=1))  # last: it marks completeness
                try:
                    os.replace(self.tmp, self.folder)
                except OSError:  # another process finished the same table first: keep theirs
                    if not (self.folder / META_NAME).exists():
                        raise
        finally:
            self._close()
            shutil.rmtree(self.tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------ reading
class _MappedArray:
    """One ``.npy`` file mapped read-only, with page release for row ranges."""

    def __init__(self, path: Path, expect_rows: int, expect_dtype: str) -> None:
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version != (1, 0):
                raise ValueError(f"{path}: unexpected .npy version {version}")
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            self.offset = fh.tell()
            if fortran or shape[0] != expect_rows or np.lib.format.dtype_to_descr(dtype) != expect_dtype:
                raise ValueError(f"{path}: header {shape}/{dtype} does not match meta.json")
            self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            if os.fstat(fh.fileno()).st_size != self.offset + shape[0] * self.row_bytes:
                raise ValueError(f"{path}: size does not match its header (truncated write?)")
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.array: np.ndarray = np.ndarray(shape, dtype=dtype, buffer=self._mm, offset=self.offset)

    def release(self, start: int | None = None, stop: int | None = None) -> None:
        """Drop the pages of rows ``[start, stop)`` (all when omitted) from this process's RSS."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        if start is None or stop is None:
            first, last = 0, len(self._mm)
        else:
            first = max(0, self.offset + start * self.row_bytes - _FAULT_AROUND) // _PAGE * _PAGE
            last = min(len(self._mm), self.offset + stop * self.row_bytes + _FAULT_AROUND)
        if last > first:
            with contextlib.suppress(OSError, ValueError):
                self._mm.madvise(mmap.MADV_DONTNEED, first, last - first)


def _to_torch(group: str, values: np.ndarray, *, copy: bool) -> torch.Tensor:
    """Widen to the :data:`Batch` dtype; ``copy`` for views of the mapping (a batch never aliases the file)."""
    return torch.from_numpy(values.astype(_BATCH_DTYPE[group], order="C", copy=copy))


class MemmapSplit:
    """One split read from memory-mapped files; the same ``len`` / ``rows(index)`` as ``EncodedSplit``."""

    def __init__(self, folder: Path, rows: int, dtypes: dict[str, str], block_rows: int = DEFAULT_BLOCK_ROWS):
        self.folder = Path(folder)
        self.n_rows = int(rows)
        self.dtypes = dict(dtypes)
        self.block_rows = int(block_rows)
        self._open()

    def _open(self) -> None:
        self._arrays = {g: _MappedArray(self.folder / f"{g}.npy", self.n_rows, self.dtypes[g]) for g in GROUPS}

    def __getstate__(self) -> dict[str, Any]:  # pickled (DDP spawn, deepcopy) as paths, reopened after
        return {"folder": self.folder, "n_rows": self.n_rows, "dtypes": self.dtypes, "block_rows": self.block_rows}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return self.n_rows

    def column(self, group: str) -> np.ndarray:
        """The read-only mapped array of one column group (on-disk dtype; reading it all costs its size)."""
        return self._arrays[group].array

    def block(self, start: int, stop: int) -> Batch:
        """Rows ``[start, stop)``: one contiguous read per file, then the pages are released."""
        out = {}
        for group, mapped in self._arrays.items():
            out[group] = _to_torch(group, mapped.array[start:stop], copy=True)
            mapped.release(start, stop)
        return Batch(**out)  # type: ignore[typeddict-item]

    def rows(self, index: torch.Tensor | slice) -> Batch:
        """Gather rows by index: a slice reads contiguously; an index tensor is gathered in sorted chunks,
        each chunk's pages released before the next (RSS stays bounded however scattered the rows are)."""
        if isinstance(index, slice):
            start, stop, step = index.indices(self.n_rows)
            if step == 1:
                return self.block(start, max(start, stop))
            index = torch.arange(start, stop, step)
        idx = index.numpy()
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        out = {}
        for group, mapped in self._arrays.items():
            values = np.empty((len(idx), *mapped.array.shape[1:]), dtype=mapped.array.dtype)
            for first in range(0, len(idx), GATHER_CHUNK):
                rows = ordered[first : first + GATHER_CHUNK]
                values[order[first : first + GATHER_CHUNK]] = mapped.array[rows]
                mapped.release(int(rows[0]), int(rows[-1]) + 1)
            out[group] = _to_torch(group, values, copy=False)
        return Batch(**out)  # type: ignore[typeddict-item]

    def to_dict(self) -> dict[str, torch.Tensor]:
        """Whole columns as tensors (loads the split into RAM: small tables and tests only)."""
        return dict(self.block(0, self.n_rows))


def open_table(folder: Path, *, block_rows: int = DEFAULT_BLOCK_ROWS) -> EncodedDataset:
    """Open a finished table; raises (``FileNotFoundError``/``ValueError``) on anything incomplete."""
    folder = Path(folder)
    meta = json.loads((folder / META_NAME).read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{folder}: format {meta.get('format')} is not {FORMAT_VERSION}")
    base = FeatureSchema.from_dict(meta["schema"])
    schema = FeatureSchema(sparse=base.sparse, dense=base.dense, domains=base.domains, tasks=base.tasks,
                           extras=json.loads(meta["extras_json"]))
    splits = {s: MemmapSplit(folder / s, meta["sizes"][s], meta["dtypes"], block_rows) for s in SPLITS}
    return EncodedDataset(schema=schema, **splits)  # type: ignore[arg-type]


def table_folder(root: Path, config: dict[str, Any]) -> Path:
    """``root/<dataset>-memmap-<hash of config + format>``: one folder per distinct table."""
    blob = json.dumps({"format": FORMAT_VERSION, "config": config}, sort_keys=True, default=str)
    return Path(root) / f"{config.get('dataset', 'dataset')}-memmap-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"


def cached_table(root: Path, config: dict[str, Any], write: Callable[[Path], None], *,
                 block_rows: int = DEFAULT_BLOCK_ROWS) -> EncodedDataset:
    """Open the table of ``config`` under ``root``, writing it first with ``write(folder)`` when absent.

    An unreadable table (a crash predating the completion marker cannot make one, but a disk error can)
    is deleted and rewritten with a warning, never trusted.
    """
    folder = table_folder(root, config)
    if folder.exists():
        try:
            return open_table(folder, block_rows=block_rows)
        except Exception as exc:  # noqa: BLE001 - rebuild anything that does not open cleanly
            warnings.warn(f"memmap table {folder} is unreadable ({type(exc).__name__}: {exc}); rewriting it",
                          stacklevel=2)
            shutil.rmtree(folder, ignore_errors=True)
    write(folder)
    return open_table(folder, block_rows=block_rows)


# ------------------------------------------------------------------------------------------ order
def _block_generator(seed: int, epoch: int, block: int | None = None) -> torch.Generator:
    """The generator of one epoch's block order (``block=None``) or of one block's row order."""
    keys = ("block-order", epoch) if block is None else ("block-rows", epoch, block)
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


@dataclass(frozen=True)
class BlockPlan:
    """Which blocks one rank reads in which order, and how many rows it yields, for one pass.

    Depends only on ``(n_rows, block_rows, seed, epoch, shuffle, rank, world_size, drop_uneven)``.
    """

    n_rows: int
    block_rows: int
    seed: int = 0
    epoch: int = 0
    shuffle: bool = False
    rank: int = 0
    world_size: int = 1
    drop_uneven: bool = False

    @property
    def n_blocks(self) -> int:
        return -(-self.n_rows // self.block_rows)

    def block_size(self, block: int) -> int:
        return min(self.block_rows, self.n_rows - block * self.block_rows)

    def _order(self) -> list[int]:
        if self.shuffle:
            return torch.randperm(self.n_blocks, generator=_block_generator(self.seed, self.epoch)).tolist()
        return list(range(self.n_blocks))

    def blocks(self) -> list[int]:
        """This rank's blocks in reading order (the permuted blocks dealt round-robin)."""
        return self._order()[self.rank :: self.world_size]

    def num_rows(self) -> int:
        """Rows this rank yields; with ``drop_uneven`` the shortest rank's count (lock-step training)."""
        if self.world_size == 1:
            return self.n_rows
        order = self._order()
        totals = [sum(self.block_size(b) for b in order[r :: self.world_size]) for r in range(self.world_size)]
        return min(totals) if self.drop_uneven else totals[self.rank]

    def row_order(self, block: int) -> torch.Tensor | None:
        """The permutation of rows inside ``block`` (``None``: file order)."""
        if not self.shuffle:
            return None
        return torch.randperm(self.block_size(block), generator=_block_generator(self.seed, self.epoch, block))


def iter_batches(split: MemmapSplit, plan: BlockPlan, batch_size: int) -> Iterator[Batch]:
    """Batches of ``batch_size`` rows from the concatenation of the plan's shuffled blocks.

    A batch may span two blocks (the remainder of one is carried into the next), so every batch but the
    last is full and the batch count is ``ceil(plan.num_rows() / batch_size)``.
    """
    remaining = plan.num_rows()  # rows still to take from blocks
    carry: Batch | None = None
    for block in plan.blocks():
        if remaining <= 0:
            break
        start = block * plan.block_rows
        data = split.block(start, start + plan.block_size(block))
        order = plan.row_order(block)
        if order is not None:
            data = _map(data, lambda v, o=order: v.index_select(0, o))
        take = min(int(data["domain"].shape[0]), remaining)
        remaining -= take
        if take < int(data["domain"].shape[0]):
            data = _map(data, lambda v, t=take: v[:t])
        if carry is not None:
            data = Batch(**{k: torch.cat([carry[k], data[k]]) for k in data})  # type: ignore[literal-required]
        n, pos = int(data["domain"].shape[0]), 0
        while n - pos >= batch_size:
            yield _map(data, lambda v, p=pos: v[p : p + batch_size])
            pos += batch_size
        carry = _map(data, lambda v, p=pos: v[p:]) if pos < n else None
    if carry is not None:
        yield carry


def _map(batch: Batch, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
    return Batch(**{k: fn(v) for k, v in batch.items()})  # type: ignore[typeddict-item]
