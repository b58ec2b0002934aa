"""The encoded-table cache: hits skip the build, any source/config change rebuilds, a damaged file is
rebuilt (checksum), writes are atomic, and an unwritable or full cache folder never stops a run."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
import torch

from m3oe_lightning.data import cache as cache_module
from m3oe_lightning.data.cache import cached
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


def test_an_edit_keeping_size_and_mtime_rebuilds(tmp_path, source):
    """Digests are keyed on content: an edit that keeps the size and restores the mtime is still seen."""
    builder = Builder()
    _cached(builder, tmp_path / "cache", source)
    stat = source.stat()
    time.sleep(0.05)  # past the file system's timestamp granularity
    source.write_text("1::1::4::0\n")  # same size
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (source.stat().st_size, source.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    _cached(builder, tmp_path / "cache", source)
    assert builder.calls == 2


def test_nothing_but_the_cache_file_is_written(tmp_path, source):
    _cached(Builder(), tmp_path / "cache", source)
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(names) == 1 and names[0].startswith("toy-") and names[0].endswith(".pt")  # no memo, no temp


def one_warning(capsys, *words: str) -> str:
    """The single ``warning:`` line on stderr, which must contain ``words``."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: "), lines
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, source, capsys):
    builder = Builder()
    first = _cached(builder, tmp_path / "cache", source)
    (cache_file,) = (tmp_path / "cache").glob("*.pt")
    cache_file.write_bytes(b"not a torch file")
    rebuilt = _cached(builder, tmp_path / "cache", source)
    one_warning(capsys, str(cache_file), "rebuilding")
    assert builder.calls == 2
    assert_same(first, rebuilt)
    again = _cached(builder, tmp_path / "cache", source)  # the rewritten file is good again
    assert builder.calls == 2
    assert_same(first, again)


def test_truncated_cache_is_rebuilt(tmp_path, source, capsys):
    builder = Builder()
    _cached(builder, tmp_path / "cache", source)
    (cache_file,) = (tmp_path / "cache").glob("*.pt")
    cache_file.write_bytes(cache_file.read_bytes()[: cache_file.stat().st_size // 2])
    _cached(builder, tmp_path / "cache", source)
    one_warning(capsys, str(cache_file))
    assert builder.calls == 2


class BigBuilder(Builder):
    def __call__(self):
        self.calls += 1
        return make_synthetic(rows=20_000, num_users=500, num_items=300, seed=self.seed)


def test_zeroed_block_inside_the_cache_is_caught_by_its_checksum(tmp_path, source, capsys):
    """torch.load accepts a tensor whose bytes were zeroed; the payload checksum does not."""
    builder = BigBuilder()
    first = _cached(builder, tmp_path / "cache", source)
    (cache_file,) = (tmp_path / "cache").glob("*.pt")
    data = bytearray(cache_file.read_bytes())
    tensor = first.train.sparse.numpy().tobytes()  # zero bytes inside one tensor: the zip structure stays valid
    start = data.find(tensor[:4096]) + 8
    size = min(600_000, len(tensor) - 16)
    data[start:start + size] = bytes(size)
    cache_file.write_bytes(bytes(data))
    rebuilt = _cached(builder, tmp_path / "cache", source)
    one_warning(capsys, str(cache_file), "damaged", "rebuilding")
    assert builder.calls == 2
    assert_same(first, rebuilt)


def test_an_unwritable_cache_folder_warns_once_and_builds(tmp_path, source, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    builder = Builder()
    dataset = _cached(builder, blocker / "cache", source)
    one_warning(capsys, str(blocker / "cache"), "continuing without cache")
    assert builder.calls == 1 and len(dataset.train) > 0


def test_a_full_disk_leaves_no_partial_cache_file(tmp_path, source, capsys, monkeypatch):
    """ENOSPC half-way through the write: one warning, the dataset, and nothing (not even a temp file) left."""
    real_open = Path.open

    class FullDisk:
        def __init__(self, fh):
            self.fh, self.written = fh, 0

        def write(self, data):
            if self.written:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += self.fh.write(data[: len(data) // 2] if len(data) > 1000 else data)
            return self.written

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def open_full(self, mode="r", *args, **kwargs):
        fh = real_open(self, mode, *args, **kwargs)
        return FullDisk(fh) if "w" in mode and self.name.startswith(".") else fh

    monkeypatch.setattr(Path, "open", open_full)
    builder = Builder()
    dataset = _cached(builder, tmp_path / "cache", source)
    one_warning(capsys, "cannot write cache file", "continuing without cache")
    assert builder.calls == 1 and len(dataset.train) > 0
    assert list((tmp_path / "cache").iterdir()) == []


def test_digests_are_memoised_per_process_by_stat(tmp_path, source, monkeypatch):
    calls = []
    real = cache_module.file_sha256
    monkeypatch.setattr(cache_module, "file_sha256", lambda path: calls.append(path) or real(path))
    cache_module._DIGESTS.clear()
    first = cache_module.source_digests([source])
    assert cache_module.source_digests([source]) == first and len(calls) == 1
    time.sleep(0.05)
    source.write_text("2::1::5::0\n")
    assert cache_module.source_digests([source]) != first and len(calls) == 2
