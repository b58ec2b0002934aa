"""On-disk cache of encoded tables.

Parsing and encoding ML-1M takes seconds; loading the finished tensors takes a fraction of one. The
cache key is the SHA-256 of the source files' *contents* (not paths or mtimes, so a moved or touched
file still hits, and an edited one never does, even with the same size and mtime) + the preprocessing
config + :data:`FORMAT_VERSION` (bump it whenever encoding changes meaning). Hashing ML-1M's files takes
a few hundredths of a second, so digests are memoised only within one process, per (path, size, mtime,
ctime, inode): nothing on disk can make a stale digest outlive an edit.

A cache file is one header line (``M3OE-CACHE <format> sha256=<digest of the rest>``) and the
``torch.save`` payload. Loading checks the digest first: a damaged file (a zeroed block inside loads
without complaint otherwise) is rebuilt with one warning line naming it. Writes go to a temp file in the
same folder, fsync'd, then ``os.replace``d, so a crash, a full disk or a concurrent reader never sees a
half-written cache; an unwritable or full cache folder costs speed next time (one warning line), never
the run. Loading uses ``torch.load(weights_only=True)``: the payload is tensors, strings and numbers
only (schema extras travel as a JSON string; the rows' regions as names and codes).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from m3oe_lightning.data.encoders import Encoders
from m3oe_lightning.data.notices import warn
from m3oe_lightning.data.schema import EncodedDataset, EncodedSplit, FeatureSchema, RowKeys

FORMAT_VERSION = 4  # 2: the payload carries the rows' regions; 3: a checksum header line before it; 4: encoders
MAGIC = b"M3OE-CACHE"
_CHUNK = 1 << 20
_SPLITS = ("train", "val", "test")
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}  # (path, size, mtime_ns, ctime_ns, inode) -> sha256


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def source_digests(files: list[Path]) -> list[str]:
    """Content digest of each file; a file unchanged (same stat) since this process hashed it is not re-read."""
    digests: list[str] = []
    for path in files:
        resolved = path.resolve()
        stat = resolved.stat()
        stamp = (str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
        if stamp not in _DIGESTS:
            _DIGESTS[stamp] = file_sha256(resolved)
        digests.append(_DIGESTS[stamp])
    return digests


@contextlib.contextmanager
def _atomic_path(final: Path, suffix: str) -> Iterator[Path]:
    """Yield a temp path beside ``final``; on success fsync it and move it over ``final``, else delete it."""
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared by a team's accounts
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        with contextlib.suppress(OSError):  # the rename itself survives a crash once the folder is synced
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def _header(body: bytes) -> bytes:
    return MAGIC + f" {FORMAT_VERSION} sha256={hashlib.sha256(body).hexdigest()}\n".encode()


def write_cache_file(target: Path, payload: dict[str, Any]) -> None:
    """``payload`` behind its checksum header, written atomically (temp file, fsync, rename)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getbuffer()
    with _atomic_path(target, ".tmp") as tmp, tmp.open("wb") as fh:
        fh.write(_header(body))
        fh.write(body)


class DamagedCache(ValueError):
    """The file's bytes do not match its checksum (or it has no header): it was damaged or is not ours."""


def read_cache_file(target: Path) -> Any:
    """The payload of a cache file, after checking its checksum (:class:`DamagedCache` when it fails).

    The body is hashed in chunks and then loaded from the same open file, positioned after the header
    (torch reads a zip archive with bytes before it), so a large cache is never held twice in memory.
    """
    with target.open("rb") as fh:
        fields = fh.readline(256).rstrip(b"\n").split(b" ")
        if len(fields) != 3 or fields[0] != MAGIC or not fields[2].startswith(b"sha256="):
            raise DamagedCache("no cache header (another format version, or not a cache file)")
        start = fh.tell()
        digest = hashlib.sha256()
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
        if digest.hexdigest().encode() != fields[2][len(b"sha256="):]:
            raise DamagedCache("its contents do not match their checksum")
        fh.seek(start)
        return torch.load(fh, map_location="cpu", weights_only=True)


def cache_key(digests: list[str], names: list[str], config: dict[str, Any]) -> str:
    """SHA-256 over format version, config (canonical JSON) and each source file's name + digest."""
    blob = json.dumps(
        {"format": FORMAT_VERSION, "config": config, "files": list(zip(names, digests))},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _payload(dataset: EncodedDataset, key: str) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "key": key,
        "schema": dataset.schema.to_dict(),
        "extras_json": json.dumps(dataset.schema.extras, default=str),
        "splits": {name: dataset.split(name).to_dict() for name in _SPLITS},
        "regions": None if dataset.regions is None else dataset.regions.to_dict(),
        "encoders_json": None if dataset.encoders is None else json.dumps(dataset.encoders.to_dict()),
    }


def _from_payload(payload: Any, key: str) -> EncodedDataset:
    """Rebuild the dataset; any structural surprise raises so the caller rebuilds the cache."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION or payload.get("key") != key:
        raise ValueError("cache payload has another format version or key")
    schema = FeatureSchema.from_dict(payload["schema"])
    schema = FeatureSchema(sparse=schema.sparse, dense=schema.dense, domains=schema.domains,
                           tasks=schema.tasks, extras=json.loads(payload["extras_json"]))
    splits = {name: EncodedSplit(**payload["splits"][name]) for name in _SPLITS}
    regions = None if payload["regions"] is None else RowKeys.from_dict(payload["regions"])
    encoded = payload["encoders_json"]
    encoders = None if encoded is None else Encoders.from_dict(json.loads(encoded))
    return EncodedDataset(schema=schema, **splits, regions=regions, encoders=encoders)


def _cache_file(cache_dir: Path, config: dict[str, Any], key: str) -> Path:
    prefix = str(config.get("dataset", config.get("name", "dataset")))
    prefix = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in prefix)
    return cache_dir / f"{prefix}-{key[:24]}.pt"


def _usable_dir(cache_dir: Path) -> bool:
    """Create ``cache_dir`` if needed; ``False`` (after one warning line) when that is impossible."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        warn(f"cannot create cache folder {cache_dir} ({exc.strerror or exc}); continuing without cache")
        return False
    return True


def cached(
    build: Callable[[], EncodedDataset],
    *,
    cache_dir: Path,
    source_files: list[Path],
    config: dict[str, Any],
) -> EncodedDataset:
    """Return ``build()``'s result, from ``cache_dir`` when the sources and ``config`` are unchanged.

    ``config`` must hold every setting that changes the encoded result (split kind, seed, ...); a
    ``dataset`` entry, if present, prefixes the cache file's name.
    """
    cache_dir = Path(cache_dir)
    if not _usable_dir(cache_dir):
        return build()
    files = [Path(p) for p in source_files]
    key = cache_key(source_digests(files), [p.name for p in files], config)
    target = _cache_file(cache_dir, config, key)

    if target.exists():
        try:
            return _from_payload(read_cache_file(target), key)
        except Exception as exc:  # noqa: BLE001 - any unreadable cache is rebuilt, never trusted
            what = "is damaged" if isinstance(exc, DamagedCache) else "is unreadable"
            warn(f"cache file {target} {what} ({type(exc).__name__}: {exc}); rebuilding it")

    dataset = build()
    try:
        write_cache_file(target, _payload(dataset, key))
    except OSError as exc:  # a read-only or full disk costs speed next time, not this run
        warn(f"cannot write cache file {target} ({exc.strerror or exc}); continuing without cache")
    return dataset
