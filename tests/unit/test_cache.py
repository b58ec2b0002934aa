"""The encoded-table cache: hits skip the build, any source/config change rebuilds, writes are atomic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from m3oe_lightning.data.cache import HASH_MEMO_NAME, cached
from m3oe_lightning.data.readers.synthetic import make_synthetic


class Builder:
    """Counts calls so tests can tell a cache hit from a rebuild."""

    def __init__(self, seed: int = 0) -> None:
        self.calls = 0
        self.seed = seed

    def __call__(self):
        self.calls += 1
        return make_synthetic(rows=200, num_users=20, num_items=10, seed=self.seed)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "raw" / "ratings.dat"
    path.parent.mkdir()
    path.write_text("1::1::5::0\n")
    return path


def _cached(builder, cache_dir, source, config=None):
    return cached(builder, cache_dir=cache_dir, source_files=[source],
                  config=config if config is not None else {"dataset": "toy", "split": "random"})


def assert_same(a, b) -> None:
    assert a.schema == b.schema and a.schema.extras == b.schema.extras
    assert a.regions.names == b.regions.names
    assert all(torch.equal(a.regions.codes[s], b.regions.codes[s]) for s in ("train", "val", "test"))
    for name in ("train", "val", "test"):
        for key, tensor in a.split(name).to_dict().items():
            other = b.split(name).to_dict()[key]
            assert tensor.dtype == other.dtype and torch.equal(tensor, other), (name, key)


def test_hit_returns_equal_tensors_without_building(tmp_path, source):
    builder = Builder()
    first = _cached(builder, tmp_path / "cache", source)
    second = _cached(builder, tmp_path / "cache", source)
    assert builder.calls == 1
    assert_same(first, second)
    assert (tmp_path / "cache" / HASH_MEMO_NAME).is_file()


def test_changed_source_content_rebuilds_but_touch_does_not(tmp_path, source):
    builder = Builder()
    _cached(builder, tmp_path / "cache", source)
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # same bytes, new mtime
    _cached(builder, tmp_path / "cache", source)
    assert builder.calls == 1
    source.write_text("1::1::4::0\n")
    _cached(builder, tmp_path / "cache", source)
    assert builder.calls == 2


def test_changed_config_rebuilds(tmp_path, source):
    builder = Builder()
    _cached(builder, tmp_path / "cache", source, {"dataset": "toy", "split_seed": 1})
    _cached(builder, tmp_path / "cache", source, {"dataset": "toy", "split_seed": 2})
    _cached(builder, tmp_path / "cache", source, {"split_seed": 1, "dataset": "toy"})  # key order ignored
    assert builder.calls == 2


def test_no_temp_files_are_left(tmp_path, source):
    _cached(Builder(), tmp_path / "cache", source)
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(names) == 2 and HASH_MEMO_NAME in names
    assert all(not n.startswith(".") for n in names)
    assert [n for n in names if n.endswith(".pt")][0].startswith("toy-")


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, source):
    builder = Builder()
    first = _cached(builder, tmp_path / "cache", source)
    (cache_file,) = (tmp_path / "cache").glob("*.pt")
    cache_file.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable"):
        rebuilt = _cached(builder, tmp_path / "cache", source)
    assert builder.calls == 2
    assert_same(first, rebuilt)
    again = _cached(builder, tmp_path / "cache", source)  # the rewritten file is good again
    assert builder.calls == 2
    assert_same(first, again)


def test_truncated_cache_is_rebuilt(tmp_path, source):
    builder = Builder()
    _cached(builder, tmp_path / "cache", source)
    (cache_file,) = (tmp_path / "cache").glob("*.pt")
    cache_file.write_bytes(cache_file.read_bytes()[: cache_file.stat().st_size // 2])
    with pytest.warns(UserWarning):
        _cached(builder, tmp_path / "cache", source)
    assert builder.calls == 2
