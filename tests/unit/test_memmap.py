"""Memory-mapped tables: same encoding as in memory, block-shuffled order, DDP shards, crash safety."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from m3oe_lightning.data import memmap
from m3oe_lightning.data.datamodule import MDMTDataModule, TensorBatchLoader, epoch_permutation
from m3oe_lightning.data.encode import encode_table
from m3oe_lightning.data.readers.synthetic import SyntheticStream, make_synthetic, make_synthetic_memmap, write_stream
from m3oe_lightning.data.registry import load_dataset
from m3oe_lightning.data.schema import DenseFeature, FeatureSchema, SparseFeature
from m3oe_lightning.errors import UserInputError

STREAM = {"rows": 5000, "num_users": 60, "num_items": 40, "seed": 3, "split": "random", "split_seed": 1,
          "gen_block": 1000}


def id_table(folder: Path, n: int, block_rows: int) -> memmap.MemmapSplit:
    """A train split whose only sparse column is the row number (to follow rows through the loader)."""
    schema = FeatureSchema(sparse=(SparseFeature("rid", n + 1),), dense=(DenseFeature("x"),), domains=("d0",),
                           tasks=("t0",))
    ids = np.arange(n)
    with memmap.TableWriter(folder, schema, (n, 0, 0), sparse_dtype=np.int32) as writer:
        for start in range(0, n, 300):  # chunk by chunk
            part = ids[start : start + 300]
            writer.append(np.zeros(len(part), np.int8), sparse=part[:, None], dense=part[:, None] / n,
                          domain=np.zeros(len(part)), labels=(part[:, None] % 2))
    return memmap.open_table(folder, block_rows=block_rows).train  # type: ignore[return-value]


def row_ids(loader: TensorBatchLoader) -> list[int]:
    return [int(i) for batch in loader for i in batch["sparse"][:, 0]]


def test_memmap_table_equals_in_memory_encoding_of_the_same_rows(tmp_path):
    stream = SyntheticStream(**STREAM)
    write_stream(stream, tmp_path / "a", chunk_rows=2000)
    write_stream(SyntheticStream(**STREAM), tmp_path / "b", chunk_rows=700)  # chunking never changes the table
    frame, train, val, test = SyntheticStream(**STREAM).frame()
    reference = encode_table(frame, train, val, test, stream.table_spec())
    a, b = memmap.open_table(tmp_path / "a"), memmap.open_table(tmp_path / "b")
    assert a.schema == reference.schema and a.schema.extras == reference.schema.extras
    assert (len(a.train), len(a.val), len(a.test)) == (4000, 500, 500)  # exact 80/10/10
    for name in ("train", "val", "test"):
        expected = reference.split(name).to_dict()
        for got in (a.split(name).to_dict(), b.split(name).to_dict()):
            for key, tensor in expected.items():
                assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), (name, key)
    rates = reference.train.labels.mean(0)  # the classic funnel
    assert abs(float(rates[0]) - 0.5) < 0.03 and abs(float(rates[1]) - 0.35) < 0.03
    assert torch.equal(a.train.rows(torch.tensor([5, 0, 3]))["sparse"], reference.train.sparse[[5, 0, 3]])


def test_block_shuffle_each_row_once_seeded_per_epoch_and_blockwise(tmp_path):
    split = id_table(tmp_path / "t", 1000, block_rows=64)
    epoch = {"e": 0}
    loader = TensorBatchLoader(split, batch_size=50, shuffle=True, seed=1, epoch_fn=lambda: epoch["e"])
    first = row_ids(loader)
    assert sorted(first) == list(range(1000)) and len(loader) == 20
    assert len({i // 64 for i in first[:64]}) == 1  # the first 64 rows are one block, read contiguously
    assert first != sorted(first) and row_ids(loader) == first  # shuffled; same (seed, epoch) → same order
    epoch["e"] = 1
    second = row_ids(loader)
    assert sorted(second) == list(range(1000)) and second != first
    assert row_ids(TensorBatchLoader(split, batch_size=300, shuffle=False)) == list(range(1000))  # eval order


def test_ddp_shards_cover_every_row_once(tmp_path):
    split = id_table(tmp_path / "t", 1000, block_rows=64)
    world = 3
    evals = [TensorBatchLoader(split, 128, shuffle=False, rank=r, world_size=world) for r in range(world)]
    shards = [row_ids(loader) for loader in evals]
    assert sorted(sum(shards, [])) == list(range(1000))
    assert [len(loader) for loader in evals] == [-(-len(s) // 128) for s in shards]
    trains = [TensorBatchLoader(split, 50, shuffle=True, seed=2, rank=r, world_size=world, drop_uneven=True)
              for r in range(world)]
    shards = [row_ids(loader) for loader in trains]
    assert len({len(s) for s in shards}) == 1 and len({len(t) for t in trains}) == 1  # lock step
    taken = sum(shards, [])
    assert len(set(taken)) == len(taken) and len(taken) >= 1000 - (world - 1) * 64


def test_interrupted_write_leaves_no_table_and_a_damaged_one_is_rewritten(tmp_path, monkeypatch):
    settings = {"rows": 3000, "num_users": 30, "num_items": 20, "seed": 0}
    real_append = memmap.TableWriter.append
    calls = {"n": 0}

    def failing_append(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk unplugged")
        return real_append(self, *args, **kwargs)

    monkeypatch.setattr(memmap.TableWriter, "append", failing_append)
    monkeypatch.setattr("m3oe_lightning.data.readers.synthetic.STREAM_BLOCK", 1000)
    with pytest.raises(RuntimeError, match="disk unplugged"):
        make_synthetic_memmap(folder=tmp_path, chunk_rows=1000, **settings)
    assert os.listdir(tmp_path) == []  # no table, no temp folder
    monkeypatch.setattr(memmap.TableWriter, "append", real_append)
    table = make_synthetic_memmap(folder=tmp_path, chunk_rows=1000, **settings)
    (folder,) = tmp_path.iterdir()
    expected = table.train.to_dict()["dense"]
    with pytest.raises(FileNotFoundError):  # a folder without the completion marker never opens
        memmap.open_table(tmp_path / "missing")
    data = folder / "train" / "dense.npy"
    data.write_bytes(data.read_bytes()[:-8])  # truncated behind our back
    with pytest.raises(ValueError, match="size"):
        memmap.open_table(folder)
    with pytest.warns(UserWarning, match="unreadable"):
        again = make_synthetic_memmap(folder=tmp_path, chunk_rows=1000, **settings)
    assert torch.equal(again.train.to_dict()["dense"], expected)


def test_in_memory_loader_order_is_unchanged():
    split = make_synthetic(rows=600, num_users=20, num_items=10).train
    loader = TensorBatchLoader(split, batch_size=100, shuffle=True, seed=5, epoch_fn=lambda: 2)
    order = epoch_permutation(len(split), 5, 2)
    for k, batch in enumerate(loader):
        assert torch.equal(batch["sparse"], split.sparse[order[k * 100 : (k + 1) * 100]])


def test_datamodule_memmap_storage_and_bad_settings(tmp_path):
    module = MDMTDataModule("synthetic", storage="memmap", memmap_dir=str(tmp_path), batch_size=64, rows=2000,
                            num_users=30, num_items=20)
    assert module.options == {"rows": 2000, "num_users": 30, "num_items": 20}  # generator settings only
    assert isinstance(module.load().train, memmap.MemmapSplit)
    batch = module.automl_batch("train", epoch=0)
    assert batch["sparse"].dtype == torch.int64 and batch["labels"].shape == (64, 2)
    with pytest.raises(UserInputError, match="storage"):
        MDMTDataModule("synthetic", storage="disk")
    with pytest.raises(UserInputError, match="memmap is available"):
        load_dataset("movielens100k", root=None, split="random", split_seed=0, download=False, cache_dir=tmp_path,
                     storage="memmap")


def test_train_end_to_end_on_a_memmap_table(tmp_path):
    from m3oe_lightning.train import train
    from tests.helpers import compose_train, isolated

    cfg = compose_train(["data=synthetic", "data.storage=memmap", "data.rows=3000", "data.batch_size=256",
                         "data.block_rows=512", "trainer.max_epochs=1", "seed=1", *isolated(tmp_path)])
    metrics = train(cfg)
    assert 0.0 < metrics["test/auc_mean"] < 1.0
    assert [p.name.startswith("synthetic-memmap-") for p in (tmp_path / "cache").iterdir()] == [True]


@pytest.mark.parametrize("setting", ["batch_size", "eval_batch_size", "chunk_rows", "block_rows"])
def test_datamodule_sizes_must_be_positive_integers(setting):
    with pytest.raises(UserInputError, match=rf"^data\.{setting}=0: use a positive integer$"):
        MDMTDataModule("synthetic", **{setting: 0})


def test_block_order_is_seeded_by_seed_and_epoch():
    def order(seed, epoch):
        plan = memmap.BlockPlan(n_rows=10_000, block_rows=100, seed=seed, epoch=epoch, shuffle=True)
        return plan.blocks(), plan.row_order(3).tolist()
    assert order(1, 2) == order(1, 2)
    assert order(1, 2) != order(1, 3) and order(1, 2) != order(2, 2)
